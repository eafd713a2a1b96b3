//! A batch's index arrays (positions, KV slots, block tables) on the device,
//! uploaded once a batch: every layer of a stage asks for the same arrays,
//! so each layer after the first finds them there and skips a synchronous
//! host-to-device copy (seven a layer before). Stands in for a per-batch
//! context in the Backend trait until one exists.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DriverError};

/// Arrays kept: a batch needs five.
const KEEP: usize = 8;

/// An array's host copy (the key) and its device copy.
type Entry = (Vec<u32>, Arc<CudaSlice<u32>>);

#[derive(Default)]
pub struct IndexUploads {
    /// Most recently used last.
    entries: Mutex<Vec<Entry>>,
}

impl IndexUploads {
    /// `data` on the device: the copy already there when one holds the same
    /// values, else a new upload.
    pub fn get(
        &self,
        stream: &Arc<CudaStream>,
        data: &[u32],
    ) -> Result<Arc<CudaSlice<u32>>, DriverError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = entries.iter().position(|(host, _)| host.as_slice() == data) {
            let hit = entries.remove(i);
            let dev = hit.1.clone();
            entries.push(hit);
            return Ok(dev);
        }
        let dev = Arc::new(stream.clone_htod(data)?);
        entries.push((data.to_vec(), dev.clone()));
        if entries.len() > KEEP {
            entries.remove(0);
        }
        Ok(dev)
    }
}
