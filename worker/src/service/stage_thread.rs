//! The compute thread: owns the loaded [`Stage`] (any [`Backend`]), the
//! per-sequence samplers and token histories of the last stage, and runs
//! every load, forward and release in arrival order, off the async threads.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use strata_kernels::{Backend, KernelError};
use strata_model::profile::StageLoad;
use strata_model::GgufFile;
use strata_proto::v1;
use tokio::sync::oneshot;

use super::frames;
use super::kv_sessions::{KvDiskConfig, KvSessions};
use super::stage_links::{Handoff, Links, NextTarget, StageRx, StageTx};
use crate::kv_blocks::BlockHash;
use crate::kv_disk::{FileKind, Shape};
use crate::sampler::Sampler;
use crate::stage::{LayerRange, ReadLayer, Stage, StageError, StageInput, StageOutput};
use strata_model::constraint::TokenConstraint;

/// What the service knows about the slice without asking the thread.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub status: i32,
    pub message: String,
    pub digest: String,
    pub range: Option<LayerRange>,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// Activation scratch the loaded stage may use (counted against the budget).
    pub scratch_bytes: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_free: u64,
    pub live_sequences: u64,
    pub state_slots_used: u64,
    pub state_slots: u64,
    pub kv_blocks_cached: u64,
    /// Since the load: frames run, their token positions, their compute time.
    pub frames_run: u64,
    pub tokens_run: u64,
    pub compute_seconds: f64,
}

pub struct LoadJob {
    pub file: GgufFile,
    pub source: PathBuf,
    pub digest: String,
    pub range: LayerRange,
    /// What the admission counted the slice's memory for: the stage
    /// allocates exactly these pools and states.
    pub load: StageLoad,
    pub act_dtype: v1::ActDtype,
    pub limits: frames::FrameLimits,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    pub kv_disk: Option<KvDiskConfig>,
}

/// The result of one frame on this stage.
pub enum FrameOut {
    /// Hidden states for the next stage.
    Next(v1::BatchFrame),
    /// Tokens (last stage) or an error.
    Reply(v1::StageReply),
    /// Written to the next stage on the TCP data link already.
    Sent,
}

pub enum Command {
    Load(Box<LoadJob>, oneshot::Sender<Result<(), String>>),
    Forward(v1::BatchFrame, oneshot::Sender<FrameOut>),
    /// Frees sequences, keeping the blocks `retain` names (prefix cache).
    Release(v1::ReleaseRequest, oneshot::Sender<()>),
    /// The prefix blocks and state snapshots on disk for all the stage's
    /// layers (`None`: no slice, or no KV cache directory).
    DiskPrefixes(oneshot::Sender<Option<v1::DiskPrefixesReply>>),
    Unload(oneshot::Sender<()>),
    /// A TCP data link from the stage before, whose frames this thread
    /// reads itself (`stage_links.rs`).
    Attach(Box<strata_proto::transport::tcp::LinkConn>),
    /// Where results this thread cannot send itself go.
    Handoff(tokio::sync::mpsc::UnboundedSender<Handoff>),
    /// The next stage to write to on a TCP data link (`None`: none, results
    /// go back to the async side); a load clears it.
    NextLink(Option<NextTarget>),
    /// A reply from the async side for a route whose line is a TCP link
    /// here, or (route 0) back on link `back`.
    Reply {
        route: u64,
        back: u64,
        reply: v1::StageReply,
    },
}

struct Loaded<B: Backend> {
    stage: Stage<B>,
    file: GgufFile,
    grammars: super::grammars::Grammars,
    act_dtype: v1::ActDtype,
    limits: frames::FrameLimits,
    label: String,
    /// Last stage: sampler and token history per live sequence.
    seqs: HashMap<u64, SeqState>,
    /// Kept blocks on disk (`--kv-cache-dir`).
    disk: Option<KvSessions>,
}

