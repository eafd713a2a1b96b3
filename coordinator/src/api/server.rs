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
    ready: OnceLock<Ready>,
    phase: Mutex<Phase>,
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
        let _ = self.ready.set(ready);
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Ready;
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The ready state, or 503 saying why not.
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        match (self.ready.get(), self.phase()) {
            (Some(r), Phase::Ready) => match r.engine.stats().failure() {
                None => Ok(r),
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
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{"id": st.model_name, "object": "model", "created": 0, "owned_by": "strata"}],
    }))
    .into_response())
}

/// 200 when serving, 503 while loading or after a failure. With
/// `--api-key`, a caller without the key gets the status word only (a bare
/// liveness check): reasons name workers and addresses.
async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let detail = st.authorize(&headers).is_ok();
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
        Some(r) => r.engine.stats().prometheus(),
        None => "# HELP strata_up 1 while the pipeline can serve.\n# TYPE strata_up gauge\nstrata_up 0\n".to_string(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
