//! strata-coordinator: placement, scheduling and the OpenAI API (arrives with the multi-worker issue).

pub mod api;
pub mod cluster;
pub mod engine;
pub mod planner;
pub mod scheduler;
pub mod serve;