#[derive(Default)]
struct SeqState {
    sampler: Option<Sampler>,
    /// The grammar its tokens must follow, when it asked for one.
    constraint: Option<TokenConstraint>,
    history: Vec<u32>,
    /// Position of `history[0]`: a sequence that starts on cached blocks
    /// gets only the tokens before them its sampler reads.
    offset: usize,
}

/// Starts the thread; `make_backend` builds a backend for each load,
/// `frames_sent_tcp` counts the frames it writes on a TCP data link,
/// `reply_routes` hears which routes have a TCP reply line here, and
/// `reloading` says a load or unload is queued. With
/// `pool_threads`, its loop runs on a thread pool of its own that size (a
/// CPU stage, or one of several stages in one process); without, its
/// parallel loops go to the process-wide pool.
///
/// Why a CPU stage's loop runs inside its pool: a parallel loop started by
/// a thread outside the pool queues the work, parks the thread and wakes it
/// when the loop ends (50-70 µs a loop with one thread on a 2-core VM). A
/// thread of the pool runs the loop itself, the others stealing parts.
pub fn spawn<B, F>(
    make_backend: F,
    snapshot: Arc<Mutex<Snapshot>>,
    pool_threads: Option<usize>,
    frames_sent_tcp: Arc<AtomicU64>,
    reply_routes: Arc<super::reply_routes::ReplyRoutes>,
    reloading: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<StageTx>
where
    B: Backend + 'static,
    F: Fn() -> B + Send + 'static,
{
    let (tx, rx) = super::stage_links::queue()?;
    let links = Links::new(frames_sent_tcp, reply_routes, reloading);
    let pool = match pool_threads {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("strata-stage-{i}"))
                .build()
                .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    std::thread::Builder::new()
        .name("strata-stage".into())
        .spawn(move || {
            // However the thread ends, Health must stop saying READY.
            let _exit = ExitGuard(snapshot.clone());
            match pool {
                // The loop runs on one of the pool's threads, so the
                // backend's parallel loops use that pool.
                Some(pool) => {
                    pool.install(move || run_commands(&make_backend, &rx, links, &snapshot))
                }
                None => run_commands(&make_backend, &rx, links, &snapshot),
            }
        })?;
    Ok(tx)
}

/// The compute thread's loop: every command and every frame of its links,
/// in order, until the service drops its sender.
fn run_commands<B, F>(
    make_backend: &F,
    rx: &StageRx,
    mut links: Links,
    snapshot: &Arc<Mutex<Snapshot>>,
) where
    B: Backend + 'static,
    F: Fn() -> B,
{
    let mut loaded: Option<Loaded<B>> = None;
    loop {
        let ready = links.wait(rx);
        for (link, message) in ready.messages {
            use v1::link_message::Kind;
            match message.kind {
                Some(Kind::Frame(frame)) => {
                    let (batch_id, route) = frame
                        .header
                        .as_ref()
                        .map_or((0, 0), |h| (h.batch_id, h.reply_route));
                    tracing::debug!(target: "strata::hop", batch_id, "received");
                    let out = run_frame(&mut loaded, frame, snapshot);
                    match links.route_out(batch_id, route, link, out) {
                        FrameOut::Sent => {}
                        out => links.hand_off(Handoff::Deliver {
                            batch_id,
                            route,
                            out,
                            back: link,
                        }),
                    }
                }
                Some(Kind::Release(req)) => {
                    run_release(&mut loaded, &req);
                    links.pass_release(&req);
                }
                _ => {}
            }
            update_snapshot(snapshot, &loaded);
        }
        links.release_closed();
        if !ready.commands {
            continue;
        }
        loop {
            let cmd = match rx.try_recv() {
                Ok(cmd) => cmd,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            };
            run_command(make_backend, cmd, &mut loaded, &mut links, snapshot);
            update_snapshot(snapshot, &loaded);
        }
    }
}

fn run_command<B, F>(
    make_backend: &F,
    cmd: Command,
    loaded: &mut Option<Loaded<B>>,
    links: &mut Links,
    snapshot: &Arc<Mutex<Snapshot>>,
) where
    B: Backend + 'static,
    F: Fn() -> B,
{
    match cmd {
        Command::Load(job, reply) => {
            *loaded = None;
            links.set_next(None);
            set_status(snapshot, v1::health_reply::Status::Loading, "loading");
            let result = load(make_backend, *job, snapshot).map(|l| *loaded = Some(l));
            if let Err(e) = &result {
                set_status(snapshot, v1::health_reply::Status::Failed, e);
            }
            let _ = reply.send(result);
        }
        Command::Forward(frame, reply) => {
            let (batch_id, route) = frame
                .header
                .as_ref()
                .map_or((0, 0), |h| (h.batch_id, h.reply_route));
            let out = run_frame(loaded, frame, snapshot);
            let _ = reply.send(links.route_out(batch_id, route, 0, out));
        }
        Command::Release(req, reply) => {
            run_release(loaded, &req);
            links.pass_release(&req);
            let _ = reply.send(());
        }
        Command::DiskPrefixes(reply) => {
            let own = loaded
                .as_ref()
                .and_then(|l| Some(super::kv_sessions::own_prefixes(l.disk.as_ref()?, &l.stage)));
            let _ = reply.send(own);
        }
        Command::Unload(reply) => {
            *loaded = None;
            links.set_next(None);
            *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
                status: v1::health_reply::Status::Idle as i32,
                message: "idle".into(),
                ..Default::default()
            };
            let _ = reply.send(());
        }
        Command::Attach(conn) => links.attach(*conn),
        Command::Handoff(tx) => links.set_handoff(tx),
        Command::NextLink(target) => links.set_next(target),
        Command::Reply { route, back, reply } => links.reply(route, back, reply),
    }
}

