//! `strata worker` serving: one stage, or one per device of a box
//! (`--gpus`), each on its own port, on one async runtime until Ctrl-C.
//! A box's stages know each other's ports (`Capabilities.sibling_ports`),
//! so a coordinator given the first finds the others, and they hand frames
//! to each other in memory (`local_stages.rs`).

use std::net::SocketAddr;

use super::{LocalStage, ServiceError, WorkerService};

/// Binds every stage's address (all before serving any, so a taken port
/// fails the start) and serves them until Ctrl-C.
pub fn serve_blocking(stages: Vec<(WorkerService, SocketAddr)>) -> Result<(), ServiceError> {
    if stages.is_empty() {
        return Err(ServiceError::Setup("no device to serve".into()));
    }
    // One async thread: a second one is woken for each task the first
    // wakes (a frame done, its send), two more sleeps and wake-ups a step
    // at ~50 µs each on a VM (docs/data-plane.md); the compute runs on
    // the stage threads, and disk work on the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("strata-rpc")
        .enable_all()
        .build()
        .map_err(|e| ServiceError::Setup(format!("starting the async runtime: {e}")))?;
    rt.block_on(async move {
        let mut bound = Vec::with_capacity(stages.len());
        for (i, (service, listen)) in stages.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                let which = if i == 0 {
                    String::new()
                } else {
                    format!(" for stage {i} ({})", service.shared.device_name)
                };
                ServiceError::Setup(format!("listening on {listen}{which}: {e}"))
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| ServiceError::Setup(e.to_string()))?;
            bound.push((service, listener, addr));
        }
        let ports: Vec<u16> = bound.iter().map(|(_, _, a)| a.port()).collect();
        let several = ports.len() > 1;
        let first = bound[0].2;
        let mut _local: Vec<LocalStage> = Vec::new();
        for (i, (service, _, addr)) in bound.iter().enumerate() {
            log_listening(service, i, *addr, first);
            if several {
                service.set_sibling_ports(
                    ports
                        .iter()
                        .copied()
                        .filter(|p| *p != addr.port())
                        .collect(),
                );
                _local.push(service.register_local_port(addr.port()));
            }
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut served = tokio::task::JoinSet::new();
        for (service, listener, _) in bound {
            let mut stopped = stopped.clone();
            served.spawn(service.serve(listener, async move {
                let _ = stopped.changed().await;
            }));
        }
        // Ctrl-C, or the first stage that ends (an error), stops them all;
        // each finishes what it serves, and the first error is returned.
        let mut result = Ok(());
        let mut stopping = false;
        loop {
            let ended = tokio::select! {
                _ = tokio::signal::ctrl_c(), if !stopping => None,
                ended = served.join_next() => match ended {
                    Some(ended) => Some(ended),
                    None => break,
                },
            };
            match ended {
                Some(ended) => {
                    let ended = ended.map_err(|e| ServiceError::Setup(e.to_string()));
                    if let Err(e) = ended.and_then(|r| r) {
                        tracing::error!("a stage of this worker stopped: {e}");
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
                None => tracing::info!("shutting down"),
            }
            if !stopping {
                stopping = true;
                let _ = stop.send(true);
            }
        }
        result
    })
}

/// The line to paste into `strata serve --worker` (the first stage's), or
/// where one more device of this box serves.
fn log_listening(service: &WorkerService, i: usize, addr: SocketAddr, first: SocketAddr) {
    let device = &service.shared.device_name;
    match (&service.shared.config.identity, i) {
        (Some(id), 0) => {
            tracing::info!("worker listening on {addr}#{} ({device})", id.fingerprint())
        }
        (None, 0) => {
            tracing::info!("worker listening on {addr} ({device})");
            tracing::warn!("--insecure: links to this worker are plaintext; anyone who can see the traffic gets the cluster token and the prompts");
        }
        _ => tracing::info!(
            "stage {i} of this box on {addr} ({device}): a coordinator that reaches {first} finds it"
        ),
    }
}
