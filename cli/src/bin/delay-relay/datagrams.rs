//! The relay for UDP (QUIC's data plane), on the same address as the TCP
//! one: each datagram is sent on `delay` after it arrived, both ways. Each
//! client address gets a socket of its own towards the target, so replies
//! find their way back; one silent for a while is dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::relay::wait_until;

/// Datagrams held per direction; more are dropped, as a full router
/// queue drops them (QUIC's congestion control then slows down).
const QUEUE: usize = 4096;
/// A client's upstream socket ends after this long without a datagram
/// from the target (a QUIC connection sends keep-alives every 2 s).
const IDLE: Duration = Duration::from_secs(30);

type Delayed = (Instant, Vec<u8>);

/// One client's way to the target.
struct Peer {
    to_target: SyncSender<Delayed>,
    alive: Arc<AtomicBool>,
}

pub fn bind(listen: &str) -> Result<UdpSocket, String> {
    UdpSocket::bind(listen).map_err(|e| format!("UDP on {listen}: {e}"))
}

/// Relays what arrives on `front` (from [`bind`]) for ever.
pub fn serve(front: UdpSocket, target: &str, delay: Duration) -> Result<(), String> {
    let front = Arc::new(front);
    let target = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("target {target:?} is no address"))?;
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match front.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                eprintln!("delay-relay: UDP receive: {e}");
                continue;
            }
        };
        if !peers
            .get(&client)
            .is_some_and(|p| p.alive.load(Ordering::Relaxed))
        {
            match peer(front.clone(), client, target, delay) {
                Ok(p) => {
                    peers.insert(client, p);
                }
                Err(e) => {
                    eprintln!("delay-relay: UDP for {client}: {e}");
                    continue;
                }
            }
        }
        let p = &peers[&client];
        match p
            .to_target
            .try_send((Instant::now() + delay, buf[..n].to_vec()))
        {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                peers.remove(&client);
            }
        }
    }
}

/// A socket towards `target` for `client`: a thread sends its queue on
/// when each datagram is due, another reads the target's answers and
/// queues them for `client` through `front`.
fn peer(
    front: Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddr,
    delay: Duration,
) -> Result<Peer, String> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let up = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    up.connect(target)
        .map_err(|e| format!("to {target}: {e}"))?;
    up.set_read_timeout(Some(IDLE)).map_err(|e| e.to_string())?;
    let up_w = up.try_clone().map_err(|e| e.to_string())?;
    let alive = Arc::new(AtomicBool::new(true));

    let to_target = delayed(move |bytes| {
        let _ = up_w.send(bytes);
    });
    let to_client = delayed(move |bytes| {
        let _ = front.send_to(bytes, client);
    });
    let reading = alive.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Ends on silence (or an error): the next datagram from `client`
        // makes a new peer.
        while let Ok(n) = up.recv(&mut buf) {
            let _ = to_client.try_send((Instant::now() + delay, buf[..n].to_vec()));
        }
        reading.store(false, Ordering::Relaxed);
    });
    Ok(Peer { to_target, alive })
}

/// A queue whose datagrams `send` sends each when it is due, on a thread
/// that ends with the queue.
fn delayed(mut send: impl FnMut(&[u8]) + Send + 'static) -> SyncSender<Delayed> {
    let (tx, rx) = mpsc::sync_channel::<Delayed>(QUEUE);
    thread::spawn(move || {
        for (due, bytes) in rx {
            wait_until(due);
            send(&bytes);
        }
    });
    tx
}
