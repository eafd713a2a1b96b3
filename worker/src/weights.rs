//! Loading a stage's tensors from a GGUF file into a backend.

use strata_kernels::Backend;
use strata_model::arch::{layer_tensor, HyperParams};
use strata_model::GgufFile;

use crate::stage::StageError;

pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Weight,
    pub wq: B::Weight,
    pub wk: B::Weight,
    pub wv: B::Weight,
    pub bq: Option<B::Weight>,
    pub bk: Option<B::Weight>,
    pub bv: Option<B::Weight>,
    pub q_norm: Option<B::Weight>,
    pub k_norm: Option<B::Weight>,
    pub wo: B::Weight,
    pub post_attn_norm: Option<B::Weight>,
    pub ffn_norm: B::Weight,
    pub gate: B::Weight,
    pub up: B::Weight,
    pub down: B::Weight,
    pub post_ffn_norm: Option<B::Weight>,
}

/// Loads named tensors from one file, checking their shapes.
pub struct WeightLoader<'a, B: Backend> {
    pub file: &'a GgufFile,
    pub backend: &'a B,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub fn optional(&self, name: &str, dims: &[usize]) -> Result<Option<B::Weight>, StageError> {
        let Some(info) = self.file.tensor(name) else {
            return Ok(None);
        };
        // ggml drops trailing dimensions of 1.
        let mut have: Vec<u64> = info.dims.clone();
        while have.len() > 1 && have.last() == Some(&1) {
            have.pop();
        }
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if have != want {
            return Err(StageError::Model(format!(
                "{}: tensor {name:?} has shape {:?}, expected {want:?}",
                self.file.path().display(),
                info.dims
            )));
        }
        let w =
            self.backend
                .load_weight(name, info.dtype, &info.dims, self.file.tensor_data(info))?;
        Ok(Some(w))
    }

    pub fn required(&self, name: &str, dims: &[usize]) -> Result<B::Weight, StageError> {
        self.optional(name, dims)?.ok_or_else(|| {
            StageError::Model(format!(
                "{}: missing tensor {name:?}",
                self.file.path().display()
            ))
        })
    }

    pub fn layer(&self, hp: &HyperParams, il: usize) -> Result<LayerWeights<B>, StageError> {
        let t = |n: &str| layer_tensor(il, n);
        let (d, q, k, v, ff) = (hp.d_model, hp.q_dim(), hp.k_dim(), hp.v_dim(), hp.d_ff);
        let (bq, bk, bv) = if hp.qkv_bias {
            (
                self.optional(&t("attn_q.bias"), &[q])?,
                self.optional(&t("attn_k.bias"), &[k])?,
                self.optional(&t("attn_v.bias"), &[v])?,
            )
        } else {
            (None, None, None)
        };
        let (q_norm, k_norm) = if hp.qk_norm {
            (
                Some(self.required(&t("attn_q_norm.weight"), &[hp.head_dim])?),
                Some(self.required(&t("attn_k_norm.weight"), &[hp.head_dim])?),
            )
        } else {
            (None, None)
        };
        let (post_attn_norm, post_ffn_norm) = if hp.post_norms {
            (
                Some(self.required(&t("post_attention_norm.weight"), &[d])?),
                Some(self.required(&t("post_ffw_norm.weight"), &[d])?),
            )
        } else {
            (None, None)
        };
        Ok(LayerWeights {
            attn_norm: self.required(&t("attn_norm.weight"), &[d])?,
            wq: self.required(&t("attn_q.weight"), &[d, q])?,
            wk: self.required(&t("attn_k.weight"), &[d, k])?,
            wv: self.required(&t("attn_v.weight"), &[d, v])?,
            bq,
            bk,
            bv,
            q_norm,
            k_norm,
            wo: self.required(&t("attn_output.weight"), &[hp.n_heads * hp.head_dim_v, d])?,
            post_attn_norm,
            ffn_norm: self.required(&t("ffn_norm.weight"), &[d])?,
            gate: self.required(&t("ffn_gate.weight"), &[d, ff])?,
            up: self.required(&t("ffn_up.weight"), &[d, ff])?,
            down: self.required(&t("ffn_down.weight"), &[ff, d])?,
            post_ffn_norm,
        })
    }
}
