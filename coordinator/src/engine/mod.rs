//! The serving loop: owns every live sequence, plans micro-batches with the
//! [`scheduler`](crate::scheduler), keeps up to one batch per group in flight
//! on the data stream to stage 0, and hands sampled tokens to each request.
//!
//! A request gets a [`Generation`]; dropping it (the client went away, a
//! stop string matched) cancels the sequence, whose KV is then released on
//! every stage once no batch carrying it is in flight.
//!
//! The loop outlives any one pipeline. When the data stream breaks, a batch
//! misses its deadline or a stage reports itself lost, the loop detaches:
//! it keeps every live sequence's tokens, reports the loss, and waits. The
//! pool's supervisor rebuilds the pipeline and [`Engine::attach`]es it; the
//! loop then replays each sequence's tokens so far as a prompt and carries
//! on, so clients see a pause and the same tokens.

mod prefix_cache;
mod prefix_snapshots;
mod runner;
mod stage_view;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use strata_model::attention_order::RowOrders;
use strata_proto::transport::Transport;
use strata_proto::{v1, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::scheduler::BatchPolicy;
pub use stage_view::StageView;
pub use stats::EngineStats;

/// How the loop schedules.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context per sequence, in tokens (prompt + generated).
    pub ctx_size: usize,
    /// Sequences decoding at once; more wait in a queue.
    pub max_sequences: usize,
    /// Micro-batches in flight: one per pipeline stage keeps every stage busy.
    pub groups: usize,
    pub policy: BatchPolicy,
    /// Tokens that end a generation (EOS, EOT, ...).
    pub stop_tokens: Vec<u32>,
    /// Requests that may wait for a free sequence slot before new ones get 503.
    pub max_queued: usize,
    /// A batch with no reply after this long means a stage hangs.
    pub batch_timeout: Duration,
    /// Reuse finished sequences' KV blocks for prompts that start with the
    /// same tokens (off where the stages cannot: sliding-window rings).
    pub prefix_cache: bool,
    /// Blocks in each stage's KV pool (the prefix cache fills what live
    /// sequences leave free).
    pub kv_pool_blocks: usize,
    /// The attention order of each row (`strata_model::attention_order`):
    /// each prompt row is computed in it, and a cached block is reused only
    /// by a prompt that computes its rows in the same orders, so a cached
    /// prefix gives a cold run's bits.
    pub row_orders: RowOrders,
    /// Recurrent state snapshots each stage holds for the prefix cache (0:
    /// the model keeps no recurrent state).
    pub state_snapshots: usize,
}

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: v1::SamplingParams,
    /// At most this many tokens (the context may stop it sooner).
    pub max_tokens: usize,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token (or, decided above, a stop string).
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a generation yields, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt's first tokens were found in the prefix cache: only the
    /// rest is computed. Comes before the first token, at most once.
    Cached(usize),
    /// A sampled token. An end-of-generation token comes with `Done(Stop)`
    /// right after it.
    Token(v1::SampledToken),
    Done(FinishReason),
    /// The batch failed on a stage (a 500).
    Failed(String),
    /// The pool can no longer serve the model (a 503).
    Unavailable(String),
}

/// The pipeline the loop was attached to (its `epoch`) broke.
#[derive(Debug, Clone)]
pub struct PipelineLost {
    pub epoch: u64,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the context is {ctx} (at least one must be left to generate)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the server is busy: {0} requests are already waiting")]
    Busy(usize),
    #[error("the serving loop has stopped: {0}")]
    Stopped(String),
}

enum Msg {
    Submit(u64, GenerationRequest, mpsc::UnboundedSender<Event>),
    Cancel(u64),
    /// Look at the failure flag now.
    Wake,
    Attach(Box<runner::Link>),
    Detach(String),
}

/// A stage as the serving loop reaches it.
#[derive(Clone)]
pub struct StageLink {
    /// Control calls: releases, the disk listing.
    pub client: WorkerClient,
    pub addr: String,
    /// The data stream (stage 0) and reply lines.
    pub data: Arc<dyn Transport>,
}

/// Handle to the serving loop. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Msg>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
}

