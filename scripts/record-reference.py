#!/usr/bin/env python3
"""Records llama.cpp's greedy continuations on a `strata synth` model, or
on a model file (`--model PATH`).

Synthesizes the model (deterministic: the same arguments give the same
bytes), serves it with llama-server on the CPU and asks for greedy
completions the way tests/data/README.md describes for the real models:
`top_k=1`, `n_probs=5`, the prompt in one request (llama-server processes it
in one batch, except that for sliding-window models it processes the last 4
tokens separately to checkpoint the SWA cache), then one token per step.

Writes a JSON whose `greedy` section has the format of
tests/data/smollm2-135m.json's, plus what it takes to check and redo it: the
synth arguments and command, the sha256 of the GGUF llama.cpp read,
llama.cpp's version, commit and system info, the CPU, and how llama-server
batched each prompt (`prompt_batches`, from its log).

On x86-64 Linux llama-server runs with scripts/no-amx.c preloaded: it
refuses ggml's request for AMX tiles, so llama.cpp multiplies with the
AVX-512 and repacked kernels strata's CPU backend follows (docs/numerics.md),
and runs at all on VMs that grant the request but fault on tile
instructions.

    scripts/record-reference.py --arch qwen3moe --preset tiny --quant Q8_0 \\
        --out tests/data/synth-qwen3moe-q8_0.json

A real model, with llama-server arguments of its own (here a q8_0 KV cache)
and the prompts of another reference plus the start of a text file:

    scripts/record-reference.py --model ~/.cache/strata/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --server-args "-ctk q8_0 -ctv q8_0 -fa on" --prompts-of tests/data/smollm2-135m.json \\
        --prompt-file tests/data/gpl-3.txt --prompt-file-chars 2000 --n-predict 32 \\
        --out tests/data/smollm2-135m-kv-q8_0.json

Needs target/debug/strata (`cargo build -p strata`) and llama-server
(~/.cache/strata/llama-build/bin, or --llama-server). Standard library only.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = Path.home() / ".cache/strata/llama-build/bin/llama-server"

# Long enough (in byte tokens: the synthetic tokenizer is byte-level) that
# the tokens reach different experts, cross the tiny presets' 16-token
# sliding window and 32-token YaRN original context.
DEFAULT_PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat watches.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.load(r)


def cpu_info():
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    except OSError:
        pass
    simd = re.compile(r"^(sse|ssse|avx|fma|f16c|amx|bmi|vnni|vpclmul|gfni|neon|asimd|sve)")
    return {"model": model, "simd_flags": sorted(f for f in flags if simd.match(f))}


def synthesize(args, out_path):
    cmd = [
        "strata", "synth",
        "--arch", args.arch,
        "--preset", args.preset,
        "--quant", args.quant,
        "--seed", str(args.seed),
    ]
    if args.layers is not None:
        cmd += ["--layers", str(args.layers)]
    cmd += ["-o", "model.gguf"]
    run = [str(args.strata)] + cmd[1:-1] + [str(out_path)]
    subprocess.run(run, check=True)
    return " ".join(cmd)


class Server:
    def __init__(self, binary, model, threads, log_path, preload, extra_args=()):
        self.port = free_port()
        self.args = [
            "-m", str(model),
            "--host", "127.0.0.1", "--port", str(self.port),
            "-c", "1024", "-np", "1", "-t", str(threads), "-ngl", "0",
            "-b", "512", "-ub", "512", "-lv", "4",
        ] + list(extra_args)
        env = dict(os.environ)
        if preload:
            env["LD_PRELOAD"] = str(preload)
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(binary)] + self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def recorded_args(self):
        """The arguments, less the temporary model path and the port."""
        out, skip = [], False
        for a in self.args:
            if skip:
                skip = False
            elif a in ("-m", "--host", "--port"):
                skip = a != "-m"
                out += ["-m", "model.gguf"] if a == "-m" else []
                skip = True
            else:
                out.append(a)
        return out

    def wait_ready(self, timeout_s=300):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited ({self.proc.returncode}):\n{self.log_text()[-4000:]}"
                )
            try:
                if get(self.port, "/health").get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError("llama-server did not become ready")

    def log_text(self):
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def prompt_batches(log_since):
    """The prompt batch sizes llama-server logged (at -lv 4) for one request:
    each batch starts with `cached n_tokens = X, memory_seq_rm`."""
    total = re.search(r"task\.n_tokens = (\d+)", log_since)
    starts = [int(n) for n in re.findall(r"cached n_tokens = (\d+), memory_seq_rm", log_since)]
    if not total or not starts:
        raise RuntimeError("no prompt batches in llama-server's log (needs -lv 4)")
    ends = starts[1:] + [int(total.group(1))]
    return [b - a for a, b in zip(starts, ends)]


def build_no_amx(tmp):
    """scripts/no-amx.c as a shared library, or None (not x86-64 Linux, or no cc)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    out = Path(tmp) / "no-amx.so"
    try:
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(REPO / "scripts/no-amx.c"), "-ldl"],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"warning: no AMX shim ({e}); llama.cpp may use AMX", file=sys.stderr)
        return None
    return out