/// Runs one frame on the loaded stage (counting it in the snapshot).
fn run_frame<B: Backend>(
    loaded: &mut Option<Loaded<B>>,
    frame: v1::BatchFrame,
    snapshot: &Mutex<Snapshot>,
) -> FrameOut {
    let batch_id = frame.header.as_ref().map_or(0, |h| h.batch_id);
    tracing::debug!(target: "strata::hop", batch_id, "compute start");
    let (started, n_tokens) = (std::time::Instant::now(), frame.token_ids.len());
    let out = match loaded.as_mut() {
        // A device error (an op's KernelError::Device) or a panic inside
        // the batch (a bug): the batch gets an error reply, the slice is
        // dropped (the device state is unknown) and Health says FAILED,
        // rather than the thread dying while Health still says READY. Bad
        // input is only that batch's error reply (`forward`).
        Some(l) => {
            let failed = match catch_unwind(AssertUnwindSafe(|| forward(l, frame))) {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(DeviceFailed(e))) => Err(e),
                Err(panic) => Err(panic_message(panic.as_ref())),
            };
            failed.unwrap_or_else(|e| {
                let e = format!("the compute device failed: {e}");
                tracing::error!("{e}");
                *loaded = None;
                set_status(snapshot, v1::health_reply::Status::Failed, &e);
                FrameOut::Reply(lost_reply(batch_id, e))
            })
        }
        None => FrameOut::Reply(lost_reply(batch_id, "no slice loaded".into())),
    };
    tracing::debug!(target: "strata::hop", batch_id, "compute end");
    if loaded.is_some() {
        let mut s = snapshot.lock().unwrap_or_else(|p| p.into_inner());
        s.frames_run += 1;
        s.tokens_run += n_tokens as u64;
        s.compute_seconds += started.elapsed().as_secs_f64();
    }
    out
}

fn run_release<B: Backend>(loaded: &mut Option<Loaded<B>>, req: &v1::ReleaseRequest) {
    if let Some(l) = loaded.as_mut() {
        if req.clear_cached {
            l.stage.clear_cached();
        }
        release(l, &req.retain, &req.seq_ids);
        l.stage.evict_cached(&hashes(&req.evict));
        l.stage.drop_snapshots(&hashes(&req.drop_snapshots));
    }
}

