//! Every CUDA source compiles with NVRTC for every architecture we support,
//! and every kernel the backend loads is in the result; with NVRTC 13 and
//! with NVRTC 12 (scripts/test.sh runs it with each). Runs without a GPU:
//! NVRTC comes from the `nvidia-cuda-nvrtc` wheel (scripts/test.sh installs
//! it and puts its lib dir on LD_LIBRARY_PATH).

use strata_kernels::cuda::compile::nvrtc_version;
use strata_kernels::cuda::{compile_cubin, kernel_names, nvrtc_present, SOURCES, SUPPORTED_ARCHS};

#[test]
fn every_cuda_source_compiles_for_every_supported_arch() {
    assert!(
        nvrtc_present(),
        "NVRTC cannot be loaded: pip install nvidia-cuda-nvrtc and put nvidia/cu13/lib on LD_LIBRARY_PATH (scripts/test.sh does both)"
    );
    let version = nvrtc_version().expect("NVRTC's version");
    println!("NVRTC {}.{}", version.0, version.1);
    // scripts/test.sh runs this with NVRTC 13 and again with NVRTC 12 (what
    // a CUDA 12 driver needs), naming the major it put on the library path.
    if let Ok(major) = std::env::var("STRATA_NVRTC_MAJOR") {
        assert_eq!(version.0.to_string(), major, "NVRTC on the library path");
    }
    let mut failures = Vec::new();
    for &(major, minor) in SUPPORTED_ARCHS {
        let mut images = Vec::new();
        for src in SOURCES {
            match compile_cubin(src, major, minor) {
                Ok(cubin) => {
                    assert_eq!(
                        &cubin[..4],
                        b"\x7fELF",
                        "{}: sm_{major}{minor} output is not a CUBIN",
                        src.name
                    );
                    images.push(cubin);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if images.len() == SOURCES.len() {
            for kernel in kernel_names() {
                let found = images
                    .iter()
                    .any(|img| img.windows(kernel.len()).any(|w| w == kernel.as_bytes()));
                if !found {
                    failures.push(format!(
                        "kernel {kernel} is missing from the sm_{major}{minor} build"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
