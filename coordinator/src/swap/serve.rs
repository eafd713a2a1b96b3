//! `strata serve --config`: check the groups, then answer HTTP for every
//! model of the file, loading each on its first request.

use std::sync::Arc;

use super::{group_check, ModelSwap};
use crate::api::{router, AppState};
use crate::serve::{LoadReporter, ServeError};

/// Serves until `shutdown` completes. A group that does not fit on the
/// pool is refused before the port opens.
pub async fn serve_models(
    swap: Arc<ModelSwap>,
    mut reporter: impl LoadReporter + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    group_check::check_groups(&swap)
        .await
        .map_err(ServeError::Load)?;
    let base = &swap.base;
    let state = AppState::with_limits(String::new(), base.api_key.clone(), base.http_limits);
    state.set_swap(swap.clone());
    let listener = tokio::net::TcpListener::bind(base.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: base.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: base.listen,
        source,
    })?;
    if !bound.ip().is_loopback() && base.api_key.is_none() {
        tracing::warn!("listening on {bound} beyond this machine without --api-key");
    }
    let names: Vec<&str> = swap.config.models.iter().map(|m| m.name.as_str()).collect();
    tracing::info!("models (loaded on first request): {}", names.join(", "));
    let ttl = tokio::spawn(swap.clone().run_ttl());
    let app = router(state);
    let limits = base.http_limits;
    let http = tokio::spawn(crate::api::serve_http(listener, app, limits, shutdown));
    reporter.ready(bound);
    let done = http.await;
    ttl.abort();
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Listen {
            addr: bound,
            source: e,
        }),
        Err(e) => Err(ServeError::Load(format!("the HTTP server task: {e}"))),
    }
}
