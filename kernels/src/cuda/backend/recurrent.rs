//! The CUDA backend's recurrent ops (recurrent.cu): Qwen3.5's short
//! convolution and gated delta rule over per-sequence state rows, and the
//! clearing of a state slot.
//!
//! A batch's runs (state slot, first token, token count per sequence,
//! checked by [`RecurrentBatch::runs`]) go to the device as one small index
//! array ([`IndexRole::RecurrentRuns`]): uploaded once a batch, and while a
//! graph is recorded, the graph's own buffer, which each replay refreshes
//! with that batch's runs (see `graphs.rs`). So a replay never reads the
//! slots of the batch it was recorded with.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::graphs::IndexRole;
use super::{CudaAct, CudaBackend, CudaWeight, ELEMENTWISE_THREADS};
use crate::backend::KernelError;
use crate::op_checks;
use crate::recurrent::{DeltaNetShape, RecurrentBatch};

/// Widest head `delta_net` takes: 32 lanes of recurrent.cu's
/// DELTA_NET_PER_LANE registers each (Qwen3.5's heads have 128 values).
pub const MAX_DELTA_NET_HEAD_DIM: usize = 256;
/// Most warps of one `delta_net` block (each takes rows of the state in
/// turn).
const DELTA_NET_WARPS: usize = 8;
/// CUDA's limit on a grid's y dimension: runs (sequences) per launch.
const MAX_RUNS: usize = 65_535;

/// The runs of a batch as recurrent.cu reads them: `(slot, first token,
/// token count)` per sequence, flattened.
pub(super) fn run_table(runs: &[(usize, usize, usize)]) -> Result<Vec<u32>, KernelError> {
    if runs.len() > MAX_RUNS {
        return Err(KernelError::Invalid(format!(
            "recurrent batch: {} sequences, at most {MAX_RUNS} in one launch",
            runs.len()
        )));
    }
    runs.iter()
        .flat_map(|&(slot, first, n)| [slot, first, n])
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                KernelError::Invalid(format!("recurrent batch: {v} does not fit in 32 bits"))
            })
        })
        .collect()
}

/// The batch arrays' runs (what [`IndexRole::RecurrentRuns`] holds): empty
/// when the batch has no state slots or they do not make valid runs (an op
/// then refuses the batch itself).
pub(super) fn batch_run_table(token_seq: &[u32], seq_slots: &[u32]) -> Vec<u32> {
    if seq_slots.is_empty() {
        return Vec::new();
    }
    let batch = RecurrentBatch {
        token_seq,
        seq_slots,
    };
    batch
        .runs(token_seq.len(), usize::MAX)
        .and_then(|runs| run_table(&runs))
        .unwrap_or_default()
}

impl CudaBackend {
    /// The batch's runs, checked against `rows` tokens and `slots` state
    /// rows, on the device.
    fn runs_on_device(
        &self,
        batch: &RecurrentBatch<'_>,
        rows: usize,
        slots: usize,
    ) -> Result<(Arc<CudaSlice<u32>>, usize), KernelError> {
        let runs = batch.runs(rows, slots)?;
        let table = run_table(&runs)?;
        Ok((self.index(IndexRole::RecurrentRuns, &table)?, runs.len()))
    }

