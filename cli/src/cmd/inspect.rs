use std::collections::BTreeMap;

use strata_model::arch::ModelSpec;
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
    let spec = ModelSpec::from_gguf(&f)?;
    println!("architecture:  {}", spec.arch);
    println!("layers:        {}", spec.n_layers);
    println!("d_model:       {}", spec.d_model);
    println!("vocab:         {}", spec.vocab_size);
    println!("context:       {}", spec.context_length);
    // Layers that share a spec are printed once, with their indices.
    let mut kinds: Vec<(String, Vec<usize>)> = Vec::new();
    for (il, layer) in spec.layers.iter().enumerate() {
        let text = layer_text(layer);
        match kinds.iter_mut().find(|(t, _)| *t == text) {
            Some((_, ils)) => ils.push(il),
            None => kinds.push((text, vec![il])),
        }
    }
    for (text, ils) in kinds {
        println!("layers {}:\n{text}", index_ranges(&ils));
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

    let p = MemoryProfile::from_gguf(&f, &spec);
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
    if !spec.mtp_layers.is_empty() {
        println!(
            "  MTP blocks         {:>12} ({} after the trunk: held by the last stage, not run)",
            format_bytes(p.mtp_bytes),
            spec.mtp_layers.len()
        );
    }
    if let Some(w) = spec.per_layer_input {
        println!(
            "  per-layer inputs   {w} wide, each stage embeds again ({} per stage)",
            format_bytes(p.embedding_bytes)
        );
    }
    let cuts: Vec<String> = p.no_cut_before.iter().map(usize::to_string).collect();
    if !cuts.is_empty() {
        println!(
            "  no stage starts at layers {} (they share KV with a layer before)",
            cuts.join(", ")
        );
    }
    let recurrent = spec.recurrent_state_bytes_per_seq();
    if recurrent > 0 {
        println!(
            "  recurrent state    {:>12} per sequence",
            format_bytes(recurrent)
        );
    }
    println!("  layer  weights       KV/token f16  KV/token q8_0  KV/token q4_0");
    for (i, l) in p.layers.iter().enumerate() {
        println!(
            "  {i:>5}  {:>12}  {:>12}  {:>13}  {:>13}{}",
            format_bytes(l.weight_bytes),
            format!("{} B", l.kv_bytes_per_token(KvType::F16)),
            format!("{} B", l.kv_bytes_per_token(KvType::Q8_0)),
            format!("{} B", l.kv_bytes_per_token(KvType::Q4_0)),
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

fn layer_text(layer: &strata_model::arch::LayerSpec) -> String {
    use strata_model::arch::Mixer;
    let a = match &layer.mixer {
        Mixer::Attention(a) => a,
        Mixer::DeltaNet(d) => {
            return format!(
                "  gated DeltaNet: conv {}, state {}, {} key heads, {} value heads, inner {}\n{}",
                d.d_conv,
                d.d_state,
                d.n_k_heads,
                d.n_v_heads,
                d.d_inner,
                ffn_text(&layer.ffn)
            )
        }
    };
    let mut out = format!(
        "  attention:   {} heads, {} KV heads, head dim {}/{}, rope {:?} {} dims base {}{}{}",
        a.n_heads,
        a.n_kv_heads,
        a.head_dim,
        a.head_dim_v,
        a.rope.style,
        a.rope.dims,
        a.rope.freq_base,
        if a.rope.yarn.is_some() { " (YaRN)" } else { "" },
        a.window
            .map(|w| format!(", window {w}"))
            .unwrap_or_default(),
    );
    let flags = [
        (a.qk_norm, "QK-norm"),
        (a.qkv_bias, "QKV bias"),
        (a.out_bias, "output bias"),
        (a.sinks, "sinks"),
        (a.temperature.is_some(), "temperature"),
        (a.output_gate, "output gate"),
        (a.v_norm, "V-norm"),
        (a.v_from_k, "V = K"),
        (a.rope.sections.is_some(), "IMRoPE sections"),
        (a.rope.freq_factors, "rope_freqs"),
        (layer.post_norms, "post-norms"),
        (layer.layer_scale, "layer scale"),
    ];
    for (on, name) in flags {
        if on {
            out.push_str(", ");
            out.push_str(name);
        }
    }
    if let Some(src) = a.kv_source {
        out.push_str(&format!(", reads the KV of layer {src}"));
    }
    out.push('\n');
    out.push_str(&ffn_text(&layer.ffn));
    out
}

fn ffn_text(ffn: &strata_model::arch::FeedForward) -> String {
    use strata_model::arch::FeedForward;
    let mut out = String::new();
    match ffn {
        FeedForward::Dense(d) => out.push_str(&format!(
            "  feed-forward: dense, {} wide, {:?}",
            d.d_ff, d.activation
        )),
        FeedForward::Moe(m) => out.push_str(&format!(
            "  feed-forward: {} experts, {} per token, {} wide, {:?}, gating {:?}{}",
            m.n_expert,
            m.n_used,
            m.d_ff_expert,
            m.activation,
            m.gating,
            if m.norm_weights {
                ", weights normalised"
            } else {
                ""
            }
        )),
    }
    if let FeedForward::Moe(m) = ffn {
        if let Some(sh) = &m.shared {
            out.push_str(&format!(", shared expert {} wide", sh.d_ff));
        }
        if let Some(d) = &m.dense_beside {
            out.push_str(&format!(", beside a dense MLP {} wide", d.d_ff));
        }
    }
    out
}

/// `[0, 1, 2, 5]` as "0-2, 5".
fn index_ranges(ils: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ils.len() {
        let mut j = i;
        while j + 1 < ils.len() && ils[j + 1] == ils[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ils[i].to_string()
        } else {
            format!("{}-{}", ils[i], ils[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}
