//! The workers of a cluster: connect, ask what they offer, place the model on
//! them and load each stage's slice (pushing the tensors a worker lacks).

mod link_probe;
mod load;
mod push;

pub use link_probe::{host_of, link_or_warn, measure_peer_links, PeerLinks};
pub use load::{
    connect_workers, kv_type_to_proto, load_stages, worker_specs, ClusterError, LoadEvent,
    LoadOptions, StageAssignment, WorkerHandle,
};
pub use push::{push_slice, CHUNK_BYTES};