    pub(super) fn zero_state_rows(&self, x: &mut CudaAct, rows: &[u32]) -> Result<(), KernelError> {
        op_checks::state_rows(rows, x.rows)?;
        if rows.is_empty() || x.cols == 0 {
            return Ok(());
        }
        // The rows are the caller's, not the batch index's: a recorded
        // graph would clear the same rows at every replay.
        if self.recording() {
            return Err(KernelError::Invalid(
                "zero_rows: state slots are cleared before a stage's layers run, not inside a recorded CUDA graph".into(),
            ));
        }
        let rows_dev = self.upload(rows)?;
        let cols = x.cols as i32;
        let cfg = LaunchConfig {
            grid_dim: (rows.len() as u32, 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("zero_rows")?);
        b.arg(&mut x.buf).arg(&rows_dev).arg(&cols);
        // SAFETY: every row index is below x.rows (checked).
        self.launched("zero_rows", || unsafe { b.launch(cfg) }.map(drop))
    }

    pub(super) fn copy_state_rows(
        &self,
        x: &mut CudaAct,
        from: &[u32],
        to: &[u32],
    ) -> Result<(), KernelError> {
        op_checks::copy_rows(from, to, x.rows)?;
        if from.is_empty() || x.cols == 0 {
            return Ok(());
        }
        // As zero_rows: the rows are the caller's, not the batch index's.
        if self.recording() {
            return Err(KernelError::Invalid(
                "copy_rows: state slots are copied between a stage's batches, not inside a recorded CUDA graph".into(),
            ));
        }
        let (from_dev, to_dev) = (self.upload(from)?, self.upload(to)?);
        let cols = x.cols as i32;
        let cfg = LaunchConfig {
            grid_dim: (from.len() as u32, 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("copy_rows")?);
        b.arg(&mut x.buf).arg(&from_dev).arg(&to_dev).arg(&cols);
        // SAFETY: every row index is below x.rows and no row is both read
        // and written (checked).
        self.launched("copy_rows", || unsafe { b.launch(cfg) }.map(drop))
    }

    pub(super) fn conv_runs(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        state: &mut CudaAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        let (channels, d_conv) = (x.cols, w.cols);
        op_checks::ssm_conv(&w.name, w.dtype, (w.rows, d_conv), channels, state.cols)?;
        let (runs, n_runs) = self.runs_on_device(batch, x.rows, state.rows)?;
        let mut out = self.output(x.rows * channels)?;
        if n_runs > 0 && channels > 0 {
            let (channels_i, d_conv_i) = (channels as i32, d_conv as i32);
            let cfg = LaunchConfig {
                grid_dim: (
                    (channels as u32).div_ceil(ELEMENTWISE_THREADS),
                    n_runs as u32,
                    1,
                ),
                block_dim: (ELEMENTWISE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(self.f("ssm_conv")?);
            b.arg(&x.buf)
                .arg(&w.data)
                .arg(&mut state.buf)
                .arg(&mut out)
                .arg(&*runs)
                .arg(&channels_i)
                .arg(&d_conv_i);
            // SAFETY: w is F32 channels x d_conv (checked); every run's
            // tokens are rows of x and out, its slot a row of state.
            self.launched("ssm_conv", || unsafe { b.launch(cfg) }.map(drop))?;
        }
        Ok(CudaAct {
            buf: out,
            rows: x.rows,
            cols: channels,
        })
    }

    pub(super) fn delta_net_runs(
        &self,
        shape: DeltaNetShape,
        [q, k, v, g, beta]: [&CudaAct; 5],
        state: &mut CudaAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        shape.check()?;
        let s = shape.head_dim;
        if s > MAX_DELTA_NET_HEAD_DIM {
            return Err(KernelError::Invalid(format!(
                "delta_net: heads of {s} values; the CUDA kernel takes up to {MAX_DELTA_NET_HEAD_DIM}"
            )));
        }
        op_checks::delta_net(
            shape,
            [q, k, v, g, beta].map(|a| (a.rows, a.cols)),
            state.cols,
        )?;
        let (runs, n_runs) = self.runs_on_device(batch, q.rows, state.rows)?;
        let width = shape.n_v_heads * s;
        let mut out = self.output(q.rows * width)?;
        if n_runs > 0 {
            let warps = s.min(DELTA_NET_WARPS) as u32;
            let cfg = LaunchConfig {
                grid_dim: (shape.n_v_heads as u32, n_runs as u32, 1),
                block_dim: (32 * warps, 1, 1),
                shared_mem_bytes: 0,
            };
            let (s_i, hk, hv) = (s as i32, shape.n_k_heads as i32, shape.n_v_heads as i32);
            let mut b = self.stream.launch_builder(self.f("delta_net")?);
            b.arg(&q.buf)
                .arg(&k.buf)
                .arg(&v.buf)
                .arg(&g.buf)
                .arg(&beta.buf)
                .arg(&mut state.buf)
                .arg(&mut out)
                .arg(&*runs)
                .arg(&s_i)
                .arg(&hk)
                .arg(&hv);
            // SAFETY: the widths match the shape (checked), S fits the
            // kernel's registers; every run's tokens are rows of the inputs
            // and out, its slot a row of state.
            self.launched("delta_net", || unsafe { b.launch(cfg) }.map(drop))?;
        }
        Ok(CudaAct {
            buf: out,
            rows: q.rows,
            cols: width,
        })
    }
}
