"""Aggregate generation speed of a running `strata serve` (or llama-server)
at several concurrency levels, with the real openai client.

Usage: bench_serve.py BASE_URL [--concurrency 1,8] [--max-tokens 128] [--rounds 2]
       bench_serve.py BASE_URL --against OTHER_URL [--rounds 6] [--max-tokens 128]

Each stream asks for exactly --max-tokens tokens (ignore_eos). Reported per
level: aggregate tokens/s (all tokens / wall time), per-stream decode rate
(tokens after the first / time after the first), min/max over streams (a
starved stream shows as a low min), time to first token, and the ratio of
each level's aggregate to the first level's.

With --against, one stream at a time goes to BASE_URL and OTHER_URL in
turn (ABBA order), and each round's ratio of decode rates is printed with
their median: a noisy machine's drift then falls on both servers alike.
"""

import argparse
import concurrent.futures
import statistics
import time

import openai

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe a walk through a forest in autumn.",
    "What makes a good cup of tea?",
    "Tell me about the history of paper.",
    "How do bees make honey?",
    "Describe the rules of chess.",
]


def one_stream(client, model, prompt, max_tokens):
    start = time.perf_counter()
    first = None
    n = 0
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    decode_rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    return n, first - start, decode_rate, end - start


def level(client, model, c, max_tokens):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(c)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(c) as pool:
        results = list(pool.map(lambda p: one_stream(client, model, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    return {
        "streams": c,
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens / wall,
        "stream_tps_min": min(r[2] for r in results),
        "stream_tps_max": max(r[2] for r in results),
        "ttft_s_mean": statistics.mean(r[1] for r in results),
    }


def paired(base, other, rounds, max_tokens):
    """Decode rate of one stream on `base` over one on `other`, per round,
    the two alternated."""
    rows = []
    for i in range(rounds):
        rates = {}
        for name in (("base", "other") if i % 2 == 0 else ("other", "base")):
            client, model = base if name == "base" else other
            rates[name] = one_stream(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)[2]
        rows.append((rates["base"], rates["other"]))
    print(f"one stream, {max_tokens} tokens, {rounds} rounds alternated (decode tok/s)")
    print(f"{'round':>5}  {'this':>7}  {'against':>7}  {'ratio':>6}")
    for i, (a, b) in enumerate(rows):
        ratio = f"{a / b:>5.3f}x" if a > 0 and b > 0 else "  none (no decode rate)"
        print(f"{i + 1:>5}  {a:>7.1f}  {b:>7.1f}  {ratio}")
    ratios = sorted(a / b for a, b in rows if a > 0 and b > 0)
    if not ratios:
        raise SystemExit("no round measured a decode rate on both servers")
    print(f"ratio median {statistics.median(ratios):.3f}x (min {ratios[0]:.3f}x, max {ratios[-1]:.3f}x)")


def connect(url):
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="none", max_retries=0, timeout=3600)
    return client, client.models.list().data[0].id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--against", help="another server: one stream on each in turn")
    args = ap.parse_args()
    client, model = connect(args.base_url)
    other = connect(args.against) if args.against else None
    for c, m in [(client, model)] + ([other] if other else []):
        level(c, m, 1, 8)  # warm up
    if other:
        paired((client, model), other, 6 if args.rounds is None else args.rounds, args.max_tokens)
        return
    if args.rounds is None:
        args.rounds = 2
    levels = [int(x) for x in args.concurrency.split(",")]
    best = {}
    for _ in range(args.rounds):
        for c in levels:
            r = level(client, model, c, args.max_tokens)
            if c not in best or r["aggregate_tps"] > best[c]["aggregate_tps"]:
                best[c] = r
    base = best[levels[0]]["aggregate_tps"]
    print(f"model {model}, {args.max_tokens} tokens per stream, best of {args.rounds}")
    print(f"{'streams':>7}  {'agg tok/s':>9}  {'ratio':>6}  {'stream min':>10}  {'stream max':>10}  {'ttft s':>7}")
    for c in levels:
        r = best[c]
        print(
            f"{c:>7}  {r['aggregate_tps']:>9.1f}  {r['aggregate_tps'] / base:>5.2f}x  "
            f"{r['stream_tps_min']:>10.1f}  {r['stream_tps_max']:>10.1f}  {r['ttft_s_mean']:>7.2f}"
        )


if __name__ == "__main__":
    main()
