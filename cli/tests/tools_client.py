"""Tool calls through the real `openai` client against `strata serve`: the
model calls a tool (tool_choice required, then a named function, so the
grammar makes the call well-formed even for a small or random model), the
call arrives parsed and its arguments validate against the function's
schema (`jsonschema`); the tool's result goes back as a `tool` message and
the model answers. Whole and streamed.

Usage: tools_client.py BASE_URL
Run by cli/tests/tool_calls.rs; exits non-zero on the first failure.
"""

import json
import sys

import jsonschema
import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
model = client.models.list().data[0].id


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what.splitlines()[0][:140]}")


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 20}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
question = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


def check_call(call, want_name=None):
    check(call.type == "function" and call.id, f"call has an id and type: {call}")
    name = call.function.name
    check(name in SCHEMAS and (want_name is None or name == want_name), f"call names a tool: {name}")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[name])
    check(True, f"{name} arguments validate: {args}")
    return name, args


def history_after(call, result):
    return question + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]


RESULT = {"forecast": ["sunny", "rain", "sunny"], "high_c": 21}

# Whole: required, then the answer to the tool's result.
for choice, want in [("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")]:
    r = client.chat.completions.create(
        model=model, messages=question, tools=TOOLS, tool_choice=choice, temperature=1.0, seed=3, max_tokens=300,
        parallel_tool_calls=False,
    )
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"tool_choice={choice}: finish_reason tool_calls ({c.finish_reason}, {c.message})")
    check(len(c.message.tool_calls) == 1, f"one call: {c.message.tool_calls}")
    check_call(c.message.tool_calls[0], want)

call = c.message.tool_calls[0]
r = client.chat.completions.create(
    model=model, messages=history_after(call, RESULT), tools=TOOLS, temperature=0, max_tokens=24
)
c = r.choices[0]
check(c.finish_reason in ("stop", "length") and c.message.content and not c.message.tool_calls,
      f"answer after the tool result: {c.message.content!r}")

# Streamed: delta.tool_calls assembled by index, OpenAI's way.
stream = client.chat.completions.create(
    model=model, messages=question, tools=TOOLS, tool_choice="required", temperature=1.0, seed=5, max_tokens=300,
    parallel_tool_calls=False, stream=True,
)
calls, finish, deltas = {}, None, 0
for chunk in stream:
    if not chunk.choices:
        continue
    ch = chunk.choices[0]
    for d in ch.delta.tool_calls or []:
        deltas += 1
        slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        if d.id:
            slot["id"] = d.id
        if d.function and d.function.name:
            slot["name"] += d.function.name
        if d.function and d.function.arguments:
            slot["arguments"] += d.function.arguments
    finish = ch.finish_reason or finish
check(finish == "tool_calls" and len(calls) == 1 and deltas >= 2, f"streamed call in {deltas} deltas, finish {finish}")
slot = calls[0]
check(slot["id"] and slot["name"] in SCHEMAS, f"streamed call: {slot}")
jsonschema.validate(json.loads(slot["arguments"]), SCHEMAS[slot["name"]])
check(True, f"streamed arguments validate: {slot['arguments']}")


class Call:  # the streamed call, in the shape history_after takes
    def __init__(self, s):
        self.id = s["id"]
        self.function = type("F", (), {"name": s["name"], "arguments": s["arguments"]})


stream = client.chat.completions.create(
    model=model, messages=history_after(Call(slot), RESULT), tools=TOOLS, temperature=0, max_tokens=24, stream=True
)
text, finish = "", None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
check(finish in ("stop", "length") and text, f"streamed answer after the tool result: {text!r}")

# tool_choice naming a function that is not offered: a 400.
try:
    client.chat.completions.create(
        model=model, messages=question, tools=TOOLS, max_tokens=5,
        tool_choice={"type": "function", "function": {"name": "nope"}},
    )
    check(False, "an unknown function was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, f"unknown function in tool_choice is a 400: {e.body}")
print("all tool call checks passed")
