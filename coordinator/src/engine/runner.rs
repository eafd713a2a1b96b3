//! The loop task: admits queued requests into sequence slots, sends one
//! micro-batch per idle group to stage 0, and turns replies into events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use strata_proto::{v1, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{EngineConfig, EngineStats, Event, FinishReason, GenerationRequest, Msg};
use crate::scheduler::{plan_step, SeqPhase, SeqProgress, StepEntry};

/// One live sequence.
struct Seq {
    id: u64,
    group: usize,
    /// Prompt then generated tokens.
    history: Vec<u32>,
    prompt_len: usize,
    /// Tokens of `history` in the stages' KV caches.
    cached: usize,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    /// Sent with the sequence's first frame.
    sampling: Option<v1::SamplingParams>,
    events: mpsc::UnboundedSender<Event>,
    in_flight: bool,
    /// Cancelled or finished: released once no batch carries it.
    retired: Option<Retire>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retire {
    Finished,
    Cancelled,
    Failed,
}

struct InFlight {
    group: usize,
    entries: Vec<StepEntry>,
}

struct Runner {
    config: EngineConfig,
    stats: Arc<EngineStats>,
    /// Live sequences in admission order.
    seqs: Vec<Seq>,
    queue: VecDeque<(u64, GenerationRequest, mpsc::UnboundedSender<Event>)>,
    in_flight: HashMap<u64, InFlight>,
    /// Micro-batch groups (one batch in flight each at most).
    groups: usize,
    next_batch: u64,
    frames: mpsc::Sender<v1::BatchFrame>,
    release_client: WorkerClient,
    /// For messages: which worker the data stream goes to.
    stage0_addr: String,
}

/// Opens the data stream to stage 0 and spawns the loop.
pub(super) async fn spawn(
    mut stage0: WorkerClient,
    stage0_addr: String,
    config: EngineConfig,
    msgs: mpsc::UnboundedReceiver<Msg>,
    stats: Arc<EngineStats>,
) -> Result<(), tonic::Status> {
    let groups = config.groups.max(1);
    let (frames, rx) = mpsc::channel(groups * 2);
    let replies = stage0.forward(ReceiverStream::new(rx)).await?.into_inner();
    let runner = Runner {
        config,
        stats,
        seqs: Vec::new(),
        queue: VecDeque::new(),
        in_flight: HashMap::new(),
        groups,
        next_batch: 1,
        frames,
        release_client: stage0,
        stage0_addr,
    };
    tokio::spawn(runner.run(msgs, replies));
    Ok(())
}

impl Runner {
    async fn run(
        mut self,
        mut msgs: mpsc::UnboundedReceiver<Msg>,
        replies: tonic::Streaming<v1::StageReply>,
    ) {
        let mut replies = Some(replies);
        loop {
            self.admit();
            self.launch().await;
            tokio::select! {
                m = msgs.recv() => match m {
                    Some(Msg::Submit(id, req, events)) => self.queue.push_back((id, req, events)),
                    Some(Msg::Cancel(id)) => self.cancel(id),
                    Some(Msg::Wake) => {}
                    None => break,
                },
                r = next_reply(&mut replies, &self.stage0_addr) => match r {
                    Ok(reply) => self.on_reply(reply),
                    Err(why) => {
                        replies = None;
                        self.fail_all(why);
                    }
                },
            }
        }
    }

    /// Moves queued requests into free sequence slots, each into the group
    /// with the fewest sequences.
    fn admit(&mut self) {
        if let Some(why) = self.stats.failure() {
            for (_, _, events) in self.queue.drain(..) {
                let _ = events.send(Event::Failed(why.clone()));
                self.stats.on_unqueue();
            }
            return;
        }
        while self.seqs.len() < self.config.max_sequences {
            let Some((id, req, events)) = self.queue.pop_front() else {
                break;
            };
            self.stats.on_admit();
            if events.is_closed() {
                self.stats.on_retire(true, false);
                continue;
            }
            let group = (0..self.groups)
                .min_by_key(|g| self.seqs.iter().filter(|s| s.group == *g).count())
                .unwrap_or(0);
            let room = self.config.ctx_size.saturating_sub(req.prompt.len());
            tracing::debug!(
                seq = id,
                group,
                prompt_tokens = req.prompt.len(),
                "admitted"
            );
            self.seqs.push(Seq {
                id,
                group,
                prompt_len: req.prompt.len(),
                history: req.prompt,
                cached: 0,
                generated: 0,
                max_tokens: req.max_tokens.min(room).max(1),
                ignore_eos: req.ignore_eos,
                sampling: Some(req.sampling),
                events,
                in_flight: false,
                retired: None,
            });
        }
    }

