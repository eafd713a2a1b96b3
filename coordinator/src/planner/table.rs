//! A plan as the tables `strata plan` and `strata serve` print: what each
//! stage holds, what a decoded token reads on each, and (for `strata plan`)
//! what every column means.

use std::fmt::Write;

use super::units::format_bytes;
use super::{Plan, PlanRequest, WorkerSpec};

/// Two tables, one row per stage: memory held (device, layers, weights,
/// experts among them, KV, recurrent state when the model has DeltaNet
/// layers, scratch, total, free after) and bytes read per
/// decoded token (weights with active experts only, KV, time); then unused
/// workers and the estimated time per token.
pub fn table(p: &Plan, workers: &[WorkerSpec]) -> String {
    let mut out = String::new();
    let b = format_bytes;
    // The state column only where there is state: an attention-only
    // model's table stays as it was.
    let has_state = p.stages.iter().any(|s| s.state_bytes > 0);
    let state_column = |v: &str| {
        if has_state {
            format!("  {v:>10}")
        } else {
            String::new()
        }
    };
    let _ = writeln!(out, "held in memory:");
    let _ = writeln!(
        out,
        "{:<5}  {:<24}  {:<21}  {:>10}  {:>10}  {:>10}{}  {:>10}  {:>10}  {:>10}",
        "stage",
        "device",
        "layers",
        "weights",
        "experts",
        "KV",
        state_column("state"),
        "scratch",
        "total",
        "free after"
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
            "{i:<5}  {device:<24}  {layers:<21}  {:>10}  {:>10}  {:>10}{}  {:>10}  {:>10}  {:>10}",
            b(s.weight_bytes),
            b(s.expert_bytes),
            b(s.kv_bytes),
            state_column(&b(s.state_bytes)),
            b(s.scratch_bytes),
            b(s.total_bytes()),
            b(s.free_after),
        );
    }
    let _ = writeln!(out, "read per decoded token:");
    let _ = writeln!(
        out,
        "{:<5}  {:>14}  {:>10}  {:>10}  {:>9}",
        "stage", "weights read", "KV read", "total", "ms/token"
    );
    for (i, s) in p.stages.iter().enumerate() {
        let _ = writeln!(
            out,
            "{i:<5}  {:>14}  {:>10}  {:>10}  {:>9.2}",
            b(s.read_weight_bytes_per_token),
            b(s.read_kv_bytes_per_token),
            b(s.read_weight_bytes_per_token + s.read_kv_bytes_per_token),
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
    // Kept only where no order tried avoids them (`Plan::blocked_hops`).
    for (i, pair) in p.stages.windows(2).enumerate() {
        let (from, to) = (&workers[pair[0].worker], &workers[pair[1].worker]);
        if from.unreachable.contains(&to.name) {
            let _ = writeln!(
                out,
                "blocked: stage {i} -> {}: {} could not connect to {} when asked",
                i + 1,
                from.name,
                to.name
            );
        }
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

/// What each column of [`table`] is, with the request's numbers.
pub fn legend(req: &PlanRequest) -> String {
    let p = &req.profile;
    let load = req.stage_load();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  weights     layer weights held (+emb: the token embedding; +head: final norm and output head{})",
        if p.tied_embeddings {
            ", a second copy of the tied embedding"
        } else {
            ""
        }
    );
    if p.is_moe() {
        let _ = writeln!(
            out,
            "  experts     of the weights, the routed experts: all {} are held, a token reads {} of them",
            p.expert_count, p.expert_used_count
        );
    } else {
        let _ = writeln!(
            out,
            "  experts     routed-expert weights (none: a dense model)"
        );
    }
    let state_per_seq = p.state_bytes_per_seq();
    let _ = writeln!(
        out,
        "  KV          key/value cache: {} tokens x {} sequence(s) in {}-token blocks ({} positions) on every {}layer; \
         a sliding-window layer keeps per sequence two rings (its own and the prefix cache's snapshot) of its window beside a batch ({} tokens)",
        req.ctx_size,
        req.parallel,
        strata_model::profile::KV_BLOCK_TOKENS,
        load.kv_tokens_allocated(),
        if state_per_seq > 0 { "attention " } else { "" },
        load.batch_tokens,
    );
    if state_per_seq > 0 {
        let _ = writeln!(
            out,
            "  state       recurrent state of the DeltaNet layers (conv + SSM, f32): {} per sequence \
             (its live state and the prefix cache's snapshot) x {} sequence(s) over all layers, \
             the same at any context (these layers hold no KV)",
            format_bytes(state_per_seq),
            req.parallel,
        );
    }
    let _ = writeln!(
        out,
        "  scratch     f32 activations of a {}-token batch (+ {} row(s) of logits on the last stage)",
        load.scratch_tokens(),
        load.sequences
    );
    let _ = writeln!(
        out,
        "  total       what the worker checks against its memory when it loads the stage"
    );
    let _ = writeln!(
        out,
        "  free after  the device's free memory once loaded (the safety margin is part of it)"
    );
    let _ = writeln!(
        out,
        "  weights read  what one decoded token reads: dense weights{}, the head on the last stage; \
         with the KV read, this sets decode speed, not the file size",
        if p.is_moe() {
            " and only the experts it is routed to"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  KV read     one sequence's KV at full context (a sliding layer reads its window)"
    );
    let _ = write!(
        out,
        "  ms/token    bytes read / the device's bandwidth (hops, the coordinator's included, add to the estimate)"
    );
    out
}
