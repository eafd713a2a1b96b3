//! The loop task: admits queued requests into sequence slots, sends one
//! micro-batch per idle group to stage 0, and turns replies into events.
//! It detaches from a broken pipeline without losing a sequence, and
//! replays them all on the next one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use strata_proto::{row_bits, v1, WorkerClient};
use tokio::sync::mpsc;

use super::prefix_cache::{BlockHash, PrefixCache};
use super::{EngineConfig, EngineStats, Event, FinishReason, GenerationRequest, Msg, PipelineLost};
use crate::scheduler::{plan_step, SeqPhase, SeqProgress, StepEntry};
use strata_model::attention_order::{decode_order, RowOrder};
use strata_model::profile::KV_BLOCK_TOKENS;
use strata_proto::v1::DiskPrefixesReply;

/// One live sequence.
struct Seq {
    /// The request's handle id (cancel, logs).
    id: u64,
    /// Its id on the attached pipeline: new on every attach, so a late
    /// release from a lost pipeline cannot touch the replayed sequence.
    wire: u64,
    group: usize,
    /// Prompt then generated tokens.
    history: Vec<u32>,
    /// The attention order of each row of `history` as it was first
    /// computed (`EngineConfig::row_orders`). A replay after a failover
    /// computes the prompt rows in them again, and the generated ones in
    /// the one-chunk order: those labelled `Split` are then not what
    /// their label says, which is safe because no block is kept from the
    /// first `Split` row on.
    orders: Vec<RowOrder>,
    /// Tokens fed as a prompt: the prompt, or after a failover the whole
    /// history so far.
    prefill_to: usize,
    /// Tokens of `history` in the stages' KV caches.
    cached: usize,
    /// The kept blocks it started on (prefix cache) on this pipeline.
    prefix: Vec<BlockHash>,
    /// How many of the last of `prefix` its first frame reads back from
    /// the stages' disks (0 once that frame ran).
    restore: usize,
    /// Its first frame also reads the state snapshot after `prefix` from
    /// the stages' disks (false once that frame ran).
    restore_snapshot: bool,
    /// Positions the stages hold for it once the batches sent so far ran:
    /// its blocks past `prefix` are its own.
    kv_end: usize,
    /// `Event::Cached` was sent (once, for the first admission).
    reported_cached: bool,
    /// The prefix cache was asked for this pipeline (once: the prompt is
    /// hashed again only after a failover).
    prefix_tried: bool,
    /// The prompt of a model with recurrent state or sliding-window rings
    /// stops once here to save a state snapshot (the prefix cache's resume
    /// point for the next turn).
    snapshot_at: Option<usize>,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampling: v1::SamplingParams,
    /// The attached pipeline has seen this sequence (holds state for it).
    sent: bool,
    events: mpsc::UnboundedSender<Event>,
    in_flight: bool,
    /// Cancelled or finished: released once no batch carries it.
    retired: Option<Retire>,
    /// Since when it has waited for a rebuilt pipeline.
    paused_since: Option<Instant>,
}

impl Seq {
    /// Its first frame reads blocks or a state snapshot from disk (and so
    /// goes alone).
    fn reads_disk(&self) -> bool {
        self.restore > 0 || self.restore_snapshot
    }
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
    sent_at: Instant,
    /// What its frame told every stage to evict (and whether to drop every
    /// kept block): a stage that fails the frame does not pass it on, so
    /// a release then carries it to the rest.
    evicted: Vec<BlockHash>,
    cleared: bool,
    /// The sequence it carries alone, whose prefix it reads from disk.
    restoring: Option<u64>,
    /// State snapshots its frame saves and drops: if it fails, a release
    /// drops both on every stage.
    snapshots: Vec<BlockHash>,
}