    /// Sends the next micro-batch of every idle group that has work.
    async fn launch(&mut self) {
        if let Some(why) = self.stats.failure() {
            if !self.seqs.is_empty() {
                self.fail_all(why);
            }
            return;
        }
        for group in 0..self.groups {
            if self.in_flight.values().any(|b| b.group == group) {
                continue;
            }
            let progress: Vec<SeqProgress> = self
                .seqs
                .iter()
                .filter(|s| s.group == group && s.retired.is_none() && !s.in_flight)
                .map(|s| SeqProgress {
                    seq: s.id,
                    group,
                    prompt_tokens: s.prompt_len,
                    phase: if s.cached < s.prompt_len {
                        SeqPhase::Prefill { done: s.cached }
                    } else {
                        SeqPhase::Decode
                    },
                    cached_tokens: s.cached,
                })
                .collect();
            let entries = plan_step(&progress, group, &self.config.policy);
            if entries.is_empty() {
                continue;
            }
            let batch_id = self.next_batch;
            self.next_batch += 1;
            let mut wire = Vec::with_capacity(entries.len());
            let mut token_ids = Vec::new();
            for e in &entries {
                let Some(s) = self.seqs.iter_mut().find(|s| s.id == e.seq) else {
                    continue;
                };
                s.in_flight = true;
                token_ids.extend_from_slice(&s.history[e.start_pos..e.start_pos + e.n_tokens]);
                wire.push(v1::BatchEntry {
                    seq_id: s.id,
                    start_pos: e.start_pos as u32,
                    n_tokens: e.n_tokens as u32,
                    sample: e.samples,
                    sampling: s.sampling.take(),
                });
            }
            let n_tokens = token_ids.len();
            let frame = v1::BatchFrame {
                header: Some(v1::BatchHeader {
                    batch_id,
                    entries: wire,
                }),
                token_ids,
                activations: Vec::new(),
                act_dtype: 0,
            };
            tracing::debug!(batch_id, group, n_tokens, seqs = entries.len(), "send");
            self.in_flight.insert(batch_id, InFlight { group, entries });
            self.stats.on_batch_sent(n_tokens);
            if self.frames.send(frame).await.is_err() {
                self.fail_all(format!(
                    "the data stream to stage 0 ({}) is closed",
                    self.stage0_addr
                ));
                return;
            }
        }
    }

    fn on_reply(&mut self, reply: v1::StageReply) {
        let Some(batch) = self.in_flight.remove(&reply.batch_id) else {
            tracing::warn!("reply for unknown batch {}", reply.batch_id);
            return;
        };
        self.stats.on_batch_done(reply.tokens.len());
        let failed = !reply.error.is_empty();
        if failed {
            tracing::warn!("batch {} failed: {}", reply.batch_id, reply.error);
        }
        let mut sampled: HashMap<u64, v1::SampledToken> =
            reply.tokens.into_iter().map(|t| (t.seq_id, t)).collect();
        for e in &batch.entries {
            let Some(s) = self.seqs.iter_mut().find(|s| s.id == e.seq) else {
                continue;
            };
            s.in_flight = false;
            if s.retired.is_some() {
                continue;
            }
            if failed {
                let _ = s.events.send(Event::Failed(reply.error.clone()));
                s.retired = Some(Retire::Failed);
                continue;
            }
            s.cached = e.start_pos + e.n_tokens;
            if !e.samples {
                continue;
            }
            let Some(token) = sampled.remove(&s.id) else {
                let _ = s.events.send(Event::Failed(format!(
                    "the last stage returned no token for sequence {}",
                    s.id
                )));
                s.retired = Some(Retire::Failed);
                continue;
            };
            let id = token.token_id;
            s.history.push(id);
            s.generated += 1;
            let _ = s.events.send(Event::Token(token));
            let finish = if !s.ignore_eos && self.config.stop_tokens.contains(&id) {
                Some(FinishReason::Stop)
            } else if s.generated >= s.max_tokens || s.history.len() >= self.config.ctx_size {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = finish {
                let _ = s.events.send(Event::Done(reason));
                s.retired = Some(Retire::Finished);
            }
        }
        self.release_retired();
    }

    fn cancel(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|(q, _, _)| *q == id) {
            self.queue.remove(pos);
            self.stats.on_unqueue();
            return;
        }
        if let Some(s) = self.seqs.iter_mut().find(|s| s.id == id) {
            if s.retired.is_none() {
                tracing::debug!(seq = id, "cancelled");
                s.retired = Some(Retire::Cancelled);
            }
        }
        self.release_retired();
    }

    /// Frees retired sequences that no batch in flight carries, on every
    /// stage (stage 0 passes the release on).
    fn release_retired(&mut self) {
        let mut ids = Vec::new();
        let stats = &self.stats;
        self.seqs.retain(|s| match s.retired {
            Some(how) if !s.in_flight => {
                stats.on_retire(how == Retire::Cancelled, how == Retire::Failed);
                // A sequence that never reached a stage holds nothing there.
                if s.cached > 0 || s.sampling.is_none() {
                    ids.push(s.id);
                }
                false
            }
            _ => true,
        });
        if ids.is_empty() {
            return;
        }
        let mut client = self.release_client.clone();
        tokio::spawn(async move {
            if let Err(e) = client
                .release(v1::ReleaseRequest {
                    seq_ids: ids.clone(),
                })
                .await
            {
                tracing::warn!("releasing sequences {ids:?}: {}", e.message());
            }
        });
    }

    /// The pipeline broke: every live and queued request fails, and so will
    /// every later one (`/health` says why).
    fn fail_all(&mut self, why: String) {
        if self.stats.failure().is_none() {
            tracing::error!("pipeline failed: {why}");
            self.stats.set_failure(why.clone());
        }
        for s in self.seqs.drain(..) {
            let _ = s.events.send(Event::Failed(why.clone()));
            self.stats.on_retire(false, true);
        }
        for (_, _, events) in self.queue.drain(..) {
            let _ = events.send(Event::Failed(why.clone()));
            self.stats.on_unqueue();
        }
        self.in_flight.clear();
    }
}

async fn next_reply(
    replies: &mut Option<tonic::Streaming<v1::StageReply>>,
    addr: &str,
) -> Result<v1::StageReply, String> {
    let Some(stream) = replies.as_mut() else {
        return std::future::pending().await;
    };
    match stream.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(format!("stage 0 ({addr}) closed the data stream")),
        Err(e) => Err(format!("data stream to stage 0 ({addr}): {}", e.message())),
    }
}
