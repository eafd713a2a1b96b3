#!/usr/bin/env python3
"""Writes reference vectors for strata's GGML quant code, made by an
independent implementation: the `gguf` PyPI package's numpy quantizers.

For each type, into model/tests/data/quant/:
  <TYPE>.q      raw GGUF blocks
  <TYPE>.y.f32  gguf.quants.dequantize of those blocks (little-endian f32)
  <TYPE>.x.f32  the f32 input the blocks were quantized from, for types
                gguf can quantize (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
For K-quants (gguf only dequantizes them) the blocks are random bytes with
finite, moderate f16 scales. Q8_1 and Q8_K are not in gguf and have no vectors.
MXFP4 (gguf >= 0.17 has `quants.MXFP4`) is quantized from its own seeded
input stream, so adding it left the other types' vectors unchanged; its
input adds a block scaled by 2^-120 and one by 2^100 (extreme exponents).
manifest.json lists the types, element counts and the seed.

Usage: python3 scripts/gen-quant-vectors.py   (deterministic; seed below)
"""
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

SEED = 20260522
OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "data", "quant")

QUANTIZABLE = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# K type -> byte offsets of its f16 scale fields (d, dmin)
K_SCALES = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def inputs(rng, blocks, block_elems):
    """Rows of mixed character: normal, wide-range, one zero block, one outlier block."""
    x = rng.standard_normal((blocks, block_elems)).astype(np.float32)
    x *= rng.uniform(1e-3, 4.0, size=(blocks, 1)).astype(np.float32)
    x[1] = 0.0
    x[2, rng.integers(block_elems)] = 50.0
    x[3] = np.abs(x[3])  # all positive: exercises min/max types
    return x.reshape(-1)


def main():
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT, exist_ok=True)
    manifest = {"seed": SEED, "gguf_version": getattr(gguf, "__version__", "unknown"), "types": []}
    for name in QUANTIZABLE:
        qt = getattr(T, name)
        block_elems, _ = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = 6 if block_elems == 32 else 192
        x = inputs(rng, 6, block_elems * n_blocks // 6).astype(np.float32)
        if name == "F16":
            q = x.astype(np.float16).view(np.uint8)
        else:
            q = quants.quantize(x.reshape(1, -1), qt).reshape(-1)
        y = quants.dequantize(q, qt).astype(np.float32).reshape(-1)
        write(name, x, q, y)
        manifest["types"].append({"type": name, "elems": int(x.size), "has_input": True})
    for name, offs in K_SCALES.items():
        qt = getattr(T, name)
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = 4
        q = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for b in range(n_blocks):
            for o in offs:
                v = np.float16(rng.uniform(-0.05, 0.05) if o == offs[0] else rng.uniform(0, 0.05))
                q[b, o:o + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
        q = q.reshape(-1)
        y = quants.dequantize(q, qt).astype(np.float32).reshape(-1)
        write(name, None, q, y)
        manifest["types"].append({"type": name, "elems": int(y.size), "has_input": False})
    mxfp4(manifest)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def mxfp4(manifest):
    """MXFP4 through gguf's `quants.MXFP4` (a port of ggml's
    quantize_row_mxfp4_ref / dequantize_row_mxfp4), on a separate stream."""
    rng = np.random.default_rng([SEED, 39])
    x = inputs(rng, 8, 32).reshape(8, 32)
    x[4] *= np.float32(2.0**-120)
    x[5] *= np.float32(2.0**100)
    x = x.reshape(-1).astype(np.float32)
    q = quants.quantize(x.reshape(1, -1), T.MXFP4).reshape(-1)
    y = quants.dequantize(q, T.MXFP4).astype(np.float32).reshape(-1)
    write("MXFP4", x, q, y)
    manifest["types"].append({"type": "MXFP4", "elems": int(x.size), "has_input": True})


def write(name, x, q, y):
    if x is not None:
        x.astype("<f4").tofile(os.path.join(OUT, f"{name}.x.f32"))
    np.asarray(q, dtype=np.uint8).tofile(os.path.join(OUT, f"{name}.q"))
    y.astype("<f4").tofile(os.path.join(OUT, f"{name}.y.f32"))


if __name__ == "__main__":
    main()
