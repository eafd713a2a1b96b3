//! strata-coordinator: placement, the pool and its failover, scheduling and
//! the OpenAI API.

pub mod api;
pub mod cluster;
pub mod engine;
pub mod planner;
pub mod pool;
pub mod scheduler;
pub mod serve;
pub mod swap;
