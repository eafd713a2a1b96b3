//! Attention as a mixer: Q/K/V projections (with biases where the model has
//! them), per-head Q/K norms, RoPE (plain or YaRN), the temperature scaling
//! of Q, paged attention over the KV cache (with sinks and a window where
//! the layer has them), and the output projection.

use strata_kernels::backend::Yarn;
use strata_kernels::{AttentionBatch, Backend, KernelError, KvBlockId, RopeConfig, Unary};
use strata_model::arch::{layer_tensor, AttentionSpec, ModelSpec};
use strata_model::GgufFile;

use super::BatchContext;
use crate::stage::StageError;
use crate::weights::WeightLoader;

pub struct Attention<B: Backend> {
    spec: AttentionSpec,
    rope: RopeConfig,
    wq: B::Weight,
    /// Qwen3.5's output gate: the gate rows of the Q projection.
    wg: Option<B::Weight>,
    /// `None`: the layer reads another layer's KV (`AttentionSpec::kv_source`)
    /// and projects only Q.
    wk: Option<B::Weight>,
    /// `None`: V is the K projection (Gemma 4's global layers), or there is
    /// no K either.
    wv: Option<B::Weight>,
    bq: Option<B::Weight>,
    bk: Option<B::Weight>,
    bv: Option<B::Weight>,
    q_norm: Option<B::Weight>,
    k_norm: Option<B::Weight>,
    wo: B::Weight,
    bo: Option<B::Weight>,
    /// One logit per head, kept on the host for the attention call.
    sinks: Option<Vec<f32>>,
    /// Whether this layer divides its frequencies by the stage's
    /// `rope_freqs` (every layer for llama3-style scaling; Gemma 4's global
    /// layers only).
    rope_freqs: bool,
}

impl<B: Backend> Attention<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        spec: &AttentionSpec,
        d_model: usize,
        il: usize,
        model: &ModelSpec,
    ) -> Result<Self, StageError> {
        let t = |n: &str| layer_tensor(il, n);
        let (d, q, k, v) = (d_model, spec.q_dim(), spec.k_dim(), spec.v_dim());
        if spec.v_from_k && spec.k_dim() != spec.v_dim() {
            return Err(StageError::Model(format!(
                "layer {il}: V taken from K needs equal K and V widths"
            )));
        }
        let bias = |name: &str, n: usize| -> Result<Option<B::Weight>, StageError> {
            if spec.qkv_bias {
                loader.optional(&t(name), &[n])
            } else {
                Ok(None)
            }
        };
        let owns_kv = spec.kv_source.is_none();
        let norm = |name: &str| -> Result<Option<B::Weight>, StageError> {
            if spec.qk_norm && (owns_kv || name == "attn_q_norm.weight") {
                loader.required(&t(name), &[spec.head_dim]).map(Some)
            } else {
                Ok(None)
            }
        };
        let sinks = if spec.sinks {
            Some(host_vector(
                loader.file,
                &t("attn_sinks.weight"),
                spec.n_heads,
            )?)
        } else {
            None
        };
        let r = &spec.rope;
        let rope = RopeConfig {
            style: r.style,
            head_dim: spec.head_dim,
            dims: r.dims,
            freq_base: r.freq_base,
            freq_scale: r.freq_scale,
            yarn: r.yarn.map(|y| {
                Yarn::llama_cpp(
                    y.factor,
                    u32::try_from(y.n_ctx_orig).unwrap_or(u32::MAX),
                    y.beta_fast,
                    y.beta_slow,
                    y.log_mul,
                    y.attn_factor,
                )
            }),
        };
        // With an output gate, each head's `head_dim` query rows are
        // followed by as many gate rows (llama.cpp's two strided views).
        let (wq, wg) = if spec.output_gate {
            let hd = spec.head_dim;
            let half = |gate: bool| move |r: usize| (r / hd % 2 == 1) == gate;
            let name = t("attn_q.weight");
            (
                loader.required_rows(&name, &[d, 2 * q], half(false))?,
                Some(loader.required_rows(&name, &[d, 2 * q], half(true))?),
            )
        } else {
            (loader.required(&t("attn_q.weight"), &[d, q])?, None)
        };
        Ok(Attention {
            wq,
            wg,
            wk: if owns_kv {
                Some(loader.required(&t("attn_k.weight"), &[d, k])?)
            } else {
                None
            },
            wv: if spec.v_from_k || !owns_kv {
                None
            } else {
                Some(loader.required(&t("attn_v.weight"), &[d, v])?)
            },
            bq: bias("attn_q.bias", q)?,
            bk: bias("attn_k.bias", k)?,
            bv: bias("attn_v.bias", v)?,
            q_norm: norm("attn_q_norm.weight")?,
            k_norm: norm("attn_k_norm.weight")?,
            wo: loader.required(&t("attn_output.weight"), &[spec.out_dim(), d])?,
            bo: if spec.out_bias {
                loader.optional(&t("attn_output.bias"), &[d])?
            } else {
                None
            },
            sinks,
            rope,
            rope_freqs: spec.rope.freq_factors || !model.per_layer_rope_factors(),
            spec: spec.clone(),
        })
    }

    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// `h` is the normed input; returns the output projection's rows.
    /// `eps` is the model's RMSNorm epsilon, for the Q/K norms.
    pub fn forward(
        &self,
        b: &B,
        h: B::Act,
        batch: &BatchContext<'_, B>,
        (kv, kv_layer, block_tables): (&mut B::KvCache, usize, &[&[KvBlockId]]),
        eps: f32,
    ) -> Result<B::Act, KernelError> {
        let a = &self.spec;
        // Q, and K and V where this layer has them, from the one input.
        let mut ws = vec![&self.wq];
        ws.extend(self.wk.iter());
        ws.extend(self.wk.as_ref().and(self.wv.as_ref()));
        let mut projected = b.matmul_each(&ws, &h)?.into_iter();
        let mut q = projected.next().expect("matmul_each: one result a weight");
        let (k, v) = (projected.next(), projected.next());
        if let Some(bias) = &self.bq {
            b.add_bias(&mut q, bias)?;
        }
        if let Some(qn) = &self.q_norm {
            q = b.rms_norm(&q, qn, eps)?;
        }
        let freqs = batch.rope_freqs.filter(|_| self.rope_freqs);
        b.rope(&mut q, batch.positions, &self.rope, freqs)?;
        let new_kv = match k {
            Some(k) => Some(self.new_kv(b, k, v, batch, eps)?),
            None => None,
        };
        if let Some(t) = a.temperature {
            let floor = u32::try_from(t.floor_scale).unwrap_or(u32::MAX);
            b.attn_temperature(&mut q, batch.positions, floor.max(1), t.scale)?;
        }
        let attn = b.attention(
            kv,
            kv_layer,
            &q,
            new_kv.as_ref().map(|(k, v)| (k, v)),
            &AttentionBatch {
                positions: batch.positions,
                token_seq: batch.token_seq,
                block_tables,
                n_heads: a.n_heads,
                scale: a.scale,
                scale_query: a.scale_query,
                window: a.window,
                sinks: self.sinks.as_deref(),
                decode: batch.decode,
                tiled: batch.tiled,
            },
        )?;
        let mut attn = attn;
        if let Some(wg) = &self.wg {
            // o = attn ⊙ sigmoid(G), llama.cpp's ggml_sigmoid then ggml_mul.
            let mut gate = b.matmul(wg, &h)?;
            b.unary(&mut gate, Unary::Sigmoid)?;
            b.mul(&mut attn, &gate)?;
        }
        let mut o = b.matmul(&self.wo, &attn)?;
        if let Some(bias) = &self.bo {
            b.add_bias(&mut o, bias)?;
        }
        Ok(o)
    }
}

