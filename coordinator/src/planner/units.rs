//! Byte sizes as people write them ("16GiB", "12G", "512MiB", "1.5GiB") and
//! device lists made of them.

use super::{Backend, WorkerSpec};

const KIB: f64 = 1024.0;

/// Parses a size with an optional binary unit (K/M/G/T, with or without
/// "iB"/"B"; decimal units are read as binary too, as GPU vendors mean them).
/// A bare number is bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 16GiB, 12G, 512MiB or 1.5GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => KIB * KIB,
        "g" | "gb" | "gib" => KIB * KIB * KIB,
        "t" | "tb" | "tib" => KIB * KIB * KIB * KIB,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?}: size out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Bytes as GiB (two decimals) or MiB for small sizes.
pub fn format_bytes(b: u64) -> String {
    let mib = KIB * KIB;
    if b as f64 >= KIB * mib {
        format!("{:.2} GiB", b as f64 / (KIB * mib))
    } else {
        format!("{:.1} MiB", b as f64 / mib)
    }
}

/// Parses a device list for `strata plan --devices`: comma-separated
/// `[cpu:|cuda:]SIZE[@HOST]`, e.g. `16GiB,16GiB,12GiB` or
/// `24G@boxa,24G@boxa,cpu:64G@boxb`. Devices default to CUDA, each on a host
/// of its own (`dev0`, `dev1`, ...).
pub fn parse_devices(list: &str) -> Result<Vec<WorkerSpec>, String> {
    let mut out = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{list:?}: empty device in the list"));
        }
        let (item, host) = match item.split_once('@') {
            Some((d, h)) if !h.trim().is_empty() => (d, h.trim().to_string()),
            Some(_) => return Err(format!("{item:?}: empty host after '@'")),
            None => (item, format!("dev{i}")),
        };
        let (backend, size) = match item.split_once(':') {
            Some((b, size)) => match b.trim().to_ascii_lowercase().as_str() {
                "cpu" => (Backend::Cpu, size),
                "cuda" | "gpu" => (Backend::Cuda, size),
                other => return Err(format!("{item:?}: unknown backend {other:?} (cpu or cuda)")),
            },
            None => (Backend::Cuda, item),
        };
        let free = parse_bytes(size)?;
        out.push(WorkerSpec::new(format!("dev{i}"), backend, host, free));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_lists() {
        let d = parse_devices("16GiB,16GiB,12GiB").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].free_bytes, 12 << 30);
        assert!(d.iter().all(|w| w.backend == Backend::Cuda));
        assert_ne!(d[0].host, d[1].host);
        let d = parse_devices("24G@a, 24G@a, cpu:64G@b").unwrap();
        assert_eq!(d[0].host, d[1].host);
        assert_eq!(d[2].backend, Backend::Cpu);
        assert!(parse_devices("16GiB,,1G").is_err());
        assert!(parse_devices("tpu:16G").is_err());
        assert!(parse_devices("16G@").is_err());
    }

    #[test]
    fn parses_common_sizes() {
        assert_eq!(parse_bytes("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("12G").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes(" 2 gb ").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("-1G").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
    }
}
