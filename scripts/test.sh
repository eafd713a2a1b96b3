#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches the real test models
# into the cache (scripts/fetch-models.sh), then cargo test over the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export STRATA_MODELS=${STRATA_MODELS:-$HOME/.cache/strata/models}
scripts/fetch-models.sh "$STRATA_MODELS" >/dev/null
cargo test --workspace --no-fail-fast "$@"
