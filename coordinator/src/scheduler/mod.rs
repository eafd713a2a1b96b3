//! Continuous batching: which tokens of which sequences go into the next
//! micro-batch. Pure decisions over plain data; the serving loop that runs
//! them against the stages lives beside the transport.
//!
//! Every step, each decoding sequence of the micro-batch's group feeds its
//! last token, and what is left of the token budget goes to prompt chunks
//! (oldest request first), so a long prompt is processed a chunk at a time
//! and never stalls the others' decoding. With S stages the sequences are
//! split into S groups, one micro-batch in flight per group, so every stage
//! has work when there are enough requests.

mod batch;

pub use batch::{plan_step, BatchPolicy, SeqPhase, SeqProgress, StepEntry};
