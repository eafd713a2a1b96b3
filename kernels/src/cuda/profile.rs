//! Device time per kernel, when `STRATA_CUDA_PROFILE=1`: a pair of CUDA
//! events around every launch, read back when asked for the report
//! (`strata bench` prints it). Where nsys is missing (the lent GPU machines),
//! this says where decode time goes. Off by default: two events a launch
//! are not free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaEvent, CudaStream, DriverError};

#[derive(Default)]
pub struct KernelProfile {
    /// Launches whose end events have not been read yet.
    pending: Mutex<Vec<(&'static str, CudaEvent, CudaEvent)>>,
    /// Per kernel: launches and milliseconds.
    totals: Mutex<HashMap<&'static str, (u64, f64)>>,
}

/// Pending launches read back at once: keeps the events' memory bounded.
const READ_BACK_AFTER: usize = 4096;

impl KernelProfile {
    /// A profile when `STRATA_CUDA_PROFILE=1`.
    pub fn from_env() -> Option<Arc<Self>> {
        std::env::var("STRATA_CUDA_PROFILE")
            .is_ok_and(|v| v == "1")
            .then(Arc::default)
    }

    pub fn start(&self, stream: &Arc<CudaStream>) -> Result<CudaEvent, DriverError> {
        stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
    }

    pub fn stop(
        &self,
        stream: &Arc<CudaStream>,
        kernel: &'static str,
        start: CudaEvent,
    ) -> Result<(), DriverError> {
        let end = stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((kernel, start, end));
            pending.len() >= READ_BACK_AFTER
        };
        if full {
            self.read_back()?;
        }
        Ok(())
    }

    /// Waits for the pending launches and adds their times up.
    fn read_back(&self) -> Result<(), DriverError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        for (kernel, start, end) in pending {
            let ms = start.elapsed_ms(&end)? as f64;
            let t = totals.entry(kernel).or_default();
            t.0 += 1;
            t.1 += ms;
        }
        Ok(())
    }

    /// A table of the kernels by total time, then resets the counts.
    pub fn report(&self) -> Result<String, DriverError> {
        self.read_back()?;
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let all: f64 = totals.values().map(|t| t.1).sum();
        let mut rows: Vec<_> = totals.drain().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut out = String::from("| kernel | launches | ms | share | µs per launch |\n| --- | ---: | ---: | ---: | ---: |\n");
        for (kernel, (n, ms)) in rows {
            out.push_str(&format!(
                "| {kernel} | {n} | {ms:.2} | {:.1}% | {:.1} |\n",
                100.0 * ms / all.max(1e-9),
                1000.0 * ms / n.max(1) as f64
            ));
        }
        out.push_str(&format!("device time in kernels: {all:.2} ms\n"));
        Ok(out)
    }
}
