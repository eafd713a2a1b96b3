//! Round trips through a relay (or straight to `echo`): what the relay adds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

pub fn echo(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    for s in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut r = match s.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut w = s;
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Prints the median, 10th and 90th percentile round trip in microseconds.
pub fn ping(target: &str, count: usize, bytes: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(target).map_err(|e| format!("connecting to {target}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let out = vec![7u8; bytes];
    let mut back = vec![0u8; bytes];
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&out).map_err(|e| format!("send: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("receive: {e}"))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    println!(
        "{count} round trips of {bytes} B: median {:.1} us, p10 {:.1} us, p90 {:.1} us",
        at(0.5),
        at(0.1),
        at(0.9)
    );
    Ok(())
}
