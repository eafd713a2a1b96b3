//! The CUDA backend's MoE routing: the router runs on the device
//! (moe.cu's `moe_route`), and its ids and weights stay there for the
//! matmul by id, the per-expert bias and the weighted sum. A decode step
//! then copies nothing to the host per MoE layer.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{device_error, CudaAct, CudaBackend};
use crate::backend::KernelError;
use crate::moe_route::{Gating, HostRouting, Router};

/// Experts the router kernel holds per token (moe.cu's ROUTE_MAX_EXPERTS).
const MAX_EXPERTS: usize = 1024;

/// A batch's expert ids and weights on the device, `n_used` per token.
pub struct CudaRouting {
    pub(super) ids: CudaSlice<u32>,
    pub(super) weights: CudaSlice<f32>,
    pub(super) n_tokens: usize,
    pub(super) n_used: usize,
    pub(super) n_expert: usize,
}

impl CudaRouting {
    /// Output rows of a matmul by id: one per (token, used expert).
    pub(super) fn n_slots(&self) -> usize {
        self.n_tokens * self.n_used
    }
}

impl CudaBackend {
    pub(super) fn route_on_device(
        &self,
        logits: &CudaAct,
        router: &Router,
    ) -> Result<CudaRouting, KernelError> {
        router.check()?;
        if router.n_expert > MAX_EXPERTS || logits.cols != router.n_expert {
            return Err(KernelError::Invalid(format!(
                "router: {} logits per token for {} experts (the CUDA router takes up to {MAX_EXPERTS})",
                logits.cols, router.n_expert
            )));
        }
        let n_tokens = logits.rows;
        let slots = n_tokens * router.n_used;
        let mut ids = self.output::<u32>(slots)?;
        let mut weights = self.output::<f32>(slots)?;
        if n_tokens > 0 {
            let gating: i32 = match router.gating {
                Gating::Softmax => 0,
                Gating::SoftmaxWeight => 1,
                Gating::Sigmoid => 2,
            };
            let (n_expert, n_used) = (router.n_expert as i32, router.n_used as i32);
            let norm = router.norm as i32;
            let mut b = self.stream.launch_builder(self.f("moe_route")?);
            b.arg(&logits.buf)
                .arg(&mut ids)
                .arg(&mut weights)
                .arg(&n_expert)
                .arg(&n_used)
                .arg(&gating)
                .arg(&norm)
                .arg(&router.scale);
            let cfg = LaunchConfig {
                grid_dim: (n_tokens as u32, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one block per token reads its n_expert logits and
            // writes its n_used ids and weights; the limits are checked above.
            self.launched("moe_route", || unsafe { b.launch(cfg) }.map(drop))?;
        }
        Ok(CudaRouting {
            ids,
            weights,
            n_tokens,
            n_used: router.n_used,
            n_expert: router.n_expert,
        })
    }

    pub(super) fn routing_from_host(
        &self,
        ids: &[u32],
        weights: &[f32],
        n_used: usize,
        n_expert: usize,
    ) -> Result<CudaRouting, KernelError> {
        let r = HostRouting::new(ids, weights, n_used, n_expert)?;
        Ok(CudaRouting {
            ids: self.upload(&r.ids)?,
            weights: self.upload(&r.weights)?,
            n_tokens: r.n_tokens(),
            n_used,
            n_expert,
        })
    }

    pub(super) fn routing_on_host(
        &self,
        r: &CudaRouting,
    ) -> Result<(Vec<u32>, Vec<f32>), KernelError> {
        let ids = self
            .stream
            .clone_dtoh(&r.ids)
            .map_err(|e| device_error("routing ids", e))?;
        let weights = self
            .stream
            .clone_dtoh(&r.weights)
            .map_err(|e| device_error("routing weights", e))?;
        let n = r.n_slots();
        Ok((ids[..n].to_vec(), weights[..n].to_vec()))
    }
}
