//! strata-coordinator: placement, scheduling and the OpenAI API (arrives with the multi-worker issue).
