//! At start: does each group of the models file fit on the pool at once?
//! Asks the workers what they offer (without loading anything) and plans
//! the group's models together ([`plan_together`]).

use std::time::Duration;

use strata_model::arch::ModelSpec;
use strata_model::GgufFile;
use strata_proto::{v1, Trust};

use super::{ModelSwap, Workers};
use crate::cluster::{worker_specs, WorkerHandle};
use crate::planner::group_fit::{plan_together, GroupMember, Sharing};
use crate::planner::WorkerSpec;
use crate::pool::{plan_request, PoolSettings};

const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// `Err` names the first group that does not fit and why.
pub async fn check_groups(swap: &ModelSwap) -> Result<(), String> {
    if swap.config.groups.is_empty() {
        return Ok(());
    }
    let (pool, sharing) = pool_specs(swap).await?;
    for (group, members) in &swap.config.groups {
        let mut planned = Vec::new();
        for name in members {
            let i = swap
                .config
                .find(name)
                .ok_or_else(|| format!("group {group:?}: {name:?}"))?;
            planned.push(member(swap, i, &pool).await?);
        }
        let plans = plan_together(&planned, &pool, sharing)
            .map_err(|e| format!("group {group:?} does not fit on the pool at once: {e}"))?;
        let need: u64 = plans
            .iter()
            .flat_map(|p| &p.stages)
            .map(|s| s.total_bytes())
            .sum();
        tracing::info!(
            "group {group:?}: {} fit together ({} MiB)",
            members.join(", "),
            need >> 20
        );
    }
    Ok(())
}

/// One model as the planner sees it, on the workers it may use.
async fn member(swap: &ModelSwap, i: usize, pool: &[WorkerSpec]) -> Result<GroupMember, String> {
    let entry = swap.config.models[i].clone();
    let settings = PoolSettings {
        model_path: entry.file.clone(),
        workers: Vec::new(),
        token: String::new(),
        trust: Trust::Insecure,
        local_workers: Vec::new(),
        ctx_size: entry.ctx_size,
        parallel: entry.parallel,
        batch_tokens: entry.batch_tokens,
        act_dtype: swap.base.act_dtype,
        kv_type: entry.kv_type,
        transport: swap.base.transport,
        box_mates: false,
    };
    let path = entry.file.clone();
    let request = tokio::task::spawn_blocking(move || {
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = GgufFile::open(&path).map_err(|e| err(&e))?;
        let hp = ModelSpec::from_gguf(&file).map_err(|e| err(&e))?;
        Ok::<_, String>(plan_request(&settings, &file, &hp))
    })
    .await
    .map_err(|e| e.to_string())??;
    let workers = match &swap.workers {
        Workers::Embedded(_) => vec![0],
        Workers::Remote { addrs, .. } => {
            let allowed = swap.allowed_workers(i, addrs);
            (0..pool.len())
                .filter(|&w| allowed.contains(&pool[w].name))
                .collect()
        }
    };
    Ok(GroupMember {
        name: entry.name,
        request,
        workers,
    })
}

/// What the pool offers: the memory of this machine as an embedded worker
/// sees it (one started and stopped to ask), or each remote worker's.
async fn pool_specs(swap: &ModelSwap) -> Result<(Vec<WorkerSpec>, Sharing), String> {
    match &swap.workers {
        Workers::Embedded(launcher) => {
            let first = swap.config.models[0].file.clone();
            let w = launcher.launch(first).await?;
            let caps = capabilities(&w.addr, &w.token, Some(w.pin)).await;
            let _ = w.stop.send(());
            let handle = caps?;
            Ok((worker_specs(&[handle]), Sharing::Memory))
        }
        Workers::Remote {
            addrs,
            token,
            trust,
        } => {
            let mut handles = Vec::new();
            for addr in addrs {
                let pin = trust.pin(addr).map_err(|e| e.to_string())?;
                handles.push(capabilities(addr, token, pin).await?);
            }
            Ok((worker_specs(&handles), Sharing::Workers))
        }
    }
}

async fn capabilities(
    addr: &str,
    token: &str,
    pin: Option<strata_proto::Fingerprint>,
) -> Result<WorkerHandle, String> {
    let ask = async {
        let mut client = strata_proto::connect(addr, token, pin)
            .await
            .map_err(|e| e.to_string())?;
        let caps = client
            .capabilities(v1::CapabilitiesRequest {})
            .await
            .map_err(|e| strata_proto::link::status_text(&e))?
            .into_inner();
        Ok::<_, String>(WorkerHandle {
            addr: addr.to_string(),
            pin,
            client,
            caps,
            link: None,
            peer_links: Default::default(),
            unreachable: Default::default(),
        })
    };
    tokio::time::timeout(ASK_TIMEOUT, ask)
        .await
        .map_err(|_| {
            format!(
                "worker {addr} did not answer within {} s",
                ASK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("worker {addr}: {e}"))
}
