//! The input checks every backend makes before an op touches memory: shapes
//! that do not fit, rows or positions out of range. A failed check is
//! [`KernelError::Invalid`], the batch's fault, never the device's.

use crate::backend::{AttentionBatch, KernelError, RopeConfig};
use crate::kv::{KvGeometry, KV_BLOCK_TOKENS};
use crate::recurrent::DeltaNetShape;
use strata_model::GgmlType;

fn invalid(what: String) -> Result<(), KernelError> {
    Err(KernelError::Invalid(what))
}

/// `data` holds `rows x cols` values.
pub(crate) fn act_data(len: usize, rows: usize, cols: usize) -> Result<(), KernelError> {
    match rows.checked_mul(cols) {
        Some(n) if n == len => Ok(()),
        _ => invalid(format!("activation of {rows} x {cols} from {len} values")),
    }
}

/// Every row index is below `n_rows`.
pub(crate) fn rows_in(rows: &[usize], n_rows: usize) -> Result<(), KernelError> {
    match rows.iter().find(|&&r| r >= n_rows) {
        Some(r) => invalid(format!(
            "select_rows: row {r} of an activation with {n_rows} rows"
        )),
        None => Ok(()),
    }
}

/// Two activations of one shape (elementwise ops).
pub(crate) fn same_shape(
    op: &str,
    a: (usize, usize),
    b: (usize, usize),
) -> Result<(), KernelError> {
    if a != b {
        return invalid(format!(
            "{op}: {} x {} and {} x {} activations",
            a.0, a.1, b.0, b.1
        ));
    }
    Ok(())
}

/// A weight of `w_cols` columns applied to activation rows of `x_cols`.
pub(crate) fn matmul(name: &str, x_cols: usize, w_cols: usize) -> Result<(), KernelError> {
    if x_cols != w_cols {
        return invalid(format!(
            "matmul {name}: activation width {x_cols} vs weight rows of {w_cols}"
        ));
    }
    Ok(())
}

/// A 1-D weight (norm, bias) of `len` values used over rows of `cols`:
/// `whole_rows` asks for exactly one row's worth, otherwise `cols` must be
/// a multiple of `len` (RMSNorm per head).
pub(crate) fn vector(
    op: &str,
    name: &str,
    len: Option<usize>,
    cols: usize,
    whole_rows: bool,
) -> Result<(), KernelError> {
    let Some(len) = len else {
        return invalid(format!("{op}: {name} is not a 1-D weight"));
    };
    let fits = if whole_rows {
        len == cols
    } else {
        len > 0 && cols.is_multiple_of(len)
    };
    if !fits {
        return invalid(format!(
            "{op}: {name} has {len} values for activation rows of {cols}"
        ));
    }
    Ok(())
}

/// One position per row, and a floor scale to divide by.
pub(crate) fn temperature(
    positions: usize,
    rows: usize,
    floor_scale: u32,
) -> Result<(), KernelError> {
    if positions != rows {
        return invalid(format!(
            "attn_temperature: {positions} positions for {rows} rows"
        ));
    }
    if floor_scale == 0 {
        return invalid("attn_temperature: a floor scale of 0".into());
    }
    Ok(())
}

/// RoPE over `rows x cols`: one position per row, whole heads of
/// `head_dim`, at most `head_dim` dimensions rotated, and a frequency
/// factor per rotated pair.
pub(crate) fn rope(
    rows: usize,
    cols: usize,
    positions: usize,
    cfg: &RopeConfig,
    freq_factors: Option<Option<usize>>,
) -> Result<(), KernelError> {
    if positions != rows {
        return invalid(format!("rope: {positions} positions for {rows} rows"));
    }
    if cfg.head_dim == 0 || !cols.is_multiple_of(cfg.head_dim) {
        return invalid(format!(
            "rope: rows of {cols} are not whole heads of {}",
            cfg.head_dim
        ));
    }
    if cfg.dims > cfg.head_dim {
        return invalid(format!(
            "rope: {} rotated dimensions in heads of {}",
            cfg.dims, cfg.head_dim
        ));
    }
    match freq_factors {
        Some(None) => invalid("rope: the frequency factors are not a 1-D weight".into()),
        Some(Some(n)) if n < cfg.dims / 2 => invalid(format!(
            "rope: {n} frequency factors for {} rotated pairs",
            cfg.dims / 2
        )),
        _ => Ok(()),
    }
}

