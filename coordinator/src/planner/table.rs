//! A plan as the table `strata plan` and `strata serve` print.

use std::fmt::Write;

use super::units::format_bytes;
use super::{Plan, WorkerSpec};

/// One row per stage (device, layers, memory, time), unused workers and the
/// estimated time per token.
pub fn table(p: &Plan, workers: &[WorkerSpec]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5}  {:<24}  {:<21}  {:>10}  {:>10}  {:>10}  {:>10}  {:>9}",
        "stage", "device", "layers", "weights", "KV", "scratch", "free after", "ms/token"
    );
    for (i, s) in p.stages.iter().enumerate() {
        let w = &workers[s.worker];
        let mut device = format!(
            "{} {} {}",
            w.name,
            w.backend.name(),
            format_bytes(w.free_bytes)
        );
        if w.host != w.name {
            device = format!("{device} @{}", w.host);
        }
        let mut layers = format!("{}-{} ({})", s.first_layer, s.end_layer - 1, s.n_layers());
        if s.has_embedding {
            layers.push_str(" +emb");
        }
        if s.has_head {
            layers.push_str(" +head");
        }
        let _ = writeln!(
            out,
            "{i:<5}  {device:<24}  {layers:<21}  {:>10}  {:>10}  {:>10}  {:>10}  {:>9.2}",
            format_bytes(s.weight_bytes),
            format_bytes(s.kv_bytes),
            format_bytes(s.scratch_bytes),
            format_bytes(s.free_after),
            s.time_per_token_s * 1e3
        );
    }
    let unused: Vec<&str> = (0..workers.len())
        .filter(|i| !p.stages.iter().any(|s| s.worker == *i))
        .map(|i| workers[i].name.as_str())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(
            out,
            "unused:  {} (not needed; each hop costs time)",
            unused.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "est. time per token: {:.2} ms (stages + hops){}",
        p.est_time_per_token_s * 1e3,
        if p.bandwidth_measured {
            ""
        } else {
            " (no measured bandwidths: equal speeds assumed, relative only)"
        }
    );
    out
}