/// The loaded stage's block and slot counts, for Health.
fn update_snapshot<B: Backend>(snapshot: &Mutex<Snapshot>, loaded: &Option<Loaded<B>>) {
    if let Some(l) = loaded {
        let mut s = snapshot.lock().unwrap_or_else(|p| p.into_inner());
        s.kv_blocks_used = l.stage.blocks().used_blocks() as u64;
        s.kv_blocks_free = l.stage.blocks().free_blocks() as u64;
        s.live_sequences = l.stage.blocks().n_sequences() as u64;
        s.state_slots_used = l.stage.state_slots().held() as u64;
        s.state_slots = l.stage.state_slots().capacity() as u64;
        s.kv_blocks_cached = l.stage.blocks().cached_blocks() as u64;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Marks the worker FAILED when the compute thread ends (a panic outside a
/// batch included): nothing can run on it any more.
struct ExitGuard(Arc<Mutex<Snapshot>>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        set_status(
            &self.0,
            v1::health_reply::Status::Failed,
            "the compute thread has stopped",
        );
    }
}

fn set_status(snapshot: &Mutex<Snapshot>, status: v1::health_reply::Status, message: &str) {
    let mut s = snapshot.lock().unwrap_or_else(|p| p.into_inner());
    s.status = status as i32;
    s.message = message.to_string();
}

fn load<B: Backend, F: Fn() -> B>(
    make_backend: &F,
    job: LoadJob,
    snapshot: &Mutex<Snapshot>,
) -> Result<Loaded<B>, String> {
    let started = std::time::Instant::now();
    let stage = Stage::load_for(make_backend(), &job.file, job.range, &job.load).map_err(|e| {
        format!(
            "loading layers {}..{} from {}: {e}",
            job.range.first,
            job.range.end,
            job.source.display()
        )
    })?;
    let label = format!("layers {}..{}", job.range.first, job.range.end);
    let disk = match &job.kv_disk {
        Some(c) => match KvSessions::open(c, &job.digest, job.load.kv_type, &disk_layers(&stage)) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    "KV cache directory {}: {e}; blocks stay in memory only",
                    c.dir.display()
                );
                None
            }
        },
        None => None,
    };
    tracing::info!(
        "loaded {label} of {} from {} in {:.2}s, KV cache {}",
        job.digest,
        job.source.display(),
        started.elapsed().as_secs_f64(),
        job.load.kv_type.name()
    );
    *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
        status: v1::health_reply::Status::Ready as i32,
        message: "ready".into(),
        digest: job.digest,
        range: Some(job.range),
        weight_bytes: job.weight_bytes,
        kv_bytes: job.kv_bytes,
        scratch_bytes: job.scratch_bytes,
        ..Default::default()
    };
    Ok(Loaded {
        stage,
        file: job.file,
        grammars: Default::default(),
        act_dtype: job.act_dtype,
        limits: job.limits,
        label,
        seqs: HashMap::new(),
        disk,
    })
}

/// The layers whose files a stage writes and reads: blocks and states.
fn disk_layers<B: Backend>(stage: &Stage<B>) -> Vec<usize> {
    let mut layers = stage.kv_layer_indices();
    layers.extend(stage.state_layer_indices());
    layers
}

fn error_reply(batch_id: u64, error: String) -> v1::StageReply {
    v1::StageReply {
        batch_id,
        tokens: Vec::new(),
        error,
        stage_lost: false,
    }
}

/// The stage itself is gone (device failed, nothing loaded): the
/// coordinator rebuilds the pipeline rather than failing the batch.
pub(super) fn lost_reply(batch_id: u64, error: String) -> v1::StageReply {
    v1::StageReply {
        stage_lost: true,
        ..error_reply(batch_id, error)
    }
}

