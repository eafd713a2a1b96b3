//! The CUDA emulator: the CUDA backend's kernels run on the CPU, so every one
//! of them is tested in CI without a GPU (`docs/cuda.md` says what it checks
//! and what only a GPU can).
//!
//! [`install`] compiles `kernels/cuda/emu/runtime.cpp` (a CPU implementation
//! of the driver calls cudarc makes, CUDA threads as fibers) into a shared
//! library named `libcuda.so` and loads it before cudarc looks for a driver;
//! cudarc then finds it by that name, and [`CudaBackend`](super::CudaBackend)
//! runs unchanged on top of it. The emulated device reports compute
//! capability 0.0, and the backend then builds its modules with
//! [`build_module`]: the same kernel text as C++ with `emu/device.h` in
//! front, instead of NVRTC.
//!
//! Test infrastructure: `strata` uses it only when `STRATA_CUDA_EMULATOR=1`
//! says so. It needs a C++17 compiler (`$CXX`, else `c++`) and Boost.Context
//! (Debian: `libboost-context-dev`). `STRATA_CUDA_EMU_CXXFLAGS` adds flags to
//! every build (`-fsanitize=address`, say), `STRATA_CUDA_EMU_SEED` fixes the
//! thread order, `STRATA_CUDA_EMU_THREADS` the OS threads blocks run on,
//! `STRATA_CUDA_EMU_FAIL_AFTER=N` fails every launch after the first N (a
//! lost device), and `STRATA_CUDA_EMU_FAIL_FILE=PATH` fails every launch on
//! the devices PATH lists, once it exists (a GPU lost at a chosen moment).
//! `STRATA_CUDA_EMU_DEVICES=N` shows N devices (a box of several GPUs), and
//! `STRATA_CUDA_EMU_MEM_MIB` gives each its memory (`350`, or `350,350,120`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::compile::cache_dir;
use super::sealed;
use super::source::KernelSource;

const DEVICE_H: &str = include_str!("../../cuda/emu/device.h");
const RUNTIME_CPP: &str = include_str!("../../cuda/emu/runtime.cpp");
const GRAPH_H: &str = include_str!("../../cuda/emu/graph.h");

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmulatorError {
    #[error("the CUDA emulator needs a C++ compiler: running `{cxx}` failed: {error}")]
    NoCompiler { cxx: String, error: String },
    #[error("{what} does not build for the CUDA emulator (`{command}`):\n{log}")]
    Build {
        what: String,
        command: String,
        log: String,
    },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: String },
    #[error("loading the CUDA emulator {path}: {error}")]
    Load { path: PathBuf, error: String },
    #[error(
        "a CUDA driver was loaded before the emulator: call emulator::install() before any CUDA call"
    )]
    DriverAlreadyLoaded,
}

/// Whether a device of this compute capability is the emulator.
pub fn is_emulated(compute_capability: (u32, u32)) -> bool {
    compute_capability == (0, 0)
}

/// Whether the user asked for the emulator (`STRATA_CUDA_EMULATOR=1`).
pub fn requested() -> bool {
    std::env::var("STRATA_CUDA_EMULATOR").is_ok_and(|v| v == "1")
}

/// For tests and diagnostics that run on any machine: the emulator, unless
/// a real CUDA driver is here (and `STRATA_CUDA_EMULATOR=1` does not ask
/// for the emulator anyway).
pub fn install_unless_gpu() -> Result<(), EmulatorError> {
    if requested() || !super::driver_present() {
        install()?;
    }
    Ok(())
}

/// Builds (or finds in the cache) the emulator and loads it as this
/// process's CUDA driver. Idempotent; fails if cudarc already loaded a real
/// driver.
pub fn install() -> Result<(), EmulatorError> {
    static INSTALLED: OnceLock<Result<(), EmulatorError>> = OnceLock::new();
    INSTALLED.get_or_init(load_runtime).clone()
}

