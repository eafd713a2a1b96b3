//! Grammar-constrained output through the real `openai` Python client
//! against `strata serve` with SmolLM2 (cli/tests/structured_output.py):
//! 105 runs at temperature 1.0 under a nested schema, each validated with
//! Python's `jsonschema`; json_object; a 400 for an unsupported schema
//! feature; logit_bias.

mod common;

use common::{model, run_python, Server, SMOLLM2};

#[test]
fn constrained_runs_at_temperature_one_all_validate() {
    let server = Server::start(&model(SMOLLM2), &["-c", "2048", "-n", "8"]);
    run_python(
        "structured_output.py",
        &[&server.base, "105"],
        "all structured output checks passed",
    );
}