def print_info(log):
    """llama.cpp's `print_info: key = value` lines about the model."""
    info = {}
    for m in re.finditer(r"print_info: (.+?)\s+= (.*)", log):
        info.setdefault(m.group(1), m.group(2).strip())
    return info


def align_steps(tokens, probs):
    """One step per generated token. llama-server gives no probabilities for
    a token whose text leaves an incomplete UTF-8 sequence (a lone lead
    byte: it holds the text back, then reports only the next token); such
    a step gets `piece` and `top` null."""
    steps, j = [], 0
    for t in tokens:
        if j < len(probs) and probs[j]["token"] == t:
            steps.append(probs[j])
            j += 1
        else:
            steps.append({"token": t, "piece": None, "top": None})
    assert j == len(probs), "llama-server's probabilities do not follow its tokens"
    return steps


def record_prompt(server, prompt, n_predict):
    prompt_ids = post(server.port, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
    log_before = len(server.log_text())
    r = post(server.port, "/completion", {
        "prompt": prompt,
        "n_predict": n_predict,
        "top_k": 1,
        "n_probs": 5,
        "ignore_eos": True,
        "cache_prompt": False,
        "return_tokens": True,
        "seed": 0,
    })
    time.sleep(0.2)
    batches = prompt_batches(server.log_text()[log_before:])
    probs = [
        {
            "token": p["id"],
            "piece": p["token"],
            "top": [[t["id"], t["logprob"]] for t in p["top_logprobs"]],
        }
        for p in r["completion_probabilities"]
    ]
    tokens = r["tokens"]
    assert len(tokens) == n_predict, f"{len(tokens)} tokens generated, asked {n_predict}"
    steps = align_steps(tokens, probs)
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "prompt_batches": batches,
        "content": r["content"],
        "tokens": tokens,
        "steps": steps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", help="synthesize this architecture (with --preset, --quant)")
    what.add_argument("--model", type=Path, help="record this GGUF file instead of a synth model")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--quant")
    ap.add_argument("--server-args", default="", help='more llama-server arguments, e.g. "-ctk q8_0 -ctv q8_0 -fa on"')
    ap.add_argument("--prompts-of", type=Path, help="also the prompts of this reference's greedy section")
    ap.add_argument("--prompt-file", type=Path, help="also a prompt read from this file (appended last)")
    ap.add_argument(
        "--prompt-file-chars", type=int, action="append",
        help="only the first N characters of --prompt-file; repeatable: one prompt per N",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--n-predict", type=int, default=24)
    ap.add_argument("--prompt", action="append", help="repeatable; default: two built-in prompts")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--strata", type=Path, default=REPO / "target/debug/strata")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--keep-log", type=Path, help="copy llama-server's log here")
    args = ap.parse_args()
    if args.arch and not args.quant:
        ap.error("--arch needs --quant")
    prompts = list(args.prompt or [])
    if args.prompts_of:
        prompts += [c["prompt"] for c in json.loads(args.prompts_of.read_text())["greedy"]]
    prompts = prompts or list(DEFAULT_PROMPTS)
    if args.prompt_file:
        text = args.prompt_file.read_text()
        prompts += [text[:n] for n in args.prompt_file_chars or [None]]

    version = subprocess.run(
        [str(args.llama_server), "--version"], capture_output=True, text=True
    )
    version_text = (version.stdout + version.stderr).strip()
    commit = re.search(r"commit ([0-9a-f]+)", version_text)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, synth_command = args.model, None
        else:
            model = Path(tmp) / "model.gguf"
            synth_command = synthesize(args, model)
        sha = sha256_file(model)
        gguf_bytes = model.stat().st_size
        preload = build_no_amx(tmp)
        server = Server(
            args.llama_server, model, args.threads, Path(tmp) / "server.log", preload,
            shlex.split(args.server_args),
        )
        try:
            server.wait_ready()
            greedy = [record_prompt(server, p, args.n_predict) for p in prompts]
            props = get(server.port, "/props")
        finally:
            server.stop()
        log = Path(server.log_path).read_text(errors="replace")
        if args.keep_log:
            args.keep_log.write_text(log)
        system_info = next(
            (l[l.index("system_info:"):].strip() for l in log.splitlines() if "system_info:" in l), None
        )

    if args.model:
        head = {"model": args.model.name}
    else:
        head = {
            "model": f"strata synth {args.arch} {args.preset} {args.quant.upper()} seed {args.seed}",
            "synth": {
                "arch": args.arch,
                "preset": args.preset,
                "quant": args.quant,
                "seed": args.seed,
                "layers": args.layers,
            },
            "synth_command": synth_command,
        }
    out = {
        **head,
        "reference": "llama.cpp (llama-server, CPU, greedy)",
        "gguf_sha256": sha,
        "gguf_bytes": gguf_bytes,
        "llama_cpp": {
            "version": version_text.splitlines()[0] if version_text else None,
            "commit": commit.group(1) if commit else None,
            "build_info": props.get("build_info"),
            "server_args": ["llama-server"] + server.recorded_args(),
            "system_info": system_info,
            "amx": "refused (scripts/no-amx.c)" if preload else "not refused",
            "print_info": print_info(log),
        },
        "cpu": cpu_info(),
        "greedy": greedy,
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(greedy)} prompts, sha256 {sha}", file=sys.stderr)


if __name__ == "__main__":
    main()
