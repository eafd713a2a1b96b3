"""One long prompt, then greedy decoding at that depth: prompt tok/s and
decode tok/s at each context length asked for, on a fresh `strata serve`
per length (or on a running server with --url).

Usage: bench_long_context.py MODEL.gguf [--bin target/release/strata]
       [--tokens 2000,16000,130000] [--ctx 131072] [--decode 64]
       [--llama-server PATH] [-- EXTRA SERVE FLAGS]

With --llama-server, llama.cpp's server runs the same prompts instead, a
fresh one per length (so no slot cache is reused), and the flags after
`--` are llama-server's (e.g. `-ctk q8_0 -ctv q8_0 -fa on -t 2`).

The prompt is tests/data/gpl-3.txt repeated up to about --tokens tokens
(the synth tokenizer gives about one token per character; the script
reads the real count from `usage`). The model must declare a training
context of at least --ctx (`strata synth ... --context-length 131072`).

Example (docs/plans/long-context.md, "128K tokens"):
  strata synth --arch qwen35 --preset tiny --layers 8 --quant Q8_0 \
      --context-length 131072 -o qwen35-tiny8-128k.gguf
  python3 scripts/bench_long_context.py qwen35-tiny8-128k.gguf \
      --bin target/debug/strata --tokens 2000,16000,130000 -- \
      --cache-type-k q8_0 --cache-type-v q8_0 --devices cpu,cpu --mem-budget 260MiB
"""

import argparse
import collections
import pathlib
import socket
import subprocess
import sys
import threading
import time

import openai

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_kv_sessions import SERVERS, serve  # noqa: E402


def serve_llama(bin_path, model, ctx, extra):
    """llama-server on a free port, as `serve` starts strata."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [bin_path, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx), "-np", "1", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    SERVERS.append(p)  # killed at exit, as strata's servers are
    log = collections.deque(maxlen=20)
    for line in p.stderr:
        log.append(line)
        if "listening on http" in line:
            break
    else:
        # (A lost race for the port ends here too, with its log line.)
        raise SystemExit(f"llama-server exited: {p.wait()}\n" + "".join(log))
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    return p, client, client.models.list().data[0].id


def run(client, model, n_chars, n_decode):
    text = (HERE.parent / "tests/data/gpl-3.txt").read_text()
    prompt = (text * (n_chars // len(text) + 1))[:n_chars]
    start = time.perf_counter()
    first = last = None
    usage = None
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=n_decode,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter()
            first = first or last
    if usage is None or first is None:
        raise SystemExit("no usage or no text in the reply")
    decoded = usage.completion_tokens
    return {
        "prompt": usage.prompt_tokens,
        "ttft": first - start,
        "prompt_tps": usage.prompt_tokens / (first - start),
        # Tokens after the first, over the time after the first.
        "decode_tps": (decoded - 1) / (last - first) if last > first else float("nan"),
        "decoded": decoded,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--bin", default="target/release/strata")
    ap.add_argument("--url", help="a running server (then --bin and the serve flags are unused)")
    ap.add_argument("--tokens", default="2000,16000,130000")
    ap.add_argument("--ctx", type=int, default=131072)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--llama-server", help="run llama.cpp's llama-server (this binary) instead of strata")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    print(f"{'prompt':>8} {'ttft s':>9} {'prompt tok/s':>13} {'decode tok/s':>13} {'decoded':>8}", flush=True)
    for n in (int(t) for t in args.tokens.split(",")):
        if args.url:
            server = None
            client = openai.OpenAI(base_url=args.url, api_key="none")
            model = client.models.list().data[0].id
        elif args.llama_server:
            server, client, model = serve_llama(args.llama_server, args.model, args.ctx, args.extra)
        else:
            server, client, model = serve(args.bin, args.model, args.ctx, args.extra)
        # A 128K-token prompt takes most of an hour on a small CPU.
        r = run(client.with_options(timeout=7200), model, n, args.decode)
        print(
            f"{r['prompt']:>8} {r['ttft']:>9.2f} {r['prompt_tps']:>13.1f} {r['decode_tps']:>13.1f} {r['decoded']:>8}",
            flush=True,
        )
        if server:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
