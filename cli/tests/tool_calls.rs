//! Tool calls through the real `openai` Python client
//! (cli/tests/tools_client.py): with SmolLM2 and its own template (which
//! does not render tools, so they are described in the system turn and the
//! Hermes format is asked for), and with a synthetic Qwen-family model
//! carrying a Qwen-style tool template, and with a synthetic gpt-oss model
//! carrying a harmony template (random weights: the grammar alone makes
//! their calls well-formed).

mod common;
use common::{model, run_python, synth, Server, SMOLLM2};

#[test]
fn smollm2_calls_a_tool_and_answers_its_result() {
    let server = Server::start(&model(SMOLLM2), &["-c", "2048", "-n", "2"]);
    run_python(
        "tools_client.py",
        &[&server.base],
        "all tool call checks passed",
    );
}

#[test]
fn synthetic_qwen_calls_a_tool_through_its_template() {
    tools_client_on_synth("qwen3", "qwen-tools.jinja");
}

/// gpt-oss's harmony format: the forced call is written on the commentary
/// channel `to=functions.NAME`, parsed back out of the reply text, and the
/// tool result goes back through the template's `functions.NAME` turn.
#[test]
fn synthetic_gpt_oss_calls_a_tool_in_harmony_format() {
    tools_client_on_synth("gpt-oss", "gpt-oss-tools.jinja");
}

/// The tool-call checks against a tiny synthetic model of `arch` whose
/// chat template is `tests/data/<template>`.
fn tools_client_on_synth(arch: &str, template: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{arch}-tools.gguf"));
    let template = format!("{}/tests/data/{template}", env!("CARGO_MANIFEST_DIR"));
    synth(
        &[
            "--arch",
            arch,
            "--preset",
            "tiny",
            "--quant",
            "Q8_0",
            "--chat-template",
            &template,
        ],
        &path,
    );
    let server = Server::start(&path, &["-c", "2048", "-n", "2"]);
    run_python(
        "tools_client.py",
        &[&server.base],
        "all tool call checks passed",
    );
}
