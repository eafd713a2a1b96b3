#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches the real test models
# into the cache (scripts/fetch-models.sh) and the openai Python client, then
# cargo test over the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export STRATA_MODELS=${STRATA_MODELS:-$HOME/.cache/strata/models}
scripts/fetch-models.sh "$STRATA_MODELS" >/dev/null
# The API tests drive `strata serve` with the real openai client from PyPI.
if ! python3 -c 'import openai' 2>/dev/null; then
    python3 -m pip install --quiet --user openai 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages openai \
        || python3 -m pip install --quiet --break-system-packages openai
fi
cargo test --workspace --no-fail-fast "$@"
