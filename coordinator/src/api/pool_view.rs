//! `GET /v1/pool`: what the pool is doing, for the web page and for
//! operators: per model its state, throughput and failovers, and per stage
//! the worker, its layer range, memory, KV use and the link time from the
//! coordinator (one `Health` round trip, measured now).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use strata_proto::v1;

use super::error::ApiError;
use super::server::AppState;
use crate::engine::{Engine, StageView};

/// A stage slower than this to answer `Health` is shown as not answering.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn pool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.authorize(&headers)?;
    let mut models = Vec::new();
    for entry in st.model_entries() {
        models.push(
            model_json(
                &entry.id,
                &entry.state,
                entry.message,
                entry.engine.as_ref(),
            )
            .await,
        );
    }
    Ok(axum::Json(json!({ "object": "pool", "models": models })).into_response())
}

/// One model's state, and its pipeline when it has one.
pub(super) async fn model_json(
    id: &str,
    state: &str,
    message: Option<String>,
    engine: Option<&Engine>,
) -> Value {
    let Some(engine) = engine else {
        return json!({"id": id, "state": state, "message": message, "stages": []});
    };
    let s = engine.stats();
    let views = s.stage_views();
    let mut stages = Vec::with_capacity(views.len());
    for v in &views {
        stages.push(stage_json(v).await);
    }
    let recovering = s.recovering();
    json!({
        "id": id,
        "state": if recovering.is_some() { "recovering" } else { state },
        "message": recovering.or(message),
        "n_layers": views.last().map_or(0, |v| v.end_layer),
        "failovers": s.failovers(),
        "sequences_live": s.live(),
        "requests_queued": s.queued(),
        "generated_tokens": s.generated_tokens(),
        "tokens_per_second": s.tokens_per_second(),
        "stages": stages,
    })
}

pub(super) async fn stage_json(v: &StageView) -> Value {
    let mut out = json!({
        "addr": v.addr,
        "first_layer": v.first_layer,
        "end_layer": v.end_layer,
        "kv_type": v.kv_type,
        "backend": v.backend,
        "device_name": v.device_name,
        "memory_total_bytes": v.total_memory_bytes,
        "memory_offered_bytes": v.offered_memory_bytes,
        "memory_planned_bytes": v.planned_bytes,
        "est_tokens_per_second": if v.est_time_per_token_s > 0.0 { 1.0 / v.est_time_per_token_s } else { 0.0 },
    });
    if let Some(link) = v.link {
        // The coordinator's link to this stage.
        out["link_latency_us"] = json!(link.latency_s * 1e6);
        out["link_mbit_per_s"] = json!(link.bandwidth_bytes_per_s * 8e-6);
    }
    if let Some(link) = v.next_link {
        // Measured by this stage's worker: what its hop to the next costs.
        out["next_link_latency_us"] = json!(link.latency_s * 1e6);
        out["next_link_mbit_per_s"] = json!(link.bandwidth_bytes_per_s * 8e-6);
    }
    let started = Instant::now();
    let reply = tokio::time::timeout(
        HEALTH_TIMEOUT,
        v.client.clone().health(v1::HealthRequest {}),
    )
    .await;
    let link_ms = started.elapsed().as_secs_f64() * 1e3;
    match reply {
        Ok(Ok(h)) => {
            let h = h.into_inner();
            out["link_ms"] = json!(link_ms);
            out["status"] = json!(health_status(h.status));
            out["kv_blocks_used"] = json!(h.kv_blocks_used);
            out["kv_blocks_free"] = json!(h.kv_blocks_free);
            out["kv_blocks_cached"] = json!(h.kv_blocks_cached);
            out["sequences_live"] = json!(h.live_sequences);
            // Measured on the stage: positions per second of its compute.
            out["tokens_run"] = json!(h.tokens_run);
            out["compute_seconds"] = json!(h.compute_seconds);
            // Frames sent on to the next stage in this process / over the network.
            out["frames_sent_local"] = json!(h.frames_sent_local);
            out["frames_sent_remote"] = json!(h.frames_sent_remote);
            out["frames_sent_quic"] = json!(h.frames_sent_quic);
            out["frames_sent_tcp"] = json!(h.frames_sent_tcp);
            out["tokens_per_second"] = json!(if h.compute_seconds > 0.0 {
                h.tokens_run as f64 / h.compute_seconds
            } else {
                0.0
            });
        }
        Ok(Err(e)) => out["error"] = json!(strata_proto::link::status_text(&e)),
        Err(_) => {
            out["error"] = json!(format!(
                "no answer within {} ms",
                HEALTH_TIMEOUT.as_millis()
            ))
        }
    }
    out
}

fn health_status(status: i32) -> &'static str {
    use v1::health_reply::Status;
    match Status::try_from(status) {
        Ok(Status::Idle) => "idle",
        Ok(Status::Loading) => "loading",
        Ok(Status::Ready) => "ready",
        Ok(Status::Failed) => "failed",
        _ => "unknown",
    }
}
