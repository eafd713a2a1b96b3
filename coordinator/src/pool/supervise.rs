//! The supervisor: watches the attached pipeline (stage health every
//! [`WATCH_INTERVAL`], and the loop's own loss reports), and rebuilds it
//! over the workers that answer when a stage is lost, or when a lost worker
//! comes back and the planner would use it. While the model does not fit on
//! what is left, requests get a 503 that names the lost workers, and it
//! keeps trying.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_proto::v1;
use tokio::sync::mpsc;

use super::{stage_views, within, Pool, Probed, Survey};
use crate::cluster::{LoadEvent, StageAssignment};
use crate::engine::{Engine, PipelineLost};

/// How often stages are asked for their health, and a rebuild is retried.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// A worker that comes back measures its links within this, or is planned
/// by the coordinator's links.
const RETURN_MEASURE_LIMIT: Duration = Duration::from_secs(5);

/// The attached pipeline and the workers around it.
pub struct Attached {
    pub stages: Vec<StageAssignment>,
    pub epoch: u64,
    /// The survey it was planned from: idle workers it does not use are
    /// spares, and lost ones are watched for their return.
    pub survey: Survey,
}

/// Runs for the life of the server.
pub async fn supervise(
    mut pool: Pool,
    engine: Engine,
    mut losses: mpsc::UnboundedReceiver<PipelineLost>,
    mut now: Attached,
    mut on_event: impl FnMut(&LoadEvent) + Send,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A stage found failing is not probed again by the first survey.
        let mut silent = BTreeMap::new();
        let why = tokio::select! {
            l = losses.recv() => match l {
                Some(l) if l.epoch == now.epoch => l.why,
                Some(_) => continue,
                None => return,
            },
            _ = tick.tick() => match unhealthy_stage(&now.stages).await {
                Some((addr, why)) => {
                    silent.insert(addr, why.clone());
                    why
                }
                None => match returned(&mut pool, &mut now).await {
                    Some(why) => why,
                    None => continue,
                },
            },
        };
        let started = Instant::now();
        tracing::warn!("rebuilding the pipeline: {why}");
        engine.detach(why.clone());
        engine
            .stats()
            .set_recovering(Some(format!("rebuilding the pipeline: {why}")));
        now = rebuild(&mut pool, &engine, &why, silent, &mut on_event).await;
        let views = stage_views(&now.stages, pool.settings().kv_type);
        let names: Vec<String> = views.iter().map(|v| v.label()).collect();
        tracing::info!(
            "pipeline rebuilt in {:.1} s over {} stage(s): {}",
            started.elapsed().as_secs_f64(),
            now.stages.len(),
            names.join(", ")
        );
        engine.stats().set_stages(views);
        engine.stats().set_recovering(None);
    }
}

/// Surveys, plans, loads and attaches until it works. While the model does
/// not fit, the engine answers 503 with the reason.
async fn rebuild(
    pool: &mut Pool,
    engine: &Engine,
    why: &str,
    mut silent: BTreeMap<String, String>,
    on_event: &mut impl FnMut(&LoadEvent),
) -> Attached {
    loop {
        let survey = pool.survey(&std::mem::take(&mut silent)).await;
        match pool.plan(&survey.alive) {
            Err(e) => {
                engine.fail(format!(
                    "the pool lost worker(s) {}: {why}; the {} worker(s) left cannot hold the model: {e}. Restart the lost worker(s) or add one with `--worker`; requests resume once the model fits",
                    survey.lost_note(),
                    survey.alive.len()
                ));
            }
            Ok((stages, shown)) => {
                tracing::info!("new placement:\n{shown}");
                match pool.load(&stages, |e| on_event(&e)).await {
                    Err(e) => tracing::warn!("loading the new placement: {e}"),
                    Ok(()) => {
                        let stage0 = &stages[0].worker;
                        match engine.attach(pool.stage_links(&stages).await).await {
                            Ok(epoch) => {
                                return Attached {
                                    stages,
                                    epoch,
                                    survey,
                                }
                            }
                            Err(e) => tracing::warn!(
                                "opening the data stream to stage 0 ({}): {}",
                                stage0.addr,
                                e.message()
                            ),
                        }
                    }
                }
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// The first stage that can no longer serve, and why: it does not answer
/// in time, is unreachable, or no longer holds its layers.
async fn unhealthy_stage(stages: &[StageAssignment]) -> Option<(String, String)> {
    for st in stages {
        let mut client = st.worker.client.clone();
        let why = match within(client.health(v1::HealthRequest {})).await {
            Err(e) => Some(e),
            Ok(Err(e)) => Some(format!(
                "is unreachable: {}",
                strata_proto::link::status_text(&e)
            )),
            Ok(Ok(h)) => {
                let h = h.into_inner();
                let holds = h.layers.is_some_and(|l| {
                    l.first as usize == st.range.first && l.end as usize == st.range.end
                });
                (h.status != v1::health_reply::Status::Ready as i32 || !holds)
                    .then(|| format!("no longer holds its layers ({})", h.message))
            }
        };
        if let Some(w) = why {
            let why = format!("worker {} (layers {}) {w}", st.worker.addr, st.range);
            return Some((st.worker.addr.clone(), why));
        }
    }
    None
}

/// A lost worker that answers again becomes a spare; when the planner
/// would place layers on it, the reason to rebuild.
async fn returned(pool: &mut Pool, now: &mut Attached) -> Option<String> {
    let addrs: Vec<String> = now.survey.lost.keys().cloned().collect();
    for addr in addrs {
        let handle = match pool.probe_idle(&addr, &now.survey.alive).await {
            Ok(Probed::Idle(handle)) => handle,
            Ok(Probed::Same(first)) => {
                now.survey.lost.remove(&addr);
                now.survey.same.insert(addr, first);
                continue;
            }
            Err(_) => continue,
        };
        tracing::info!("worker {addr} answers again");
        now.survey.lost.remove(&addr);
        now.survey.alive.push(handle);
        // Bounded: the loop watches the serving stages meanwhile.
        let measured = pool.measure_links_of(&mut now.survey.alive, &addr);
        if tokio::time::timeout(RETURN_MEASURE_LIMIT, measured)
            .await
            .is_err()
        {
            tracing::warn!(
                "worker {addr}: its links not measured within {} s",
                RETURN_MEASURE_LIMIT.as_secs()
            );
        }
        let current: Vec<(String, usize, usize)> = placement(&now.stages);
        // Planned without what the workers saved on disk: the serving ones'
        // lists are from before they served, and a tie-break is no reason
        // to stop every stream for a reload.
        let mut unsaved = now.survey.alive.clone();
        unsaved.iter_mut().for_each(|w| w.caps.saved_layers.clear());
        match pool.plan(&unsaved) {
            Ok((stages, _)) if placement(&stages) != current => {
                return Some(format!("worker {addr} is back: planning it in again"));
            }
            _ => tracing::info!("worker {addr} is a spare: the placement stays"),
        }
    }
    // Box-mates its probe named: probed on the next round.
    for mate in pool.box_mates().to_vec() {
        let known =
            now.survey.alive.iter().any(|w| w.addr == mate) || now.survey.same.contains_key(&mate);
        if !known && !now.survey.lost.contains_key(&mate) {
            now.survey.lost.insert(mate, "not probed yet".into());
        }
    }
    None
}

fn placement(stages: &[StageAssignment]) -> Vec<(String, usize, usize)> {
    stages
        .iter()
        .map(|s| (s.worker.addr.clone(), s.range.first, s.range.end))
        .collect()
}
