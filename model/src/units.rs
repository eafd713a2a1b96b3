//! Byte sizes as people write them ("16GiB", "12G", "512MiB", "1.5GiB") and
//! as tables print them. One parser for every flag that takes a size
//! (`--mem-budget`, `--devices`, `--bandwidths`).

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn worker_budget_sizes() {
        assert_eq!(parse_bytes("12GiB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").is_err());
    }
}