/// The device failed under a batch: the message, naming the stage.
struct DeviceFailed(String);

/// Why a batch got no result.
enum BatchError {
    /// The batch's own fault (a bad frame, a shape an op refused): an
    /// error reply for it, and the stage serves the next.
    Bad(String),
    /// The device failed ([`KernelError::Device`]).
    Device(String),
}

impl From<String> for BatchError {
    fn from(e: String) -> Self {
        BatchError::Bad(e)
    }
}

impl From<&str> for BatchError {
    fn from(e: &str) -> Self {
        BatchError::Bad(e.to_string())
    }
}

impl From<KernelError> for BatchError {
    fn from(e: KernelError) -> Self {
        if e.is_device() {
            BatchError::Device(e.to_string())
        } else {
            BatchError::Bad(e.to_string())
        }
    }
}

impl From<StageError> for BatchError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::Kernel(k) => k.into(),
            e => BatchError::Bad(e.to_string()),
        }
    }
}

/// Runs one frame: its result or its error reply, or `Err` when the device
/// failed under it.
fn forward<B: Backend>(l: &mut Loaded<B>, frame: v1::BatchFrame) -> Result<FrameOut, DeviceFailed> {
    let batch_id = frame.header.as_ref().map_or(0, |h| h.batch_id);
    if frame.clear_cached_first {
        l.stage.clear_cached();
    }
    release(l, &frame.retain_first, &frame.release_first);
    l.stage.evict_cached(&hashes(&frame.evict_first));
    let _span = tracing::debug_span!("batch", batch_id, stage = %l.label).entered();
    let dropped = hashes(&frame.drop_snapshots);
    let saves = snapshot_saves(&frame);
    let ran = try_forward(l, frame);
    // Drops apply whether the batch ran or not, as the coordinator counts
    // them (after the run: a sequence in it may resume from one); saves
    // only after a run.
    l.stage.drop_snapshots(&dropped);
    let ran = ran.and_then(|out| {
        let saved = l.stage.save_snapshots(&saves)?;
        if let Some(disk) = &l.disk {
            disk.save_snapshots(&l.stage, &saved);
        }
        Ok(out)
    });
    match ran {
        Ok(out) => Ok(out),
        Err(BatchError::Bad(e)) => Ok(FrameOut::Reply(error_reply(
            batch_id,
            format!("stage {}: {e}", l.label),
        ))),
        Err(BatchError::Device(e)) => Err(DeviceFailed(format!("stage {}: {e}", l.label))),
    }
}

/// The state snapshots a frame's runs save (`BatchEntry::snapshot`); a
/// hash of another length than 16 bytes saves nothing.
fn snapshot_saves(frame: &v1::BatchFrame) -> Vec<(u64, BlockHash)> {
    frame
        .header
        .iter()
        .flat_map(|h| &h.entries)
        .filter_map(|e| Some((e.seq_id, BlockHash::try_from(e.snapshot.as_slice()).ok()?)))
        .collect()
}

