"""Where one decoded token's time goes in a pipeline on loopback.

Starts one `strata worker` per budget and `strata serve` with the
`strata::hop` debug events on, asks for one greedy completion, and reads the
events' timestamps (wall clock, shared by the processes of one machine) back
into a per-token timeline: coordinator send, then for each stage received,
compute start / end, sent on, and the reply's way back.

Usage: hop_trace.py MODEL.gguf [--budgets cpu:80MiB,...] [--tokens 128]
                   [--threads 1] [--bin target/release/strata]

Prints the median of each segment over the decode tokens, in microseconds,
and the sum per hop; then, per decode step and by thread name, how often
each process's threads slept (and so were woken again), how often they
were preempted (another thread took their CPU), and their CPU time. With one budget it
measures a single stage.
"""

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

EVENT = re.compile(r"^(\S+Z)\s+DEBUG\s+strata::hop: (\w[\w ]*?)\s+batch_id=(\d+)(.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def thread_counters(pid):
    """{thread id: (name, voluntary context switches, involuntary ones,
    CPU time in ns)} of process `pid` (Linux /proc; empty elsewhere or once
    it has exited)."""
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            name = open(f"/proc/{pid}/task/{task}/comm").read().strip()
            status = open(f"/proc/{pid}/task/{task}/status").read()
            # The first field: time on a CPU, in ns.
            cpu_ns = int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        out[task] = (name, vol, invol, cpu_ns)
    return out


def delta_by_name(before, after, field=1):
    """Sleeps during the request (or, by `field`, preemptions or CPU
    time), summed by thread name (a thread that ended meanwhile is not
    counted; one that started counts from 0)."""
    out = {}
    for task, now in after.items():
        name = now[0]
        was = before.get(task, (name, 0, 0, 0))
        out[name] = out.get(name, 0) + now[field] - was[field]
    return {name: n for name, n in out.items() if n > 0}


def wait_loaded(http, serve, log, seconds=300):
    """Until `serve` answers /health with 200; exits with its message when
    the model failed to load (it will not load by waiting)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if serve.poll() is not None:
            raise SystemExit(f"strata serve exited; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/health").read()
            return
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read() or b"{}").get("message", "")
            except ValueError:
                message = ""
            if "failed to load" in message:
                raise SystemExit(message)
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"strata serve did not load the model in {seconds} s; see {log}")


def events(path):
    """(time in µs, event, batch_id, rest) of each hop event in a log."""
    out = []
    for line in open(path, errors="replace"):
        m = EVENT.match(ANSI.sub("", line.strip()))
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
        out.append((t.timestamp() * 1e6, m.group(2), int(m.group(3)), m.group(4)))
    return out


def timeline(serve_log, worker_logs):
    """Per decode batch: the ordered (label, time) of its events."""
    sends = {}
    replies = {}
    for t, ev, b, rest in events(serve_log):
        if ev == "send" and "n_tokens=1 " in rest + " ":
            sends[b] = t
        elif ev == "reply":
            replies[b] = t
    per_worker = []
    for path in worker_logs:
        by_batch = {}
        for t, ev, b, _ in events(path):
            by_batch.setdefault(b, {})[ev] = t
        per_worker.append(by_batch)
    lines = []
    for b, sent in sorted(sends.items()):
        if b not in replies:
            continue
        stages = [w[b] for w in per_worker if b in w and "received" in w[b]]
        stages.sort(key=lambda e: e["received"])
        steps = [("coordinator send", sent)]
        for i, e in enumerate(stages):
            for ev in ("received", "compute start", "compute end", "sent on", "reply"):
                if ev in e:
                    steps.append((f"stage {i} {ev}", e[ev]))
        for i in reversed(range(len(stages) - 1)):
            if "reply back" in stages[i]:
                steps.append((f"stage {i} reply back", stages[i]["reply back"]))
        steps.append(("coordinator reply", replies[b]))
        lines.append((b, steps))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--budgets", default="cpu:80MiB,cpu:80MiB,cpu:80MiB")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bin", default="target/release/strata")
    ap.add_argument("--serve-flags", default="", help='extra `strata serve` flags, e.g. "--transport quic"')
    args = ap.parse_args()
    budgets = [b.split(":", 1)[-1] for b in args.budgets.split(",")]

    d = tempfile.mkdtemp(prefix="hop-trace-")
    env = dict(os.environ, STRATA_LOG="warn,strata::hop=debug", NO_COLOR="1")
    open(f"{d}/token", "w").write("hop-trace-token\n")
    fp = subprocess.check_output(
        [args.bin, "worker", "--print-fingerprint", "--state-dir", f"{d}/state"], text=True
    ).strip()
    procs = []
    worker_args = []
    try:
        for i, budget in enumerate(budgets):
            port = free_port()
            log = open(f"{d}/worker{i}.log", "w")
            p = subprocess.Popen(
                [args.bin, "worker", "--listen", f"127.0.0.1:{port}", "--token-file",
                 f"{d}/token", "--state-dir", f"{d}/state", "--mem-budget", budget,
                 "--cache-dir", f"{d}/slices{i}", "-t", str(args.threads)],
                stderr=log, env=env)
            procs.append(p)
            wait_port(port, p)
            worker_args += ["--worker", f"127.0.0.1:{port}#{fp}"]
        http = free_port()
        serve = subprocess.Popen(
            [args.bin, "serve", "-m", args.model, *worker_args, "--token-file", f"{d}/token",
             "--listen", f"127.0.0.1:{http}", "-c", "512", "-n", "8", *args.serve_flags.split()],
            stderr=open(f"{d}/serve.log", "w"), env=env)
        procs.append(serve)
        wait_loaded(http, serve, f"{d}/serve.log")
        body = json.dumps({"prompt": "The capital of France is", "max_tokens": args.tokens,
                           "temperature": 0, "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{http}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        before = [thread_counters(p.pid) for p in procs]
        start = time.perf_counter()
        usage = json.load(urllib.request.urlopen(req))["usage"]
        wall = time.perf_counter() - start
        after = [thread_counters(p.pid) for p in procs]
        time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()

    lines = timeline(f"{d}/serve.log", [f"{d}/worker{i}.log" for i in range(len(budgets))])
    if not lines:
        raise SystemExit(f"no decode events in {d}")
    labels = [label for label, _ in lines[len(lines) // 2][1]]
    segs = {}
    for _, steps in lines[1:]:
        if [label for label, _ in steps] != labels:
            continue
        for (a, ta), (b, tb) in zip(steps, steps[1:]):
            segs.setdefault(f"{a} -> {b}", []).append(tb - ta)
    print(f"{len(budgets)} stage(s), {usage['completion_tokens']} tokens in {wall:.2f} s "
          f"({usage['completion_tokens'] / wall:.1f} tok/s), {len(lines) - 1} decode steps traced")
    total = 0.0
    for name, v in segs.items():
        m = statistics.median(v)
        total += m
        print(f"  {m:9.1f} µs  {name}")
    print(f"  {total:9.1f} µs  sum of medians (coordinator send to reply)")
    gaps = [b[1][0][1] - a[1][-1][1] for a, b in zip(lines, lines[1:])]
    print(f"  {statistics.median(gaps):9.1f} µs  coordinator reply -> next send")
    # A thread that sleeps is woken again: its sleeps count its wake-ups
    # (the prompt's few are counted in with the decode steps').
    names = [f"worker {i}" for i in range(len(budgets))] + ["serve"]
    steps = max(len(lines) - 1, 1)
    for field, what, scale in ((1, "sleeps a step", 1), (2, "preempted a step", 1),
                               (3, "CPU ms a step", 1e-6)):
        for name, b, a in zip(names, before, after):
            woken = delta_by_name(b, a, field)
            per_step = ", ".join(f"{t} {n * scale / steps:.1f}" for t, n in sorted(woken.items()))
            print(f"  {sum(woken.values()) * scale / steps:9.1f} {what}  {name} ({per_step})")
    print(f"logs: {d}")


if __name__ == "__main__":
    main()
