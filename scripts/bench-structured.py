#!/usr/bin/env python3
"""Decode time per token with and without a grammar, in the same run,
against a running `strata serve` (docs/structured-output.md has numbers).

Usage: scripts/bench-structured.py BASE_URL [ROUNDS]

Each round sends one unconstrained and one constrained streamed request
(alternating, so load and thermal drift hit both alike), one at a time;
the time per token is measured between the first and the last streamed
token, so the prompt's prefill is not in it.
"""

import json
import statistics
import sys
import time

import openai

base = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
model = client.models.list().data[0].id

# About 100 tokens under the grammar, at temperature 0.
SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "minItems": 4,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "country": {"type": "string", "maxLength": 16},
                    "population_millions": {"type": "number", "minimum": 0, "maximum": 40},
                },
                "required": ["name", "country", "population_millions"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["cities"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "List four large cities with their country and population as JSON."}]


def ms_per_token(**extra):
    stamps = []
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=200, stream=True, **extra
    )
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
            text += chunk.choices[0].delta.content
    if len(stamps) < 8:
        raise SystemExit(f"too few tokens streamed: {text!r}")
    return (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1), len(stamps), text


plain, constrained = [], []
for _ in range(rounds):
    ms, n, _ = ms_per_token(extra_body={"ignore_eos": True})
    plain.append(ms)
    fmt = {"type": "json_schema", "json_schema": {"name": "cities", "schema": SCHEMA}}
    ms, n_c, text = ms_per_token(response_format=fmt)
    json.loads(text)
    constrained.append(ms)
p, c = statistics.median(plain), statistics.median(constrained)
print(f"model {model}: unconstrained {p:.2f} ms/token ({1000 / p:.1f} tok/s), "
      f"json_schema {c:.2f} ms/token ({1000 / c:.1f} tok/s), ratio {c / p:.3f} "
      f"(medians of {rounds} rounds, ~{n}/{n_c} streamed chunks)")
