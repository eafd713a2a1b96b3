//! strata-worker: a stage runs a contiguous layer range of a model.
