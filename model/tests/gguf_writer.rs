//! The GGUF writer: round trips through the reader.
use std::io::Write;

use strata_model::gguf::{GgufFile, GgufWriteError, GgufWriter, MetaValue, WRITE_VERSION};
use strata_model::GgmlType;

fn every_value() -> Vec<(&'static str, MetaValue)> {
    use MetaValue::*;
    vec![
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60000)),
        ("t.i16", I16(-30000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f32", F32(-1.5e-7)),
        ("t.f64", F64(std::f64::consts::PI)),
        ("t.bool.true", Bool(true)),
        ("t.bool.false", Bool(false)),
        ("t.string", String("héllo, wörld {{ template }}".into())),
        ("t.string.empty", String(std::string::String::new())),
        ("t.arr.u8", Array(vec![U8(1), U8(2), U8(255)])),
        ("t.arr.i8", Array(vec![I8(-1), I8(1)])),
        ("t.arr.u16", Array(vec![U16(1), U16(65535)])),
        ("t.arr.i16", Array(vec![I16(-1)])),
        ("t.arr.u32", Array(vec![U32(0), U32(7)])),
        ("t.arr.i32", Array(vec![I32(-7), I32(i32::MAX)])),
        ("t.arr.u64", Array(vec![U64(1 << 40)])),
        ("t.arr.i64", Array(vec![I64(-(1 << 40))])),
        ("t.arr.f32", Array(vec![F32(0.25), F32(f32::MAX)])),
        ("t.arr.f64", Array(vec![F64(-0.125)])),
        (
            "t.arr.bool",
            Array(vec![Bool(true), Bool(false), Bool(true)]),
        ),
        (
            "t.arr.string",
            Array(vec![
                String("<s>".into()),
                String("".into()),
                String("▁the".into()),
            ]),
        ),
        ("t.arr.empty", Array(vec![])),
        (
            "t.arr.nested",
            Array(vec![
                Array(vec![U32(1), U32(2)]),
                Array(vec![String("x".into())]),
                Array(vec![]),
            ]),
        ),
    ]
}

/// Deterministic bytes for tensor `i`.
fn fill_byte(i: usize, k: u64) -> u8 {
    (i as u64 * 31 + k * 7) as u8
}

fn fill(
    i: usize,
    spec: &strata_model::gguf::TensorSpec,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    // Several writes per tensor, as a streaming producer would do.
    let bytes: Vec<u8> = (0..spec.size_bytes).map(|k| fill_byte(i, k)).collect();
    for chunk in bytes.chunks(100) {
        out.write_all(chunk)?;
    }
    Ok(())
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.add_metadata(k, v);
    }
    w.add_tensor("f32", &[7, 3], GgmlType::F32).unwrap();
    w.add_tensor("f16", &[5], GgmlType::F16).unwrap();
    w.add_tensor("q4k", &[256, 2], GgmlType::Q4K).unwrap();
    w.add_tensor("q8_0", &[64, 3, 2], GgmlType::Q8_0).unwrap();
    w.add_tensor("bf16", &[3, 1, 1, 2], GgmlType::BF16).unwrap();
    w
}

fn check(f: &GgufFile, w: &GgufWriter) {
    for (k, v) in every_value() {
        assert_eq!(f.get(k), Some(&v), "{k}");
    }
    assert_eq!(f.tensors.len(), w.tensors().len());
    for (i, spec) in w.tensors().iter().enumerate() {
        let t = f.tensor(&spec.name).unwrap();
        assert_eq!(
            (&t.dims, t.dtype, t.size_bytes),
            (&spec.dims, spec.dtype, spec.size_bytes)
        );
        assert_eq!(t.offset % f.alignment, 0);
        let data = f.tensor_data(t);
        assert!(
            data.iter()
                .enumerate()
                .all(|(k, &b)| b == fill_byte(i, k as u64)),
            "{}",
            spec.name
        );
    }
}

#[test]
fn round_trip_every_value_type_in_memory() {
    let w = sample_writer();
    let bytes = w.to_bytes(fill).unwrap();
    let f = GgufFile::from_bytes("mem.gguf", &bytes).unwrap();
    assert_eq!(f.version, WRITE_VERSION);
    assert_eq!(f.alignment, 32);
    check(&f, &w);
    assert_eq!(bytes.len() % 32, 0);
}

