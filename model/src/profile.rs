//! Per-layer memory profile of a model.
