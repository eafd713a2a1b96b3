//! Device lists for `strata plan --devices`, made of byte sizes
//! ([`strata_model::units`]).

pub use strata_model::units::{format_bytes, parse_bytes};

use super::{Backend, WorkerSpec};

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
}
