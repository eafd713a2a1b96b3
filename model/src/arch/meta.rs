//! Reading an architecture's GGUF metadata: the keys every architecture
//! shares, with errors that name the key. Architecture files call these and
//! set what differs.

use super::spec::{
    Activation, AttentionSpec, DenseSpec, ExpertGating, MoeSpec, RopeSpec, RopeStyle, YarnSpec,
};
use super::ArchError;
use crate::gguf::{GgufFile, MetaValue};

/// One file's metadata under its architecture's key prefix.
pub struct Meta<'a> {
    pub file: &'a GgufFile,
    pub prefix: &'a str,
    pub path: String,
}

impl<'a> Meta<'a> {
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    pub fn missing(&self, k: &str) -> ArchError {
        ArchError::MissingKey {
            path: self.path.clone(),
            key: self.key(k),
        }
    }

    pub fn invalid(&self, what: impl Into<String>) -> ArchError {
        ArchError::Invalid {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    pub fn opt_usize(&self, k: &str) -> Option<usize> {
        self.file
            .get_u64(&self.key(k))
            .and_then(|v| usize::try_from(v).ok())
    }

    /// A required positive count.
    pub fn usize(&self, k: &str) -> Result<usize, ArchError> {
        self.opt_usize(k)
            .filter(|&v| v > 0)
            .ok_or_else(|| self.missing(k))
    }

    pub fn opt_f32(&self, k: &str) -> Option<f32> {
        self.file.get_f64(&self.key(k)).map(|v| v as f32)
    }

    pub fn f32(&self, k: &str) -> Result<f32, ArchError> {
        self.opt_f32(k).ok_or_else(|| self.missing(k))
    }

    /// A count per layer, stated once for all layers or as an array of one
    /// per layer (llama.cpp's `get_key_or_arr`); the array may run on past
    /// `n_layers` (MTP layers), never short of it.
    pub fn per_layer_usize(&self, k: &str, n_layers: usize) -> Result<Vec<usize>, ArchError> {
        if let Some(v) = self.opt_usize(k) {
            return Ok(vec![v; n_layers]);
        }
        let arr = self.array(k)?.ok_or_else(|| self.missing(k))?;
        if arr.len() < n_layers {
            return Err(self.invalid(format!(
                "{} has {} entries for {n_layers} layers",
                self.key(k),
                arr.len()
            )));
        }
        arr.iter()
            .take(n_layers)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.missing(k))
            })
            .collect()
    }

    /// A boolean per layer from an array key, or `None` where the file has
    /// no such key.
    pub fn opt_bool_per_layer(
        &self,
        k: &str,
        n_layers: usize,
    ) -> Result<Option<Vec<bool>>, ArchError> {
        let Some(arr) = self.array(k)? else {
            return Ok(None);
        };
        if arr.len() < n_layers {
            return Err(self.invalid(format!(
                "{} has {} entries for {n_layers} layers",
                self.key(k),
                arr.len()
            )));
        }
        arr.iter()
            .take(n_layers)
            .map(|v| v.as_bool().ok_or_else(|| self.missing(k)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of exactly `N` non-negative integers.
    pub fn usize_array<const N: usize>(&self, k: &str) -> Result<[usize; N], ArchError> {
        let arr = self.array(k)?.ok_or_else(|| self.missing(k))?;
        let mut out = [0; N];
        if arr.len() != N {
            return Err(self.invalid(format!(
                "{} has {} entries, not {N}",
                self.key(k),
                arr.len()
            )));
        }
        for (o, v) in out.iter_mut().zip(arr) {
            *o = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.missing(k))?;
        }
        Ok(out)
    }

    fn array(&self, k: &str) -> Result<Option<&'a [MetaValue]>, ArchError> {
        match self.file.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.missing(k)),
        }
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    pub fn vocab_size(&self) -> Result<usize, ArchError> {
        self.opt_usize("vocab_size")
            .or_else(|| {
                self.file
                    .get("tokenizer.ggml.tokens")
                    .and_then(|v| v.as_array())
                    .map(|a| a.len())
            })
            .or_else(|| {
                self.file
                    .tensor("token_embd.weight")
                    .and_then(|t| usize::try_from(t.n_rows()).ok())
            })
            .ok_or_else(|| self.missing("vocab_size"))
    }

    /// Attention as most architectures have it: heads from the file, RoPE
    /// with the file's base and scaling, scale 1/sqrt(head_dim), no window,
    /// no norms or biases. `style` is the architecture's RoPE pairing.
    pub fn attention(&self, d_model: usize, style: RopeStyle) -> Result<AttentionSpec, ArchError> {
        let n_heads = self.usize("attention.head_count")?;
        let n_kv_heads = self.opt_usize("attention.head_count_kv").unwrap_or(n_heads);
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(self.invalid(format!(
                "{n_heads} attention heads are not a multiple of {n_kv_heads} KV heads"
            )));
        }
        let head_dim = self
            .opt_usize("attention.key_length")
            .unwrap_or(d_model / n_heads);
        let head_dim_v = self.opt_usize("attention.value_length").unwrap_or(head_dim);
        if head_dim == 0 || head_dim_v == 0 {
            return Err(self.invalid(format!(
                "a head dimension of 0 (embedding_length {d_model} over attention.head_count {n_heads})"
            )));
        }
        Ok(AttentionSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_v,
            rope: self.rope(style, head_dim)?,
            window: None,
            scale: 1.0 / (head_dim as f32).sqrt(),
            scale_query: false,
            qk_norm: false,
            qkv_bias: false,
            out_bias: false,
            sinks: false,
            temperature: None,
            output_gate: false,
            v_norm: false,
            v_from_k: false,
            kv_source: None,
        })
    }

    /// RoPE from `rope.*`: the base, and linear or YaRN scaling with the
    /// values llama.cpp's context derives from them.
    pub fn rope(&self, style: RopeStyle, head_dim: usize) -> Result<RopeSpec, ArchError> {
        let dims = self.opt_usize("rope.dimension_count").unwrap_or(head_dim);
        if dims > head_dim || dims % 2 != 0 {
            return Err(self.invalid(format!("rope dimension {dims} vs head dim {head_dim}")));
        }
        let freq_base = self.opt_f32("rope.freq_base").unwrap_or(10_000.0);
        let factor = || -> Result<f32, ArchError> {
            let f = self.f32("rope.scaling.factor")?;
            if !(f > 0.0 && f.is_finite()) {
                return Err(self.invalid(format!("rope scaling factor {f}")));
            }
            Ok(f)
        };
        let (freq_scale, yarn) = match self.file.get_str(&self.key("rope.scaling.type")) {
            None | Some("none") => (1.0, None),
            Some("linear") => (1.0 / factor()?, None),
            // llama3-style scaling comes as the rope_freqs tensor, not here.
            Some("llama3") => (1.0, None),
            Some("yarn") => {
                let factor = factor()?;
                (1.0 / factor, Some(self.yarn(factor)?))
            }
            Some(other) => {
                return Err(self.invalid(format!("unsupported rope scaling type {other:?}")))
            }
        };
        Ok(RopeSpec {
            style,
            dims,
            freq_base,
            freq_scale,
            yarn,
            sections: None,
            freq_factors: false,
        })
    }

    /// YaRN as the file states it; defaults as llama.cpp's hparams.
    fn yarn(&self, factor: f32) -> Result<YarnSpec, ArchError> {
        let n_ctx_orig = self
            .opt_usize("rope.scaling.original_context_length")
            .filter(|&n| n > 0)
            .map_or_else(|| self.usize("context_length"), Ok)?;
        Ok(YarnSpec {
            factor,
            n_ctx_orig,
            beta_fast: self.opt_f32("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
            beta_slow: self.opt_f32("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
            log_mul: self
                .opt_f32("rope.scaling.yarn_log_multiplier")
                .unwrap_or(0.0),
            attn_factor: self.opt_f32("rope.scaling.attn_factor").unwrap_or(1.0),
        })
    }

    /// Which layers slide: `attention.sliding_window_pattern` as an array of
    /// booleans, or as a period (llama.cpp's `set_swa_pattern`: layer `il`
    /// slides when `il % n < n - 1`), or the architecture's default period.
    pub fn sliding_layers(&self, n_layers: usize, default_period: usize) -> Vec<bool> {
        let key = self.key("attention.sliding_window_pattern");
        if let Some(arr) = self.file.get(&key).and_then(|v| v.as_array()) {
            if arr.len() >= n_layers {
                return arr
                    .iter()
                    .take(n_layers)
                    .map(|v| v.as_bool().unwrap_or(false))
                    .collect();
            }
        }
        let n = self
            .opt_usize("attention.sliding_window_pattern")
            .unwrap_or(default_period);
        (0..n_layers).map(|il| n == 0 || il % n < n - 1).collect()
    }

    pub fn sliding_window(&self) -> Option<usize> {
        self.opt_usize("attention.sliding_window")
            .filter(|&w| w > 0)
    }

    pub fn dense(&self, activation: Activation) -> Result<DenseSpec, ArchError> {
        Ok(DenseSpec {
            d_ff: self.usize("feed_forward_length")?,
            activation,
            norm_name: "ffn_norm",
        })
    }

    /// A mixture-of-experts feed-forward from `expert_*`; the caller sets
    /// what its architecture hard-codes (gating, normalisation, biases).
    pub fn moe(&self, activation: Activation, gating: ExpertGating) -> Result<MoeSpec, ArchError> {
        let n_expert = self.usize("expert_count")?;
        let n_used = self.usize("expert_used_count")?;
        if n_used > n_expert {
            return Err(self.invalid(format!(
                "{n_used} experts used per token but only {n_expert} exist"
            )));
        }
        Ok(MoeSpec {
            n_expert,
            n_used,
            d_ff_expert: self.usize("expert_feed_forward_length")?,
            activation,
            gating,
            norm_weights: false,
            weights_scale: self.opt_f32("expert_weights_scale").unwrap_or(0.0),
            router_bias: false,
            expert_bias: false,
            norm_name: "ffn_norm",
            shared: None,
            dense_beside: None,
            expert_out_scale: false,
        })
    }
}
