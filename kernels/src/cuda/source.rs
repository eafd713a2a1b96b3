//! The CUDA C sources (`kernels/cuda/`), each with the shared headers in
//! front: NVRTC compiles one self-contained text per module.

const COMMON: &str = include_str!("../../cuda/common.cuh");
const QUANT: &str = include_str!("../../cuda/quant.cuh");

/// One compilation unit: a name (for logs and the cache), its text, and the
/// kernels it defines (the backend loads each; the emulator's build lists
/// them in its launch table).
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    body: &'static str,
    pub kernels: &'static [&'static str],
}

impl KernelSource {
    /// A module of `kernels` defined in `body` (CUDA C after the shared
    /// headers).
    pub const fn new(
        name: &'static str,
        body: &'static str,
        kernels: &'static [&'static str],
    ) -> Self {
        KernelSource {
            name,
            body,
            kernels,
        }
    }

    /// The full text NVRTC compiles.
    pub fn text(&self) -> String {
        format!(
            "{COMMON}\n{QUANT}\n// ---- {}.cu ----\n{}",
            self.name, self.body
        )
    }
}

/// Every module the CUDA backend loads.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        name: "matvec",
        body: include_str!("../../cuda/matvec.cu"),
        kernels: &[
            "quantize_act",
            "mmvq_q4_0",
            "mmvq_q4_1",
            "mmvq_q5_0",
            "mmvq_q5_1",
            "mmvq_q8_0",
            "mmvq_q2_k",
            "mmvq_q3_k",
            "mmvq_q4_k",
            "mmvq_q5_k",
            "mmvq_q6_k",
            "mmvq_q8_k",
            "mmvq_mxfp4",
            "mmv_f32",
            "mmv_f16",
            "mmv_bf16",
            "embed_q4_0",
            "embed_q4_1",
            "embed_q5_0",
            "embed_q5_1",
            "embed_q8_0",
            "embed_q2_k",
            "embed_q3_k",
            "embed_q4_k",
            "embed_q5_k",
            "embed_q6_k",
            "embed_q8_k",
            "embed_mxfp4",
            "embed_f32",
            "embed_f16",
            "embed_bf16",
            "mmvq_id_q4_0",
            "mmvq_id_q4_1",
            "mmvq_id_q5_0",
            "mmvq_id_q5_1",
            "mmvq_id_q8_0",
            "mmvq_id_q2_k",
            "mmvq_id_q3_k",
            "mmvq_id_q4_k",
            "mmvq_id_q5_k",
            "mmvq_id_q6_k",
            "mmvq_id_q8_k",
            "mmvq_id_mxfp4",
            "mmv_id_f32",
            "mmv_id_f16",
            "mmv_id_bf16",
        ],
    },
    KernelSource {
        name: "elementwise",
        body: include_str!("../../cuda/elementwise.cu"),
        kernels: &[
            "rms_norm",
            "add_assign",
            "add_bias",
            "gated_silu",
            "gated_gelu",
            "gated_swiglu_oai",
            "attn_temperature",
            "rope",
            "select_rows",
            "unary",
            "scale",
            "mul_broadcast",
            "columns",
        ],
    },
    KernelSource {
        name: "recurrent",
        body: include_str!("../../cuda/recurrent.cu"),
        kernels: &["zero_rows", "copy_rows", "ssm_conv", "delta_net"],
    },
    KernelSource {
        name: "moe",
        body: include_str!("../../cuda/moe.cu"),
        kernels: &["add_id", "mul_id", "moe_combine", "moe_route"],
    },
    KernelSource {
        name: "attention",
        body: include_str!("../../cuda/attention.cu"),
        kernels: &[
            "kv_write",
            "kv_write_quant",
            "fwht_rows",
            "attend_64",
            "attend_128",
            "attend_256",
            "attend_512",
            "attend_combine",
        ],
    },
    KernelSource {
        name: "gemm",
        body: include_str!("../../cuda/gemm.cu"),
        kernels: &[
            "gemm_quantize_act",
            "gemm_q4_0",
            "gemm_q4_1",
            "gemm_q5_0",
            "gemm_q5_1",
            "gemm_q8_0",
            "gemm_q2_k",
            "gemm_q3_k",
            "gemm_q4_k",
            "gemm_q5_k",
            "gemm_q6_k",
            "gemm_q8_k",
            "gemm_mxfp4",
        ],
    },
];

/// Compute capabilities the sources are built and checked for: Turing
/// (RTX 20xx), Ampere (RTX 30xx), Ada (RTX 40xx), Hopper.
pub const SUPPORTED_ARCHS: &[(u32, u32)] = &[(7, 5), (8, 6), (8, 9), (9, 0)];

/// Quant types with an int8 dot-product kernel (`mmvq_*`, `embed_*`).
pub const QUANT_KERNEL_TYPES: &[&str] = &[
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "mxfp4",
];
/// Unquantized types with a float kernel (`mmv_*`, `embed_*`).
pub const FLOAT_KERNEL_TYPES: &[&str] = &["f32", "f16", "bf16"];

/// Every kernel the backend looks up by name.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().flat_map(|s| s.kernels.iter().copied())
}
