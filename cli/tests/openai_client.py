"""The real `openai` client (PyPI) against a running `strata serve`.

Usage: openai_client.py BASE_URL API_KEY REFERENCE_PROMPT REFERENCE_TEXT
Run by cli/tests/openai_client.rs; exits non-zero on the first failure.
"""

import concurrent.futures
import sys

import openai

base, key, ref_prompt, ref_text = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what.splitlines()[0][:100]}")


models = client.models.list()
model = models.data[0].id
check(len(models.data) == 1 and model, f"models.list: {models}")

# Completion: llama.cpp's greedy text.
n_ref = 32
r = client.completions.create(model=model, prompt=ref_prompt, temperature=0, max_tokens=n_ref)
check(r.choices[0].text == ref_text, f"completion equals llama.cpp's greedy text: {r.choices[0].text!r}")
check(r.usage.completion_tokens == n_ref and r.usage.prompt_tokens > 0, f"completion usage: {r.usage}")
check(r.choices[0].finish_reason == "length", f"finish_reason length: {r.choices[0].finish_reason}")

# Chat, whole and streamed: the same text.
messages = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=40)
text = chat.choices[0].message.content
# llama-server (llama.cpp from the llama-cpp-python 0.3.36 sdist, CPU, -t 2)
# answers this request, greedy, with exactly this text (SmolLM2-135M is small).
llama_cpp_chat = "L'Étoile, la Marseillaise, la femme au roi, la femme au roi, la femme au roi, la femme au roi,"
check(text == llama_cpp_chat and chat.choices[0].message.role == "assistant", f"chat answers as llama.cpp: {text!r}")
check(chat.choices[0].finish_reason in ("stop", "length"), f"chat finish_reason: {chat.choices[0].finish_reason}")
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, f"streamed chat equals whole chat: {streamed!r}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, "stream usage chunk")
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(finish == [chat.choices[0].finish_reason], f"one finish_reason in the stream: {finish}")

# Stop strings end the text before them.
r = client.completions.create(model=model, prompt=ref_prompt, temperature=0, max_tokens=n_ref, stop=["\n"])
check(r.choices[0].text == ref_text.split("\n")[0] and r.choices[0].finish_reason == "stop", f"stop string: {r.choices[0].text!r}")

# Log-probabilities.
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
check(len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp), "chat logprobs")
check(all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in lp), "logprobs are ordered log-probabilities")

# Bad requests are 400 in OpenAI's shape.
try:
    client.chat.completions.create(model=model, messages=messages, temperature=5)
    check(False, "temperature 5 is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body["param"] == "temperature", f"bad temperature is a 400: {e.body}")
try:
    client.completions.create(model=model, prompt="hello " * 5000, max_tokens=4)
    check(False, "an over-long prompt is refused")
except openai.BadRequestError as e:
    check(e.body["code"] == "context_length_exceeded", f"over-long prompt: {e.body}")

# A wrong API key is a 401.
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "wrong API key is a 401")

# Concurrent streams: each gets the text it gets alone.
prompts = [f"The capital of {c} is" for c in ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Peru", "Canada"]]
alone = [client.completions.create(model=model, prompt=p, temperature=0, max_tokens=24).choices[0].text for p in prompts]


def stream(p):
    s = client.completions.create(model=model, prompt=p, temperature=0, max_tokens=24, stream=True)
    return "".join(c.choices[0].text for c in s if c.choices)


with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
    together = list(pool.map(stream, prompts))
for p, a, t in zip(prompts, alone, together):
    check(a == t, f"concurrent stream for {p!r}: {t!r} vs alone {a!r}")
print("all openai client checks passed")
