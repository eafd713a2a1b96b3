//! NVRTC: CUDA C to CUBIN for one compute capability, cached on disk by
//! source hash and architecture so a worker compiles once per machine.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use super::source::KernelSource;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("NVRTC (libnvrtc.so) is not installed or not on the library path")]
    NoNvrtc,
    #[error("NVRTC {call} failed for {module} (sm_{arch}): {error:?}")]
    Nvrtc {
        module: String,
        arch: String,
        call: &'static str,
        error: String,
    },
    #[error("{module}.cu does not compile for sm_{arch}:\n{log}")]
    Source {
        module: String,
        arch: String,
        log: String,
    },
}

/// Whether NVRTC can be loaded (calling it without would panic).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, (major, minor).
pub fn nvrtc_version() -> Option<(u32, u32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); two plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ok()
        .map(|_| (major as u32, minor as u32))
}

/// Whether kernels NVRTC `nvrtc` builds will load on a driver reporting
/// `driver_version` (cuDriverGetVersion: 12040 is CUDA 12.4). A CUBIN runs
/// on drivers of its toolkit's major version and later, so NVRTC 13 needs a
/// CUDA 13 driver (NVIDIA 580 or newer); with a CUDA 12 driver, NVRTC 12.
pub fn check_toolchain(driver_version: u32, nvrtc: (u32, u32)) -> Result<(), String> {
    let driver = (driver_version / 1000, driver_version % 1000 / 10);
    if nvrtc.0 <= driver.0 {
        return Ok(());
    }
    Err(format!(
        "the CUDA driver supports CUDA {}.{}, but NVRTC is {}.{}: the kernels it builds need a driver for CUDA {}{}. \
         Either install NVRTC {}: `pip install nvidia-cuda-nvrtc-cu{}` and put its nvidia/cuda_nvrtc/lib on \
         LD_LIBRARY_PATH ahead of NVRTC {}, or update the NVIDIA driver",
        driver.0,
        driver.1,
        nvrtc.0,
        nvrtc.1,
        nvrtc.0,
        if nvrtc.0 == 13 { " (NVIDIA 580 or newer)" } else { "" },
        driver.0,
        driver.0,
        nvrtc.0
    ))
}

/// NVRTC options shared by every build.
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
        "-default-device".into(),
        "--fmad=true".into(),
    ]
}

/// Compiles `src` to a CUBIN for compute capability `major.minor`.
pub fn compile_cubin(src: &KernelSource, major: u32, minor: u32) -> Result<Vec<u8>, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NoNvrtc);
    }
    let arch = format!("{major}{minor}");
    let fail = |call: &'static str, e: result::NvrtcError| CompileError::Nvrtc {
        module: src.name.into(),
        arch: arch.clone(),
        call,
        error: format!("{e:?}"),
    };
    let text = CString::new(src.text()).map_err(|_| CompileError::Source {
        module: src.name.into(),
        arch: arch.clone(),
        log: "the source has a NUL byte".into(),
    })?;
    let name = CString::new(format!("{}.cu", src.name)).unwrap_or_default();
    let prog = result::create_program(&text, Some(&name)).map_err(|e| fail("create_program", e))?;
    // SAFETY: `prog` comes from create_program and is destroyed once, below.
    unsafe {
        let compiled = result::compile_program(prog, &options(&arch));
        let out = match compiled {
            Ok(()) => cubin(prog).map_err(|e| fail("get_cubin", e)),
            Err(_) => Err(CompileError::Source {
                module: src.name.into(),
                arch: arch.clone(),
                log: log(prog),
            }),
        };
        let _ = result::destroy_program(prog);
        out
    }
}

/// # Safety
/// `prog` must be a live, compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut buf = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char).result()?;
    Ok(buf)
}

/// # Safety
/// `prog` must be a live program.
unsafe fn log(prog: sys::nvrtcProgram) -> String {
    match result::get_program_log(prog) {
        Ok(raw) => CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned(),
        Err(e) => format!("(no log: {e:?})"),
    }
}

/// Where compiled modules are kept: `$STRATA_CUDA_CACHE` or
/// `~/.cache/strata/cuda`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("STRATA_CUDA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                .join(".cache/strata/cuda")
        })
}

fn cache_path(dir: &Path, src: &KernelSource, major: u32, minor: u32) -> PathBuf {
    let mut h = Sha256::new();
    h.update(src.text().as_bytes());
    h.update(options(&format!("{major}{minor}")).join(" ").as_bytes());
    let hex: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{}-sm_{major}{minor}-{hex}.cubin", src.name))
}

/// A CUBIN from the cache, or compiled and then cached (a cache that cannot
/// be written only costs the next start a compile).
pub fn cached_cubin(src: &KernelSource, major: u32, minor: u32) -> Result<Vec<u8>, CompileError> {
    let dir = cache_dir();
    let path = cache_path(&dir, src, major, minor);
    let key =
        super::sealed::source_key(&[&src.text(), &options(&format!("{major}{minor}")).join(" ")]);
    if let Some(bytes) = super::sealed::read(&path, &key) {
        return Ok(bytes);
    }
    let started = std::time::Instant::now();
    let bytes = compile_cubin(src, major, minor)?;
    tracing::info!(
        "compiled {}.cu for sm_{major}{minor} in {:.2}s",
        src.name,
        started.elapsed().as_secs_f64()
    );
    let tmp = path.with_extension("partial");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&tmp, &bytes))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .and_then(|_| super::sealed::seal(&path, &key));
    if let Err(e) = written {
        tracing::warn!("could not cache {}: {e}", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::check_toolchain;

    #[test]
    fn nvrtc_must_not_be_newer_than_the_driver() {
        assert!(check_toolchain(13000, (13, 0)).is_ok());
        assert!(check_toolchain(13010, (12, 8)).is_ok());
        assert!(check_toolchain(12040, (12, 9)).is_ok());
        let e = check_toolchain(12040, (13, 0)).unwrap_err();
        assert!(
            e.contains("CUDA 12.4") && e.contains("nvidia-cuda-nvrtc-cu12"),
            "{e}"
        );
    }
}
