//! strata-coordinator: placement, scheduling and the OpenAI API (arrives with the multi-worker issue).

pub mod api;
pub mod planner;
pub mod scheduler;
