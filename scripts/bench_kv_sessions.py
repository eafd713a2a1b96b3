"""Time to first token of a conversation's next turn: computed cold, warm in
memory (the prefix cache), and restored from disk after `strata serve` was
killed and started again (sessions on disk, --kv-cache-dir).

Usage: bench_kv_sessions.py MODEL.gguf [--bin target/release/strata]
       [--chars 13800] [--ctx 4096] [--rounds 2] [-- EXTRA SERVE FLAGS]

Each round: a fresh KV cache directory; turn 0 (the history of
cli/tests/prefix_cache.rs, about 3,000 SmolLM2 tokens) on a server with the
directory; turn 1 on the same server (warm); the server killed and started
again on the same directory, turn 1 again (from disk); then a server with
--no-prefix-cache for turn 1 (cold). The replies of the three turn-1 runs
must be equal. Prints each time and the medians.
"""

import argparse
import atexit
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading

import openai

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_prefix_cache import HERE, turn  # noqa: E402


# Servers started, killed at exit (an error mid-round leaves none behind).
SERVERS = []
atexit.register(lambda: [p.kill() for p in SERVERS if p.poll() is None])


def serve(bin_path, model, ctx, extra):
    p = subprocess.Popen(
        [bin_path, "serve", "-m", model, "--listen", "127.0.0.1:0", "-c", str(ctx), "-n", "1", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    SERVERS.append(p)
    for line in p.stderr:
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            break
    else:
        raise SystemExit(f"serve exited: {p.wait()}")
    # Keep draining its log so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=m.group(1), api_key="none")
    return p, client, client.models.list().data[0].id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--bin", default="target/release/strata")
    ap.add_argument("--chars", type=int, default=13_800)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    history = (HERE.parent / "tests/data/gpl-3.txt").read_text()[: args.chars]
    times = {"cold": [], "memory": [], "disk": []}
    print(f"{'round':>5} {'run':>7} {'prompt':>7} {'cached':>7} {'ttft s':>8}")
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            kv = ["--kv-cache-dir", d, *args.extra]
            messages = [{
                "role": "user",
                "content": f"Round {r}. Here is a text.\n\n{history}\n\nWhat is it about?",
            }]
            p, client, model = serve(args.bin, args.model, args.ctx, kv)
            reply, *_ = turn(client, model, messages)
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": "Say more."},
            ]
            runs = {}
            runs["memory"] = turn(client, model, messages)
            p.send_signal(signal.SIGKILL)
            p.wait()
            p, client, model = serve(args.bin, args.model, args.ctx, kv)
            runs["disk"] = turn(client, model, messages)
            p.kill()
            p.wait()
            p, client, model = serve(args.bin, args.model, args.ctx, ["--no-prefix-cache", *args.extra])
            runs["cold"] = turn(client, model, messages)
            p.kill()
            p.wait()
            for name, (text, prompt, cached, secs) in runs.items():
                times[name].append(secs)
                print(f"{r:>5} {name:>7} {prompt:>7} {cached:>7} {secs:>8.3f}")
            texts = {name: run[0] for name, run in runs.items()}
            if len(set(texts.values())) != 1:
                raise SystemExit(f"the replies differ: {texts}")
    print()
    for name, v in times.items():
        print(f"{name:>7}: median time to first token {statistics.median(v):.3f} s")


if __name__ == "__main__":
    main()
