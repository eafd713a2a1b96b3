//! Writes the first N layers of a GGUF model as a model of its own
//! (`block_count` = N; embedding, output norm and head kept), so a check
//! that can carry only a few tens of MiB still runs real weights:
//! scripts/gpu-check.sh carries SmolLM2 cut to 8 of its 30 layers.
//!
//!   cargo run --release -p strata-tests --example trim_layers -- IN.gguf OUT.gguf N

use std::io::Write;

use anyhow::{bail, Context};
use strata_model::gguf::GgufWriter;
use strata_model::{GgufFile, MetaValue, TensorInfo};

/// The layer index of a `blk.N.*` tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, n] = args.as_slice() else {
        bail!("usage: trim_layers IN.gguf OUT.gguf N_LAYERS");
    };
    let n: usize = n.parse().context("N_LAYERS")?;
    let file = GgufFile::open(input).with_context(|| format!("opening {input}"))?;
    let arch = file.architecture().context("no general.architecture")?;
    let block_count = format!("{arch}.block_count");
    let have = file.get_u64(&block_count).context("no block_count")? as usize;
    if n == 0 || n > have {
        bail!("{input} has {have} layers; N_LAYERS must be 1..={have}");
    }
    let mut w = GgufWriter::new();
    for (key, value) in &file.metadata {
        let value = if *key == block_count {
            MetaValue::U32(n as u32)
        } else {
            value.clone()
        };
        w.add_metadata(key.clone(), value);
    }
    let keep: Vec<&TensorInfo> = file
        .tensors
        .iter()
        .filter(|t| layer_of(&t.name).is_none_or(|l| l < n))
        .collect();
    for t in &keep {
        w.add_tensor(t.name.clone(), &t.dims, t.dtype)?;
    }
    w.write(output, |i, _, out: &mut dyn Write| {
        out.write_all(file.tensor_data(keep[i]))
    })?;
    println!(
        "wrote {output}: {n} of {have} layers, {} tensors",
        keep.len()
    );
    Ok(())
}
