//! What the host offers: memory from `/proc/meminfo`, a CPU name, and a
//! measured streaming-read rate (what a matvec over quantized weights is
//! bound by on the CPU backend).

use rayon::prelude::*;

/// `(total, available)` bytes, or `None` off Linux.
pub fn memory_bytes() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}

/// Reads a 64 MiB buffer with all threads, best of 3; bytes per second.
pub fn measure_read_bandwidth() -> f64 {
    const N: usize = 16 << 20;
    let buf: Vec<f32> = (0..N).map(|i| (i % 7) as f32).collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let s: f32 = buf.par_chunks(1 << 14).map(|c| c.iter().sum::<f32>()).sum();
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        std::hint::black_box(s);
        best = best.max((N * 4) as f64 / secs);
    }
    best
}

/// Parses sizes like `12GiB`, `512MiB`, `16G`, `1000000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 12GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (use KiB, MiB, GiB, TiB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("12GiB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").is_err());
    }
}
