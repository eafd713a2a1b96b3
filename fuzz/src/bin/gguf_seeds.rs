//! Writes a seed corpus for the `gguf_parse` target with the GGUF writer:
//! `cargo run --bin gguf_seeds -- corpus/gguf_parse`.
use std::path::PathBuf;

use strata_model::gguf::{GgufWriter, MetaValue, SplitLimits};
use strata_model::GgmlType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus/gguf_parse".into()));
    std::fs::create_dir_all(&dir)?;
    let fill = |i: usize, spec: &strata_model::gguf::TensorSpec, out: &mut dyn std::io::Write| {
        out.write_all(&vec![i as u8; spec.size_bytes as usize])
    };
    let mut seeds: Vec<(std::string::String, Vec<u8>)> = Vec::new();

    seeds.push(("empty".into(), GgufWriter::new().to_bytes(fill)?));

    let mut values = GgufWriter::new();
    use MetaValue::*;
    for (k, v) in [
        ("u8", U8(1)),
        ("i8", I8(-1)),
        ("u16", U16(2)),
        ("i16", I16(-2)),
        ("u32", U32(3)),
        ("i32", I32(-3)),
        ("u64", U64(4)),
        ("i64", I64(-4)),
        ("f32", F32(0.5)),
        ("f64", F64(0.25)),
        ("bool", Bool(true)),
        ("str", String("hello".into())),
        ("arr", Array(vec![U32(1), U32(2)])),
        ("arr.str", Array(vec![String("a".into()), String("bc".into())])),
        ("arr.nested", Array(vec![Array(vec![I8(1)]), Array(vec![])])),
    ] {
        values.add_metadata(k, v);
    }
    seeds.push(("values".into(), values.to_bytes(fill)?));

    for (n, dtype) in GgmlType::ALL.iter().enumerate() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", String("llama".into()));
        w.add_tensor("t", &[dtype.block_elems() as u64 * 2, 2], *dtype)?;
        w.add_tensor("u", &[dtype.block_elems() as u64], *dtype)?;
        if n % 3 == 0 {
            w.set_alignment(8 << (n % 4));
        }
        seeds.push((format!("dtype-{dtype}"), w.to_bytes(fill)?));
    }

    let mut model = GgufWriter::new();
    model.add_metadata("general.architecture", String("llama".into()));
    model.add_metadata("llama.block_count", U32(2));
    model.add_metadata("tokenizer.ggml.tokens", Array(vec![String("<s>".into()), String("a".into())]));
    for l in 0..2 {
        model.add_tensor(format!("blk.{l}.attn_q.weight"), &[32, 4], GgmlType::Q8_0)?;
        model.add_tensor(format!("blk.{l}.ffn_norm.weight"), &[32], GgmlType::F32)?;
    }
    seeds.push(("model".into(), model.to_bytes(fill)?));

    // Split shards, and the two shards glued behind a cut byte as the target
    // reads them.
    let tmp = std::env::temp_dir().join(format!("gguf-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let paths = model.write_split(tmp.join("m"), SplitLimits { max_tensors: Some(2), max_bytes: None }, fill)?;
    let shards: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    std::fs::remove_dir_all(&tmp)?;
    for (i, s) in shards.iter().enumerate() {
        seeds.push((format!("shard-{i}"), s.clone()));
    }
    if let [a, b] = &shards[..] {
        let total = a.len() + b.len();
        // cut = first * total / 255 must land on a.len().
        if let Some(first) = (0..=255u8).find(|&f| f as usize * total / 255 == a.len()) {
            let mut glued = vec![first];
            glued.extend_from_slice(a);
            glued.extend_from_slice(b);
            seeds.push(("split-glued".into(), glued));
        }
    }

    for (name, bytes) in &seeds {
        std::fs::write(dir.join(format!("{name}.gguf")), bytes)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
