//! The HTTP server: routes, the API key, and the state that turns ready
//! once the stages are loaded (503 until then).

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use strata_model::chat::ChatTemplate;
use strata_model::tokenizer::Tokenizer;

use super::error::ApiError;
use super::http::HttpLimits;
use crate::engine::Engine;

/// What serving needs once the model is up.
pub struct Ready {
    /// The model's name in responses.
    pub name: String,
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    /// Request-time grammar compiles (a 400 for a schema we cannot honour).
    pub grammars: Arc<super::structured::GrammarCheck>,
}

/// Where the server is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
    Loading(String),
    Ready,
    Failed(String),
}

pub struct AppState {
    pub model_name: String,
    pub api_key: Option<String>,
    /// How long a handler waits for a request body to arrive.
    pub body_read_timeout: std::time::Duration,
    ready: OnceLock<Arc<Ready>>,
    phase: Mutex<Phase>,
    /// With `--config`: the models loaded on demand (then `ready` is unused).
    swap: OnceLock<Arc<crate::swap::ModelSwap>>,
}

impl AppState {
    pub fn new(model_name: String, api_key: Option<String>) -> Arc<Self> {
        Self::with_limits(model_name, api_key, HttpLimits::default())
    }

    pub fn with_limits(
        model_name: String,
        api_key: Option<String>,
        limits: HttpLimits,
    ) -> Arc<Self> {
        Arc::new(AppState {
            model_name,
            api_key,
            body_read_timeout: limits.body_read,
            ready: OnceLock::new(),
            phase: Mutex::new(Phase::Loading("starting".into())),
            swap: OnceLock::new(),
        })
    }

    /// Loading progress shown by `/health` and 503s.
    pub fn set_loading(&self, message: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Loading(message.into());
    }

    pub fn set_failed(&self, message: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Failed(message.into());
    }

    pub fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(Arc::new(ready));
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Ready;
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serve several models on demand (`strata serve --config`).
    pub fn set_swap(&self, swap: Arc<crate::swap::ModelSwap>) {
        let _ = self.swap.set(swap);
    }

    /// The model a request names (`None`: the default one), loaded: with a
    /// models file it is loaded now if it is not (the request waits), an
    /// unknown name is a 404; with one model, the name is not checked.
    pub async fn ready_for(&self, model: Option<&str>) -> Result<Arc<Ready>, ApiError> {
        match self.swap.get() {
            Some(swap) => swap.ready(model).await,
            None => self.ready(),
        }
    }

    /// The ready state, or 503 saying why not.
    pub fn ready(&self) -> Result<Arc<Ready>, ApiError> {
        match (self.ready.get(), self.phase()) {
            (Some(r), Phase::Ready) => match r.engine.stats().failure() {
                None => Ok(r.clone()),
                Some(why) => Err(ApiError::unavailable(format!("the pipeline failed: {why}"))),
            },
            (_, Phase::Loading(m)) => Err(ApiError::unavailable(format!("Loading model: {m}"))),
            (_, Phase::Failed(m)) => Err(ApiError::unavailable(format!(
                "the model failed to load: {m}"
            ))),
            (None, Phase::Ready) => Err(ApiError::unavailable("Loading model")),
        }
    }

    /// With `--api-key`, `Authorization: Bearer <key>` is required.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        match given {
            Some(g) if constant_time_eq(g.trim().as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One model as `/v1/models` and `/v1/pool` show it.
pub struct ModelEntry {
    pub id: String,
    /// "ready", "loading", "failed" (and with a config: "unloaded").
    pub state: String,
    pub message: Option<String>,
    /// The serving loop, while the model is loaded.
    pub engine: Option<Engine>,
}

impl AppState {
    /// Every model this server serves, with its state.
    pub fn model_entries(&self) -> Vec<ModelEntry> {
        if let Some(swap) = self.swap.get() {
            return swap.entries();
        }
        let (state, message) = match self.phase() {
            Phase::Loading(m) => ("loading", Some(m)),
            Phase::Ready => ("ready", None),
            Phase::Failed(m) => ("failed", Some(m)),
        };
        vec![ModelEntry {
            id: self.model_name.clone(),
            state: state.to_string(),
            message,
            engine: self.ready.get().map(|r| r.engine.clone()),
        }]
    }
}

/// Largest request body: a chat of ~1M tokens of text, far past any context.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// The OpenAI routes plus `/health` and `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(super::generate::chat_completions),
        )
        .route("/chat/completions", post(super::generate::chat_completions))
        .route("/v1/completions", post(super::generate::completions))
        .route("/completions", post(super::generate::completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/pool", get(super::pool_view::pool))
        .route("/", get(super::web::index))
        .route("/web/app.js", get(super::web::app_js))
        .route("/web/style.css", get(super::web::style_css))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        // axum's own 405 has an empty body; clients parse OpenAI's shape.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..ApiError::not_found(format!("{method} is not allowed on this route"))
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    st.authorize(&headers)?;
    // `state` (ready, loading, unloaded, failed) is ours; clients ignore it.
    let data: Vec<_> = st
        .model_entries()
        .into_iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": "strata", "state": m.state}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// 200 when serving, 503 while loading or after a failure. With
/// `--api-key`, a caller without the key gets the status word only (a bare
/// liveness check): reasons name workers and addresses.
async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let detail = st.authorize(&headers).is_ok();
    if st.swap.get().is_some() {
        // Models load on demand: the server is up whatever they do.
        let models: Vec<_> = st
            .model_entries()
            .into_iter()
            .map(|m| json!({"id": m.id, "state": m.state, "message": m.message}))
            .collect();
        let body = if detail {
            json!({"status": "ok", "models": models})
        } else {
            json!({"status": "ok"})
        };
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let (code, body) = match st.ready() {
        Ok(r) => {
            let s = r.engine.stats();
            // While a lost worker is replaced, requests wait (not fail).
            let recovering = s.recovering();
            let status = if recovering.is_some() {
                "recovering"
            } else {
                "ok"
            };
            let full = json!({
                "status": status,
                "message": recovering,
                "model": st.model_name,
                "stages": s.stages(),
                "sequences_live": s.live(),
                "requests_queued": s.queued(),
                "failovers": s.failovers(),
            });
            (
                StatusCode::OK,
                if detail {
                    full
                } else {
                    json!({"status": status})
                },
            )
        }
        Err(e) => {
            let status = match st.phase() {
                Phase::Loading(_) => "loading",
                _ => "error",
            };
            let full = json!({"status": status, "message": e.message, "error": {"code": 503, "message": e.message, "type": "unavailable_error"}});
            (
                StatusCode::SERVICE_UNAVAILABLE,
                if detail {
                    full
                } else {
                    json!({"status": status})
                },
            )
        }
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    let body = match st.ready.get() {
        Some(r) => {
            let stats = r.engine.stats();
            let stages = super::stage_metrics::stage_metrics(&stats.stage_views()).await;
            stats.prometheus() + &stages
        }
        None => "# HELP strata_up 1 while the pipeline can serve.\n# TYPE strata_up gauge\nstrata_up 0\n".to_string(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
