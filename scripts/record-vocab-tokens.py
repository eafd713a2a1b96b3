#!/usr/bin/env python3
"""Records llama.cpp's own tokenization of a mixed-script text with the
Qwen3.5 and Gemma 4 vocab-only GGUFs (scripts/fetch-models.sh puts them in
the model cache), beside the Hugging Face pairs llama.cpp tests with.

The text is built from a seeded pick of fragments (scripts, combining marks,
emoji, whitespace and newline runs, digits, contractions, `▁`, special-token
texts), so the same seed gives the same text. scripts/llama-tokenize.c,
compiled against the llama.cpp build, tokenizes it four ways: plain (no BOS,
special tokens not parsed, as llama.cpp's tokenizer tests) and as a prompt
(BOS where the model adds it, special tokens parsed); and `gpl-3.txt` both
ways, kept as a token count and the sha256 of the ids joined by spaces.
Writes tests/data/llama-vocab-tokens.json.

    scripts/record-vocab-tokens.py

Needs cc, the llama.cpp build (~/.cache/strata/llama-build/bin, or
--llama-build) and its source (~/.cache/strata/llama-src/…, or
--llama-src). Standard library only.
"""

import argparse
import hashlib
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache/strata"
VOCABS = ["ggml-vocab-qwen35.gguf", "ggml-vocab-gemma-4.gguf"]
FRAGMENTS = [
    "Hello", "world", " ", "  ", "\n", "\n\n", "\n\n\n", "\t", "\r\n", "'s", "'LL", "'ve",
    "123", "4567890", "日本語", "中文字符", "한국어", "Привет", "mира", "café", "cafe\u0301",
    "n\u0303", "\u0915\u094d\u0937", "हिन्दी", "العربية", "🦀", "🚀🚀", "❤️", "👨‍👩‍👧", "▁",
    "▁▁x", "<|turn>", "<turn|>", "<bos>", "</s>", "<s>", "<|im_start|>", "<|im_end|>",
    "<0x41>", "<unk>", "```python", "def f(x):", "    return x", "{}", "...", "!!!", "?!",
    "—", "’", "“quoted”", "\u00a0", "\u3000", "\u200b", "\x1b[0m", "ʼn", "ǅ", "Ⅻ", "½",
    "x²", "\ufeff", "\U0010fffd", "\ue000",
]


def mixed_text(seed, picks):
    rng = random.Random(seed)
    out = []
    for _ in range(picks):
        out.append(rng.choice(FRAGMENTS))
        if rng.random() < 0.3:
            out.append(" ")
    return "".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/llama-vocab-tokens.json")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("STRATA_MODELS", CACHE / "models")))
    ap.add_argument("--llama-build", type=Path, default=CACHE / "llama-build/bin")
    ap.add_argument("--llama-src", type=Path, default=CACHE / "llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--picks", type=int, default=800)
    args = ap.parse_args()

    text = mixed_text(args.seed, args.picks)
    gpl = (REPO / "tests/data/gpl-3.txt").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "llama-tokenize"
        subprocess.run(
            ["cc", "-O1", f"-I{args.llama_src}/include", f"-I{args.llama_src}/ggml/include",
             str(REPO / "scripts/llama-tokenize.c"), f"-L{args.llama_build}", "-lllama",
             f"-Wl,-rpath,{args.llama_build}", "-o", str(exe)],
            check=True,
        )
        files = {"text": Path(tmp) / "text.txt", "gpl": Path(tmp) / "gpl.txt"}
        files["text"].write_text(text)
        files["gpl"].write_text(gpl)

        def tokenize(vocab, which, special):
            flag = "1" if special else "0"
            out = subprocess.run(
                [str(exe), str(args.models / vocab), str(files[which]), flag, flag],
                check=True, capture_output=True, text=True,
            ).stdout.split()
            return [int(t) for t in out]

        vocabs = {}
        for vocab in VOCABS:
            entry = {}
            for name, special in (("plain", False), ("prompt", True)):
                entry[name] = tokenize(vocab, "text", special)
                ids = tokenize(vocab, "gpl", special)
                entry[f"gpl_{name}"] = {
                    "tokens": len(ids),
                    "sha256": hashlib.sha256(" ".join(map(str, ids)).encode()).hexdigest(),
                }
            vocabs[vocab] = entry
    version = subprocess.run(
        [str(args.llama_build / "llama-server"), "--version"], capture_output=True, text=True
    )
    out = {
        "reference": "llama.cpp llama_tokenize on vocab-only GGUFs (scripts/llama-tokenize.c)",
        "llama_cpp_version": (version.stdout + version.stderr).strip().splitlines()[0],
        "seed": args.seed,
        "picks": args.picks,
        "text": text,
        "vocabs": vocabs,
    }
    args.out.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
