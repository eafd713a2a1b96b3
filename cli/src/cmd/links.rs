//! How `serve` and `plan` reach workers: `--worker HOST:PORT#sha256:<hex>`
//! pins each worker's certificate (as the worker logs it), `--trust-file`
//! holds the same pairs, and `--insecure` alone allows plaintext.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use strata_proto::{parse_peer, Fingerprint, Trust};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct LinkArgs {
    /// A worker, as it logs itself: HOST:PORT#sha256:<hex> (repeat for each).
    /// The fingerprint pins its certificate; it may come from --trust-file.
    #[arg(long = "worker", value_name = "HOST:PORT#sha256:HEX")]
    pub workers: Vec<String>,
    /// File of "HOST:PORT sha256:<hex>" lines (or HOST:PORT#sha256:<hex>);
    /// '#' at the start of a line begins a comment.
    #[arg(long)]
    pub trust_file: Option<PathBuf>,
    /// Plaintext links to workers started with --insecure: anyone who can
    /// see the network gets the cluster token and every prompt.
    #[arg(long)]
    pub insecure: bool,
}

impl LinkArgs {
    /// The workers' addresses and how to reach them.
    pub fn resolve(&self) -> anyhow::Result<(Vec<String>, Trust)> {
        let mut pins = match &self.trust_file {
            Some(path) => read_trust_file(path)?,
            None => HashMap::new(),
        };
        let mut addrs = Vec::with_capacity(self.workers.len());
        for spec in &self.workers {
            let (addr, pin) = parse_peer(spec)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--worker {spec}"))?;
            if let Some(pin) = pin {
                if let Some(other) = pins.insert(addr.clone(), pin) {
                    anyhow::ensure!(
                        other == pin,
                        "worker {addr}: --worker pins {pin} but the trust file pins {other}"
                    );
                }
            }
            addrs.push(addr);
        }
        if self.insecure {
            tracing::warn!("--insecure: worker links are plaintext; anyone who can see the traffic gets the cluster token and the prompts");
            return Ok((addrs, Trust::Insecure));
        }
        if let Some(missing) = addrs.iter().find(|a| !pins.contains_key(*a)) {
            anyhow::bail!(
                "worker {missing} has no pinned certificate: give it as {missing}#sha256:<hex>, \
                 copied from the worker's \"worker listening on\" line (or `strata worker \
                 --print-fingerprint` on its machine), or list it in --trust-file; \
                 --insecure allows plaintext links on a network you trust"
            );
        }
        Ok((addrs, Trust::Pinned(pins)))
    }
}

fn read_trust_file(path: &PathBuf) -> anyhow::Result<HashMap<String, Fingerprint>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --trust-file {}", path.display()))?;
    let mut pins = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = line.split_whitespace().collect::<Vec<_>>().join("#");
        let parsed = parse_peer(&spec).map_err(anyhow::Error::msg);
        let (addr, pin) = parsed
            .and_then(|(a, p)| Ok((a, p.context("no fingerprint")?)))
            .with_context(|| format!("{}:{}: {line:?}", path.display(), n + 1))?;
        pins.insert(addr, pin);
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn args(workers: &[&str], insecure: bool) -> LinkArgs {
        LinkArgs {
            workers: workers.iter().map(|s| s.to_string()).collect(),
            trust_file: None,
            insecure,
        }
    }

    #[test]
    fn a_worker_without_a_pin_is_refused_unless_insecure() {
        let err = args(&["10.0.0.2:7070"], false).resolve().unwrap_err();
        assert!(
            err.to_string()
                .contains("10.0.0.2:7070 has no pinned certificate"),
            "{err}"
        );
        let (addrs, trust) = args(&["10.0.0.2:7070"], true).resolve().unwrap();
        assert_eq!(addrs, ["10.0.0.2:7070"]);
        assert!(matches!(trust, Trust::Insecure));
        let (addrs, trust) = args(&[&format!("10.0.0.2:7070#{FP}")], false)
            .resolve()
            .unwrap();
        assert_eq!(addrs, ["10.0.0.2:7070"]);
        assert_eq!(trust.pin("10.0.0.2:7070").unwrap().unwrap().to_string(), FP);
    }

    #[test]
    fn trust_file_pins_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust");
        std::fs::write(
            &path,
            format!("# pool\n10.0.0.2:7070 {FP}\n\n10.0.0.3:7070#{FP}\n"),
        )
        .unwrap();
        let mut a = args(&["10.0.0.2:7070", "10.0.0.3:7070"], false);
        a.trust_file = Some(path.clone());
        let (_, trust) = a.resolve().unwrap();
        assert!(trust.pin("10.0.0.3:7070").unwrap().is_some());
        let other = FP.replace("00112233", "ffffffff");
        a.workers[0] = format!("10.0.0.2:7070#{other}");
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("trust file pins"));
        std::fs::write(&path, "10.0.0.2:7070 sha256:nothex\n").unwrap();
        let err = a.resolve().unwrap_err();
        assert!(format!("{err:#}").contains(":1:"), "{err:#}");
    }
}
