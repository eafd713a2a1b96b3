//! The TCP data link between workers (`--transport tcp`): one TLS
//! connection per hop, carrying [`v1::LinkMessage`]s one way, each a 4-byte
//! little-endian length and its prost bytes.
//!
//! Unlike gRPC and QUIC, no async runtime takes part: the sending stage's
//! compute thread writes its result on a blocking socket, and the receiving
//! stage's compute thread waits in `poll` on its links and reads the frame
//! itself. A hop then costs one wake-up (the receiver's), where a hop
//! through tokio costs three (compute thread to tokio, the network, tokio
//! to the next compute thread). What ggml's RPC server does with blocking
//! sockets, under the same TLS as the other links (pinned worker
//! certificate, the cluster client certificate derived from the token) and
//! an ALPN of its own on the worker's gRPC port.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rustls::{ClientConnection, ServerConnection};

use crate::link::MAX_MESSAGE_BYTES;
use crate::tls::{self, Fingerprint};
use crate::v1;

/// The ALPN a link connection asks for on a worker's TLS port.
pub const ALPN: &[u8] = b"strata-link/1";
/// Longest a connect and its handshake may take (the sender then falls
/// back to gRPC for a while).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one write may block: a next stage that stops reading for this
/// long is treated as gone, rather than holding the compute thread.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Encodes `msg` with its length prefix.
pub fn encode(msg: &v1::LinkMessage) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(&mut buf).expect("a Vec grows");
    buf
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
            return Err(err(&"the worker does not serve TCP data links (an older version)"));
        }
        // Reads happen only when `poll` says the peer sent something.
        sock.set_read_timeout(None)
            .and_then(|_| sock.set_write_timeout(Some(WRITE_TIMEOUT)))
            .map_err(|e| err(&e))?;
        Ok(LinkWriter { sock, conn })
    }

    /// Writes one message; returns when the kernel has all of it.
    pub fn send(&mut self, msg: &v1::LinkMessage) -> io::Result<()> {
        self.conn.writer().write_all(&encode(msg))?;
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
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

/// The receiving end, on the next stage: a non-blocking socket its compute
/// thread polls.
pub struct LinkReader {
    sock: TcpStream,
    conn: ServerConnection,
    peer: SocketAddr,
    /// Bytes received and not yet made into messages, from `start` on.
    buf: Vec<u8>,
    start: usize,
}

impl LinkReader {
    /// Takes over a connection the TLS acceptor completed under [`ALPN`].
    /// Call inside the tokio runtime (the socket leaves its reactor).
    pub fn from_accepted(
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ) -> io::Result<Self> {
        let (tcp, conn) = tls.into_inner();
        let peer = tcp.peer_addr()?;
        let sock = tcp.into_std()?;
        sock.set_nonblocking(true)?;
        Ok(LinkReader {
            sock,
            conn,
            peer,
            buf: Vec::new(),
            start: 0,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Reads what the socket holds and appends each whole message to `out`.
    /// `Ok(false)`: the peer closed the link (after the messages in `out`).
    /// An error (bad TLS, a message over the limit, one that does not
    /// decode) ends the link too.
    pub fn read(&mut self, out: &mut Vec<v1::LinkMessage>) -> Result<bool, String> {
        let mut open = true;
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {
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
        // TLS may owe the peer something (a key update's answer); it is
        // small, and a full send buffer only delays it.
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        self.split(out)?;
        Ok(open)
    }

    /// Moves decrypted bytes into `buf`; `false` once the peer said it is
    /// done (close_notify).
    fn take_plaintext(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Cuts the whole messages off the front of `buf`. The buffer grows
    /// only with bytes that arrived, never by a length the peer announced.
    fn split(&mut self, out: &mut Vec<v1::LinkMessage>) -> Result<(), String> {
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

impl AsRawFd for LinkReader {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
