//! The TCP data link (`--transport tcp`): one TLS connection per hop or
//! reply line, carrying [`v1::LinkMessage`]s, each a 4-byte little-endian
//! length and its prost bytes.
//!
//! Unlike gRPC and QUIC, no async runtime takes part on a worker: the
//! sending stage's compute thread writes its result on a blocking socket
//! ([`LinkWriter`]), and the receiving stage's compute thread waits in
//! `poll` on its links and reads the frame itself ([`LinkConn`]), as it
//! writes replies to a coordinator's reply lines. The coordinator's end is
//! async ([`super::tcp_peer`]). A hop then costs one wake-up (the receiver's), where a hop
//! through tokio costs three (compute thread to tokio, the network, tokio
//! to the next compute thread). What ggml's RPC server does with blocking
//! sockets, under the same TLS as the other links (pinned worker
//! certificate, the cluster client certificate derived from the token) and
//! an ALPN of its own on the worker's gRPC port.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rustls::{ClientConnection, ServerConnection};

use crate::link::MAX_MESSAGE_BYTES;
use crate::tls::{self, Fingerprint};
use crate::v1;

/// The ALPN a link connection asks for on a worker's TLS port.
pub const ALPN: &[u8] = b"strata-link/1";
/// The byte a worker sends once it accepted a link. Under TLS 1.3 the
/// client's handshake ends before the server checked its certificate, so a
/// refused link (a wrong token) shows at the first read, not at connect.
pub const READY: u8 = 0x5a;
/// Longest a connect and its handshake may take (a worker's frames then go
/// over gRPC until its next load; a coordinator's call goes over gRPC).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a blocked write looks up whether to give up (a reload of the
/// stage came: the coordinator gave the next stage up). A next stage that
/// is alive but busy (a long prompt) is waited for however long it takes:
/// `TCP_USER_TIMEOUT` would also cut a window closed that long.
pub const WRITE_CHECK: Duration = Duration::from_secs(1);
/// Longest a worker's link may hold replies its coordinator takes none
/// of; the link then ends.
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of replies a worker's link holds for a coordinator that
/// reads too slowly (one reply of any size is always taken); past it the
/// link ends.
pub const REPLY_QUEUE_BYTES: usize = 64 << 20;
/// Most bytes one `LinkConn::read` takes before the thread looks at its
/// other links and commands again.
const READ_BUDGET: usize = 16 << 20;

/// Encodes `msg` with its length prefix; a message over the limit is an
/// error of its own (the peer would end the link for it).
pub fn encode(msg: &v1::LinkMessage) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Appends `msg` with its length prefix to `buf`.
fn encode_into(msg: &v1::LinkMessage, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = msg.encoded_len();
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message of {len} bytes, more than the limit of {MAX_MESSAGE_BYTES}"),
        ));
    }
    buf.reserve(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(buf).expect("a Vec grows");
    Ok(())
}

/// TCP keep-alive probes after 10 s idle, every 5 s, 3 unanswered: an idle
/// link whose peer's host vanished ends within about 25 s.
pub fn set_keepalive(fd: RawFd) -> io::Result<()> {
    let set = |level, name, value: libc::c_int| {
        // SAFETY: a live socket, and an option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
}

/// The sending end, on the stage before: a blocking socket.
pub struct LinkWriter {
    sock: TcpStream,
    conn: ClientConnection,
}

impl LinkWriter {
    /// Connects to the worker at `addr` whose certificate is `pin`.
    pub fn connect(addr: &str, token: &str, pin: Fingerprint) -> Result<Self, String> {
        let err = |e: &dyn std::fmt::Display| format!("TCP data link to {addr}: {e}");
        let target: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| err(&e))?
            .next()
            .ok_or_else(|| err(&"the address resolves to nothing"))?;
        let mut sock = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).map_err(|e| err(&e))?;
        sock.set_nodelay(true).map_err(|e| err(&e))?;
        sock.set_read_timeout(Some(CONNECT_TIMEOUT))
            .and_then(|_| sock.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| err(&e))?;
        let mut config = (*tls::client_config(token, pin).map_err(|e| err(&e))?).clone();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let mut conn =
            ClientConnection::new(Arc::new(config), tls::server_name()).map_err(|e| err(&e))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| err(&e))?;
        }
        if conn.alpn_protocol() != Some(ALPN) {
            return Err(err(
                &"the worker does not serve TCP data links (an older version)",
            ));
        }
        let mut ready = [0u8; 1];
        match rustls::Stream::new(&mut conn, &mut sock).read(&mut ready) {
            Ok(1) if ready[0] == READY => {}
            Ok(_) => return Err(err(&"the worker did not accept the link")),
            Err(e) => return Err(err(&format!("refused: {e}"))),
        }
        // Reads happen only when `poll` says the peer sent something; a
        // write wakes every WRITE_CHECK to ask whether to give up.
        sock.set_read_timeout(None)
            .and_then(|_| sock.set_write_timeout(Some(WRITE_CHECK)))
            .and_then(|_| set_keepalive(sock.as_raw_fd()))
            .map_err(|e| err(&e))?;
        Ok(LinkWriter { sock, conn })
    }

    /// Writes one message; returns when the kernel has all of it, or with
    /// an error once `give_up` says so while the next stage reads nothing.
    /// A message over the limit is an
    /// `InvalidInput` error, and the link stays.
    pub fn send(&mut self, msg: &v1::LinkMessage, give_up: &dyn Fn() -> bool) -> io::Result<()> {
        let bytes = encode(msg)?;
        let mut rest = &bytes[..];
        // SO_SNDTIMEO (WRITE_CHECK) ends a blocked write to ask.
        while !pump(&mut self.conn, &mut self.sock, &mut rest)?.done {
            if give_up() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the next stage read nothing, and the stage is reloading",
                ));
            }
        }
        Ok(())
    }

    /// After `poll` said the socket is readable: whether the link is over.
    /// The next stage sends nothing but TLS housekeeping (session tickets),
    /// so an end of stream, an alert or any data means it is.
    pub fn peer_closed(&mut self) -> bool {
        if self.sock.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => break true,
                Ok(_) => {
                    if self.conn.process_new_packets().is_err() {
                        break true;
                    }
                    let mut byte = [0u8; 1];
                    match self.conn.reader().read(&mut byte) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        _ => break true,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        closed || self.sock.set_nonblocking(false).is_err()
    }
}

