//! The compute thread's own sockets (`--transport tcp`,
//! `strata_proto::transport::tcp`): the links that bring frames (from the
//! stage before, or a coordinator), read here; the coordinators' reply
//! lines, written here; and the link to the next stage, written here. The
//! thread waits in `poll` on them and on a wake-up pipe that every command
//! queued from the async side writes to.
//!
//! What the thread cannot do itself (send on by gRPC or QUIC, answer a
//! gRPC reply line, free sequences on the later stages) it hands to the
//! async side as a [`Handoff`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use strata_proto::transport::tcp::{LinkConn, LinkWriter};
use strata_proto::v1::{self, link_message::Kind};
use strata_proto::Fingerprint;
use tokio::sync::mpsc::UnboundedSender;

use super::reply_routes::ReplyRoutes;
use super::stage_thread::{lost_reply, Command, FrameOut};

/// The sending side of the compute thread's queue.
pub struct StageTx {
    tx: mpsc::Sender<Command>,
    wake: UnixStream,
}

impl StageTx {
    /// `Err`: the thread has stopped.
    pub fn send(&self, cmd: Command) -> Result<(), ()> {
        self.tx.send(cmd).map_err(|_| ())?;
        // A full pipe already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }
}

/// The compute thread's side of its queue.
pub struct StageRx {
    rx: mpsc::Receiver<Command>,
    wake: UnixStream,
}

pub fn queue() -> io::Result<(StageTx, StageRx)> {
    let (tx, rx) = mpsc::channel();
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    Ok((StageTx { tx, wake: wake_tx }, StageRx { rx, wake: wake_rx }))
}

/// For the async side: what the compute thread cannot do itself.
pub enum Handoff {
    /// A linked frame's result, to go on by gRPC or QUIC, or its reply to
    /// its coordinator's gRPC line. Replies that come back for it (no
    /// route) go back on link `back`.
    Deliver {
        batch_id: u64,
        route: u64,
        out: FrameOut,
        back: u64,
    },
    /// Link `link` closed: free the sequences it carried, here and on the
    /// later stages.
    Released { link: u64, seqs: Vec<u64> },
    /// The link to the next stage broke: the coordinators of these routes
    /// hear of it.
    Lost { routes: Vec<u64>, error: String },
}

/// Where the next stage listens, for a TCP data link.
#[derive(Clone)]
pub struct NextTarget {
    pub addr: String,
    pub token: String,
    pub pin: Fingerprint,
}

struct Inbound {
    id: u64,
    conn: LinkConn,
    /// Sequences its frames started and no release ended yet.
    seqs: HashSet<u64>,
    /// The route whose reply line it is, once a coordinator said so.
    line: Option<u64>,
}

struct NextLink {
    target: NextTarget,
    writer: Option<LinkWriter>,
    /// Once the link failed to open, frames go by the async side until the
    /// next load: a sequence's frames never go two ways that could reorder
    /// them.
    failed: bool,
    /// Once it broke, every frame gets a `stage_lost` reply until the next
    /// load: the frames before it were lost, so the ones after would only
    /// compute on holes.
    broken: bool,
    /// Reply routes of the frames sent on it.
    routes: HashSet<u64>,
}

/// What a wait brought.
pub struct Ready {
    /// Frames and releases from the links, in the order they came, each
    /// with the link it came on.
    pub messages: Vec<(u64, v1::LinkMessage)>,
    /// Commands are queued.
    pub commands: bool,
}

pub struct Links {
    inbound: Vec<Inbound>,
    next_id: u64,
    /// Reply lines by route: the link that is each one.
    lines: HashMap<u64, u64>,
    next: Option<NextLink>,
    handoff: Option<UnboundedSender<Handoff>>,
    frames_sent: Arc<AtomicU64>,
    /// Where the async side learns which routes have a TCP line here.
    reply_routes: Arc<ReplyRoutes>,
    /// Set by the async side when a load or unload is queued: a write
    /// blocked on the next stage gives up (the coordinator gave it up).
    reloading: Arc<AtomicBool>,
    /// Links that closed in the last wait, released once the messages they
    /// brought before closing have run.
    closed: Vec<Handoff>,
}

impl Links {
    pub fn new(
        frames_sent: Arc<AtomicU64>,
        reply_routes: Arc<ReplyRoutes>,
        reloading: Arc<AtomicBool>,
    ) -> Self {
        Links {
            inbound: Vec::new(),
            next_id: 1,
            lines: HashMap::new(),
            next: None,
            handoff: None,
            frames_sent,
            reply_routes,
            reloading,
            closed: Vec::new(),
        }
    }

