use std::collections::BTreeMap;

use strata_model::arch::HyperParams;
use strata_model::profile::{KvType, MemoryProfile};

use strata_model::units::format_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file.
    pub model: std::path::PathBuf,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let f = super::open(&args.model)?;
    println!("file:          {}", args.model.display());
    println!("gguf version:  {}", f.version);
    if let Some(name) = f.get_str("general.name") {
        println!("name:          {name}");
    }
    let hp = HyperParams::from_gguf(&f)?;
    println!("architecture:  {}", hp.arch);
    println!("layers:        {}", hp.n_layers);
    println!("d_model:       {}", hp.d_model);
    println!(
        "heads:         {} (KV heads {}, head dim {}/{})",
        hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.head_dim_v
    );
    println!("d_ff:          {}", hp.d_ff);
    println!("vocab:         {}", hp.vocab_size);
    println!("context:       {}", hp.context_length);
    println!(
        "rope:          {:?}, {} dims, base {}{}",
        hp.rope.style,
        hp.rope.dims,
        hp.rope.freq_base,
        if hp.sliding_window.is_some() {
            format!(" (sliding layers {})", hp.rope.freq_base_swa)
        } else {
            String::new()
        }
    );
    if let Some(w) = hp.sliding_window {
        println!(
            "sliding window: {w} tokens, every {}th layer global",
            hp.swa_period
        );
    }

    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &f.tensors {
        let e = by_type.entry(t.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.size_bytes;
    }
    println!(
        "tensors:       {} ({})",
        f.tensors.len(),
        format_bytes(f.tensor_bytes())
    );
    for (ty, (n, bytes)) in &by_type {
        println!("  {ty:<6} {n:>5} tensors  {:>12}", format_bytes(*bytes));
    }

    let p = MemoryProfile::from_gguf(&f, &hp);
    println!("memory profile:");
    println!(
        "  embedding          {:>12}",
        format_bytes(p.embedding_bytes)
    );
    println!(
        "  output head        {:>12}{}",
        format_bytes(p.head_bytes),
        if p.tied_embeddings {
            " (tied to the embedding)"
        } else {
            ""
        }
    );
    println!("  layer  weights       KV/token f16  KV/token q8_0");
    for (i, l) in p.layers.iter().enumerate() {
        println!(
            "  {i:>5}  {:>12}  {:>12}  {:>12}{}",
            format_bytes(l.weight_bytes),
            format!("{} B", l.kv_bytes_per_token(KvType::F16)),
            format!("{} B", l.kv_bytes_per_token(KvType::Q8_0)),
            l.kv_window_tokens
                .map(|w| format!("  (window {w})"))
                .unwrap_or_default()
        );
    }
    if args.tensors {
        for t in &f.tensors {
            println!("  {:<40} {:<6} {:?}", t.name, t.dtype.name(), t.dims);
        }
    }
    Ok(())
}