fn load_runtime() -> Result<(), EmulatorError> {
    let flags = extra_flags();
    let inputs = [DEVICE_H, RUNTIME_CPP, GRAPH_H, &flags.join(" ")];
    let key = hash(&inputs);
    let dir = cache_dir().join("emu");
    let lib = dir.join(format!("libcuda-emu-{key}.so"));
    let sealed_key = sealed::source_key(&inputs);
    if sealed::read(&lib, &sealed_key).is_none() {
        let src = dir.join(format!("src-{key}"));
        write(&src.join("device.h"), DEVICE_H)?;
        write(&src.join("runtime.cpp"), RUNTIME_CPP)?;
        write(&src.join("graph.h"), GRAPH_H)?;
        let mut args = vec![
            "-O2".to_string(),
            "-std=c++17".into(),
            "-fPIC".into(),
            "-shared".into(),
            "-Wl,-soname,libcuda.so".into(),
        ];
        args.extend(flags);
        args.extend([
            src.join("runtime.cpp").display().to_string(),
            "-lboost_context".into(),
            "-lpthread".into(),
            "-ldl".into(),
        ]);
        compile("the emulator runtime", &args, &lib)?;
        seal(&lib, &sealed_key)?;
    }
    // RTLD_GLOBAL: kernel modules call into it; its SONAME (libcuda.so)
    // is what cudarc's dlopen("libcuda.so") then finds already loaded.
    // SAFETY: loading our own library; its initialisers only set statics.
    let runtime = unsafe {
        libloading::os::unix::Library::open(
            Some(&lib),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| EmulatorError::Load {
        path: lib.clone(),
        error: e.to_string(),
    })?;
    std::mem::forget(runtime); // loaded for the life of the process
                               // SAFETY: only looks a symbol up in the driver cudarc loads.
    let driver_is_emulator = unsafe {
        cudarc::driver::sys::is_culib_present()
            && cudarc::driver::sys::culib()
                .get::<unsafe extern "C" fn()>(b"strata_emu_self\0")
                .is_ok()
    };
    if !driver_is_emulator {
        return Err(EmulatorError::DriverAlreadyLoaded);
    }
    Ok(())
}

/// The emulator build of one kernel module (a shared object cuModuleLoad
/// opens), compiled on first use and cached by content.
pub fn build_module(src: &KernelSource) -> Result<PathBuf, EmulatorError> {
    let mut text = src.text();
    text.push_str("\nSTRATA_EMU_KERNELS_BEGIN\n");
    for k in src.kernels {
        text.push_str(&format!("STRATA_EMU_KERNEL({k})\n"));
    }
    text.push_str("STRATA_EMU_KERNELS_END\n");
    let flags = extra_flags();
    let inputs = [DEVICE_H, &text, &flags.join(" ")];
    let key = hash(&inputs);
    let dir = cache_dir().join("emu");
    let lib = dir.join(format!("{}-{key}.so", src.name));
    let sealed_key = sealed::source_key(&inputs);
    if sealed::read(&lib, &sealed_key).is_some() {
        return Ok(lib);
    }
    let cu = dir.join(format!("{}-{key}.cpp", src.name));
    let header = dir.join(format!("device-{}.h", hash(&[DEVICE_H])));
    write(&header, DEVICE_H)?;
    write(&cu, &text)?;
    let mut args = vec![
        "-O2".to_string(),
        "-std=c++17".into(),
        "-fPIC".into(),
        "-shared".into(),
        "-include".into(),
        header.display().to_string(),
    ];
    args.extend(flags);
    args.extend(["-x".into(), "c++".into(), cu.display().to_string()]);
    compile(&format!("{}.cu", src.name), &args, &lib)?;
    seal(&lib, &sealed_key)?;
    Ok(lib)
}

fn extra_flags() -> Vec<String> {
    std::env::var("STRATA_CUDA_EMU_CXXFLAGS")
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn seal(lib: &Path, key: &str) -> Result<(), EmulatorError> {
    sealed::seal(lib, key).map_err(|e| EmulatorError::Io {
        path: lib.to_path_buf(),
        error: e.to_string(),
    })
}

/// A name beside `path` that no other process or thread is writing.
fn unique_temp(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn write(path: &Path, text: &str) -> Result<(), EmulatorError> {
    let io = |e: std::io::Error| EmulatorError::Io {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written whole then renamed: tests build the same files at once.
    let tmp = unique_temp(path);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Runs the C++ compiler with `args -o out` (into a temporary name first).
fn compile(what: &str, args: &[String], out: &Path) -> Result<(), EmulatorError> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let tmp = unique_temp(out);
    let started = std::time::Instant::now();
    let output = Command::new(&cxx)
        .args(args)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| EmulatorError::NoCompiler {
            cxx: cxx.clone(),
            error: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(EmulatorError::Build {
            what: what.into(),
            command: format!("{cxx} {}", args.join(" ")),
            log: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    std::fs::rename(&tmp, out).map_err(|e| EmulatorError::Io {
        path: out.to_path_buf(),
        error: e.to_string(),
    })?;
    tracing::info!(
        "built {what} for the CUDA emulator in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
