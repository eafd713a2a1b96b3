//! The OpenAI-compatible HTTP API: request validation, error shapes, the
//! routes, and the text side of generation (detokenizing, stop strings).

pub mod error;
mod generate;
pub mod http;
pub mod openai;
mod pool_view;
pub mod request;
pub mod server;
mod stage_metrics;
pub mod stop;
pub mod structured;
pub mod text;
mod tool_reply;
pub mod tools;
mod web;

pub use error::ApiError;
pub use http::{serve_http, HttpLimits};
pub use request::{ChatRequest, CompletionRequest, GenerationParams};
pub use server::{router, AppState, Phase, Ready};
