//! Loading a stage's tensors from a GGUF file into a backend.

use strata_kernels::Backend;
use strata_model::GgufFile;

use crate::stage::StageError;

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
}
