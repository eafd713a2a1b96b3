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

/// This machine's name (`/proc/sys/kernel/hostname`), or `box` off Linux.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "box".into())
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
