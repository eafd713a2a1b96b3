"""Structured output through the real `openai` client against `strata serve`:
over 100 runs at temperature 1.0 under a non-trivial JSON schema, each
checked with the independent `jsonschema` validator; json_object; a schema
feature llguidance cannot enforce is a 400 naming it; logit_bias.

Usage: structured_output.py BASE_URL RUNS
Run by cli/tests/structured_output.rs; exits non-zero on the first failure.
"""

import concurrent.futures
import json
import sys

import jsonschema
import openai

base, runs = sys.argv[1], int(sys.argv[2])
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
model = client.models.list().data[0].id


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what.splitlines()[0][:120]}")


PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "kind": {"enum": ["cat", "dog", "parrot"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "weight_kg": {"type": "number", "minimum": 0.5, "maximum": 80},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 6},
            "minItems": 1,
            "maxItems": 2,
        },
        "owner": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "verified": {"type": "boolean"},
            },
            "required": ["city", "verified"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "age", "weight_kg", "tags", "owner"],
    "additionalProperties": False,
}
jsonschema.Draft202012Validator.check_schema(PET)
validator = jsonschema.Draft202012Validator(PET)


def one(seed):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a pet as JSON."}],
        temperature=1.0,
        seed=seed,
        max_tokens=160,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "strict": True, "schema": PET}},
    )
    c = r.choices[0]
    return seed, c.finish_reason, c.message.content


failures = []
with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    for seed, finish, text in pool.map(one, range(runs)):
        try:
            value = json.loads(text)
            validator.validate(value)
            if finish != "stop":
                raise ValueError(f"finish_reason {finish}")
        except Exception as e:  # noqa: BLE001 - every failure is reported with its seed
            failures.append(f"seed {seed}: {e}: {text!r}")
check(not failures, f"{runs} runs at temperature 1.0 parse and validate:\n" + "\n".join(failures[:5]))

r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
    temperature=1.0,
    seed=7,
    max_tokens=200,
    response_format={"type": "json_object"},
)
text = r.choices[0].message.content
check(isinstance(json.loads(text), dict) and r.choices[0].finish_reason == "stop", f"json_object: {text!r}")

try:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "u", "schema": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
        },
    )
    check(False, "uniqueItems was accepted")
except openai.BadRequestError as e:
    err = e.body if isinstance(e.body, dict) else {}
    check(
        e.status_code == 400 and "uniqueItems" in err.get("message", "") and err.get("param") == "response_format",
        f"unsupported schema feature is a 400 naming it: {err}",
    )

try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=5,
        response_format={"type": "json_object"}, extra_body={"ignore_eos": True},
    )
    check(False, "ignore_eos with a grammar was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "ignore_eos", f"ignore_eos with a grammar is a 400: {e.body}")

# logit_bias: +100 on one token makes every sampled token that one, at
# temperature 1.0; -100 on it with +100 on another gives the other.
def biased(bias):
    r = client.completions.create(
        model=model, prompt="The capital of France is", temperature=1.0, max_tokens=5, logit_bias=bias
    )
    return r.choices[0].text


a = biased({"1274": 100})
check(len(a) > 0 and a == a[: len(a) // 5] * 5, f"logit_bias +100 repeats one token: {a!r}")
b = biased({"1274": -100, "2000": 100})
check(len(b) > 0 and b == b[: len(b) // 5] * 5 and b != a, f"logit_bias -100 bans it, +100 forces another: {b!r}")
print("all structured output checks passed")