fn try_forward<B: Backend>(
    l: &mut Loaded<B>,
    frame: v1::BatchFrame,
) -> Result<FrameOut, BatchError> {
    let header = frame.header.ok_or("a frame with no header")?;
    let is_last = l.stage.is_last();
    let batch = frames::batch_of(&header, frame.token_ids.len(), is_last, l.limits)?;
    let n_tokens: usize = batch.iter().map(|s| s.n_tokens).sum();
    // Sequences that start on cached blocks take them first; the last
    // stage also gets the tokens before them its sampler reads.
    for e in header
        .entries
        .iter()
        .filter(|e| !e.prefix_blocks.is_empty())
    {
        let prefix = frames::prefix_of(e)?;
        restore(l, e.seq_id, &prefix, e.restore_blocks as usize)?;
        let mut read_snapshot = |layer: usize, shape: Shape| {
            let disk = l.disk.as_ref()?;
            disk.read(FileKind::State, layer, shape, prefix.last()?)
        };
        if e.restore_snapshot && l.disk.is_none() {
            return Err(format!(
                "sequence {}: a state snapshot to read from disk, but this worker keeps none (no --kv-cache-dir)",
                e.seq_id
            )
            .into());
        }
        let on_disk = e
            .restore_snapshot
            .then_some(&mut read_snapshot as ReadLayer<'_>);
        l.stage
            .attach_prefix(e.seq_id, e.start_pos as usize, &prefix, on_disk)?;
        if is_last {
            let st = l.seqs.entry(e.seq_id).or_default();
            st.history = e.history_before.clone();
            st.offset = (e.start_pos as usize).saturating_sub(st.history.len());
        }
    }
    let input = if l.stage.is_first() {
        if frame.token_ids.len() != n_tokens {
            return Err(format!(
                "{} token ids for {n_tokens} positions",
                frame.token_ids.len()
            )
            .into());
        }
        StageInput::Tokens(frame.token_ids.clone())
    } else {
        let d_model = l.stage.spec().d_model;
        let dtype = v1::ActDtype::try_from(frame.act_dtype)
            .map_err(|_| format!("unknown act_dtype {}", frame.act_dtype))?;
        let values = frames::decode_activations(&frame.activations, dtype, n_tokens, d_model)?;
        StageInput::Hidden {
            hidden: l
                .stage
                .backend()
                .act_from_host(&values, n_tokens, d_model)?,
            tokens: frame.token_ids.clone(),
        }
    };
    let out = l.stage.forward(&batch, input)?;
    match out {
        StageOutput::Hidden(act) => {
            let values = l.stage.backend().act_to_host(&act)?;
            Ok(FrameOut::Next(v1::BatchFrame {
                header: Some(header),
                token_ids: frame.token_ids,
                activations: frames::encode_activations(&values, l.act_dtype),
                act_dtype: l.act_dtype as i32,
                release_first: frame.release_first,
                retain_first: frame.retain_first,
                evict_first: frame.evict_first,
                clear_cached_first: frame.clear_cached_first,
                drop_snapshots: frame.drop_snapshots,
            }))
        }
        StageOutput::Logits(rows) => {
            Ok(sample(l, &header, &frame.token_ids, rows).map(FrameOut::Reply)?)
        }
    }
}

/// Block hashes from the wire; one of another length than 16 bytes ends
/// the list (a prefix is a chain: nothing after a bad link is kept).
fn hashes(wire: &[Vec<u8>]) -> Vec<BlockHash> {
    wire.iter()
        .map_while(|h| BlockHash::try_from(h.as_slice()).ok())
        .collect()
}

/// Reads the last `n` blocks of `prefix` back from disk into kept blocks,
/// all or none (what a sequence started on them then attaches).
fn restore<B: Backend>(
    l: &mut Loaded<B>,
    seq: u64,
    prefix: &[BlockHash],
    n: usize,
) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let Some(disk) = l.disk.as_ref() else {
        return Err(format!(
            "sequence {seq}: {n} prefix blocks to read from disk, but this worker keeps none (no --kv-cache-dir)"
        ));
    };
    let from = prefix.len().checked_sub(n).ok_or_else(|| {
        format!(
            "sequence {seq}: {n} blocks to restore of a prefix of {}",
            prefix.len()
        )
    })?;
    let restored: Vec<BlockHash> = prefix[from..]
        .iter()
        .filter(|h| !l.stage.blocks().is_kept(h))
        .copied()
        .collect();
    for (i, &hash) in restored.iter().enumerate() {
        let mut read = |layer: usize, shape: Shape| disk.read(FileKind::Block, layer, shape, &hash);
        if let Err(e) = l.stage.restore_block(seq, hash, &mut read) {
            l.stage.evict_cached(&restored[..i]);
            return Err(e.to_string());
        }
    }
    tracing::debug!(seq, blocks = restored.len(), "prefix blocks read from disk");
    Ok(())
}