/// The data stream to stage 0 of one pipeline.
pub(super) struct Link {
    pub epoch: u64,
    pub frames: mpsc::Sender<v1::BatchFrame>,
    pub replies: Replies,
    /// The reply route frames name (0: replies come back up the chain).
    pub route: u64,
    /// Releases go to stage 0, which passes them on.
    pub release: WorkerClient,
    /// For messages: which worker the data stream goes to.
    pub addr: String,
    /// What its stages said they hold on disk (`None`: they could not say).
    pub disk: Option<DiskPrefixesReply>,
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
    link: Option<Link>,
    lost: mpsc::UnboundedSender<PipelineLost>,
    /// Wire ids of retired sequences the next frame frees on every stage.
    release_first: Vec<u64>,
    /// Blocks of those the stages keep for the prefix cache.
    retain_first: Vec<v1::RetainBlocks>,
    prefix_cache: PrefixCache,
    /// The next frame is the first on this pipeline: stages drop what they
    /// kept for an earlier one.
    clear_cached_first: bool,
    /// Kept blocks the next frame evicts on every stage (a failed restore's).
    evict_next: Vec<BlockHash>,
}

/// Spawns the loop, detached until the first [`Msg::Attach`].
pub(super) fn spawn(
    config: EngineConfig,
    msgs: mpsc::UnboundedReceiver<Msg>,
    stats: Arc<EngineStats>,
    lost: mpsc::UnboundedSender<PipelineLost>,
) {
    let runner = Runner {
        groups: config.groups.max(1),
        prefix_cache: match config.state_snapshots {
            0 => PrefixCache::new(config.prefix_cache, config.kv_pool_blocks),
            n => PrefixCache::new(config.prefix_cache, config.kv_pool_blocks).with_snapshots(n),
        },
        retain_first: Vec::new(),
        clear_cached_first: false,
        evict_next: Vec::new(),
        config,
        stats,
        seqs: Vec::new(),
        queue: VecDeque::new(),
        in_flight: HashMap::new(),
        next_batch: 1,
        link: None,
        lost,
        release_first: Vec::new(),
    };
    tokio::spawn(runner.run(msgs));
}

impl Runner {
    async fn run(mut self, mut msgs: mpsc::UnboundedReceiver<Msg>) {
        loop {
            self.admit();
            self.launch().await;
            let deadline = self
                .in_flight
                .values()
                .map(|b| b.sent_at)
                .min()
                .map(|t| tokio::time::Instant::from_std(t + self.config.batch_timeout));
            tokio::select! {
                m = msgs.recv() => match m {
                    Some(Msg::Submit(id, req, events)) => self.queue.push_back((id, req, events)),
                    Some(Msg::Cancel(id)) => self.cancel(id),
                    Some(Msg::Wake) => {}
                    Some(Msg::Attach(link)) => self.attach(*link),
                    Some(Msg::Detach(why)) => self.detach(&why),
                    None => break,
                },
                r = next_reply(&mut self.link) => match r {
                    Ok(reply) => self.on_reply(reply),
                    Err(why) => self.lose(why),
                },
                _ = sleep_until(deadline) => {
                    let secs = self.config.batch_timeout.as_secs_f64();
                    let addr = self.link.as_ref().map_or(String::new(), |l| l.addr.clone());
                    self.lose(format!("a batch sent to stage 0 ({addr}) had no reply within {secs:.0} s: a stage hangs"));
                }
            }
        }
    }

