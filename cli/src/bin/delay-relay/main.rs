//! `delay-relay`: the latency of the emulated LAN (`scripts/lan.sh`).
//!
//! This kernel has no `netem`, so a fixed one-way delay comes from a relay
//! in front of each worker: every byte it reads is written on after the
//! delay, in order, in both directions, and every UDP datagram (QUIC) too. `echo` and `ping` measure what the
//! relay itself adds.
//!
//! ```text
//! delay-relay relay LISTEN TARGET DELAY_US
//! delay-relay echo LISTEN
//! delay-relay ping TARGET [COUNT] [BYTES]
//! ```

mod datagrams;
mod probe;
mod relay;

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  delay-relay relay LISTEN TARGET DELAY_US   hold every byte DELAY_US each way
  delay-relay echo LISTEN                    send back what arrives
  delay-relay ping TARGET [COUNT] [BYTES]    round trips of BYTES (default 1000 x 64)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match strs.as_slice() {
        ["relay", listen, target, delay_us] => delay_us
            .parse::<u64>()
            .map_err(|e| format!("DELAY_US {delay_us:?}: {e}"))
            .and_then(|us| relay::serve(listen, target, Duration::from_micros(us))),
        ["echo", listen] => probe::echo(listen),
        ["ping", target, rest @ ..] if rest.len() <= 2 => {
            let count = rest.first().map_or(Ok(1000), |s| s.parse::<usize>());
            let bytes = rest.get(1).map_or(Ok(64), |s| s.parse::<usize>());
            match (count, bytes) {
                (Ok(c), Ok(b)) if c > 0 && b > 0 => probe::ping(target, c, b),
                _ => Err("COUNT and BYTES must be positive integers".into()),
            }
        }
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delay-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
