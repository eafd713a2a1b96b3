//! Our dequantization and quantizers against the `gguf` Python package's
//! numpy implementation (vectors from scripts/gen-quant-vectors.py).
//!
//! Dequantization must match bit for bit: both sides compute the same f32
//! products in the same order. Quantizers must produce the same blocks,
//! except where a value sits on a rounding boundary (gguf rounds some
//! products in f64, ggml and we in f32; Q8_0 ties round to even in numpy
//! and away from zero in ggml): there a quant may differ by one step, on at
//! most 1% of elements. MXFP4 blocks must be identical.

use std::path::PathBuf;

use strata_model::quant::{dequantize_row, mxfp4, quantize_row};
use strata_model::GgmlType;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

fn read_f32(path: &PathBuf) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Vector {
    dtype: GgmlType,
    elems: usize,
    x: Option<Vec<f32>>,
    q: Vec<u8>,
    y: Vec<f32>,
}

fn vectors() -> Vec<Vector> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("manifest.json")).unwrap()).unwrap();
    let types = manifest["types"].as_array().unwrap();
    assert!(types.len() >= 13, "manifest lists {} types", types.len());
    assert!(
        types.iter().any(|t| t["type"] == "MXFP4"),
        "manifest has no MXFP4 vectors"
    );
    types
        .iter()
        .map(|t| {
            let name = t["type"].as_str().unwrap();
            let dtype = GgmlType::from_name(name).unwrap();
            let x = t["has_input"]
                .as_bool()
                .unwrap()
                .then(|| read_f32(&dir().join(format!("{name}.x.f32"))));
            Vector {
                dtype,
                elems: t["elems"].as_u64().unwrap() as usize,
                x,
                q: std::fs::read(dir().join(format!("{name}.q"))).unwrap(),
                y: read_f32(&dir().join(format!("{name}.y.f32"))),
            }
        })
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    for v in vectors() {
        let mut y = vec![0.0f32; v.elems];
        dequantize_row(v.dtype, &v.q, &mut y).unwrap();
        let be = v.dtype.block_elems().max(32);
        for (blk, (ours, theirs)) in y.chunks(be).zip(v.y.chunks(be)).enumerate() {
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{} block {blk} elem {i}: ours {a} gguf-py {b}",
                    v.dtype
                );
            }
        }
    }
}

/// A row dequantized, to compare blocks in units of their step.
fn dequantized(dtype: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    dequantize_row(dtype, q, &mut y).unwrap();
    y
}

#[test]
fn quantizers_match_gguf_py() {
    for v in vectors() {
        let Some(x) = &v.x else { continue };
        let mut q = vec![0u8; v.q.len()];
        quantize_row(v.dtype, x, &mut q).unwrap();
        if q == v.q {
            continue;
        }
        eprintln!("{}: blocks differ from gguf-py; comparing levels", v.dtype);
        let (be, bb) = (
            v.dtype.block_elems().max(32),
            v.dtype.block_bytes() * (32 / v.dtype.block_elems()).max(1),
        );
        let (ours, theirs) = (
            dequantized(v.dtype, &q, v.elems),
            dequantized(v.dtype, &v.q, v.elems),
        );
        let mut differing = 0;
        for (blk, (qa, qb)) in q.chunks(bb).zip(v.q.chunks(bb)).enumerate() {
            if qa == qb {
                continue;
            }
            // Scales (the leading f16s) must agree; only levels may differ.
            let scale_bytes = match v.dtype {
                GgmlType::Q4_1 | GgmlType::Q5_1 => 4,
                GgmlType::F16 | GgmlType::BF16 => 0,
                GgmlType::MXFP4 => 1,
                _ => 2,
            };
            assert_eq!(
                qa[..scale_bytes],
                qb[..scale_bytes],
                "{} block {blk}: scales differ",
                v.dtype
            );
            let step = match v.dtype {
                // The widest gap between E2M1 levels: 4 and 6 (doubled: 8, 12).
                GgmlType::MXFP4 => 4.0 * mxfp4::e8m0_to_f32_half(qa[0]),
                _ => half::f16::from_le_bytes([qa[0], qa[1]]).to_f32().abs(),
            };
            for i in blk * be..(blk + 1) * be {
                let diff = (ours[i] - theirs[i]).abs();
                if diff > 0.0 {
                    differing += 1;
                    let ok = diff <= step * 1.0001 && step > 0.0;
                    assert!(
                        ok,
                        "{} block {blk} elem {i}: ours {} gguf-py {} (step {step})",
                        v.dtype, ours[i], theirs[i]
                    );
                }
            }
        }
        assert!(
            differing * 100 <= v.elems,
            "{}: {differing} of {} elements differ",
            v.dtype,
            v.elems
        );
    }
}

/// MXFP4's quantizer has no rounding boundary to disagree on (gguf-py, as
/// ggml, picks the nearest level with f32 products, first index on ties):
/// blocks must be identical, including the extreme-exponent blocks.
#[test]
fn mxfp4_quantizer_matches_gguf_py_exactly() {
    let v = vectors()
        .into_iter()
        .find(|v| v.dtype == GgmlType::MXFP4)
        .expect("MXFP4 vectors");
    let x = v.x.as_ref().expect("MXFP4 input");
    let mut q = vec![0u8; v.q.len()];
    quantize_row(GgmlType::MXFP4, x, &mut q).unwrap();
    for (blk, (a, b)) in q.chunks(17).zip(v.q.chunks(17)).enumerate() {
        assert_eq!(a, b, "MXFP4 block {blk}: ours vs gguf-py");
    }
}
