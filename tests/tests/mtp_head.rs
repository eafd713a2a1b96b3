//! Qwen3.5's multi-token-prediction block (`nextn`): the last stage loads it
//! and counts it, the main pass never runs it, and a stage boundary never
//! sends it elsewhere. (Its tokens are held to llama.cpp's, which skips the
//! block, in tests/tests/synth_reference.rs.)

use strata_kernels::CpuBackend;
use strata_model::arch::{Architecture, ModelSpec};
use strata_model::profile::{KvType, MemoryProfile, StageLoad};
use strata_model::slice::slice_tensors;
use strata_tests::synth;
use strata_worker::{LayerRange, Stage};

#[test]
fn the_last_stage_loads_and_counts_the_mtp_block() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Architecture::Qwen35, Architecture::Qwen35Moe] {
        let file = synth(dir.path(), arch, "tiny-mtp", "Q8_0");
        let spec = ModelSpec::from_gguf(&file).unwrap();
        assert_eq!((spec.n_layers, spec.mtp_layers.len()), (4, 1), "{arch}");
        assert!(
            spec.mtp_layers[0].mixer != spec.layers[0].mixer,
            "an attention block"
        );

        // The profile puts block 4's bytes on the last stage only.
        let profile = MemoryProfile::from_gguf(&file, &spec);
        let block4: u64 = file
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.4."))
            .map(|t| t.size_bytes)
            .sum();
        assert!(block4 > 0);
        assert_eq!(profile.mtp_bytes, block4, "{arch}");
        let load = StageLoad::for_sequences(512, 1, KvType::F16, 64);
        let (head, rest) = (
            LayerRange { first: 2, end: 4 },
            LayerRange { first: 0, end: 2 },
        );
        let without = MemoryProfile {
            mtp_bytes: 0,
            ..profile.clone()
        };
        assert_eq!(
            profile.stage_memory(head, &load).weight_bytes,
            without.stage_memory(head, &load).weight_bytes + block4
        );
        assert_eq!(
            profile.stage_memory(rest, &load),
            without.stage_memory(rest, &load)
        );

        // A pushed slice carries the block to the last stage only.
        let has_block4 = |r| {
            slice_tensors(&file, r, 4)
                .iter()
                .any(|t| t.name.starts_with("blk.4."))
        };
        assert!(has_block4(head) && !has_block4(rest));

        let load_stage = |range| Stage::load_for(CpuBackend::new(), &file, range, &load).unwrap();
        assert_eq!(load_stage(head).mtp_blocks(), 1, "{arch}");
        assert_eq!(load_stage(rest).mtp_blocks(), 0, "{arch}");
    }
}