    /// Moves queued requests into free sequence slots, each into the group
    /// with the fewest sequences.
    fn admit(&mut self) {
        if let Some(why) = self.stats.failure() {
            self.fail_all(why);
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
                wire: self.stats.next_seq_id(),
                group,
                prefill_to: req.prompt.len(),
                orders: self.config.row_orders.prompt(req.prompt.len()),
                history: req.prompt,
                cached: 0,
                prefix: Vec::new(),
                restore: 0,
                restore_snapshot: false,
                kv_end: 0,
                reported_cached: false,
                prefix_tried: false,
                snapshot_at: None,
                generated: 0,
                max_tokens: req.max_tokens.min(room).max(1),
                ignore_eos: req.ignore_eos,
                sampling: req.sampling,
                sent: false,
                events,
                in_flight: false,
                retired: None,
                paused_since: self.link.is_none().then(Instant::now),
            });
        }
    }

    /// Sends the next micro-batch of every idle group that has work.
    async fn launch(&mut self) {
        if self.link.is_none() {
            return;
        }
        for group in 0..self.groups {
            if self.in_flight.values().any(|b| b.group == group) {
                continue;
            }
            self.attach_prefixes(group);
            // A sequence whose prefix is read from disk goes alone, so that
            // a stage that cannot read it fails no other.
            let restoring = self
                .seqs
                .iter()
                .find(|s| s.group == group && s.reads_disk() && s.retired.is_none() && !s.in_flight)
                .map(|s| s.id);
            let progress: Vec<SeqProgress> = self
                .seqs
                .iter()
                .filter(|s| s.group == group && s.retired.is_none() && !s.in_flight)
                .filter(|s| restoring.is_none_or(|id| s.id == id))
                .map(|s| SeqProgress {
                    seq: s.id,
                    group,
                    prompt_tokens: s.prefill_to,
                    phase: if s.cached < s.prefill_to {
                        SeqPhase::Prefill { done: s.cached }
                    } else {
                        SeqPhase::Decode
                    },
                    cached_tokens: s.cached,
                    cut_at: s.snapshot_at,
                })
                .collect();
            let entries = plan_step(&progress, group, &self.config.policy);
            if entries.is_empty() {
                continue;
            }
            let batch_id = self.next_batch;
            self.next_batch += 1;
            let mut evicted = self.make_room(&entries);
            evicted.append(&mut self.evict_next);
            // This frame copies the snapshots its new sequences resume
            // from before it drops any: they may go from here on. (One
            // read from disk reserved none in memory.)
            for e in &entries {
                if let Some(s) = self.seqs.iter().find(|s| s.id == e.seq && !s.sent) {
                    if !s.restore_snapshot {
                        self.prefix_cache.resumed(&s.prefix);
                    }
                }
            }
            let (mut saved, mut dropped) = (Vec::new(), Vec::new());
            let mut wire = Vec::with_capacity(entries.len());
            let mut token_ids = Vec::new();
            for e in &entries {
                let Some(s) = self.seqs.iter_mut().find(|s| s.id == e.seq) else {
                    continue;
                };
                s.in_flight = true;
                token_ids.extend_from_slice(&s.history[e.start_pos..e.start_pos + e.n_tokens]);
                // A first frame on cached blocks names them, with the
                // tokens before them the sampler's penalties read.
                let on_prefix = !s.sent && !s.prefix.is_empty();
                let history_before = if on_prefix {
                    let n = (s.sampling.penalty_last_n as usize).min(e.start_pos);
                    s.history[e.start_pos - n..e.start_pos].to_vec()
                } else {
                    Vec::new()
                };
                let decode = e.n_tokens == 1 && e.start_pos >= s.prefill_to;
                wire.push(v1::BatchEntry {
                    seq_id: s.wire,
                    start_pos: e.start_pos as u32,
                    n_tokens: e.n_tokens as u32,
                    sample: e.samples,
                    // With its first frame on this pipeline.
                    sampling: (!s.sent).then(|| s.sampling.clone()),
                    prefix_blocks: if on_prefix {
                        s.prefix.iter().map(|h| h.to_vec()).collect()
                    } else {
                        Vec::new()
                    },
                    history_before,
                    restore_blocks: if on_prefix { s.restore as u32 } else { 0 },
                    restore_snapshot: on_prefix && s.restore_snapshot,
                    // A generated token fed back (`history` past the prompt).
                    decode,
                    tiled_rows: if decode {
                        Vec::new()
                    } else {
                        let orders = &s.orders[e.start_pos..e.start_pos + e.n_tokens];
                        row_bits::pack(orders.iter().map(|&o| o == RowOrder::Tiled))
                    },
                    snapshot: Vec::new(),
                });
                let end = e.start_pos + e.n_tokens;
                if s.snapshot_at == Some(end) {
                    s.snapshot_at = None;
                    if let Some((hash, drop)) = self
                        .prefix_cache
                        .save_snapshot(&s.history[..end], &s.orders[..end])
                    {
                        wire.last_mut().expect("pushed").snapshot = hash.to_vec();
                        saved.push(hash);
                        dropped.extend(drop);
                    }
                }
                s.sent = true;
                s.kv_end = s.kv_end.max(e.start_pos + e.n_tokens);
            }
            let n_tokens = token_ids.len();
            let cleared = std::mem::take(&mut self.clear_cached_first);
            let frame = v1::BatchFrame {
                header: Some(v1::BatchHeader {
                    batch_id,
                    entries: wire,
                    reply_route: self.link.as_ref().map_or(0, |l| l.route),
                }),
                token_ids,
                activations: Vec::new(),
                act_dtype: 0,
                release_first: std::mem::take(&mut self.release_first),
                retain_first: std::mem::take(&mut self.retain_first),
                evict_first: evicted.iter().map(|h| h.to_vec()).collect(),
                clear_cached_first: cleared,
                drop_snapshots: dropped.iter().map(|h| h.to_vec()).collect(),
            };
            tracing::debug!(target: "strata::hop", batch_id, group, n_tokens, seqs = entries.len(), "send");
            self.in_flight.insert(
                batch_id,
                InFlight {
                    group,
                    entries,
                    sent_at: Instant::now(),
                    evicted,
                    cleared,
                    restoring,
                    snapshots: [saved, dropped].concat(),
                },
            );
            self.stats.on_batch_sent(n_tokens);
            let Some(link) = &self.link else { return };
            // A clone, so that no borrow of the link (whose reply streams
            // are not Sync) is held across the await.
            let frames = link.frames.clone();
            if frames.send(frame).await.is_err() {
                let addr = self.link.as_ref().map_or("", |l| l.addr.as_str());
                self.lose(format!("the data stream to stage 0 ({addr}) is closed"));
                return;
            }
        }
    }

    fn on_reply(&mut self, reply: v1::StageReply) {
        tracing::debug!(target: "strata::hop", batch_id = reply.batch_id, "reply");
        if reply.stage_lost {
            self.lose(reply.error);
            return;
        }
        let Some(batch) = self.in_flight.remove(&reply.batch_id) else {
            tracing::warn!("reply for unknown batch {}", reply.batch_id);
            return;
        };
        self.stats.on_batch_done(reply.tokens.len());
        let failed = !reply.error.is_empty();
        if failed {
            tracing::warn!("batch {} failed: {}", reply.batch_id, reply.error);
            // The stages after the one that failed it never saw its frame;
            // those before it saved its snapshots.
            self.prefix_cache.forget_snapshots(&batch.snapshots);
            if !batch.evicted.is_empty() || batch.cleared || !batch.snapshots.is_empty() {
                self.send_release(v1::ReleaseRequest {
                    evict: batch.evicted.iter().map(|h| h.to_vec()).collect(),
                    clear_cached: batch.cleared,
                    drop_snapshots: batch.snapshots.iter().map(|h| h.to_vec()).collect(),
                    ..Default::default()
                });
            }
        }
        if let Some(id) = batch.restoring {
            self.on_restored(id, failed.then_some(reply.error.as_str()));
            if failed {
                self.release_retired();
                return;
            }
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
            let Some(mut token) = sampled.remove(&s.wire) else {
                let _ = s.events.send(Event::Failed(format!(
                    "the last stage returned no token for sequence {}",
                    s.id
                )));
                s.retired = Some(Retire::Failed);
                continue;
            };
            if let Some(since) = s.paused_since.take() {
                self.stats.on_resumed(since.elapsed());
            }
            token.seq_id = s.id;
            let id = token.token_id;
            s.orders
                .push(decode_order(self.config.row_orders.kv, s.history.len()));
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
    /// stage (stage 0 passes the release on). Those that ended well leave
    /// their full blocks to the prefix cache.
    fn release_retired(&mut self) {
        let mut ids = Vec::new();
        let mut retain = Vec::new();
        let stats = &self.stats;
        let cache = &mut self.prefix_cache;
        self.seqs.retain(|s| match s.retired {
            Some(how) if !s.in_flight => {
                stats.on_retire(how == Retire::Cancelled, how == Retire::Failed);
                // A sequence the pipeline never saw holds nothing there.
                if !s.sent {
                    if !s.restore_snapshot {
                        cache.resumed(&s.prefix);
                    }
                    cache.detach(&s.prefix);
                } else if how == Retire::Failed {
                    cache.detach(&s.prefix);
                    ids.push(s.wire);
                } else {
                    // Up to the first decode step in the split order, which
                    // no prompt computes (blocks are reused only by a
                    // prompt that computes their rows in their orders).
                    let in_kv = s.cached.min(s.history.len());
                    let in_kv = s.orders[..in_kv]
                        .iter()
                        .position(|&o| o == RowOrder::Split)
                        .unwrap_or(in_kv);
                    let hashes = cache.retain(&s.history[..in_kv], &s.orders[..in_kv], &s.prefix);
                    if hashes.is_empty() {
                        ids.push(s.wire);
                    } else {
                        retain.push(v1::RetainBlocks {
                            seq_id: s.wire,
                            block_hashes: hashes.iter().map(|h| h.to_vec()).collect(),
                        });
                    }
                }
                false
            }
            _ => true,
        });
        if self.link.is_none() || (ids.is_empty() && retain.is_empty()) {
            return;
        }
        // The next frame frees them on every stage before its batch runs;
        // the RPC also frees them when no frame follows soon, or a stage
        // fails that frame before passing it on.
        self.stats.set_prefix_cache_blocks(self.prefix_cache.len());
        self.release_first.extend(&ids);
        self.retain_first.extend(retain.iter().cloned());
        self.send_release(v1::ReleaseRequest {
            seq_ids: ids,
            retain,
            ..Default::default()
        });
    }

    /// The release RPC to stage 0, which passes it on.
    fn send_release(&self, req: v1::ReleaseRequest) {
        let Some(link) = &self.link else { return };
        let mut client = link.release.clone();
        tokio::spawn(async move {
            let ids = req.seq_ids.clone();
            if let Err(e) = client.release(req).await {
                tracing::warn!("releasing sequences {ids:?}: {}", e.message());
            }
        });
    }

    /// Starts the group's sequences that this pipeline has not seen on the
    /// kept blocks their prompt begins with.
    fn attach_prefixes(&mut self, group: usize) {
        if !self.prefix_cache.enabled() {
            return;
        }
        for s in &mut self.seqs {
            if s.group != group || s.sent || s.retired.is_some() || s.prefix_tried {
                continue;
            }
            s.prefix_tried = true;
            let attached = self
                .prefix_cache
                .attach(&s.history[..s.prefill_to], &s.orders[..s.prefill_to]);
            (s.prefix, s.restore) = (attached.blocks, attached.restore);
            s.restore_snapshot = attached.snapshot_from_disk;
            s.cached = s.prefix.len() * KV_BLOCK_TOKENS;
            let stable = self
                .config
                .row_orders
                .stable_prefix(&s.orders[..s.prefill_to]);
            s.snapshot_at =
                self.prefix_cache
                    .snapshot_point(&s.history[..s.prefill_to], s.cached, stable);
            s.kv_end = s.cached;
            // Reported once the stages have read it back.
            if !s.reads_disk() && !s.reported_cached {
                s.reported_cached = true;
                if s.cached > 0 {
                    tracing::debug!(
                        seq = s.id,
                        cached = s.cached,
                        "prompt starts on cached blocks"
                    );
                    self.stats.on_prefix_hit(s.cached);
                    let _ = s.events.send(Event::Cached(s.cached));
                }
            }
        }
    }

    /// The frame that read sequence `id`'s prefix back from disk ran, or a
    /// stage could not read it (`error`): then no prompt attaches those
    /// blocks again, the stages that read some free them, and the
    /// sequence starts again on what is kept in memory.
    fn on_restored(&mut self, id: u64, error: Option<&str>) {
        let Some(s) = self.seqs.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let from_disk = s.restore;
        let snapshot_from_disk = std::mem::take(&mut s.restore_snapshot);
        s.restore = 0;
        let Some(error) = error else {
            let tokens = s.prefix.len() * KV_BLOCK_TOKENS;
            let restored = from_disk * KV_BLOCK_TOKENS;
            tracing::debug!(
                seq = id,
                tokens,
                restored,
                "prompt starts on cached blocks, some from disk"
            );
            // Counted once per request, as a hit in memory is (not again
            // when a failover replays it).
            if !s.reported_cached {
                s.reported_cached = true;
                self.stats.on_prefix_hit(tokens);
                self.stats.on_prefix_restored(restored);
                let _ = s.events.send(Event::Cached(tokens));
            }
            return;
        };
        if let (true, Some(last)) = (snapshot_from_disk, s.prefix.last()) {
            self.prefix_cache.forget_disk_snapshot(last);
        }
        let split = s.prefix.len() - from_disk;
        let unreadable = s.prefix.split_off(split);
        tracing::warn!(
            seq = id,
            blocks = unreadable.len(),
            snapshot_from_disk,
            "reading a prompt's KV blocks or state back from disk failed ({error}); computing them"
        );
        self.prefix_cache.forget(&unreadable);
        self.prefix_cache.detach(&s.prefix);
        let old_wire = s.wire;
        s.wire = self.stats.next_seq_id();
        s.in_flight = false;
        s.sent = false;
        s.prefix.clear();
        s.cached = 0;
        s.kv_end = 0;
        s.prefix_tried = false;
        // The stages before the one that failed attached the sequence and
        // read some blocks: the next frame (or the RPC, if none comes soon)
        // frees them there.
        self.release_first.push(old_wire);
        self.evict_next.extend(&unreadable);
        self.stats.set_prefix_cache_blocks(self.prefix_cache.len());
        self.stats
            .set_prefix_disk_blocks(self.prefix_cache.on_disk_len());
        self.send_release(v1::ReleaseRequest {
            seq_ids: vec![old_wire],
            evict: unreadable.iter().map(|h| h.to_vec()).collect(),
            ..Default::default()
        });
    }

    /// Evicts kept blocks so that `entries` find their new blocks free on
    /// every stage; returns what to evict.
    fn make_room(&mut self, entries: &[StepEntry]) -> Vec<BlockHash> {
        if self.prefix_cache.is_empty() {
            return Vec::new();
        }
        let blocks = |end: usize| end.div_ceil(KV_BLOCK_TOKENS);
        let live: usize = self
            .seqs
            .iter()
            .filter(|s| s.sent || !s.prefix.is_empty())
            .map(|s| blocks(s.kv_end).saturating_sub(s.prefix.len()))
            .sum();
        let needed: usize = entries
            .iter()
            .filter_map(|e| {
                let s = self.seqs.iter().find(|s| s.id == e.seq)?;
                Some(blocks(e.start_pos + e.n_tokens).saturating_sub(blocks(s.kv_end)))
            })
            .sum();
        let evicted = self.prefix_cache.make_room(live, needed);
        if !evicted.is_empty() {
            tracing::debug!(
                evicted = evicted.len(),
                kept = self.prefix_cache.len(),
                "prefix cache makes room"
            );
            self.stats.set_prefix_cache_blocks(self.prefix_cache.len());
            self.stats
                .set_prefix_disk_blocks(self.prefix_cache.on_disk_len());
        }
        evicted
    }

    /// The attached pipeline broke: detach and tell the supervisor.
    fn lose(&mut self, why: String) {
        let Some(epoch) = self.link.as_ref().map(|l| l.epoch) else {
            return;
        };
        tracing::warn!("pipeline lost: {why}");
        self.detach(&why);
        let _ = self.lost.send(PipelineLost { epoch, why });
    }

    /// Drops the pipeline (its stages free the sequences when the data
    /// stream closes) and keeps every live sequence to replay.
    fn detach(&mut self, why: &str) {
        if self.link.take().is_none() {
            return;
        }
        let batches = self.in_flight.len();
        self.in_flight.clear();
        for _ in 0..batches {
            self.stats.on_batch_done(0);
        }
        let now = Instant::now();
        let mut replayed = 0;
        for s in &mut self.seqs {
            s.in_flight = false;
            s.sent = false;
            if s.retired.is_none() && s.cached > 0 {
                replayed += s.history.len();
            }
            s.cached = 0;
            s.prefix.clear();
            s.restore = 0;
            s.restore_snapshot = false;
            s.prefix_tried = false;
            s.kv_end = 0;
            s.paused_since.get_or_insert(now);
        }
        // The next pipeline starts with no kept blocks (its first frame
        // tells stages that survived to drop theirs).
        self.prefix_cache.clear();
        self.stats.set_prefix_cache_blocks(0);
        self.retain_first.clear();
        self.evict_next.clear();
        // Nothing to release on a pipeline that is gone.
        self.release_retired();
        self.release_first.clear();
        self.stats.on_failover(replayed);
        tracing::info!(
            sequences = self.seqs.len(),
            replay_tokens = replayed,
            "detached from the pipeline ({why}); sequences wait for a rebuilt one"
        );
    }

    /// A rebuilt pipeline: every live sequence is fed its tokens so far as a
    /// prompt under a new wire id, then decodes on.
    fn attach(&mut self, link: Link) {
        self.detach("replaced");
        for s in &mut self.seqs {
            s.wire = self.stats.next_seq_id();
            s.prefill_to = s.history.len();
        }
        tracing::info!(
            epoch = link.epoch,
            stage0 = %link.addr,
            sequences = self.seqs.len(),
            "attached to the pipeline"
        );
        let on_disk = link.disk.as_ref().filter(|d| d.enabled).map(|d| {
            let hashes = |l: &[Vec<u8>]| {
                l.iter()
                    .filter_map(|h| BlockHash::try_from(h.as_slice()).ok())
                    .collect::<Vec<_>>()
            };
            (hashes(&d.block_hashes), hashes(&d.snapshot_hashes))
        });
        if let Some((blocks, snapshots)) = &on_disk {
            tracing::info!(
                blocks = blocks.len(),
                snapshots = snapshots.len(),
                "the stages hold prefix blocks on disk"
            );
        }
        self.prefix_cache.set_on_disk(on_disk);
        self.stats
            .set_prefix_disk_blocks(self.prefix_cache.on_disk_len());
        self.link = Some(link);
        self.clear_cached_first = true;
    }

    /// The pool cannot serve: every live and queued request gets a 503.
    fn fail_all(&mut self, why: String) {
        for s in self.seqs.drain(..) {
            if s.retired.is_none() {
                let _ = s.events.send(Event::Unavailable(why.clone()));
            }
            self.stats.on_retire(false, true);
        }
        for (_, _, events) in self.queue.drain(..) {
            let _ = events.send(Event::Unavailable(why.clone()));
            self.stats.on_unqueue();
        }
        if self.link.take().is_some() {
            self.in_flight.clear();
        }
    }
}

async fn next_reply(link: &mut Option<Link>) -> Result<v1::StageReply, String> {
    match link.as_mut() {
        Some(link) => link.replies.next().await,
        None => std::future::pending().await,
    }
}

type ReplyStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Option<Result<v1::StageReply, tonic::Status>>> + Send>,
>;

/// Where a pipeline's replies arrive: the data stream to stage 0, and the
/// reply line of each stage when it has them. Any of them ending or
/// failing loses the pipeline.
pub(super) struct Replies {
    streams: tokio_stream::StreamMap<usize, ReplyStream>,
    /// What each stream is, for messages.
    names: Vec<String>,
}

impl Replies {
    pub fn new(forward: strata_proto::transport::ReplyStream, stage0: String) -> Self {
        let mut r = Replies {
            streams: tokio_stream::StreamMap::new(),
            names: Vec::new(),
        };
        r.add(format!("the data stream to stage 0 ({stage0})"), forward);
        r
    }

    pub fn add_line(
        &mut self,
        stage: usize,
        addr: String,
        line: strata_proto::transport::ReplyStream,
    ) {
        self.add(format!("the reply line of stage {stage} ({addr})"), line);
    }

    fn add(&mut self, name: String, s: strata_proto::transport::ReplyStream) {
        use tokio_stream::StreamExt;
        // `None` marks the end, which the map would otherwise hide.
        let s: ReplyStream = Box::pin(s.map(Some).chain(tokio_stream::once(None)));
        self.streams.insert(self.names.len(), s);
        self.names.push(name);
    }

    async fn next(&mut self) -> Result<v1::StageReply, String> {
        use tokio_stream::StreamExt;
        match self.streams.next().await {
            Some((_, Some(Ok(r)))) => Ok(r),
            Some((k, Some(Err(e)))) => Err(format!("{}: {}", self.names[k], e.message())),
            Some((k, None)) => Err(format!("{} closed", self.names[k])),
            None => std::future::pending().await,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