#[test]
fn round_trip_through_a_file() {
    let dir = std::env::temp_dir().join(format!("strata-gguf-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    let w = sample_writer();
    w.write(&path, fill).unwrap();
    let f = GgufFile::open(&path).unwrap();
    check(&f, &w);
    assert_eq!(f.shard_paths(), vec![path.as_path()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn alignment_is_honoured() {
    for align in [1u32, 8, 64, 4096] {
        let mut w = sample_writer();
        w.set_alignment(align);
        let bytes = w.to_bytes(fill).unwrap();
        let f = GgufFile::from_bytes("aligned.gguf", &bytes).unwrap();
        assert_eq!(f.alignment, align as u64);
        assert_eq!(f.get_u64("general.alignment"), Some(align as u64));
        for t in &f.tensors {
            assert_eq!(t.offset % align as u64, 0, "{} at {}", t.name, t.offset);
        }
        check(&f, &w);
        assert_eq!(
            w.data_offsets().unwrap(),
            f.tensors.iter().map(|t| t.offset).collect::<Vec<_>>()
        );
    }
}

#[test]
fn metadata_keys_replace_and_keep_order() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", MetaValue::U8(1))
        .add_metadata("b", MetaValue::U8(2))
        .add_metadata("a", MetaValue::U8(3));
    let keys: Vec<&str> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    let f = GgufFile::from_bytes("m.gguf", &w.to_bytes(|_, _, _| Ok(())).unwrap()).unwrap();
    assert_eq!(f.get_u64("a"), Some(3));
    assert!(f.tensors.is_empty());
}

#[test]
fn callback_must_write_exactly_the_tensor_size() {
    let w = sample_writer();
    for delta in [-1i64, 1] {
        let err = w
            .to_bytes(|i, spec, out| {
                let n = if i == 2 {
                    (spec.size_bytes as i64 + delta) as usize
                } else {
                    spec.size_bytes as usize
                };
                out.write_all(&vec![0; n])
            })
            .unwrap_err();
        assert!(
            matches!(&err, GgufWriteError::WrongSize { tensor, .. } if tensor == "q4k"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("q4k") && msg.contains("expected 288"), "{msg}");
    }
    // A callback's own error comes back as an I/O error naming the file.
    let err = w
        .to_bytes(|_, _, _| Err(std::io::Error::other("generator failed")))
        .unwrap_err();
    assert!(err.to_string().contains("generator failed"), "{err}");
}

#[test]
fn bad_tensors_and_values_are_refused() {
    let mut w = GgufWriter::new();
    w.add_tensor("x", &[32], GgmlType::F32).unwrap();
    let msg = |e: GgufWriteError| e.to_string();
    assert!(msg(w.add_tensor("x", &[32], GgmlType::F32).unwrap_err()).contains("added twice"));
    assert!(msg(w.add_tensor("y", &[], GgmlType::F32).unwrap_err()).contains("0 dimensions"));
    assert!(msg(w
        .add_tensor("y", &[1, 1, 1, 1, 1], GgmlType::F32)
        .unwrap_err())
    .contains("5 dimensions"));
    assert!(msg(w.add_tensor("y", &[0, 4], GgmlType::F32).unwrap_err()).contains("zero-sized"));
    assert!(msg(w.add_tensor("y", &[100], GgmlType::Q4K).unwrap_err()).contains("Q4_K blocks"));
    assert!(msg(w
        .add_tensor("y", &[1 << 40, 1 << 40], GgmlType::F32)
        .unwrap_err())
    .contains("overflow"));

    let mut w = GgufWriter::new();
    w.add_metadata(
        "mixed",
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
    );
    let err = w.to_bytes(|_, _, _| Ok(())).unwrap_err();
    assert!(
        matches!(&err, GgufWriteError::BadMetadata { key, .. } if key == "mixed"),
        "{err}"
    );

    let mut w = GgufWriter::new();
    let long = "x".repeat(strata_model::gguf::MAX_STRING_BYTES as usize + 1);
    w.add_metadata("long", MetaValue::String(long));
    assert!(w
        .to_bytes(|_, _, _| Ok(()))
        .unwrap_err()
        .to_string()
        .contains("over the limit"));

    let mut w = GgufWriter::new();
    let deep = MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::Array(vec![])])]);
    w.add_metadata("deep", deep);
    assert!(w
        .to_bytes(|_, _, _| Ok(()))
        .unwrap_err()
        .to_string()
        .contains("nested"));
}

#[test]
fn writes_stream_without_holding_data() {
    // A 64 MiB model written through a sink that only counts: the writer never
    // buffers tensor data (a 40 GB synth model goes the same way).
    let mut w = GgufWriter::new();
    for l in 0..16 {
        w.add_tensor(format!("blk.{l}.w"), &[4096, 1024], GgmlType::F32)
            .unwrap();
    }
    struct CountingSink(u64);
    impl Write for CountingSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = CountingSink(0);
    let chunk = vec![0u8; 1 << 16];
    w.write_to(std::path::Path::new("sink"), &mut sink, |_, spec, out| {
        for _ in 0..spec.size_bytes / chunk.len() as u64 {
            out.write_all(&chunk)?;
        }
        Ok(())
    })
    .unwrap();
    assert!(sink.0 >= 16 * 4096 * 1024 * 4);
}

/// Random metadata trees and tensor lists from a seeded generator round-trip
/// exactly; the seed is in every failure message.
#[test]
fn random_files_round_trip() {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn scalar(rng: &mut ChaCha8Rng, type_id: u32) -> MetaValue {
        use MetaValue::*;
        match type_id {
            0 => U8(rng.random()),
            1 => I8(rng.random()),
            2 => U16(rng.random()),
            3 => I16(rng.random()),
            4 => U32(rng.random()),
            5 => I32(rng.random()),
            6 => F32(rng.random_range(-1e30..1e30)),
            7 => Bool(rng.random()),
            8 => String(
                (0..rng.random_range(0..20))
                    .map(|_| rng.random_range('a'..='ÿ'))
                    .collect(),
            ),
            10 => U64(rng.random()),
            11 => I64(rng.random()),
            _ => F64(rng.random_range(-1e300..1e300)),
        }
    }
    fn value(rng: &mut ChaCha8Rng, depth: u32) -> MetaValue {
        let type_id = rng.random_range(0..13u32);
        if type_id != 9 {
            return scalar(rng, type_id);
        }
        let n = rng.random_range(0..6);
        if depth == 0 && rng.random_bool(0.3) {
            return MetaValue::Array(
                (0..n)
                    .map(|_| value(rng, 1))
                    .filter(|v| v.as_array().is_some())
                    .collect(),
            );
        }
        let elem = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12][rng.random_range(0..12)];
        MetaValue::Array((0..n).map(|_| scalar(rng, elem)).collect())
    }

    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = GgufWriter::new();
        let mut expected = Vec::new();
        for k in 0..rng.random_range(0..12) {
            let v = value(&mut rng, 0);
            expected.push((format!("k{k}"), v.clone()));
            w.add_metadata(format!("k{k}"), v);
        }
        if rng.random_bool(0.5) {
            w.set_alignment(1 << rng.random_range(0..13));
        }
        for t in 0..rng.random_range(0..6) {
            let dtype = GgmlType::ALL[rng.random_range(0..GgmlType::ALL.len())];
            let dims: Vec<u64> = (0..rng.random_range(1..=4))
                .enumerate()
                .map(|(d, _)| {
                    if d == 0 {
                        dtype.block_elems() as u64 * rng.random_range(1..4)
                    } else {
                        rng.random_range(1..4)
                    }
                })
                .collect();
            w.add_tensor(format!("t{t}"), &dims, dtype).unwrap();
        }
        let bytes = w
            .to_bytes(fill)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let f = GgufFile::from_bytes("random.gguf", &bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (k, v) in &expected {
            assert_eq!(f.get(k), Some(v), "seed {seed}: {k}");
        }
        assert_eq!(f.tensors.len(), w.tensors().len(), "seed {seed}");
        for (i, (t, spec)) in f.tensors.iter().zip(w.tensors()).enumerate() {
            assert_eq!(
                (&t.name, &t.dims, t.dtype),
                (&spec.name, &spec.dims, spec.dtype),
                "seed {seed}"
            );
            let data = f.tensor_data(t);
            assert!(
                data.iter()
                    .enumerate()
                    .all(|(k, &b)| b == fill_byte(i, k as u64)),
                "seed {seed}: {}",
                t.name
            );
        }
    }
}
