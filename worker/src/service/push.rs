//! PushSlice, worker side: writes the streamed tensors into the slice cache.
//! The sender is the coordinator's (`strata_coordinator::cluster::push_slice`).

use strata_model::{GgmlType, GgufFile};
use strata_proto::v1;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::slice_cache::{PushedSlice, SliceCache};
use crate::stage::LayerRange;

/// Most tensors a pushed slice may declare.
const MAX_TENSORS: usize = 1 << 16;

/// Worker side: reads the header, then streams chunks into the cache writer
/// on a blocking thread.
pub async fn receive(
    cache: SliceCache,
    mut stream: Streaming<v1::SliceChunk>,
) -> Result<v1::PushSliceReply, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty PushSlice stream"))?;
    let Some(v1::slice_chunk::Part::Header(header)) = first.part else {
        return Err(Status::invalid_argument(
            "PushSlice must start with a header",
        ));
    };
    let expected_hash = header.slice_hash.clone();
    if !expected_hash.starts_with("blake3:") {
        return Err(Status::invalid_argument(
            "PushSlice header: no slice_hash (blake3:<hex>): a pushed slice is kept only if it checks out",
        ));
    }
    let slice = pushed_slice(header)?;
    tracing::info!(
        "receiving layers {}..{} of {} ({} tensors)",
        slice.range.first,
        slice.range.end,
        slice.digest,
        slice.tensors.len()
    );
    let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(4);
    let writer = tokio::task::spawn_blocking(move || {
        cache.write(&slice, &expected_hash, || rx.blocking_recv())
    });
    let mut stream_error = None;
    loop {
        match stream.message().await {
            Ok(Some(v1::SliceChunk {
                part: Some(v1::slice_chunk::Part::Data(d)),
            })) => {
                if tx.send((d.tensor_index as usize, d.data)).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Ok(Some(_)) => {
                stream_error = Some(Status::invalid_argument(
                    "a second header in one PushSlice stream",
                ));
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
    let written = writer
        .await
        .map_err(|e| Status::internal(format!("slice writer: {e}")))?;
    if let Some(e) = stream_error {
        return Err(e);
    }
    let (path, bytes) = written.map_err(|e| Status::invalid_argument(e.to_string()))?;
    tracing::info!("cached pushed slice at {} ({bytes} bytes)", path.display());
    Ok(v1::PushSliceReply {
        cache_path: path.display().to_string(),
        bytes_written: bytes,
    })
}

fn pushed_slice(h: v1::SliceHeader) -> Result<PushedSlice, Status> {
    let bad = |m: String| Status::invalid_argument(format!("PushSlice header: {m}"));
    let r = h.layers.ok_or_else(|| bad("no layer range".into()))?;
    if r.first >= r.end {
        return Err(bad(format!("empty layer range {}..{}", r.first, r.end)));
    }
    if h.tensors.len() > MAX_TENSORS {
        return Err(bad(format!(
            "{} tensors (at most {MAX_TENSORS})",
            h.tensors.len()
        )));
    }
    if !h.model_digest.starts_with("sha256:") {
        return Err(bad(format!(
            "model digest {:?} is not sha256:<hex>",
            h.model_digest
        )));
    }
    let meta = GgufFile::from_bytes("pushed metadata", &h.metadata_gguf)
        .map_err(|e| bad(e.to_string()))?;
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for t in h.tensors {
        let dtype = GgmlType::from_id(t.ggml_type).ok_or_else(|| {
            bad(format!(
                "tensor {}: unknown ggml type {}",
                t.name, t.ggml_type
            ))
        })?;
        tensors.push((t.name, t.dims, dtype));
    }
    Ok(PushedSlice {
        digest: h.model_digest,
        range: LayerRange {
            first: r.first as usize,
            end: r.end as usize,
        },
        metadata: meta.metadata,
        tensors,
    })
}
