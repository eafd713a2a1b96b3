//! Routed experts in a profile, from tensor names and GGUF metadata only (no
//! architecture code): a MoE layer has a router `blk.N.ffn_gate_inp.weight`
//! and 3-D expert tensors `blk.N.ffn_{gate,up,down}_exps.weight` (or a fused
//! `ffn_gate_up_exps`, and per-expert biases or scales beside them), whose
//! last dimension is the expert count; `{arch}.expert_count` and
//! `{arch}.expert_used_count` say how many there are and how many a token
//! uses.

use super::MemoryProfile;
use crate::gguf::GgufFile;

/// Whether `name` is a routed-expert tensor (`blk.N.ffn_*_exps.*`). Shared
/// experts (`_shexp`) and the router are dense: every token reads them.
pub(super) fn is_expert_tensor(name: &str) -> bool {
    name.starts_with("blk.") && name.contains("_exps.")
}

/// `blk.N.…` → N.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The experts a token uses, `used` of `count`, as a fraction of
/// `expert_bytes` (rounded up: the planner rather over- than under-counts).
fn active_expert_bytes(expert_bytes: u64, used: usize, count: usize) -> u64 {
    if count == 0 || used >= count {
        return expert_bytes;
    }
    (expert_bytes as u128 * used as u128).div_ceil(count as u128) as u64
}

impl MemoryProfile {
    /// Splits each layer's weights into routed experts and the rest, and sets
    /// what a token reads. The expert count comes from `{arch}.expert_count`,
    /// else from the expert tensors' last dimension; the used count from
    /// `{arch}.expert_used_count`, else all of them (a file that does not say
    /// is taken to read every expert, never fewer than it may).
    pub(super) fn count_experts(&mut self, f: &GgufFile) {
        let mut count_from_dims = 0u64;
        for l in &mut self.layers {
            l.expert_bytes = 0;
        }
        for t in f.tensors.iter().filter(|t| is_expert_tensor(&t.name)) {
            let Some(l) = layer_of(&t.name).and_then(|il| self.layers.get_mut(il)) else {
                continue;
            };
            l.expert_bytes = l.expert_bytes.saturating_add(t.size_bytes);
            if t.dims.len() == 3 {
                count_from_dims = count_from_dims.max(t.dims[2]);
            }
        }
        let arch = f.architecture().unwrap_or_default();
        let meta = |key: &str| {
            f.get_u64(&format!("{arch}.{key}"))
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
        };
        let any = self.layers.iter().any(|l| l.expert_bytes > 0);
        let count = meta("expert_count")
            .or_else(|| usize::try_from(count_from_dims).ok().filter(|&n| n > 0));
        let (count, used) = match count {
            Some(count) if any => (
                count,
                meta("expert_used_count").map_or(count, |u| u.min(count)),
            ),
            _ => (0, 0),
        };
        self.expert_count = count;
        self.expert_used_count = used;
        for l in &mut self.layers {
            l.expert_bytes = l.expert_bytes.min(l.weight_bytes);
            l.active_bytes_per_token =
                l.dense_bytes() + active_expert_bytes(l.expert_bytes, used, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_tensor_names() {
        assert!(is_expert_tensor("blk.3.ffn_gate_exps.weight"));
        assert!(is_expert_tensor("blk.3.ffn_gate_up_exps.weight"));
        assert!(is_expert_tensor("blk.3.ffn_down_exps.bias"));
        assert!(!is_expert_tensor("blk.3.ffn_gate_inp.weight"));
        assert!(!is_expert_tensor("blk.3.ffn_gate_shexp.weight"));
        assert!(!is_expert_tensor("blk.3.ffn_up.weight"));
        assert!(!is_expert_tensor("token_embd.weight"));
    }

    #[test]
    fn active_fraction_rounds_up_and_caps() {
        assert_eq!(active_expert_bytes(1000, 8, 128), 63); // 62.5 up
        assert_eq!(active_expert_bytes(1280, 8, 128), 80);
        assert_eq!(active_expert_bytes(1000, 200, 128), 1000);
        assert_eq!(active_expert_bytes(1000, 4, 0), 1000);
        assert_eq!(active_expert_bytes(u64::MAX, 1, 2), u64::MAX / 2 + 1);
    }
}
