//! The real `openai` Python client (from PyPI, installed by scripts/test.sh)
//! against `strata serve` with its embedded worker: chat, completion,
//! streaming, stop strings, log-probs, bad requests, a wrong API key and
//! concurrent streams (cli/tests/openai_client.py).

mod common;

use common::{model, reference, Server, SMOLLM2};

#[test]
fn openai_python_client_talks_to_strata_serve() {
    let key = "test-api-key";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let server = Server::start(
        &model(SMOLLM2),
        &[
            "-c",
            "1024",
            "-n",
            "4",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let r = reference("smollm2-135m");
    let case = &r["greedy"][0];
    let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .args([
            &server.base,
            key,
            case["prompt"].as_str().unwrap(),
            case["content"].as_str().unwrap(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{stderr}\n(is the openai package installed? scripts/test.sh installs it)");
    assert!(
        stdout.contains("all openai client checks passed"),
        "{stdout}"
    );
}
