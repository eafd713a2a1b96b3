#!/usr/bin/env python3
"""Records how llama.cpp renders the chat templates in tests/data/templates.

For each template, serves a small `strata synth` model with llama-server
`--chat-template-file` and asks `/apply-template` to render a set of
conversations, with llama-server's default template arguments and with
`chat_template_kwargs = {"enable_thinking": false}`. Writes
tests/data/chat-templates.json (format in tests/data/README.md).

llama.cpp gives a template its model's BOS and EOS texts and, where the model
adds BOS, strips a leading BOS text from the rendered prompt. The synthetic
vocabulary's are `<|endoftext|>` and `<|im_end|>`, so for Gemma 4 the script
renames those two tokens `<bos>` and `<eos>` in the GGUF and sets
`tokenizer.ggml.add_bos_token`, as in the real model (llama.cpp forces BOS on
for Gemma 4's tokenizer).

    scripts/record-templates.py --out tests/data/chat-templates.json

Needs target/debug/strata (`cargo build -p strata`, or --strata) and
llama-server (~/.cache/strata/llama-build/bin, or --llama-server).
Standard library only.
"""

import argparse
import importlib.util
import json
import re
import struct
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("record_reference", REPO / "scripts/record-reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# template file -> (synth arch, BOS text, EOS text, add BOS); None keeps the synthetic one.
TEMPLATES = {
    "Qwen3.5-4B.jinja": ("qwen35", None, None, None),
    "google-gemma-4-31B-it.jinja": ("gemma4", "<bos>", "<eos>", True),
    "google-gemma-4-31B-it-interleaved.jinja": ("gemma4", "<bos>", "<eos>", True),
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    [
        SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [
        {"role": "user", "content": "  padded question \n\n"},
        {"role": "assistant", "content": "  padded answer \n"},
        {"role": "user", "content": "日本語と🦀\nline two"},
    ],
    [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nsome reasoning\n</think>\n\nThe answer."},
        {"role": "user", "content": "And now?"},
    ],
    [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<|channel>thought\nsome reasoning<channel|>The answer."},
        {"role": "user", "content": "And now?"},
    ],
    [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "Sunny, 20 C"},
        {"role": "user", "content": "Thanks."},
    ],
    [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": ""}],
    # Errors in some templates (raise_exception): a late system message, no user message.
    [{"role": "user", "content": "Hi"}, SYSTEM, {"role": "user", "content": "Hi again"}],
    [SYSTEM],
]

GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY, GGUF_BOOL = 8, 9, 7


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v

    def string(self):
        n = self.take("Q")
        self.pos += n
        return self.data[self.pos - n : self.pos].decode()

    def value(self, t):
        if t == GGUF_STRING:
            return self.string()
        if t == GGUF_ARRAY:
            item, n = self.take("I"), self.take("Q")
            return (item, [self.value(item) for _ in range(n)])
        return self.take(GGUF_SCALARS[t])


def pack_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def pack_value(t, v):
    if t == GGUF_STRING:
        return pack_string(v)
    if t == GGUF_ARRAY:
        item, items = v
        return struct.pack("<IQ", item, len(items)) + b"".join(pack_value(item, x) for x in items)
    return struct.pack("<" + GGUF_SCALARS[t], v)


def rewrite_specials(path, bos, eos, add_bos):
    """Renames the BOS and EOS tokens and sets add_bos_token in a GGUF, in place."""
    r = Reader(path.read_bytes())
    assert r.take("I") == 0x46554747, "not a GGUF"
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs = {}
    for _ in range(n_kv):
        key, t = r.string(), r.take("I")
        kvs[key] = (t, r.value(t))
    infos_start = r.pos
    for _ in range(n_tensors):
        r.string()
        n_dims = r.take("I")
        r.pos += 8 * n_dims + 4 + 8  # dims, type, offset
    infos = r.data[infos_start : r.pos]
    align = kvs.get("general.alignment", (4, 32))[1]
    data = r.data[-(-r.pos // align) * align :]

    tokens = kvs["tokenizer.ggml.tokens"][1][1]
    for key, text in (("tokenizer.ggml.bos_token_id", bos), ("tokenizer.ggml.eos_token_id", eos)):
        tokens[kvs[key][1]] = text
    kvs["tokenizer.ggml.add_bos_token"] = (GGUF_BOOL, add_bos)

    out = struct.pack("<IIQQ", 0x46554747, version, n_tensors, len(kvs))
    out += b"".join(pack_string(k) + struct.pack("<I", t) + pack_value(t, v) for k, (t, v) in kvs.items())
    out += infos
    out += b"\0" * (-len(out) % align)
    path.write_bytes(out + data)


def apply_template(server, messages, add_generation_prompt, kwargs):
    """The rendered prompt, or {"error": message} where llama-server refuses."""
    body = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    try:
        return ref.post(server.port, "/apply-template", body)["prompt"]
    except urllib.error.HTTPError as e:
        return {"error": json.load(e).get("error", {}).get("message")}


def record_template(args, name, tmp, preload):
    arch, bos, eos, add_bos = TEMPLATES[name]
    template = REPO / "tests/data/templates" / name
    model = Path(tmp) / f"{arch}.gguf"
    subprocess.run(
        [str(args.strata), "synth", "--arch", arch, "--preset", "tiny", "--quant", "Q8_0", "-o", str(model)],
        check=True,
    )
    if bos is not None:
        rewrite_specials(model, bos, eos, add_bos)
    server = ref.Server(
        args.llama_server, model, 2, Path(tmp) / f"{name}.log", preload,
        extra_args=["--chat-template-file", str(template)],
    )
    try:
        server.wait_ready()
        props = ref.get(server.port, "/props")
        renders = []
        for messages in CONVERSATIONS:
            for add in (True, False):
                default = apply_template(server, messages, add, None)
                on = apply_template(server, messages, add, {"enable_thinking": True})
                off = apply_template(server, messages, add, {"enable_thinking": False})
                renders.append({
                    "messages": messages,
                    "add_generation_prompt": add,
                    "default_is_enable_thinking": default == on,
                    "prompt": default,
                    "prompt_enable_thinking_false": off,
                })
    finally:
        server.stop()
    # (llama.cpp drops the file's final newline, as Jinja does.)
    source = template.read_text()
    assert props.get("chat_template") in (source, source.removesuffix("\n")), f"{name}: llama-server used another template"
    return {
        "template": f"templates/{name}",
        "synth_arch": arch,
        "bos_token": props.get("bos_token"),
        "eos_token": props.get("eos_token"),
        "add_bos": add_bos or False,
        "renders": renders,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/chat-templates.json")
    ap.add_argument("--strata", type=Path, default=REPO / "target/debug/strata")
    ap.add_argument("--llama-server", type=Path, default=ref.DEFAULT_SERVER)
    args = ap.parse_args()

    version = subprocess.run([str(args.llama_server), "--version"], capture_output=True, text=True)
    version_text = (version.stdout + version.stderr).strip()
    commit = re.search(r"commit ([0-9a-f]+)", version_text)
    with tempfile.TemporaryDirectory() as tmp:
        preload = ref.build_no_amx(tmp)
        templates = [record_template(args, name, tmp, preload) for name in TEMPLATES]
    out = {
        "reference": "llama.cpp (llama-server /apply-template, --jinja, default reasoning)",
        "llama_cpp": {
            "version": version_text.splitlines()[0] if version_text else None,
            "commit": commit.group(1) if commit else None,
        },
        "templates": templates,
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {sum(len(t['renders']) for t in templates)} renders", file=sys.stderr)


if __name__ == "__main__":
    main()