impl<B: Backend> Attention<B> {
    /// This batch's K and V rows from their projections (V from K where
    /// the layer has no V projection): biased, normed and K turned by RoPE.
    fn new_kv(
        &self,
        b: &B,
        mut k: B::Act,
        v: Option<B::Act>,
        batch: &BatchContext<'_, B>,
        eps: f32,
    ) -> Result<(B::Act, B::Act), KernelError> {
        let a = &self.spec;
        let mut v = match v {
            Some(v) => v,
            // The K projection before its norm and RoPE, copied.
            None => b.columns(&k, 0, a.k_dim())?,
        };
        for (x, bias) in [(&mut k, &self.bk), (&mut v, &self.bv)] {
            if let Some(bias) = bias {
                b.add_bias(x, bias)?;
            }
        }
        if let Some(kn) = &self.k_norm {
            k = b.rms_norm(&k, kn, eps)?;
        }
        if a.v_norm {
            // Gemma 4: a per-head RMSNorm of V without a weight.
            v = b.rms_norm_plain(&v, a.head_dim_v, eps)?;
        }
        let freqs = batch.rope_freqs.filter(|_| self.rope_freqs);
        b.rope(&mut k, batch.positions, &self.rope, freqs)?;
        Ok((k, v))
    }
}

/// A small tensor (attention sinks) as host f32.
fn host_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, StageError> {
    let bad = |what: String| {
        StageError::Model(format!("{}: tensor {name:?} {what}", file.path().display()))
    };
    let info = file.tensor(name).ok_or_else(|| bad("is missing".into()))?;
    if info.dims.iter().product::<u64>() != len as u64 {
        return Err(bad(format!("has shape {:?}, expected [{len}]", info.dims)));
    }
    let mut out = vec![0f32; len];
    strata_model::quant::dequantize_row(info.dtype, file.tensor_data(info), &mut out)
        .map_err(|e| bad(e.to_string()))?;
    Ok(out)
}