    pub fn set_handoff(&mut self, handoff: UnboundedSender<Handoff>) {
        self.handoff = Some(handoff);
    }

    pub fn attach(&mut self, conn: LinkConn) {
        tracing::info!("TCP data link from {}", conn.peer());
        self.inbound.push(Inbound {
            id: self.next_id,
            conn,
            seqs: HashSet::new(),
            line: None,
        });
        self.next_id += 1;
    }

    /// Sets (or clears) the next stage a TCP link goes to; connects on the
    /// first frame.
    pub fn set_next(&mut self, target: Option<NextTarget>) {
        self.reloading.store(false, Relaxed);
        self.next = target.map(|target| NextLink {
            target,
            writer: None,
            failed: false,
            broken: false,
            routes: HashSet::new(),
        });
    }

    pub fn hand_off(&self, h: Handoff) {
        match &self.handoff {
            Some(tx) if tx.send(h).is_ok() => {}
            _ => tracing::warn!("the async side is gone (the service stopped): a hand-off dropped"),
        }
    }

    /// Blocks until a link or the queue has something.
    pub fn wait(&mut self, rx: &StageRx) -> Ready {
        let mut fds: Vec<libc::pollfd> = std::iter::once(rx.wake.as_raw_fd())
            .chain(self.inbound.iter().map(|i| i.conn.as_raw_fd()))
            .chain(
                self.next
                    .iter()
                    .filter_map(|n| Some(n.writer.as_ref()?.as_raw_fd())),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Replies a coordinator has not taken yet wait for room, or for
        // their link's deadline.
        let mut deadline = None;
        for (i, inbound) in self.inbound.iter().enumerate() {
            if let Some(d) = inbound.conn.write_deadline() {
                fds[1 + i].events |= libc::POLLOUT;
                deadline = Some(deadline.map_or(d, |at: Instant| at.min(d)));
            }
        }
        let timeout_ms = deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            left.as_millis().min(i32::MAX as u128 - 1) as libc::c_int + 1
        });
        loop {
            // SAFETY: `fds` is a live, correctly sized array of pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // Only a bad argument fails poll: say so, and look at the
                // queue without spinning.
                tracing::error!("waiting on the data links: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                return Ready {
                    messages: Vec::new(),
                    commands: true,
                };
            }
        }
        let ready = |i: usize| fds[i].revents != 0;
        let mut messages = Vec::new();
        // The links' messages run before the commands of the same wait.
        // Order between the two does not matter: releases that must follow
        // a link's frames come on the link.
        let mut closed = Vec::new();
        let mut lines = Vec::new();
        for (i, inbound) in self.inbound.iter_mut().enumerate() {
            // A read flushes too; a link with nothing to read is flushed here.
            let mut look = ready(1 + i);
            if !look && inbound.conn.wants_write() {
                if let Err(e) = inbound.conn.flush() {
                    // The read below then sees the link end.
                    inbound.end(&e);
                    look = true;
                }
            }
            if !look {
                continue;
            }
            let mut got = Vec::new();
            let open = inbound.conn.read(&mut got);
            for m in got {
                match m.kind {
                    Some(Kind::ReplyLine(route)) if route != 0 => {
                        inbound.line = Some(route);
                        lines.push((route, inbound.id));
                    }
                    Some(Kind::Frame(_)) | Some(Kind::Release(_)) => {
                        inbound.track(&m);
                        messages.push((inbound.id, m));
                    }
                    _ => tracing::warn!(
                        "a link message a worker does not take, from {}",
                        inbound.conn.peer()
                    ),
                }
            }
            match open {
                Ok(true) => {}
                Ok(false) => closed.push((i, "closed".to_string())),
                Err(e) => closed.push((i, e)),
            }
        }
        for (route, id) in lines {
            // A newer line of a route replaces the older one, as over gRPC.
            self.lines.insert(route, id);
            self.reply_routes.set_tcp_line(route, true);
            // The coordinator waits for this before it sends frames that
            // may need the line.
            let ack = v1::LinkMessage {
                kind: Some(Kind::ReplyLine(route)),
            };
            if let Some(l) = self.inbound.iter_mut().find(|l| l.id == id) {
                if let Err(e) = l.conn.send(&ack) {
                    l.end(&e);
                }
            }
        }
        for (i, why) in closed.into_iter().rev() {
            let inbound = self.inbound.remove(i);
            tracing::info!("TCP data link from {} ended: {why}", inbound.conn.peer());
            if let Some(route) = inbound.line {
                if self.lines.get(&route) == Some(&inbound.id) {
                    self.lines.remove(&route);
                    self.reply_routes.set_tcp_line(route, false);
                }
            }
            self.closed.push(Handoff::Released {
                link: inbound.id,
                seqs: inbound.seqs.into_iter().collect(),
            });
        }
        // The next stage's socket, when there is one, is polled last.
        let writer_at = fds.len() - 1;
        if self.next.as_ref().is_some_and(|n| n.writer.is_some()) && ready(writer_at) {
            let next = self.next.as_mut().expect("checked");
            if next.writer.as_mut().is_some_and(|w| w.peer_closed()) {
                let error = format!("next stage {} closed the TCP data link", next.target.addr);
                self.lose_next(error);
            }
        }
        let commands = ready(0);
        if commands {
            drain(&rx.wake);
        }
        Ready { messages, commands }
    }

    /// Releases the links that closed, once the messages they brought
    /// before closing ran (their results handed off first).
    pub fn release_closed(&mut self) {
        for h in std::mem::take(&mut self.closed) {
            self.hand_off(h);
        }
    }

    /// A frame's result, written where this thread can write it
    /// (`FrameOut::Sent`): hidden states on the next stage's link, a reply
    /// on its route's TCP line, or back on the link `from` that brought a
    /// frame with no route. Else as it was, for the async side.
    pub fn route_out(&mut self, batch_id: u64, route: u64, from: u64, out: FrameOut) -> FrameOut {
        match self.pass_on(batch_id, route, out) {
            FrameOut::Reply(reply) => match self.reply_link(route, from) {
                Some(link) => {
                    self.reply_on(link, reply);
                    FrameOut::Sent
                }
                None => FrameOut::Reply(reply),
            },
            out => out,
        }
    }

    /// The link a reply of `route` goes on, if this thread holds it.
    fn reply_link(&self, route: u64, from: u64) -> Option<u64> {
        match route {
            0 => (from != 0).then_some(from),
            r => self.lines.get(&r).copied(),
        }
    }

    /// A reply the async side could not send: on its route's TCP line, or
    /// back on link `back`. A line that closed since the async side looked
    /// sends it back there (the coordinator may have opened a gRPC line).
    pub fn reply(&mut self, route: u64, back: u64, reply: v1::StageReply) {
        match self.reply_link(route, back) {
            Some(link) => self.reply_on(link, reply),
            None if route != 0 => self.hand_off(Handoff::Deliver {
                batch_id: reply.batch_id,
                route,
                out: FrameOut::Reply(reply),
                back: 0,
            }),
            None => tracing::warn!(
                "the reply to batch {} has no line to its coordinator: dropped",
                reply.batch_id
            ),
        }
    }

    fn reply_on(&mut self, link: u64, reply: v1::StageReply) {
        let Some(i) = self.inbound.iter().position(|l| l.id == link) else {
            tracing::warn!("the reply to batch {}: its link closed", reply.batch_id);
            return;
        };
        tracing::debug!(target: "strata::hop", batch_id = reply.batch_id, "reply");
        let msg = v1::LinkMessage {
            kind: Some(Kind::Reply(reply)),
        };
        if let Err(e) = self.inbound[i].conn.send(&msg) {
            self.inbound[i].end(&e);
        }
    }

    /// Hidden states on the next stage's TCP link when there is one and the
    /// frame has a reply route (`FrameOut::Sent`), else as they were.
    fn pass_on(&mut self, batch_id: u64, route: u64, out: FrameOut) -> FrameOut {
        let FrameOut::Next(frame) = out else {
            return out;
        };
        if let Some(next) = self.next.as_ref().filter(|n| n.broken) {
            let error = format!(
                "the TCP data link to next stage {} broke; waiting for a reload",
                next.target.addr
            );
            return FrameOut::Reply(lost_reply(batch_id, error));
        }
        let Some(next) = self.next.as_mut().filter(|n| !n.failed && route != 0) else {
            return FrameOut::Next(frame);
        };
        if next.writer.is_none() {
            let t = &next.target;
            match LinkWriter::connect(&t.addr, &t.token, t.pin) {
                Ok(w) => {
                    tracing::info!("data to next stage {} over a TCP link", t.addr);
                    next.writer = Some(w);
                }
                Err(e) => {
                    tracing::warn!("{e}; frames go over gRPC until the next load");
                    next.failed = true;
                    return FrameOut::Next(frame);
                }
            }
        }
        let msg = v1::LinkMessage {
            kind: Some(Kind::Frame(frame)),
        };
        let writer = next.writer.as_mut().expect("connected above");
        let reloading = self.reloading.clone();
        match writer.send(&msg, &|| reloading.load(Relaxed)) {
            Ok(()) => {
                next.routes.insert(route);
                self.frames_sent.fetch_add(1, Relaxed);
                tracing::debug!(target: "strata::hop", batch_id, "sent on");
                FrameOut::Sent
            }
            // Too big for a link message: that batch's error alone.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => FrameOut::Reply(v1::StageReply {
                batch_id,
                error: format!("sending to next stage {}: {e}", next.target.addr),
                ..Default::default()
            }),
            Err(e) => {
                let error = format!("TCP data link to next stage {}: {e}", next.target.addr);
                next.routes.remove(&route);
                self.lose_next(error.clone());
                FrameOut::Reply(lost_reply(batch_id, error))
            }
        }
    }

    /// Sends a release on the TCP link, after the frames before it. The
    /// async side also sends it by gRPC, which may overtake those frames:
    /// the copy on the link is the one that comes after them (a second
    /// release of a sequence frees nothing).
    pub fn pass_release(&mut self, req: &v1::ReleaseRequest) {
        let Some(writer) = self.next.as_mut().and_then(|n| n.writer.as_mut()) else {
            return;
        };
        let msg = v1::LinkMessage {
            kind: Some(Kind::Release(req.clone())),
        };
        let reloading = self.reloading.clone();
        if let Err(e) = writer.send(&msg, &|| reloading.load(Relaxed)) {
            let addr = &self.next.as_ref().expect("has a writer").target.addr;
            let error = format!("TCP data link to next stage {addr}: {e}");
            self.lose_next(error);
        }
    }

    fn lose_next(&mut self, error: String) {
        let Some(next) = self.next.as_mut() else {
            return;
        };
        tracing::warn!("{error}");
        next.writer = None;
        next.failed = true;
        next.broken = true;
        let routes: Vec<u64> = next.routes.drain().collect();
        // Lines held here hear of it at once; gRPC lines from the async side.
        let (here, there): (Vec<u64>, Vec<u64>) =
            routes.into_iter().partition(|r| self.lines.contains_key(r));
        for route in here {
            self.reply(route, 0, lost_reply(0, error.clone()));
        }
        if !there.is_empty() {
            self.hand_off(Handoff::Lost {
                routes: there,
                error,
            });
        }
    }
}

