//! Which file a LoadSlice reads: the path it names (only a file this worker
//! was given), else a `--model-dir` file with the digest, else a pushed
//! slice. When the coordinator sends the slice hash, a candidate is used
//! only if its slice has that hash: a model-dir file that differs is
//! skipped, and a cached slice that differs is removed, so it is pushed
//! again.

use std::path::{Path, PathBuf};

use strata_model::arch::ModelSpec;
use strata_model::GgufFile;
use tonic::Status;

use super::Shared;
use crate::slice_cache::{self, LayerRange};

pub(super) fn locate(
    shared: &Shared,
    digest: &str,
    model_path: &str,
    range: LayerRange,
    slice_hash: &str,
) -> Result<(GgufFile, PathBuf), Status> {
    let open = |p: &Path| GgufFile::open(p).map_err(|e| Status::failed_precondition(e.to_string()));
    // The slice hash of `range` in `file`, when the coordinator sent one and
    // the file's differs.
    let differs = |file: &GgufFile| -> Result<Option<String>, Status> {
        if slice_hash.is_empty() {
            return Ok(None);
        }
        let hp = ModelSpec::from_gguf(file).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if range.end > hp.n_layers {
            return Err(Status::invalid_argument(format!(
                "layers {range} past the model's {}",
                hp.n_layers
            )));
        }
        let got = shared.hashes.get(file, range, hp.n_layers);
        Ok((got != slice_hash).then_some(got))
    };
    if !model_path.is_empty() {
        // Only a file this worker was given (--model-dir): a token holder
        // must not learn whether any other path exists, nor make us read it.
        let path = shared
            .models
            .known(Path::new(model_path))
            .ok_or_else(|| {
                Status::permission_denied("model_path names no file of this worker's --model-dir")
            })?
            .to_path_buf();
        let file = open(&path)?;
        let have = slice_cache::model_digest(&file)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if have != digest {
            return Err(Status::failed_precondition(format!(
                "{model_path} has digest {have}, not {digest}"
            )));
        }
        if let Some(got) = differs(&file)? {
            return Err(Status::failed_precondition(format!(
                "{model_path}: layers {range} hash to {got}, not {slice_hash}"
            )));
        }
        return Ok((file, path));
    }
    if let Some(p) = shared.models.find(digest) {
        let file = open(p)?;
        match differs(&file)? {
            None => return Ok((file, p.to_path_buf())),
            Some(got) => tracing::warn!(
                "{}: layers {range} hash to {got}, not {slice_hash}: not using it",
                p.display()
            ),
        }
    }
    if let Some(p) = shared.cache.find(digest, range) {
        let file = open(&p)?;
        match differs(&file)? {
            None => {
                shared.cache.touch(&p);
                return Ok((file, p));
            }
            Some(got) => {
                drop(file);
                tracing::warn!(
                    "cached slice {} hashes to {got}, not {slice_hash}: removed",
                    p.display()
                );
                let _ = std::fs::remove_file(&p);
                shared.hashes.forget(&p);
            }
        }
    }
    Err(Status::not_found(format!(
        "this worker has no file with digest {digest} and slice hash {slice_hash} (model dir: {}; no cached slice of layers {range} in {}): push the slice",
        shared.config.model_dir.as_ref().map_or("none".into(), |d| d.display().to_string()),
        shared.cache.dir().display()
    )))
}