/// An attention batch against a cache of `geo`: one position and sequence
/// per row of q, k and v; widths that match the cache's heads; every
/// position (and every earlier one it attends) in a block of its
/// sequence's table, every such block in the pool; a sink logit per head.
pub(crate) fn attention(
    geo: &KvGeometry,
    layer: usize,
    q: (usize, usize),
    new_kv: Option<((usize, usize), (usize, usize))>,
    batch: &AttentionBatch<'_>,
) -> Result<(), KernelError> {
    // Without new K/V (a layer reading another's KV) the shapes are the
    // cache's own, so only Q's are checked.
    let (k, v) = new_kv.unwrap_or(((q.0, geo.k_dim()), (q.0, geo.v_dim())));
    if layer >= geo.n_layers {
        return invalid(format!(
            "attention: layer {layer} of a cache of {} layers",
            geo.n_layers
        ));
    }
    let n = q.0;
    if k.0 != n || v.0 != n || batch.positions.len() != n || batch.token_seq.len() != n {
        return invalid(format!(
            "attention: {n} query rows, {} K rows, {} V rows, {} positions, {} sequence ids",
            k.0,
            v.0,
            batch.positions.len(),
            batch.token_seq.len()
        ));
    }
    if batch.n_heads == 0 || geo.n_kv_heads == 0 || !batch.n_heads.is_multiple_of(geo.n_kv_heads) {
        return invalid(format!(
            "attention: {} query heads over {} KV heads",
            batch.n_heads, geo.n_kv_heads
        ));
    }
    if q.1 != batch.n_heads * geo.head_dim_k || k.1 != geo.k_dim() || v.1 != geo.v_dim() {
        return invalid(format!(
            "attention: Q, K, V rows of {}, {}, {} for {} query heads and {} KV heads of {} (K) and {} (V)",
            q.1, k.1, v.1, batch.n_heads, geo.n_kv_heads, geo.head_dim_k, geo.head_dim_v
        ));
    }
    if let Some(sinks) = batch.sinks {
        if sinks.len() < batch.n_heads {
            return invalid(format!(
                "attention: {} sink logits for {} heads",
                sinks.len(),
                batch.n_heads
            ));
        }
    }
    // The last block each sequence's tokens reach; every block before it
    // may be read too.
    let mut last_block = vec![None::<usize>; batch.block_tables.len()];
    for (&seq, &pos) in batch.token_seq.iter().zip(batch.positions) {
        let Some(last) = last_block.get_mut(seq as usize) else {
            return invalid(format!(
                "attention: sequence {seq} of a batch with {} block tables",
                batch.block_tables.len()
            ));
        };
        let block = pos as usize / KV_BLOCK_TOKENS;
        *last = Some(last.map_or(block, |b: usize| b.max(block)));
    }
    for (seq, (table, last)) in batch.block_tables.iter().zip(&last_block).enumerate() {
        let Some(last) = *last else { continue };
        let Some(blocks) = table.get(..=last) else {
            return invalid(format!(
                "attention: sequence {seq} reaches block {last} (positions from {}) but its table holds {} blocks",
                last * KV_BLOCK_TOKENS,
                table.len()
            ));
        };
        if let Some(b) = blocks.iter().find(|&&b| b as usize >= geo.n_blocks) {
            return invalid(format!(
                "attention: block {b} of sequence {seq} is outside the pool of {} blocks",
                geo.n_blocks
            ));
        }
    }
    Ok(())
}

/// `x *= y`: `y` has `x`'s rows and either its columns or one.
pub(crate) fn mul(x: (usize, usize), y: (usize, usize)) -> Result<(), KernelError> {
    if y.0 != x.0 || (y.1 != x.1 && y.1 != 1) {
        return invalid(format!(
            "mul: a {} x {} activation times a {} x {} one",
            x.0, x.1, y.0, y.1
        ));
    }
    Ok(())
}

/// Groups of `group` values over rows of `cols` (RMSNorm without a weight).
pub(crate) fn groups(op: &str, cols: usize, group: usize) -> Result<(), KernelError> {
    if group == 0 || !cols.is_multiple_of(group) {
        return invalid(format!("{op}: rows of {cols} in groups of {group}"));
    }
    Ok(())
}

/// Columns `start .. start + len` of rows of `cols`.
pub(crate) fn columns(cols: usize, start: usize, len: usize) -> Result<(), KernelError> {
    if start.checked_add(len).is_none_or(|end| end > cols) {
        return invalid(format!("columns: {start} + {len} of rows of {cols}"));
    }
    Ok(())
}