impl Inbound {
    /// Ends a link that cannot take its replies: the next wait reads it as
    /// closed, and its coordinator hears of it as its line's end.
    fn end(&self, e: &io::Error) {
        tracing::warn!("replies to {}: {e}; the link ends", self.conn.peer());
        let _ = self.conn.shutdown();
    }

    fn track(&mut self, m: &v1::LinkMessage) {
        match &m.kind {
            Some(Kind::Frame(f)) => {
                // A coordinator's frames end sequences in line.
                let ended = f.release_first.iter();
                for s in ended.chain(f.retain_first.iter().map(|r| &r.seq_id)) {
                    self.seqs.remove(s);
                }
                if let Some(h) = &f.header {
                    self.seqs.extend(h.entries.iter().map(|e| e.seq_id));
                }
            }
            Some(Kind::Release(r)) => {
                for s in r.seq_ids.iter().chain(r.retain.iter().map(|r| &r.seq_id)) {
                    self.seqs.remove(s);
                }
            }
            _ => {}
        }
    }
}

impl StageRx {
    pub fn try_recv(&self) -> Result<Command, mpsc::TryRecvError> {
        self.rx.try_recv()
    }
}

/// Empties the wake-up pipe (until it would block, or its writer is gone:
/// the queue then says it is disconnected).
fn drain(wake: &UnixStream) {
    let mut buf = [0u8; 256];
    loop {
        match (&*wake).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
