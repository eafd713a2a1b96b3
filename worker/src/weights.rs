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
        self.optional_rows(name, dims, |_| true)
    }

    /// Like [`Self::optional`], keeping only the rows (last-dimension
    /// entries of a matrix) for which `keep` holds: Qwen3.5's Q projection
    /// interleaves each head's query rows with its gate rows, and the two
    /// halves become two matmuls (each output row is its own dot product,
    /// so the values are the same as one matmul split afterwards).
    pub fn optional_rows(
        &self,
        name: &str,
        dims: &[usize],
        keep: impl Fn(usize) -> bool,
    ) -> Result<Option<B::Weight>, StageError> {
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
        let data = self.file.tensor_data(info);
        let rows = dims.iter().skip(1).product::<usize>().max(1);
        if (0..rows).all(&keep) {
            let w = self
                .backend
                .load_weight(name, info.dtype, &info.dims, data)?;
            return Ok(Some(w));
        }
        let row_bytes = data.len() / rows;
        if row_bytes == 0 {
            return Err(StageError::Model(format!("tensor {name:?} has empty rows")));
        }
        let kept: Vec<u8> = data
            .chunks_exact(row_bytes)
            .enumerate()
            .filter(|(r, _)| keep(*r))
            .flat_map(|(_, row)| row.iter().copied())
            .collect();
        let dims = [info.dims[0], (kept.len() / row_bytes) as u64];
        let w = self.backend.load_weight(name, info.dtype, &dims, &kept)?;
        Ok(Some(w))
    }

    pub fn required(&self, name: &str, dims: &[usize]) -> Result<B::Weight, StageError> {
        self.required_rows(name, dims, |_| true)
    }

    /// Columns `cols` (first-dimension entries) of every row of a matrix of
    /// shape `dims`: a stage's share of Gemma 4's per-layer token table,
    /// whose rows hold every layer's input side by side. The range must
    /// fall on whole quantization blocks.
    pub fn required_columns(
        &self,
        name: &str,
        dims: &[usize; 2],
        cols: std::ops::Range<usize>,
    ) -> Result<B::Weight, StageError> {
        let path = self.file.path().display();
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| StageError::Model(format!("{path}: missing tensor {name:?}")))?;
        let want = [dims[0] as u64, dims[1] as u64];
        if info.dims != want {
            return Err(StageError::Model(format!(
                "{path}: tensor {name:?} has shape {:?}, expected {want:?}",
                info.dims
            )));
        }
        let t = info.dtype;
        let bytes = |n: usize| t.row_bytes(n as u64).map(|b| b as usize);
        let (Some(skip), Some(take), Some(row)) =
            (bytes(cols.start), bytes(cols.len()), bytes(dims[0]))
        else {
            return Err(StageError::Model(format!(
                "{path}: columns {cols:?} of {name:?} do not fall on {} blocks",
                t.name()
            )));
        };
        if cols.end > dims[0] || cols.is_empty() {
            return Err(StageError::Model(format!(
                "{path}: columns {cols:?} of {name:?}, whose rows have {}",
                dims[0]
            )));
        }
        let kept: Vec<u8> = self
            .file
            .tensor_data(info)
            .chunks_exact(row)
            .flat_map(|r| r[skip..skip + take].iter().copied())
            .collect();
        let dims = [cols.len() as u64, dims[1] as u64];
        Ok(self.backend.load_weight(name, t, &dims, &kept)?)
    }

    /// [`Self::optional_rows`] of a tensor the layer cannot do without.
    pub fn required_rows(
        &self,
        name: &str,
        dims: &[usize],
        keep: impl Fn(usize) -> bool,
    ) -> Result<B::Weight, StageError> {
        self.optional_rows(name, dims, keep)?.ok_or_else(|| {
            StageError::Model(format!(
                "{}: missing tensor {name:?}",
                self.file.path().display()
            ))
        })
    }
}