impl Engine {
    /// Starts the loop with no pipeline: requests queue until
    /// [`attach`](Self::attach). Losses of attached pipelines arrive on the
    /// returned receiver.
    pub fn start(config: EngineConfig) -> (Engine, mpsc::UnboundedReceiver<PipelineLost>) {
        let stats = Arc::new(EngineStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (lost_tx, lost) = mpsc::unbounded_channel();
        runner::spawn(config.clone(), rx, stats.clone(), lost_tx);
        let engine = Engine {
            tx,
            stats,
            config: Arc::new(config),
        };
        (engine, lost)
    }

    /// Opens the data stream to a (re)built pipeline's stage 0 (the first
    /// of `stages`, each a worker and its address) and hands it to the
    /// loop, which replays every live sequence on it. With several stages
    /// it also opens a reply line to each, so that replies come straight
    /// back. Clears a failure. Returns the pipeline's epoch (named by its
    /// loss report).
    pub async fn attach(&self, stages: Vec<StageLink>) -> Result<u64, tonic::Status> {
        let Some(StageLink {
            client: mut stage0,
            addr,
            data,
        }) = stages.first().cloned()
        else {
            return Err(tonic::Status::invalid_argument("a pipeline of no stages"));
        };
        let groups = self.config.groups.max(1);
        let (frames, rx) = mpsc::channel(groups * 2);
        // A stage 0 that hangs right after loading must not hang the caller.
        let forward = tokio::time::timeout(
            Duration::from_secs(10),
            data.forward(ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded("stage 0 did not open the data stream within 10 s")
        })??;
        let mut replies = runner::Replies::new(forward, addr.clone());
        let route = if stages.len() > 1 {
            open_reply_lines(&stages, &mut replies).await
        } else {
            0
        };
        // What the stages can read back from disk (sessions that survive
        // a restart); a pipeline that cannot say just starts cold.
        let disk = match tokio::time::timeout(
            Duration::from_secs(30),
            stage0.disk_prefixes(v1::DiskPrefixesRequest {}),
        )
        .await
        {
            Ok(Ok(r)) => Some(r.into_inner()),
            Ok(Err(e)) => {
                tracing::warn!(
                    "listing the prefix blocks on the workers' disks: {}",
                    e.message()
                );
                None
            }
            Err(_) => {
                tracing::warn!("listing the prefix blocks on the workers' disks took over 30 s");
                None
            }
        };
        let epoch = self.stats.next_epoch();
        self.stats.clear_failure();
        let link = runner::Link {
            epoch,
            frames,
            replies,
            route,
            release: stage0,
            addr,
            disk,
        };
        self.tx
            .send(Msg::Attach(Box::new(link)))
            .map_err(|_| tonic::Status::internal("the serving loop is gone"))?;
        Ok(epoch)
    }

    /// The pipeline is being rebuilt: stop sending, keep every sequence.
    pub fn detach(&self, why: String) {
        let _ = self.tx.send(Msg::Detach(why));
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The pool cannot serve the model now: live and queued requests fail
    /// with `why` (a 503), and so do new ones until the next
    /// [`attach`](Self::attach).
    pub fn fail(&self, why: String) {
        if self.stats.failure().is_none() {
            tracing::error!("{why}");
            self.stats.set_failure(why);
        }
        let _ = self.tx.send(Msg::Wake);
    }

    /// Queues a generation. Its events arrive on the returned handle.
    pub fn submit(&self, req: GenerationRequest) -> Result<Generation, EngineError> {
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if req.prompt.len() >= self.config.ctx_size {
            return Err(EngineError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.config.ctx_size,
            });
        }
        if let Some(why) = self.stats.failure() {
            return Err(EngineError::Stopped(why));
        }
        let queued = self.stats.queued();
        if queued >= self.config.max_queued {
            return Err(EngineError::Busy(queued));
        }
        let seq = self.stats.next_seq_id();
        let (events_tx, events) = mpsc::unbounded_channel();
        self.stats.on_submit(req.prompt.len());
        self.tx
            .send(Msg::Submit(seq, req, events_tx))
            .map_err(|_| EngineError::Stopped("the loop is gone".into()))?;
        Ok(Generation {
            seq,
            events,
            cancel: self.tx.clone(),
            finished: false,
        })
    }
}

/// A running generation; dropping it cancels the sequence.
pub struct Generation {
    seq: u64,
    events: mpsc::UnboundedReceiver<Event>,
    cancel: mpsc::UnboundedSender<Msg>,
    finished: bool,
}

impl Generation {
    pub fn seq_id(&self) -> u64 {
        self.seq
    }

    /// The next event; `None` after `Done` or `Failed`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let e = self.events.recv().await;
        match &e {
            Some(Event::Done(_) | Event::Failed(_) | Event::Unavailable(_)) => self.finished = true,
            None => {
                self.finished = true;
                return Some(Event::Failed(
                    "the serving loop dropped the sequence".into(),
                ));
            }
            Some(Event::Token(_) | Event::Cached(_)) => {}
        }
        e
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.cancel.send(Msg::Cancel(self.seq));
        }
    }
}

/// Opens a reply line on every stage under one fresh route; returns the
/// route, or 0 (replies come back up the chain) when a stage cannot open
/// one, which costs speed, not correctness.
async fn open_reply_lines(stages: &[StageLink], replies: &mut runner::Replies) -> u64 {
    let route = rand::random::<u64>() | 1;
    for (i, StageLink { addr, data, .. }) in stages.iter().enumerate() {
        let opened = tokio::time::timeout(Duration::from_secs(10), data.replies(route)).await;
        match opened {
            Ok(Ok(line)) => replies.add_line(i, addr.clone(), line),
            Ok(Err(e)) => {
                tracing::warn!("stage {i} ({addr}) opened no reply line, replies come back through the chain: {}", e.message());
                return 0;
            }
            Err(_) => {
                tracing::warn!("stage {i} ({addr}) opened no reply line within 10 s, replies come back through the chain");
                return 0;
            }
        }
    }
    route
}
