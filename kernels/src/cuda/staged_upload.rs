//! Weights reach the device through two pinned staging buffers. While one
//! buffer's copy runs (asynchronous DMA at the bus's full speed), the host
//! fills the other from the model file, and the page faults of that fill
//! are the file read. A plain `clone_htod` from the memory map copies
//! pageable memory, which the driver pushes through its own small bounce
//! buffer, one piece at a time, with the file read and the copy taking
//! turns.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DriverError, PinnedHostSlice,
};

/// Bytes per staging buffer: large enough that a copy outlasts its launch
/// cost, small enough that two cost nothing next to a model.
const STAGE_BYTES: usize = 16 << 20;
/// Tensors below this go through `clone_htod`: staging them saves nothing.
const STAGED_FROM: usize = 1 << 20;

struct Stage {
    host: PinnedHostSlice<u8>,
    /// Marks the end of the copy out of `host`, while one is in flight.
    copied: Option<CudaEvent>,
}

impl Stage {
    /// The buffer, once the copy out of it has finished.
    fn wait(&mut self) -> Result<&mut [u8], DriverError> {
        if let Some(done) = self.copied.take() {
            done.synchronize()?;
        }
        self.host.as_mut_slice()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // The pinned memory is freed after this: no copy may still read it.
        if let Some(done) = self.copied.take() {
            let _ = done.synchronize();
        }
    }
}

pub struct StagedUpload {
    stages: [Stage; 2],
    next: usize,
}

impl StagedUpload {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, DriverError> {
        let stage = || -> Result<Stage, DriverError> {
            Ok(Stage {
                // SAFETY: every byte is written before a copy reads it.
                host: unsafe { ctx.alloc_pinned::<u8>(STAGE_BYTES) }?,
                copied: None,
            })
        };
        Ok(StagedUpload {
            stages: [stage()?, stage()?],
            next: 0,
        })
    }

    /// `bytes` in new device memory. The last copies may still be running
    /// when this returns; work queued later on `stream` runs after them.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: &[u8],
    ) -> Result<CudaSlice<u8>, DriverError> {
        if bytes.len() < STAGED_FROM {
            return stream.clone_htod(bytes);
        }
        // SAFETY: the copies below write every byte before any kernel reads it.
        let mut dst = unsafe { stream.alloc::<u8>(bytes.len()) }?;
        for (i, chunk) in bytes.chunks(STAGE_BYTES).enumerate() {
            let stage = &mut self.stages[self.next];
            self.next = 1 - self.next;
            let host = &mut stage.wait()?[..chunk.len()];
            host.copy_from_slice(chunk);
            let at = i * STAGE_BYTES;
            let mut view = dst.slice_mut(at..at + chunk.len());
            let (ptr, _record) = view.device_ptr_mut(stream);
            // SAFETY: `host` is pinned and stays untouched until `copied`
            // says the copy is done (`wait`, or the drop).
            unsafe { cudarc::driver::result::memcpy_htod_async(ptr, host, stream.cu_stream()) }?;
            stage.copied = Some(stream.record_event(None)?);
        }
        Ok(dst)
    }
}
