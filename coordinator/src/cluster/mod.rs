//! The workers of a cluster: connect, ask what they offer, place the model on
//! them and load each stage's slice (pushing the tensors a worker lacks).

mod link_probe;
mod load;
mod push;

pub use link_probe::{measure_link, snapped};
pub use load::{
    connect_workers, link_or_warn, load_stages, worker_specs, ClusterError, LoadEvent, LoadOptions,
    StageAssignment, WorkerHandle,
};
pub use push::{push_slice, CHUNK_BYTES};