/// Frees `seqs`, first keeping the blocks `retain` names for the prefix
/// cache (and writing those newly kept to disk).
fn release<B: Backend>(l: &mut Loaded<B>, retain: &[v1::RetainBlocks], seqs: &[u64]) {
    for r in retain {
        let kept = l
            .stage
            .retain_and_release(r.seq_id, &hashes(&r.block_hashes));
        if let Some(disk) = &l.disk {
            disk.save(&l.stage, &kept);
        }
        l.seqs.remove(&r.seq_id);
    }
    for s in seqs {
        l.stage.release(*s);
        l.seqs.remove(s);
    }
}

/// Last stage: update each sequence's history, then sample the runs that
/// asked for a token with their sequence's parameters.
fn sample<B: Backend>(
    l: &mut Loaded<B>,
    header: &v1::BatchHeader,
    token_ids: &[u32],
    rows: Vec<Vec<f32>>,
) -> Result<v1::StageReply, String> {
    let mut offset = 0usize;
    for e in &header.entries {
        let constraint = match &e.sampling {
            Some(p) if !p.grammar.is_empty() => Some(l.grammars.compile(
                &l.file,
                &p.grammar,
                p.grammar_start as usize,
            )?),
            _ => None,
        };
        let st = l.seqs.entry(e.seq_id).or_default();
        if let Some(p) = &e.sampling {
            st.sampler = Some(Sampler::new(frames::sampling_from_wire(p)));
            st.constraint = constraint;
        }
        let n = e.n_tokens as usize;
        if !token_ids.is_empty() {
            st.history
                .truncate((e.start_pos as usize).saturating_sub(st.offset));
            st.history.extend_from_slice(&token_ids[offset..offset + n]);
        }
        offset += n;
    }
    // With no sampling run the stage made one row nobody asked for (see
    // `frames::batch_of`); otherwise one row per sampling run, in order.
    let mut tokens = Vec::new();
    let mut rows = rows.into_iter();
    for e in header.entries.iter().filter(|e| e.sample) {
        let mut row = rows
            .next()
            .ok_or("the stage returned fewer logit rows than asked")?;
        let st = l.seqs.entry(e.seq_id).or_default();
        let sampler = st.sampler.as_mut().ok_or_else(|| {
            format!(
                "sequence {} has no sampling parameters (send them with its first frame)",
                e.seq_id
            )
        })?;
        if let Some(c) = st.constraint.as_mut() {
            // One mask per step, after the grammar saw every token so far.
            if let Err(err) = c
                .follow(&st.history, st.offset)
                .and_then(|()| c.mask(&mut row))
            {
                // That sequence alone fails (no token for it), not the batch.
                tracing::warn!(seq = e.seq_id, "constrained decoding failed: {err}");
                continue;
            }
        }
        let s = sampler.sample(&row, &st.history);
        tokens.push(frames::sampled_to_wire(e.seq_id, &s));
    }
    Ok(v1::StageReply {
        batch_id: header.batch_id,
        tokens,
        error: String::new(),
        stage_lost: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a device error fails the worker; bad input, as a kernel's or
    /// the stage's error, is that batch's error reply.
    #[test]
    fn only_device_errors_fail_the_worker() {
        let device = || KernelError::Device("CUDA error in rope: lost".into());
        let invalid = || KernelError::Invalid("rope: 1 positions for 2 rows".into());
        assert!(matches!(BatchError::from(device()), BatchError::Device(_)));
        assert!(matches!(
            BatchError::from(StageError::Kernel(device())),
            BatchError::Device(_)
        ));
        assert!(matches!(BatchError::from(invalid()), BatchError::Bad(_)));
        assert!(matches!(
            BatchError::from(StageError::Kernel(invalid())),
            BatchError::Bad(_)
        ));
        assert!(matches!(
            BatchError::from(StageError::Batch("no such sequence".into())),
            BatchError::Bad(_)
        ));
    }
}
