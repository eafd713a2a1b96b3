"""Time to first token of a long conversation, cold and warm, on a running
`strata serve` (or llama-server), with the real openai client.

Usage: bench_prefix_cache.py BASE_URL [--chars 13800] [--turns 4] [--rounds 2]

Builds the conversation of cli/tests/prefix_cache.rs (the first --chars
characters of tests/data/gpl-3.txt, about 3,000 SmolLM2 tokens, then short
follow-ups) and, for each turn, streams a 16-token greedy reply and reports
the prompt tokens, `usage.prompt_tokens_details.cached_tokens` and the time
to the first streamed token. Run it against a server with the prefix cache
and one with `--no-prefix-cache` to compare warm with cold turns; the first
turn is cold on both. Each round starts the conversation over with another
opening line, so no round finds the previous one's blocks.
"""

import argparse
import pathlib
import statistics
import time

import openai

HERE = pathlib.Path(__file__).resolve().parent


def turn(client, model, messages):
    start = time.perf_counter()
    first = None
    text = []
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    first = first or time.perf_counter()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    return "".join(text), usage.prompt_tokens, cached, first - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--chars", type=int, default=13_800)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url.rstrip("/") + "/v1", api_key="none")
    model = client.models.list().data[0].id
    history = (HERE.parent / "tests/data/gpl-3.txt").read_text()[: args.chars]
    ttft = {}
    print(f"{'round':>5} {'turn':>4} {'prompt':>7} {'cached':>7} {'ttft s':>8}")
    for r in range(args.rounds):
        messages = [{
            "role": "user",
            "content": f"Round {r}. Here is a text.\n\n{history}\n\nWhat is it about?",
        }]
        for t in range(args.turns):
            reply, prompt, cached, secs = turn(client, model, messages)
            ttft.setdefault(t, []).append(secs)
            print(f"{r:>5} {t:>4} {prompt:>7} {cached:>7} {secs:>8.3f}")
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": f"Say more, part {t + 2}."},
            ]
    print()
    for t, v in sorted(ttft.items()):
        print(f"turn {t}: median time to first token {statistics.median(v):.3f} s")


if __name__ == "__main__":
    main()
