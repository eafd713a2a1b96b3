//! A mixture-of-experts feed-forward (llama.cpp's `build_moe_ffn`): the
//! router picks `n_used` experts per token (on the backend's device: the
//! routing never comes to the host), each expert's gated feed-forward runs
//! on the rows routed to it, and the outputs are summed with the router's
//! weights.

use strata_kernels::{Backend, Gating, Router, Unary};
use strata_model::arch::{layer_tensor, Activation, ExpertGating, MoeSpec};

use super::DenseFfn;
use crate::stage::StageError;
use crate::weights::WeightLoader;

/// One projection over all experts, with its optional per-expert bias.
struct Experts<B: Backend> {
    weight: B::Weight,
    bias: Option<B::Weight>,
}

pub struct MoeFfn<B: Backend> {
    activation: Activation,
    routing: Router,
    router: B::Weight,
    router_bias: Option<B::Weight>,
    gate: Experts<B>,
    up: Experts<B>,
    down: Experts<B>,
    shared: Option<SharedExpert<B>>,
    /// Each expert's output scale (Gemma 4's `ffn_down_exps.scale`).
    down_scale: Option<B::Weight>,
}

/// Qwen3.5-MoE's shared expert: a SwiGLU every token runs, weighted by
/// sigmoid(`ffn_gate_inp_shexp` · x) (llama.cpp's `build_layer_ffn`).
struct SharedExpert<B: Backend> {
    ffn: DenseFfn<B>,
    /// One row: the gate's logit per token.
    gate: B::Weight,
}

impl<B: Backend> MoeFfn<B> {
    pub fn load(
        loader: &WeightLoader<'_, B>,
        spec: &MoeSpec,
        d_model: usize,
        il: usize,
    ) -> Result<Self, StageError> {
        let t = |n: &str| layer_tensor(il, n);
        let (d, ff, n) = (d_model, spec.d_ff_expert, spec.n_expert);
        let experts = |name: &str, dims: [usize; 2]| -> Result<Experts<B>, StageError> {
            Ok(Experts {
                weight: loader.required(&t(&format!("{name}.weight")), &[dims[0], dims[1], n])?,
                bias: if spec.expert_bias {
                    Some(loader.required(&t(&format!("{name}.bias")), &[dims[1], n])?)
                } else {
                    None
                },
            })
        };
        if loader.file.tensor(&t("ffn_gate_up_exps.weight")).is_some() {
            return Err(StageError::Model(format!(
                "layer {il}: fused ffn_gate_up_exps experts are not supported yet"
            )));
        }
        let routing = Router {
            n_expert: n,
            n_used: spec.n_used,
            gating: match spec.gating {
                ExpertGating::Softmax => Gating::Softmax,
                ExpertGating::SoftmaxWeight => Gating::SoftmaxWeight,
                ExpertGating::Sigmoid => Gating::Sigmoid,
            },
            norm: spec.norm_weights,
            scale: spec.weights_scale,
        };
        routing
            .check()
            .map_err(|e| StageError::Model(format!("layer {il}: {e}")))?;
        Ok(MoeFfn {
            activation: spec.activation,
            routing,
            router: loader.required(&t("ffn_gate_inp.weight"), &[d, n])?,
            router_bias: if spec.router_bias {
                Some(loader.required(&t("ffn_gate_inp.bias"), &[n])?)
            } else {
                None
            },
            gate: experts("ffn_gate_exps", [d, ff])?,
            up: experts("ffn_up_exps", [d, ff])?,
            down: experts("ffn_down_exps", [ff, d])?,
            shared: match &spec.shared {
                Some(sh) => Some(SharedExpert {
                    ffn: DenseFfn::load_named(loader, sh.d_ff, spec.activation, d, il, "_shexp")?,
                    gate: loader.required(&t("ffn_gate_inp_shexp.weight"), &[d])?,
                }),
                None => None,
            },
            down_scale: if spec.expert_out_scale {
                Some(loader.required(&t("ffn_down_exps.scale"), &[n])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, b: &B, h: &B::Act) -> Result<B::Act, StageError> {
        let logits = self.router_logits(b, h)?;
        self.forward_routed(b, h, &logits)
    }

    /// The router's logits for the rows of `r` (`h` itself, or Gemma 4's
    /// own router input).
    pub fn router_logits(&self, b: &B, r: &B::Act) -> Result<B::Act, StageError> {
        let mut logits = b.matmul(&self.router, r)?;
        if let Some(bias) = &self.router_bias {
            b.add_bias(&mut logits, bias)?;
        }
        Ok(logits)
    }

    /// The experts over `h`, routed by `logits`.
    pub fn forward_routed(&self, b: &B, h: &B::Act, logits: &B::Act) -> Result<B::Act, StageError> {
        let routing = b.route(logits, &self.routing)?;
        let project = |e: &Experts<B>, x: &B::Act| -> Result<B::Act, StageError> {
            let mut y = b.matmul_id(&e.weight, x, &routing)?;
            if let Some(bias) = &e.bias {
                b.add_bias_id(&mut y, bias, &routing)?;
            }
            Ok(y)
        };
        let up = project(&self.up, h)?;
        let gate = project(&self.gate, h)?;
        let mut down = project(&self.down, &b.gated(&gate, &up, self.activation)?)?;
        if let Some(scale) = &self.down_scale {
            b.mul_id(&mut down, scale, &routing)?;
        }
        let mut out = b.moe_combine(&down, &routing)?;
        if let Some(sh) = &self.shared {
            // moe + shexp ⊙ sigmoid(gate · x): ggml_mul, then ggml_add.
            let mut y = sh.ffn.forward(b, h)?;
            let mut weight = b.matmul(&sh.gate, h)?;
            b.unary(&mut weight, Unary::Sigmoid)?;
            b.mul(&mut y, &weight)?;
            b.add_assign(&mut out, &y)?;
        }
        Ok(out)
    }
}
