//! The OpenAI-compatible HTTP API: request validation and error shapes.
//! The routes that serve them arrive with the serving loop.

pub mod error;
pub mod request;

pub use error::ApiError;
pub use request::{ChatRequest, CompletionRequest, GenerationParams};
