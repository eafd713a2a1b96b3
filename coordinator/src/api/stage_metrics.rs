//! The per-stage part of `GET /metrics`: each stage of the attached
//! pipeline as `/v1/pool` reads it (one live `Health` per stage), in
//! Prometheus text, labelled by its index in the pipeline and its worker.

use std::fmt::Write;

use serde_json::Value;

use super::pool_view::stage_json;
use crate::engine::StageView;

/// (metric, kind, help, the `/v1/pool` stage field it reports).
const STAGE_METRICS: [(&str, &str, &str, &str); 9] = [
    (
        "stage_first_layer",
        "gauge",
        "First layer of the stage.",
        "first_layer",
    ),
    (
        "stage_end_layer",
        "gauge",
        "Layer after the stage's last.",
        "end_layer",
    ),
    (
        "stage_kv_blocks_used",
        "gauge",
        "KV blocks live sequences hold on the stage.",
        "kv_blocks_used",
    ),
    (
        "stage_kv_blocks_free",
        "gauge",
        "Free KV blocks on the stage.",
        "kv_blocks_free",
    ),
    (
        "stage_kv_blocks_cached",
        "gauge",
        "KV blocks the stage keeps for the prefix cache.",
        "kv_blocks_cached",
    ),
    (
        "stage_sequences_live",
        "gauge",
        "Sequences holding state on the stage.",
        "sequences_live",
    ),
    (
        "stage_tokens_run_total",
        "counter",
        "Positions the stage has computed.",
        "tokens_run",
    ),
    (
        "stage_compute_seconds_total",
        "counter",
        "Seconds the stage has computed.",
        "compute_seconds",
    ),
    (
        "stage_link_seconds",
        "gauge",
        "Round trip of the Health read just made to the stage.",
        "link_ms",
    ),
];

/// Prometheus lines for every stage: `strata_stage_up` (1 when it answered
/// and is ready), the fields above, and `strata_stage_frames_sent_total`
/// by path (`local`: to a stage in the same process; `remote`: over the
/// network).
pub(super) async fn stage_metrics(views: &[StageView]) -> String {
    let mut stages = Vec::with_capacity(views.len());
    for v in views {
        stages.push(stage_json(v).await);
    }
    let labels: Vec<String> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "stage=\"{i}\",addr=\"{}\",backend=\"{}\",kv_type=\"{}\"",
                escaped(&s["addr"]),
                escaped(&s["backend"]),
                escaped(&s["kv_type"])
            )
        })
        .collect();
    let mut out = String::new();
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(
            out,
            "# HELP strata_{name} {help}\n# TYPE strata_{name} {kind}"
        );
    };
    header(
        &mut out,
        "stage_up",
        "gauge",
        "1 while the stage answers Health and is ready.",
    );
    for (s, l) in stages.iter().zip(&labels) {
        let up = u8::from(s["status"] == "ready");
        let _ = writeln!(out, "strata_stage_up{{{l}}} {up}");
    }
    for (name, kind, help, field) in STAGE_METRICS {
        header(&mut out, name, kind, help);
        for (s, l) in stages.iter().zip(&labels) {
            let Some(v) = s[field].as_f64() else { continue };
            // `link_ms` is in milliseconds; Prometheus wants seconds.
            let v = if field == "link_ms" { v / 1e3 } else { v };
            let _ = writeln!(out, "strata_{name}{{{l}}} {v}");
        }
    }
    header(
        &mut out,
        "stage_frames_sent_total",
        "counter",
        "Frames the stage sent on to the next, by path.",
    );
    for (s, l) in stages.iter().zip(&labels) {
        for path in ["local", "remote"] {
            if let Some(n) = s[format!("frames_sent_{path}")].as_u64() {
                let _ = writeln!(
                    out,
                    "strata_stage_frames_sent_total{{{l},path=\"{path}\"}} {n}"
                );
            }
        }
    }
    out
}

/// A label value as Prometheus' text format escapes it.
fn escaped(v: &Value) -> String {
    v.as_str()
        .unwrap_or_default()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
