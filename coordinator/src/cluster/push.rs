//! PushSlice, coordinator side: streams only a slice's tensors (and the
//! model's metadata) to a worker that has no copy of the model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_model::arch::ModelSpec;
use strata_model::slice::{metadata_gguf, slice_tensors, LayerRange};
use strata_model::GgufFile;
use strata_proto::{v1, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Bytes of tensor data per message.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Coordinator side: streams the tensors of `range` of `file` to a worker,
/// which checks them against `slice_hash` (see `strata_model::slice_hash`)
/// and caches them under `digest`.
pub async fn push_slice(
    client: &mut WorkerClient,
    file: Arc<GgufFile>,
    digest: &str,
    range: LayerRange,
    slice_hash: &str,
) -> Result<v1::PushSliceReply, Status> {
    push_slice_counted(client, file, digest, range, slice_hash, Arc::default()).await
}

/// [`push_slice`], adding the tensor bytes handed to the stream to `sent`.
pub(super) async fn push_slice_counted(
    client: &mut WorkerClient,
    file: Arc<GgufFile>,
    digest: &str,
    range: LayerRange,
    slice_hash: &str,
    sent: Arc<AtomicU64>,
) -> Result<v1::PushSliceReply, Status> {
    let hp = ModelSpec::from_gguf(&file).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let metadata_gguf = metadata_gguf(&file).map_err(|e| Status::internal(e.to_string()))?;
    let names: Vec<String> = slice_tensors(&file, range, hp.n_layers)
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let header = v1::SliceHeader {
        model_digest: digest.to_string(),
        layers: Some(v1::LayerRange {
            first: range.first as u32,
            end: range.end as u32,
        }),
        metadata_gguf,
        tensors: names
            .iter()
            .filter_map(|n| file.tensor(n))
            .map(|t| v1::TensorDesc {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.dtype.id(),
                size_bytes: t.size_bytes,
            })
            .collect(),
        slice_hash: slice_hash.to_string(),
    };
    let (tx, rx) = mpsc::channel::<v1::SliceChunk>(4);
    let producer = tokio::task::spawn_blocking(move || {
        if tx
            .blocking_send(v1::SliceChunk {
                part: Some(v1::slice_chunk::Part::Header(header)),
            })
            .is_err()
        {
            return;
        }
        for (i, name) in names.iter().enumerate() {
            let Some(info) = file.tensor(name) else {
                continue;
            };
            for chunk in file.tensor_data(info).chunks(CHUNK_BYTES) {
                let part = v1::slice_chunk::Part::Data(v1::TensorChunk {
                    tensor_index: i as u32,
                    data: chunk.to_vec(),
                });
                if tx
                    .blocking_send(v1::SliceChunk { part: Some(part) })
                    .is_err()
                {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    });
    let reply = client.push_slice(ReceiverStream::new(rx)).await;
    producer.abort();
    Ok(reply?.into_inner())
}
