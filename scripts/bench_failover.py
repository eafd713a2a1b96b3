#!/usr/bin/env python3
"""The pause a failover causes: from losing a worker to each stream's next token.

    python3 scripts/bench_failover.py MODEL.gguf [--budgets 125MiB,125MiB,125MiB,125MiB]
        [--streams 8] [--tokens 64] [--kill middle|first|last] [--signal KILL|STOP]
        [--serve-flags "-c 128 -n 8 -b 64"] [--bin target/release/strata]

Starts one `strata worker` per budget and `strata serve` on loopback, runs
--streams greedy streams, and once each has a few tokens kills (or stops) the
worker of the chosen stage. Prints, per stream, the time from the signal to
its next token, and whether its text equals an undisturbed run's. Build
first: cargo build --release.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "My favourite colour is",
    "In 1492,",
    "The quick brown fox",
    "Water boils at",
    "Hello, my name is",
]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def stream(base, prompt, tokens, out, i):
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, times = "", []
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if "error" in d:
                text += "<error: %s>" % d["error"]["message"]
                continue
            times.append(time.time())
            text += d["choices"][0]["text"]
    out[i] = (text, times)


def run_streams(base, n, tokens, during=None):
    out = [None] * n
    threads = [threading.Thread(target=stream, args=(base, PROMPTS[i % len(PROMPTS)], tokens, out, i))
               for i in range(n)]
    for t in threads:
        t.start()
    mark = during(out) if during else None
    for t in threads:
        t.join()
    return out, mark


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--budgets", default="125MiB,125MiB,125MiB,125MiB")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--kill", default="middle", choices=["first", "middle", "last"])
    ap.add_argument("--signal", default="KILL", choices=["KILL", "STOP"])
    ap.add_argument("--serve-flags", default="-c 128 -n 8 -b 64")
    ap.add_argument("--bin", default="target/release/strata")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write("bench-failover\n")
    env = dict(os.environ, STRATA_LOG=os.environ.get("STRATA_LOG", "warn"))
    # One TLS identity for the workers of this box, pinned by serve.
    state = os.path.join(tmp, "state")
    fp = subprocess.run([a.bin, "worker", "--print-fingerprint", "--state-dir", state],
                        check=True, capture_output=True, text=True).stdout.strip()
    procs, addrs = {}, []
    for i, b in enumerate(a.budgets.split(",")):
        addr = "127.0.0.1:%d" % (17300 + i)
        procs[addr] = subprocess.Popen(
            [a.bin, "worker", "--listen", addr, "--token-file", tmp + "/token", "--state-dir", state,
             "--mem-budget", b,
             "--cache-dir", "%s/slices%d" % (tmp, i), "-t", "1"],
            env=env, stderr=open("%s/worker%d.log" % (tmp, i), "w"))
        addrs += ["--worker", "%s#%s" % (addr, fp)]
    time.sleep(1.5)
    base = "http://127.0.0.1:18090"
    serve = subprocess.Popen(
        [a.bin, "serve", "-m", a.model, "--token-file", tmp + "/token", "--listen", base[7:]]
        + shlex.split(a.serve_flags) + addrs,
        env=dict(env, STRATA_LOG="info"), stderr=open(tmp + "/serve.log", "w"))
    try:
        for _ in range(600):
            try:
                if get(base + "/health").get("status") == "ok":
                    break
            except Exception:
                pass
            time.sleep(0.5)
        stages = [s.split(" ")[0] for s in get(base + "/health")["stages"]]
        print("stages:", get(base + "/health")["stages"])
        undisturbed, _ = run_streams(base, a.streams, a.tokens)

        victim = stages[{"first": 0, "middle": len(stages) // 2, "last": -1}[a.kill]]

        def disrupt(out):
            # Each stream needs a few tokens: watch the server's token counter.
            while True:
                m = urllib.request.urlopen(base + "/metrics").read().decode()
                done = [int(l.split()[1]) for l in m.splitlines() if l.startswith("strata_generated_tokens_total ")][0]
                if done >= before + 4 * a.streams:
                    break
                time.sleep(0.02)
            t = time.time()
            procs[victim].send_signal(getattr(signal, "SIG" + a.signal))
            return t

        m = urllib.request.urlopen(base + "/metrics").read().decode()
        before = [int(l.split()[1]) for l in m.splitlines() if l.startswith("strata_generated_tokens_total ")][0]
        disturbed, lost_at = run_streams(base, a.streams, a.tokens, disrupt)
        pauses = []
        for i, (text, times) in enumerate(disturbed):
            after = [t for t in times if t > lost_at]
            pause = after[0] - lost_at if after else float("nan")
            pauses.append(pause)
            same = text == undisturbed[i][0]
            print("stream %d: next token %.2f s after SIG%s of %s stage %s; text %s" % (
                i, pause, a.signal, a.kill, victim, "identical" if same else "DIFFERENT"))
        pauses.sort()
        print("pause: median %.2f s, max %.2f s over %d streams; stages after: %s" % (
            pauses[len(pauses) // 2], pauses[-1], len(pauses), get(base + "/health")["stages"]))
        ok = all(d[0] == u[0] for d, u in zip(disturbed, undisturbed))
        sys.exit(0 if ok else 1)
    finally:
        serve.terminate()
        for p in procs.values():
            if a.signal == "STOP":
                p.send_signal(signal.SIGCONT)
            p.terminate()
        print("logs in", tmp)


if __name__ == "__main__":
    main()