impl AsRawFd for LinkWriter {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// What a [`pump`] did.
struct Pumped {
    /// All of it is on the socket.
    done: bool,
    /// The socket took some bytes.
    wrote: bool,
}

/// Moves `rest` through `conn`'s TLS onto `sock` until all of it is on the
/// socket, or the socket takes no more (it would block, or its send
/// timeout passed). rustls takes a bounded amount of plaintext at a time
/// (64 KiB), so a prompt's hidden states go in pieces.
fn pump<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    rest: &mut &[u8],
) -> io::Result<Pumped> {
    let mut wrote = false;
    loop {
        while !rest.is_empty() {
            match conn.writer().write(rest)? {
                0 => break,
                n => *rest = &rest[n..],
            }
        }
        if !conn.wants_write() {
            return match rest.is_empty() {
                true => Ok(Pumped { done: true, wrote }),
                false => Err(io::Error::new(io::ErrorKind::WriteZero, "TLS took nothing")),
            };
        }
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => wrote = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Pumped { done: false, wrote })
            }
            Err(e) => return Err(e),
        }
    }
}

/// A worker's end of a link: a non-blocking socket its compute thread
/// polls for frames, and writes replies on.
pub struct LinkConn {
    sock: TcpStream,
    conn: ServerConnection,
    peer: SocketAddr,
    framer: Framer,
    /// Replies queued and not yet taken by TLS, from `out_start` on: the
    /// compute thread never waits for a coordinator that reads slowly.
    out: Vec<u8>,
    out_start: usize,
    /// When the peer last took bytes, while some wait.
    took_at: Instant,
}

/// Cuts a byte stream into length-prefixed messages. It holds only bytes
/// that arrived, never a buffer of the length a peer announced.
#[derive(Default)]
pub struct Framer {
    /// Bytes received and not yet made into messages, from `start` on.
    buf: Vec<u8>,
    start: usize,
}

