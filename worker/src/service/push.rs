//! PushSlice on both ends: the worker writes the streamed tensors into its
//! slice cache; [`push_slice`] is the sender the coordinator uses.

use std::sync::Arc;

use strata_model::{GgmlType, GgufFile};
use strata_proto::{v1, WorkerClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::slice_cache::{self, PushedSlice, SliceCache};
use crate::stage::LayerRange;

/// Bytes of tensor data per message.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Most tensors a pushed slice may declare.
const MAX_TENSORS: usize = 1 << 16;

/// Worker side: reads the header, then streams chunks into the cache writer
/// on a blocking thread.
pub async fn receive(cache: SliceCache, mut stream: Streaming<v1::SliceChunk>) -> Result<v1::PushSliceReply, Status> {
    let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty PushSlice stream"))?;
    let Some(v1::slice_chunk::Part::Header(header)) = first.part else {
        return Err(Status::invalid_argument("PushSlice must start with a header"));
    };
    let slice = pushed_slice(header)?;
    tracing::info!(
        "receiving layers {}..{} of {} ({} tensors)",
        slice.range.first,
        slice.range.end,
        slice.digest,
        slice.tensors.len()
    );
    let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(4);
    let writer = tokio::task::spawn_blocking(move || cache.write(&slice, || rx.blocking_recv()));
    let mut stream_error = None;
    loop {
        match stream.message().await {
            Ok(Some(v1::SliceChunk { part: Some(v1::slice_chunk::Part::Data(d)) })) => {
                if tx.send((d.tensor_index as usize, d.data)).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Ok(Some(_)) => {
                stream_error = Some(Status::invalid_argument("a second header in one PushSlice stream"));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                stream_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Status::internal(format!("slice writer: {e}")))?;
    if let Some(e) = stream_error {
        return Err(e);
    }
    let (path, bytes) = written.map_err(|e| Status::invalid_argument(e.to_string()))?;
    tracing::info!("cached pushed slice at {} ({bytes} bytes)", path.display());
    Ok(v1::PushSliceReply { cache_path: path.display().to_string(), bytes_written: bytes })
}

fn pushed_slice(h: v1::SliceHeader) -> Result<PushedSlice, Status> {
    let bad = |m: String| Status::invalid_argument(format!("PushSlice header: {m}"));
    let r = h.layers.ok_or_else(|| bad("no layer range".into()))?;
    if r.first >= r.end {
        return Err(bad(format!("empty layer range {}..{}", r.first, r.end)));
    }
    if h.tensors.len() > MAX_TENSORS {
        return Err(bad(format!("{} tensors (at most {MAX_TENSORS})", h.tensors.len())));
    }
    if !h.model_digest.starts_with("sha256:") {
        return Err(bad(format!("model digest {:?} is not sha256:<hex>", h.model_digest)));
    }
    let meta = GgufFile::from_bytes("pushed metadata", &h.metadata_gguf).map_err(|e| bad(e.to_string()))?;
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for t in h.tensors {
        let dtype = GgmlType::from_id(t.ggml_type).ok_or_else(|| bad(format!("tensor {}: unknown ggml type {}", t.name, t.ggml_type)))?;
        tensors.push((t.name, t.dims, dtype));
    }
    Ok(PushedSlice {
        digest: h.model_digest,
        range: LayerRange { first: r.first as usize, end: r.end as usize },
        metadata: meta.metadata,
        tensors,
    })
}

/// Coordinator side: streams the tensors of `range` of `file` to a worker,
/// which caches them under `digest`.
pub async fn push_slice(
    client: &mut WorkerClient,
    file: Arc<GgufFile>,
    digest: &str,
    range: LayerRange,
) -> Result<v1::PushSliceReply, Status> {
    let hp = strata_model::arch::HyperParams::from_gguf(&file).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let metadata_gguf = slice_cache::metadata_gguf(&file).map_err(|e| Status::internal(e.to_string()))?;
    let names: Vec<String> = slice_cache::slice_tensors(&file, range, hp.n_layers).iter().map(|t| t.name.clone()).collect();
    let header = v1::SliceHeader {
        model_digest: digest.to_string(),
        layers: Some(v1::LayerRange { first: range.first as u32, end: range.end as u32 }),
        metadata_gguf,
        tensors: names
            .iter()
            .filter_map(|n| file.tensor(n))
            .map(|t| v1::TensorDesc { name: t.name.clone(), dims: t.dims.clone(), ggml_type: t.dtype.id(), size_bytes: t.size_bytes })
            .collect(),
    };
    let (tx, rx) = mpsc::channel::<v1::SliceChunk>(4);
    let producer = tokio::task::spawn_blocking(move || {
        if tx.blocking_send(v1::SliceChunk { part: Some(v1::slice_chunk::Part::Header(header)) }).is_err() {
            return;
        }
        for (i, name) in names.iter().enumerate() {
            let Some(info) = file.tensor(name) else { continue };
            for chunk in file.tensor_data(info).chunks(CHUNK_BYTES) {
                let part = v1::slice_chunk::Part::Data(v1::TensorChunk { tensor_index: i as u32, data: chunk.to_vec() });
                if tx.blocking_send(v1::SliceChunk { part: Some(part) }).is_err() {
                    return;
                }
            }
        }
    });
    let reply = client.push_slice(ReceiverStream::new(rx)).await;
    producer.abort();
    Ok(reply?.into_inner())
}