/// Row indices below `n_rows` (state slots to clear).
pub(crate) fn state_rows(rows: &[u32], n_rows: usize) -> Result<(), KernelError> {
    match rows.iter().find(|&&r| r as usize >= n_rows) {
        Some(r) => invalid(format!("zero_rows: row {r} of {n_rows}")),
        None => Ok(()),
    }
}

/// `row_to_host` / `row_from_host`: a row below `n_rows`, and (writing)
/// a whole row of data.
pub(crate) fn host_row(
    row: u32,
    n_rows: usize,
    data_len: Option<usize>,
    cols: usize,
) -> Result<(), KernelError> {
    if row as usize >= n_rows {
        return invalid(format!("state row {row} of {n_rows}"));
    }
    match data_len {
        Some(n) if n != cols => invalid(format!("{n} values for a state row of {cols}")),
        _ => Ok(()),
    }
}

/// `copy_rows`: pairs of rows below `n_rows`, and no row both a source and
/// a target (the copies would then depend on their order).
pub(crate) fn copy_rows(from: &[u32], to: &[u32], n_rows: usize) -> Result<(), KernelError> {
    if from.len() != to.len() {
        return invalid(format!(
            "copy_rows: {} source rows for {} targets",
            from.len(),
            to.len()
        ));
    }
    if let Some(r) = from.iter().chain(to).find(|&&r| r as usize >= n_rows) {
        return invalid(format!("copy_rows: row {r} of {n_rows}"));
    }
    let mut targets = to.to_vec();
    targets.sort_unstable();
    if targets.windows(2).any(|w| w[0] == w[1])
        || from.iter().any(|r| targets.binary_search(r).is_ok())
    {
        return invalid("copy_rows: a row is written twice, or both read and written".to_string());
    }
    Ok(())
}

/// The conv's weight is F32 `channels x d_conv` (d_conv > 0) and its state
/// rows hold `(d_conv - 1) x channels` values.
pub(crate) fn ssm_conv(
    name: &str,
    dtype: GgmlType,
    (w_rows, d_conv): (usize, usize),
    channels: usize,
    state_cols: usize,
) -> Result<(), KernelError> {
    if dtype != GgmlType::F32 {
        return invalid(format!("ssm_conv: {name} is {dtype}, not F32"));
    }
    if w_rows != channels || d_conv == 0 {
        return invalid(format!(
            "ssm_conv: {name} has {w_rows} rows of {d_conv} taps for {channels} channels"
        ));
    }
    if state_cols != (d_conv - 1) * channels {
        return invalid(format!(
            "ssm_conv: state rows of {state_cols} values, expected {} x {channels}",
            d_conv - 1
        ));
    }
    Ok(())
}

/// q, k, v, g and beta (in that order) of one row per token, in the widths
/// of `shape`, and state rows of one sequence's matrices.
pub(crate) fn delta_net(
    shape: DeltaNetShape,
    acts: [(usize, usize); 5],
    state_cols: usize,
) -> Result<(), KernelError> {
    let (s, hk, hv) = (shape.head_dim, shape.n_k_heads, shape.n_v_heads);
    let widths = [hk * s, hk * s, hv * s, hv, hv];
    let rows = acts[0].0;
    for (what, ((r, c), w)) in ["q", "k", "v", "g", "beta"]
        .iter()
        .zip(acts.iter().zip(widths))
    {
        if *r != rows || *c != w {
            return invalid(format!(
                "delta_net: {what} is {r} x {c}, expected {rows} x {w}"
            ));
        }
    }
    if state_cols != shape.state_len() {
        return invalid(format!(
            "delta_net: state rows of {state_cols} values, expected {}",
            shape.state_len()
        ));
    }
    Ok(())
}

/// A per-expert scale (`{n_expert}` values, a 1-D weight) over the rows of
/// a routing's slots.
pub(crate) fn mul_id(
    name: &str,
    len: Option<usize>,
    n_expert: usize,
    slots: usize,
    x_rows: usize,
) -> Result<(), KernelError> {
    match len {
        None => invalid(format!("mul_id: {name} is not a 1-D weight")),
        Some(n) if n < n_expert => invalid(format!(
            "mul_id: {name} has {n} values for {n_expert} experts"
        )),
        _ if slots != x_rows => invalid(format!("mul_id: {slots} routed slots for {x_rows} rows")),
        _ => Ok(()),
    }
}