impl LinkConn {
    /// Takes over a connection the TLS acceptor completed under [`ALPN`].
    /// Call inside the tokio runtime (the socket leaves its reactor).
    pub fn from_accepted(
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ) -> io::Result<Self> {
        let (tcp, conn) = tls.into_inner();
        let peer = tcp.peer_addr()?;
        let sock = tcp.into_std()?;
        sock.set_nonblocking(true)?;
        set_keepalive(sock.as_raw_fd())?;
        Ok(LinkConn {
            sock,
            conn,
            peer,
            framer: Framer::default(),
            out: Vec::new(),
            out_start: 0,
            took_at: Instant::now(),
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Ends the link (what the next `read` then says).
    pub fn shutdown(&self) -> io::Result<()> {
        self.sock.shutdown(std::net::Shutdown::Both)
    }

    /// Queues one message and writes what the socket takes now; the rest
    /// goes out in [`flush`](Self::flush) when `poll` says the socket takes
    /// more. An error (the peer took nothing for [`REPLY_WRITE_TIMEOUT`],
    /// more than [`REPLY_QUEUE_BYTES`] would wait, the socket failed)
    /// means the link is of no more use.
    pub fn send(&mut self, msg: &v1::LinkMessage) -> io::Result<()> {
        let waiting = self.out.len() - self.out_start;
        self.start_waiting();
        encode_into(msg, &mut self.out)?;
        if waiting > 0 && self.out.len() - self.out_start > REPLY_QUEUE_BYTES {
            self.out.truncate(self.out_start + waiting);
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("the peer reads too slowly: {waiting} bytes of replies wait"),
            ));
        }
        self.flush()
    }

    /// The deadline of what is about to wait counts from now when nothing
    /// waited before.
    fn start_waiting(&mut self) {
        if !self.wants_write() {
            self.took_at = Instant::now();
        }
    }

    /// Whether queued bytes wait for the socket (poll it for `POLLOUT`).
    pub fn wants_write(&self) -> bool {
        self.out_start < self.out.len() || self.conn.wants_write()
    }

    /// When the link ends unless the peer takes some of what waits.
    pub fn write_deadline(&self) -> Option<Instant> {
        self.wants_write()
            .then(|| self.took_at + REPLY_WRITE_TIMEOUT)
    }

    /// Writes what the socket takes of the queue, without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut rest = &self.out[self.out_start..];
        let pumped = pump(&mut self.conn, &mut self.sock, &mut rest)?;
        self.out_start = self.out.len() - rest.len();
        if pumped.wrote {
            self.took_at = Instant::now();
        }
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
            // A burst for a slow reader is not kept for the link's life.
            if self.out.capacity() > 4 << 20 {
                self.out = Vec::new();
            }
        } else if self.out_start > self.out.len() / 2 {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
        if !pumped.done && self.took_at.elapsed() >= REPLY_WRITE_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {REPLY_WRITE_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }

    /// Reads what the socket holds and appends each whole message to `out`.
    /// `Ok(false)`: the peer closed the link (after the messages in `out`).
    /// An error (bad TLS, a message over the limit, one that does not
    /// decode) ends the link too.
    pub fn read(&mut self, out: &mut Vec<v1::LinkMessage>) -> Result<bool, String> {
        // TLS housekeeping this read answers (a key update) may wait too.
        self.start_waiting();
        let mut open = true;
        let mut taken = 0;
        while taken < READ_BUDGET {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    self.conn
                        .process_new_packets()
                        .map_err(|e| format!("TLS: {e}"))?;
                    if !self.take_plaintext()? {
                        open = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        self.framer.split(out)?;
        // TLS may owe the peer something (a key update's answer). A link
        // that cannot take what waits ends (the messages above still run);
        // one the peer closed reads as closed.
        match self.flush() {
            Err(e) if open => Err(e.to_string()),
            _ => Ok(open),
        }
    }

    /// Moves decrypted bytes into `buf`; `false` once the peer said it is
    /// done (close_notify).
    fn take_plaintext(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.framer.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Moves the whole messages received so far to `out`. A length over
    /// [`MAX_MESSAGE_BYTES`] or a message that does not decode is an
    /// error, and the link ends.
    pub fn split(&mut self, out: &mut Vec<v1::LinkMessage>) -> Result<(), String> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(head) = rest.get(..4) else { break };
            let len = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
            if len > MAX_MESSAGE_BYTES {
                return Err(format!(
                    "a message of {len} bytes, more than the limit of {MAX_MESSAGE_BYTES}"
                ));
            }
            let Some(body) = rest.get(4..4 + len) else {
                break;
            };
            let msg = v1::LinkMessage::decode(body).map_err(|e| format!("a bad message: {e}"))?;
            out.push(msg);
            self.start += 4 + len;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

impl AsRawFd for LinkConn {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(batch_id: u64, activations: Vec<u8>) -> v1::LinkMessage {
        v1::LinkMessage {
            kind: Some(v1::link_message::Kind::Frame(v1::BatchFrame {
                header: Some(v1::BatchHeader {
                    batch_id,
                    ..Default::default()
                }),
                activations,
                ..Default::default()
            })),
        }
    }

    /// Messages come out whole however the bytes were cut, in order.
    #[test]
    fn messages_are_cut_out_of_any_split_of_the_stream() {
        let sent = [
            frame(1, vec![7; 100]),
            frame(2, Vec::new()),
            frame(3, vec![9; 70_000]),
        ];
        let bytes: Vec<u8> = sent.iter().flat_map(|m| encode(m).unwrap()).collect();
        for piece in [1, 3, 4, 5, 1000, bytes.len()] {
            let (mut framer, mut out) = (Framer::default(), Vec::new());
            for chunk in bytes.chunks(piece) {
                framer.push(chunk);
                framer.split(&mut out).unwrap();
            }
            assert_eq!(out, sent, "pieces of {piece} bytes");
            assert!(framer.buf.is_empty(), "nothing left over");
        }
    }

    /// A length over the limit ends the link at once, before any of it
    /// arrived (nothing is allocated for it); so does a body that is not a
    /// message.
    #[test]
    fn an_oversized_or_garbled_message_is_an_error() {
        let mut framer = Framer::default();
        framer.push(&u32::MAX.to_le_bytes());
        let e = framer.split(&mut Vec::new()).unwrap_err();
        assert!(e.contains("more than the limit"), "{e}");
        assert!(framer.buf.capacity() < 1024);

        let mut framer = Framer::default();
        framer.push(&3u32.to_le_bytes());
        framer.push(&[0xff, 0xff, 0xff]);
        let e = framer.split(&mut Vec::new()).unwrap_err();
        assert!(e.contains("a bad message"), "{e}");
    }
}
