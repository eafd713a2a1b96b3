//! The relay: per connection and direction, a reader thread stamps what it
//! reads and a writer thread sends it on when its delay is up. UDP on the
//! same address goes through [`crate::datagrams`].

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// `thread::sleep` overshoots by tens of microseconds; the last stretch
/// before a deadline is spun instead.
const SPIN: Duration = Duration::from_micros(80);

pub fn serve(listen: &str, target: &str, delay: Duration) -> Result<(), String> {
    // A worker serves QUIC on the UDP port of its gRPC port. Bound before
    // the TCP side listens, so whoever sees the relay up can send datagrams.
    match crate::datagrams::bind(listen) {
        Ok(front) => {
            let target = target.to_string();
            thread::spawn(move || {
                if let Err(e) = crate::datagrams::serve(front, &target, delay) {
                    eprintln!("delay-relay: UDP relay: {e}");
                }
            });
        }
        Err(e) => eprintln!("delay-relay: no UDP relay: {e}"),
    }
    let listener = TcpListener::bind(listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    eprintln!(
        "delay-relay: {listen} -> {target}, {} us each way",
        delay.as_micros()
    );
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("delay-relay: accept: {e}");
                continue;
            }
        };
        let target = target.to_string();
        thread::spawn(move || {
            if let Err(e) = connect(client, &target, delay) {
                eprintln!("delay-relay: {e}");
            }
        });
    }
    Ok(())
}

fn connect(client: TcpStream, target: &str, delay: Duration) -> Result<(), String> {
    let server = TcpStream::connect(target).map_err(|e| format!("connecting to {target}: {e}"))?;
    for s in [&client, &server] {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
    }
    let up = (client.try_clone(), server.try_clone());
    let (Ok(client_r), Ok(server_w)) = up else {
        return Err("cloning a socket".into());
    };
    thread::spawn(move || pipe(client_r, server_w, delay));
    pipe(server, client, delay);
    Ok(())
}

/// Copies `from` to `to`, each read `delay` after it arrived.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    // Bounded: a slow reader on the far side pushes back on the sender.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(64);
    let writer = thread::spawn(move || {
        for (due, bytes) in rx {
            wait_until(due);
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

pub fn wait_until(due: Instant) {
    let now = Instant::now();
    if due > now + SPIN {
        thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}
