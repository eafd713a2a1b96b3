//! The worker services running in this process (`strata serve --devices`,
//! `strata worker --gpus`), by listen address. A stage whose next stage is one of them hands frames
//! over in memory instead of over gRPC (`downstream.rs`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, Weak};

use strata_proto::Fingerprint;

use super::{Shared, WorkerService};

/// Weak: a registered service that shuts down is not kept alive here.
fn registry() -> &'static Mutex<HashMap<String, Weak<Shared>>> {
    static LOCAL: OnceLock<Mutex<HashMap<String, Weak<Shared>>>> = OnceLock::new();
    LOCAL.get_or_init(Default::default)
}

/// Keeps a service registered; unregisters it when dropped.
pub struct LocalStage {
    addr: String,
}

impl Drop for LocalStage {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.addr);
    }
}

impl WorkerService {
    /// Lets stages of this process reach this one at `addr` (the address it
    /// listens on, as a coordinator names it) without the network.
    pub fn register_local(&self, addr: &str) -> LocalStage {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), std::sync::Arc::downgrade(&self.shared));
        LocalStage {
            addr: addr.to_string(),
        }
    }

    /// [`Self::register_local`] by port alone, for a service listening on
    /// every address of the host (`strata worker --gpus`): the coordinator
    /// names it by an address this process cannot know.
    pub fn register_local_port(&self, port: u16) -> LocalStage {
        self.register_local(&any_host(port))
    }
}

fn any_host(port: u16) -> String {
    format!("*:{port}")
}

/// This process's `Capabilities.process_id`: random, so that two processes
/// that share a certificate (one state directory on several boxes) are
/// still told apart.
pub fn process_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| rand::random::<u64>() | 1)
}

/// The service of this process listening on `addr`, if it is the one the
/// coordinator pinned (`pin`; `None` for a plaintext one): a pin for another
/// certificate means another process, reached over the network. A service
/// registered by port alone is found by any host with that port only when
/// the coordinator says the next stage runs in this process
/// (`next_process`, its `Capabilities.process_id`).
pub fn find(addr: &str, pin: Option<Fingerprint>, next_process: u64) -> Option<WorkerService> {
    let by_port = addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|_| next_process == process_id())
        .map(any_host);
    let shared = {
        let registry = registry().lock().unwrap_or_else(|p| p.into_inner());
        registry
            .get(addr)
            .or_else(|| by_port.and_then(|key| registry.get(&key)))?
            .upgrade()?
    };
    let own = shared.config.identity.as_ref().map(|id| id.fingerprint());
    (own == pin).then_some(WorkerService { shared })
}
