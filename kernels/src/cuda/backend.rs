//! [`CudaBackend`]: the ops of a block as CUDA kernels on one device. The
//! hidden state stays on the device for the whole layer range; only the
//! stage's input and output cross to the host.
//!
//! Decode batches (up to [`MAX_BATCH`] tokens per launch) quantize the
//! activations to int8 per 32 values and dot them with the quantized weights
//! in place (`mmvq_*`, as llama.cpp's MMVQ); longer batches run the same
//! kernel over groups of tokens (a tensor-core path for prompts is to come).
//!
//! A CUDA error under an op (a lost device, a kernel fault) comes back as
//! [`KernelError::Device`] naming the call that failed; input an op cannot
//! take is [`KernelError::Invalid`], checked before anything is launched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use strata_model::arch::{Activation, RopeStyle};
use strata_model::GgmlType;

use super::compile::cached_cubin;
use super::profile::KernelProfile;
use super::source::SOURCES;
use super::staged_upload::StagedUpload;
use super::uploads::IndexUploads;
use crate::backend::{
    AttentionBatch, Backend, BatchIndex, KernelError, RopeConfig, Unary, WeightShape,
};
use crate::kv::{KvBlockId, KvGeometry, KV_BLOCK_TOKENS};
use crate::moe_route::Router;
use crate::op_checks;
use crate::recurrent::{DeltaNetShape, RecurrentBatch};
pub use graphs::CudaLayerRuns;
pub use recurrent::MAX_DELTA_NET_HEAD_DIM;
pub use routing::CudaRouting;

mod attention;
mod elementwise;
mod gemm;
mod graphs;
mod matvec;
mod moe;
mod recurrent;
mod routing;

/// Tokens one matrix-vector launch handles (the kernels' MAX_BATCH).
pub const MAX_BATCH: usize = 8;
/// Largest head dimension (K or V) attention handles: `attend_512`, the
/// widest of attention.cu's kernels (Gemma 4's global layers use 512).
pub const MAX_HEAD_DIM: usize = 512;
/// Bytes of one quantized activation chunk (f32 scale + 32 int8).
const ACT_CHUNK_BYTES: usize = 36;
/// Most warps in one matvec block (matvec.cu's MAX_WARPS): they split the
/// columns of the block's rows; narrow rows get fewer.
const WARPS_PER_ROW_BLOCK: u32 = 4;
const ELEMENTWISE_THREADS: u32 = 256;

/// Every op allocates its output from the device's memory pool
/// (`cuMemAllocAsync`). By default the pool hands freed memory back to the
/// driver at each synchronisation, so the next token's allocations start
/// from the driver again; kept, they come from the pool's free lists, and
/// the pool serves as the ops' workspace.
fn keep_freed_memory(ctx: &CudaContext) -> Result<(), cudarc::driver::DriverError> {
    let mut threshold = u64::MAX;
    // SAFETY: the device's pool and a u64 value, as
    // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD takes.
    unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            default_pool(ctx)?,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
    }
}

/// Hands the memory the pool keeps back to the driver, so that free memory
/// counts it.
fn trim_freed_memory(ctx: &CudaContext) -> Result<(), cudarc::driver::DriverError> {
    // SAFETY: the device's pool.
    unsafe { cudarc::driver::sys::cuMemPoolTrimTo(default_pool(ctx)?, 0).result() }
}

/// The device's default memory pool, which `cuMemAllocAsync` draws from.
fn default_pool(
    ctx: &CudaContext,
) -> Result<cudarc::driver::sys::CUmemoryPool, cudarc::driver::DriverError> {
    let mut pool = std::ptr::null_mut();
    // SAFETY: a valid device and an out-pointer.
    unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()?;
    Ok(pool)
}

fn device_error(what: &str, e: cudarc::driver::DriverError) -> KernelError {
    KernelError::Device(format!("CUDA error in {what}: {e:?}"))
}

/// Row-major `rows x cols` f32 activations on the device.
pub struct CudaAct {
    pub buf: CudaSlice<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// A weight in its GGUF type on the device; 1-D tensors (norms, biases,
/// rope factors) also as f32.
pub struct CudaWeight {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub data: CudaSlice<u8>,
    pub f32: Option<CudaSlice<f32>>,
}

/// Per layer, a K and a V pool of `n_blocks * KV_BLOCK_TOKENS` slots, each
/// a row of f16 values or of q8_0 / q4_0 blocks (`KvGeometry::kv_type`).
pub struct CudaKvCache {
    geometry: KvGeometry,
    k: Vec<CudaSlice<u8>>,
    v: Vec<CudaSlice<u8>>,
}

/// The thread recording a graph, and the index arrays its ops read.
type RecordingRegion = (std::thread::ThreadId, graphs::Region);

/// Device copies of model constants, by their values' bits.
type DeviceConstants = HashMap<Vec<u32>, Arc<CudaSlice<f32>>>;

/// Cheap to clone: the context, stream and loaded kernels are shared.
#[derive(Clone)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    /// `mmv_*` / `mmvq_*` and `embed_*` by weight type.
    matvec: HashMap<GgmlType, (&'static str, CudaFunction)>,
    embed: HashMap<GgmlType, (&'static str, CudaFunction)>,
    /// `mmv_id_*` / `mmvq_id_*` (matmul by expert id) by weight type.
    matvec_id: HashMap<GgmlType, (&'static str, CudaFunction)>,
    device_name: String,
    compute_capability: (u32, u32),
    /// Multiprocessors, which attention sizes its context split by.
    sm_count: usize,
    /// Positions, slots and block tables, uploaded once a batch.
    indices: Arc<IndexUploads>,
    /// While a thread records a graph, the index arrays its ops read.
    region: Arc<Mutex<Option<RecordingRegion>>>,
    /// Model constants an op reads on the device (attention sinks), by
    /// their bits: uploaded once, at one address a graph can keep.
    constants: Arc<Mutex<DeviceConstants>>,
    /// Device time per kernel (`STRATA_CUDA_PROFILE=1`).
    profile: Option<Arc<KernelProfile>>,
    /// Pinned buffers weights are copied through, made at the first large
    /// weight.
    staging: Arc<Mutex<Option<StagedUpload>>>,
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles (or loads from the cache) every
    /// kernel for its compute capability.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        if !super::driver_present() {
            return Err(KernelError::Invalid(
                "no CUDA driver (libcuda.so) on this machine".into(),
            ));
        }
        let cuda = |what: &str, e: cudarc::driver::DriverError| {
            KernelError::Invalid(format!("CUDA {what}: {e}"))
        };
        let ctx =
            CudaContext::new(ordinal).map_err(|e| cuda(&format!("opening device {ordinal}"), e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda("compute capability", e))?;
        // With its ordinal: a box's GPUs often share one name.
        let device_name = format!(
            "{}, device {ordinal}",
            ctx.name().map_err(|e| cuda("device name", e))?
        );
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| cuda("multiprocessor count", e))? as usize;
        let (major, minor) = (major as u32, minor as u32);
        let emulated = super::emulator::is_emulated((major, minor));
        if !emulated {
            let mut driver = 0;
            // SAFETY: the driver is loaded (a context was just created).
            unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
                .result()
                .map_err(|e| cuda("driver version", e))?;
            // (Without NVRTC, only kernels cached earlier can load.)
            if let Some(nvrtc) = super::compile::nvrtc_version() {
                super::compile::check_toolchain(driver as u32, nvrtc)
                    .map_err(KernelError::Invalid)?;
            }
        }
        let mut functions = HashMap::new();
        for src in SOURCES {
            let module = if emulated {
                // The emulator runs the same text compiled as host C++.
                let lib = super::emulator::build_module(src)
                    .map_err(|e| KernelError::Invalid(e.to_string()))?;
                ctx.load_module(Ptx::from_file(lib))
            } else {
                let cubin = cached_cubin(src, major, minor)
                    .map_err(|e| KernelError::Invalid(e.to_string()))?;
                ctx.load_module(Ptx::from_binary(cubin))
            }
            .map_err(|e| cuda(&format!("loading {}.cu", src.name), e))?;
            for &name in src.kernels {
                let f = module
                    .load_function(name)
                    .map_err(|e| cuda(&format!("kernel {name} of {}.cu", src.name), e))?;
                functions.insert(name, f);
            }
        }
        // Per weight type, the matvec and embedding kernels, looked up once
        // here rather than by name on every op.
        let mut matvec = HashMap::new();
        let mut embed = HashMap::new();
        for dtype in GgmlType::ALL {
            let Some(suffix) = Self::kernel_suffix(dtype) else {
                continue;
            };
            let prefix = if Self::is_float(dtype) {
                "mmv_"
            } else {
                "mmvq_"
            };
            for (table, name) in [
                (&mut matvec, format!("{prefix}{suffix}")),
                (&mut embed, format!("embed_{suffix}")),
            ] {
                let (&name, f) = functions.get_key_value(name.as_str()).ok_or_else(|| {
                    KernelError::Invalid(format!("kernel {name} is in no compiled module"))
                })?;
                table.insert(dtype, (name, f.clone()));
            }
        }
        let matvec_id = moe::id_kernels(&functions);
        if ctx.has_async_alloc() {
            keep_freed_memory(&ctx).map_err(|e| cuda("memory pool", e))?;
        }
        // A stream of our own: the legacy default stream (`default_stream`)
        // cannot be captured into a graph, so on a GPU every capture failed
        // and decode ran eagerly. One stream needs no per-buffer events.
        // SAFETY: nothing is allocated on this context yet, and all its
        // work goes to this one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| cuda("creating a stream", e))?;
        Ok(CudaBackend {
            ctx,
            stream,
            functions,
            matvec,
            embed,
            matvec_id,
            device_name,
            compute_capability: (major, minor),
            sm_count,
            indices: Arc::default(),
            region: Arc::default(),
            constants: Arc::default(),
            profile: KernelProfile::from_env(),
            staging: Arc::default(),
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// (free, total) device memory in bytes.
    pub fn memory_bytes(&self) -> Option<(u64, u64)> {
        if self.ctx.has_async_alloc() {
            // What the pool keeps for reuse is free for a new load too.
            trim_freed_memory(&self.ctx).ok()?;
        }
        self.ctx
            .mem_get_info()
            .ok()
            .map(|(f, t)| (f as u64, t as u64))
    }

    /// Device-to-device copy rate (bytes read + written per second) of a
    /// 256 MiB buffer: the bandwidth decode is bound by.
    pub fn measure_bandwidth(&self) -> Option<f64> {
        let n = 64 << 20; // f32 values
        let src = self.stream.alloc_zeros::<f32>(n).ok()?;
        let mut dst = self.stream.alloc_zeros::<f32>(n).ok()?;
        self.stream.memcpy_dtod(&src, &mut dst).ok()?;
        self.stream.synchronize().ok()?;
        let runs = 10;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            self.stream.memcpy_dtod(&src, &mut dst).ok()?;
        }
        self.stream.synchronize().ok()?;
        Some((2 * 4 * n * runs) as f64 / started.elapsed().as_secs_f64())
    }

    /// A weight's bytes on the device, through the pinned staging buffers.
    fn upload_weight(&self, bytes: &[u8]) -> Result<CudaSlice<u8>, cudarc::driver::DriverError> {
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let staging = match &mut *staging {
            Some(s) => s,
            empty => empty.insert(StagedUpload::new(&self.ctx)?),
        };
        staging.upload(&self.stream, bytes)
    }

    /// A kernel by name (every one is loaded by [`CudaBackend::new`]).
    fn f(&self, name: &'static str) -> Result<&CudaFunction, KernelError> {
        self.functions
            .get(name)
            .ok_or_else(|| KernelError::Invalid(format!("kernel {name} is in no loaded module")))
    }

    fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| device_error("upload", e))
    }

    /// Runs `launch` of `kernel`, timed when profiling.
    fn launched(
        &self,
        kernel: &'static str,
        launch: impl FnOnce() -> Result<(), cudarc::driver::DriverError>,
    ) -> Result<(), KernelError> {
        let Some(profile) = &self.profile else {
            return launch().map_err(|e| device_error(kernel, e));
        };
        let start = profile
            .start(&self.stream)
            .map_err(|e| device_error("profile", e))?;
        launch().map_err(|e| device_error(kernel, e))?;
        profile
            .stop(&self.stream, kernel, start)
            .map_err(|e| device_error("profile", e))
    }

    /// A batch index array on the device (uploaded once a batch): while
    /// this thread records a graph, the graph's own buffer for `role`.
    fn index(
        &self,
        role: graphs::IndexRole,
        data: &[u32],
    ) -> Result<Arc<CudaSlice<u32>>, KernelError> {
        let region = self.region.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((thread, region)) = &*region {
            if *thread == std::thread::current().id() {
                return region.get(role, data);
            }
        }
        drop(region);
        self.indices
            .get(&self.stream, data)
            .map_err(|e| device_error("upload", e))
    }

    /// Whether this thread is recording a graph (see `graphs.rs`).
    fn recording(&self) -> bool {
        let region = self.region.lock().unwrap_or_else(|p| p.into_inner());
        region
            .as_ref()
            .is_some_and(|(thread, _)| *thread == std::thread::current().id())
    }

    /// `values` on the device, uploaded at their first use and kept (see
    /// `constants`).
    fn constant(&self, values: &[f32]) -> Result<Arc<CudaSlice<f32>>, KernelError> {
        let key: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        let mut constants = self.constants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = constants.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.upload(values)?);
        constants.insert(key, c.clone());
        Ok(c)
    }

    /// Uninitialized device memory for `n` values that a kernel writes in
    /// full: an op's output (the emulator fills new memory with NaN, so the
    /// op tests would see a value it missed).
    fn output<T: cudarc::driver::DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>, KernelError> {
        // SAFETY: read only after the kernel that writes all n values.
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| device_error("alloc", e))
    }

    fn grid_for(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((n as u32).div_ceil(ELEMENTWISE_THREADS).max(1), 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A 1-D weight's f32 values, checked to fit rows of `cols` (see
    /// [`op_checks::vector`]).
    fn vector<'a>(
        op: &str,
        w: &'a CudaWeight,
        cols: usize,
        whole_rows: bool,
    ) -> Result<&'a CudaSlice<f32>, KernelError> {
        let len = w.f32.as_ref().map(|_| w.cols);
        op_checks::vector(op, &w.name, len, cols, whole_rows)?;
        w.f32
            .as_ref()
            .ok_or_else(|| KernelError::Invalid(format!("{op}: {} is not a 1-D weight", w.name)))
    }

    fn kernel_suffix(dtype: GgmlType) -> Option<&'static str> {
        Some(match dtype {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::BF16 => "bf16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q2K => "q2_k",
            GgmlType::Q3K => "q3_k",
            GgmlType::Q4K => "q4_k",
            GgmlType::Q5K => "q5_k",
            GgmlType::Q6K => "q6_k",
            GgmlType::Q8K => "q8_k",
            GgmlType::MXFP4 => "mxfp4",
            _ => return None,
        })
    }

    fn is_float(dtype: GgmlType) -> bool {
        matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// The per-type kernel of `table` and its name (types without one are
    /// refused at load).
    fn typed<'a>(
        table: &'a HashMap<GgmlType, (&'static str, CudaFunction)>,
        dtype: GgmlType,
    ) -> Result<(&'static str, &'a CudaFunction), KernelError> {
        let (name, f) = table
            .get(&dtype)
            .ok_or_else(|| KernelError::Invalid(format!("no CUDA kernel for {dtype} weights")))?;
        Ok((*name, f))
    }
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;
    type Routing = CudaRouting;
    type LayerRuns = CudaLayerRuns;

    fn name(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("cuda ({}, sm_{major}{minor})", self.device_name)
    }

    fn device_memory_bytes(&self) -> Option<(u64, u64)> {
        self.memory_bytes().map(|(free, total)| (total, free))
    }

    fn device_bandwidth(&self) -> Option<f64> {
        self.measure_bandwidth()
    }

    fn profile_report(&self) -> Option<String> {
        let report = self.profile.as_ref()?.report();
        Some(report.unwrap_or_else(|e| format!("profile: {e:?}")))
    }

    fn load_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        bytes: &[u8],
    ) -> Result<CudaWeight, KernelError> {
        if Self::kernel_suffix(dtype).is_none() {
            return Err(KernelError::BadWeight {
                name: name.to_string(),
                what: format!("type {dtype} has no CUDA kernel"),
            });
        }
        let shape = WeightShape::of(name, dtype, dims, bytes.len())?;
        let WeightShape {
            rows,
            cols,
            row_bytes,
        } = shape;
        let oom = |e: cudarc::driver::DriverError| KernelError::OutOfMemory {
            backend: self.name(),
            bytes: bytes.len() as u64,
            what: format!("{name}: {e}"),
        };
        let f32 = match shape.vector_f32(name, dtype, bytes)? {
            Some(v) => Some(self.stream.clone_htod(&v).map_err(oom)?),
            None => None,
        };
        let data = self.upload_weight(bytes).map_err(oom)?;
        Ok(CudaWeight {
            name: name.to_string(),
            dtype,
            rows,
            cols,
            row_bytes,
            data,
            f32,
        })
    }

    fn new_kv_cache(&self, geometry: KvGeometry) -> Result<CudaKvCache, KernelError> {
        geometry.check_kv_type().map_err(KernelError::Invalid)?;
        // attention.cu's kernels size their shared memory for heads of up
        // to MAX_HEAD_DIM: a larger head would be cut short, not refused.
        if geometry.head_dim_k.max(geometry.head_dim_v) > MAX_HEAD_DIM {
            return Err(KernelError::Invalid(format!(
                "the CUDA attention kernels handle heads of up to {MAX_HEAD_DIM} values, this model's have {} (K) and {} (V)",
                geometry.head_dim_k, geometry.head_dim_v
            )));
        }
        let slots = geometry.n_blocks * KV_BLOCK_TOKENS;
        let kv = geometry.kv_type;
        let (k_row, v_row) = (
            kv.bytes_for(geometry.k_dim()),
            kv.bytes_for(geometry.v_dim()),
        );
        let oom = |e: cudarc::driver::DriverError| KernelError::OutOfMemory {
            backend: self.name(),
            bytes: geometry.pool_bytes(),
            what: format!("KV cache: {e}"),
        };
        let mut k = Vec::with_capacity(geometry.n_layers);
        let mut v = Vec::with_capacity(geometry.n_layers);
        for _ in 0..geometry.n_layers {
            k.push(self.stream.alloc_zeros::<u8>(slots * k_row).map_err(oom)?);
            v.push(self.stream.alloc_zeros::<u8>(slots * v_row).map_err(oom)?);
        }
        Ok(CudaKvCache { geometry, k, v })
    }

    fn act_zeros(&self, rows: usize, cols: usize) -> Result<CudaAct, KernelError> {
        let buf = self
            .stream
            .alloc_zeros::<f32>((rows * cols).max(1))
            .map_err(|e| device_error("alloc", e))?;
        Ok(CudaAct { buf, rows, cols })
    }

    fn act_from_host(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CudaAct, KernelError> {
        op_checks::act_data(data.len(), rows, cols)?;
        Ok(CudaAct {
            buf: self.upload(data)?,
            rows,
            cols,
        })
    }

    fn act_to_host(&self, a: &CudaAct) -> Result<Vec<f32>, KernelError> {
        let mut v = self
            .stream
            .clone_dtoh(&a.buf)
            .map_err(|e| device_error("download", e))?;
        v.truncate(a.rows * a.cols);
        Ok(v)
    }

    fn act_shape(&self, a: &CudaAct) -> (usize, usize) {
        (a.rows, a.cols)
    }

    fn select_rows(&self, a: &CudaAct, rows: &[usize]) -> Result<CudaAct, KernelError> {
        op_checks::rows_in(rows, a.rows)?;
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = self.upload(&idx)?;
        let mut out = self.output(rows.len() * a.cols)?;
        let cols = a.cols as i32;
        let cfg = LaunchConfig {
            grid_dim: (rows.len().max(1) as u32, 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(self.f("select_rows")?);
        b.arg(&a.buf).arg(&idx).arg(&mut out).arg(&cols);
        // SAFETY: the kernel reads rows.len() rows of `a` (indices < a.rows)
        // and writes rows.len() rows of `out`.
        self.launched("select_rows", || unsafe { b.launch(cfg) }.map(drop))?;
        Ok(CudaAct {
            buf: out,
            rows: rows.len(),
            cols: a.cols,
        })
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32], scale: f32) -> Result<CudaAct, KernelError> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= table.rows) {
            return Err(KernelError::Invalid(format!(
                "token id {bad} is outside the embedding table ({} rows)",
                table.rows
            )));
        }
        let ids_dev = self.upload(ids)?;
        let mut out = self.output(ids.len() * table.cols)?;
        let (row_bytes, cols) = (table.row_bytes, table.cols as i32);
        let cfg = LaunchConfig {
            grid_dim: (ids.len().max(1) as u32, 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kernel, f) = Self::typed(&self.embed, table.dtype)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&table.data)
            .arg(&row_bytes)
            .arg(&ids_dev)
            .arg(&cols)
            .arg(&scale)
            .arg(&mut out);
        // SAFETY: ids are checked against the table; out has ids.len() rows.
        self.launched(kernel, || unsafe { b.launch(cfg) }.map(drop))?;
        Ok(CudaAct {
            buf: out,
            rows: ids.len(),
            cols: table.cols,
        })
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaWeight, eps: f32) -> Result<CudaAct, KernelError> {
        self.rms_norm_weighted(x, w, eps)
    }

    fn matmul(&self, w: &CudaWeight, x: &CudaAct) -> Result<CudaAct, KernelError> {
        op_checks::matmul(&w.name, x.cols, w.cols)?;
        match self.gemm(w, x)? {
            Some(out) => Ok(out),
            None => self.matvec(w, x),
        }
    }

    fn matmul_each(&self, ws: &[&CudaWeight], x: &CudaAct) -> Result<Vec<CudaAct>, KernelError> {
        for w in ws {
            op_checks::matmul(&w.name, x.cols, w.cols)?;
        }
        self.matvec_each(ws, x)
    }

    fn add_bias(&self, x: &mut CudaAct, bias: &CudaWeight) -> Result<(), KernelError> {
        let bv = Self::vector("add_bias", bias, x.cols, true)?;
        let n = x.rows * x.cols;
        let cols = x.cols as i32;
        let mut b = self.stream.launch_builder(self.f("add_bias")?);
        b.arg(&mut x.buf).arg(bv).arg(&n).arg(&cols);
        // SAFETY: n values of x, bias of cols values.
        self.launched("add_bias", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        positions: &[u32],
        rope: &RopeConfig,
        freq_factors: Option<&CudaWeight>,
    ) -> Result<(), KernelError> {
        op_checks::rope(
            x.rows,
            x.cols,
            positions.len(),
            rope,
            freq_factors.map(|w| w.f32.as_ref().map(|_| w.cols)),
        )?;
        let ff = match freq_factors {
            Some(w) => Some(Self::vector("rope", w, w.cols, true)?),
            None => None,
        };
        let pos = self.index(graphs::IndexRole::Positions, positions)?;
        let (rows, head_dim, dims) = (x.rows as i32, rope.head_dim as i32, rope.dims as i32);
        let n_heads = (x.cols / rope.head_dim) as i32;
        let neox = i32::from(rope.style == RopeStyle::Neox);
        let pairs = x.rows * (x.cols / rope.head_dim) * (rope.dims / 2);
        let null: u64 = 0;
        // On the host, as the CPU backend (and ggml-cpu) computes it.
        let theta_scale = rope.freq_base.powf(-2.0 / rope.dims as f32);
        let mut b = self.stream.launch_builder(self.f("rope")?);
        b.arg(&mut x.buf)
            .arg(&*pos)
            .arg(&rows)
            .arg(&n_heads)
            .arg(&head_dim)
            .arg(&dims)
            .arg(&theta_scale)
            .arg(&rope.freq_scale);
        match ff {
            Some(ff) => b.arg(ff),
            None => b.arg(&null),
        };
        // YaRN's terms that do not depend on the pair, as ggml's rope_yarn
        // computes them (the host does it once).
        let yarn = i32::from(rope.yarn.is_some());
        let (ext_factor, mscale, [corr_low, corr_high]) = match rope.yarn {
            None => (0.0f32, 1.0f32, [0.0f32, 0.0]),
            Some(y) => (
                y.ext_factor,
                y.mscale(rope.freq_scale),
                y.corr_dims(rope.dims, rope.freq_base),
            ),
        };
        b.arg(&neox)
            .arg(&yarn)
            .arg(&ext_factor)
            .arg(&mscale)
            .arg(&corr_low)
            .arg(&corr_high);
        // SAFETY: one thread per rotated pair of x; positions has x.rows values.
        self.launched("rope", || {
            unsafe { b.launch(Self::grid_for(pairs)) }.map(drop)
        })
    }

    fn gated(&self, gate: &CudaAct, up: &CudaAct, act: Activation) -> Result<CudaAct, KernelError> {
        op_checks::same_shape("gated", (gate.rows, gate.cols), (up.rows, up.cols))?;
        let n = gate.rows * gate.cols;
        let mut out = self.output(n)?;
        let name = match act {
            Activation::Silu => "gated_silu",
            Activation::GeluTanh => "gated_gelu",
            Activation::SwigluOai => "gated_swiglu_oai",
        };
        let mut b = self.stream.launch_builder(self.f(name)?);
        b.arg(&gate.buf).arg(&up.buf).arg(&mut out).arg(&n);
        // SAFETY: three buffers of n values.
        self.launched(name, || unsafe { b.launch(Self::grid_for(n)) }.map(drop))?;
        Ok(CudaAct {
            buf: out,
            rows: gate.rows,
            cols: gate.cols,
        })
    }

    fn unary(&self, x: &mut CudaAct, f: Unary) -> Result<(), KernelError> {
        self.unary_in_place(x, f)
    }

    fn scale(&self, x: &mut CudaAct, c: f32) -> Result<(), KernelError> {
        self.scale_in_place(x, c)
    }

    fn mul(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), KernelError> {
        self.mul_act(x, y)
    }

    fn mul_weight(&self, x: &mut CudaAct, w: &CudaWeight) -> Result<(), KernelError> {
        self.mul_vector(x, w)
    }

    fn rms_norm_plain(&self, x: &CudaAct, group: usize, eps: f32) -> Result<CudaAct, KernelError> {
        self.rms_norm_groups(x, group, eps)
    }

    fn columns(&self, x: &CudaAct, start: usize, len: usize) -> Result<CudaAct, KernelError> {
        self.column_slice(x, start, len)
    }

    fn zero_rows(&self, x: &mut CudaAct, rows: &[u32]) -> Result<(), KernelError> {
        self.zero_state_rows(x, rows)
    }

    fn copy_rows(&self, x: &mut CudaAct, from: &[u32], to: &[u32]) -> Result<(), KernelError> {
        self.copy_state_rows(x, from, to)
    }

    fn row_to_host(&self, x: &CudaAct, row: u32) -> Result<Vec<f32>, KernelError> {
        op_checks::host_row(row, x.rows, None, x.cols)?;
        let r = row as usize * x.cols;
        self.stream
            .clone_dtoh(&x.buf.slice(r..r + x.cols))
            .map_err(|e| device_error("state row download", e))
    }

    fn row_from_host(&self, x: &mut CudaAct, row: u32, data: &[f32]) -> Result<(), KernelError> {
        op_checks::host_row(row, x.rows, Some(data.len()), x.cols)?;
        let r = row as usize * x.cols;
        self.stream
            .memcpy_htod(data, &mut x.buf.slice_mut(r..r + x.cols))
            .map_err(|e| device_error("state row upload", e))
    }

    fn ssm_conv(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        state: &mut CudaAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        self.conv_runs(x, w, state, batch)
    }

    fn delta_net(
        &self,
        shape: DeltaNetShape,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        g: &CudaAct,
        beta: &CudaAct,
        state: &mut CudaAct,
        batch: &RecurrentBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        self.delta_net_runs(shape, [q, k, v, g, beta], state, batch)
    }

    fn add_assign(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), KernelError> {
        op_checks::same_shape("add_assign", (x.rows, x.cols), (y.rows, y.cols))?;
        let n = x.rows * x.cols;
        let mut b = self.stream.launch_builder(self.f("add_assign")?);
        b.arg(&mut x.buf).arg(&y.buf).arg(&n);
        // SAFETY: two buffers of n values.
        self.launched("add_assign", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    fn attn_temperature(
        &self,
        x: &mut CudaAct,
        positions: &[u32],
        floor_scale: u32,
        temp_scale: f32,
    ) -> Result<(), KernelError> {
        op_checks::temperature(positions.len(), x.rows, floor_scale)?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let pos = self.index(graphs::IndexRole::Positions, positions)?;
        let (cols, floor_scale) = (x.cols as i32, floor_scale as f32);
        let mut b = self.stream.launch_builder(self.f("attn_temperature")?);
        b.arg(&mut x.buf)
            .arg(&*pos)
            .arg(&n)
            .arg(&cols)
            .arg(&floor_scale)
            .arg(&temp_scale);
        // SAFETY: n values of x, one position for each of its rows.
        self.launched("attn_temperature", || {
            unsafe { b.launch(Self::grid_for(n)) }.map(drop)
        })
    }

    fn attention(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        q: &CudaAct,
        new_kv: Option<(&CudaAct, &CudaAct)>,
        batch: &AttentionBatch<'_>,
    ) -> Result<CudaAct, KernelError> {
        let shape = |a: &CudaAct| (a.rows, a.cols);
        op_checks::attention(
            &cache.geometry,
            layer,
            shape(q),
            new_kv.map(|(k, v)| (shape(k), shape(v))),
            batch,
        )?;
        self.paged_attention(cache, layer, q, new_kv, batch)
    }

    fn kv_block_to_host(
        &self,
        cache: &CudaKvCache,
        layer: usize,
        block: KvBlockId,
    ) -> Result<Vec<u8>, KernelError> {
        let g = cache.geometry;
        g.check_block(layer, block, None)
            .map_err(KernelError::Invalid)?;
        let (kr, vr) = g.row_bytes();
        let b = block as usize * KV_BLOCK_TOKENS;
        let mut out = self
            .stream
            .clone_dtoh(&cache.k[layer].slice(b * kr..(b + KV_BLOCK_TOKENS) * kr))
            .map_err(|e| device_error("KV block download", e))?;
        let v = self
            .stream
            .clone_dtoh(&cache.v[layer].slice(b * vr..(b + KV_BLOCK_TOKENS) * vr))
            .map_err(|e| device_error("KV block download", e))?;
        out.extend_from_slice(&v);
        Ok(out)
    }

    fn kv_block_from_host(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        block: KvBlockId,
        bytes: &[u8],
    ) -> Result<(), KernelError> {
        let g = cache.geometry;
        g.check_block(layer, block, Some(bytes.len()))
            .map_err(KernelError::Invalid)?;
        let (kr, vr) = g.row_bytes();
        let b = block as usize * KV_BLOCK_TOKENS;
        let (kb, vb) = bytes.split_at(kr * KV_BLOCK_TOKENS);
        self.stream
            .memcpy_htod(
                kb,
                &mut cache.k[layer].slice_mut(b * kr..(b + KV_BLOCK_TOKENS) * kr),
            )
            .map_err(|e| device_error("KV block upload", e))?;
        self.stream
            .memcpy_htod(
                vb,
                &mut cache.v[layer].slice_mut(b * vr..(b + KV_BLOCK_TOKENS) * vr),
            )
            .map_err(|e| device_error("KV block upload", e))?;
        Ok(())
    }

    fn route(&self, logits: &CudaAct, router: &Router) -> Result<CudaRouting, KernelError> {
        self.route_on_device(logits, router)
    }

    fn routing(
        &self,
        ids: &[u32],
        weights: &[f32],
        n_used: usize,
        n_expert: usize,
    ) -> Result<CudaRouting, KernelError> {
        self.routing_from_host(ids, weights, n_used, n_expert)
    }

    fn routing_to_host(&self, r: &CudaRouting) -> Result<(Vec<u32>, Vec<f32>), KernelError> {
        self.routing_on_host(r)
    }

    fn matmul_id(
        &self,
        experts: &CudaWeight,
        x: &CudaAct,
        r: &CudaRouting,
    ) -> Result<CudaAct, KernelError> {
        self.moe_matmul_id(experts, x, r)
    }

    fn mul_id(
        &self,
        x: &mut CudaAct,
        scale: &CudaWeight,
        r: &CudaRouting,
    ) -> Result<(), KernelError> {
        self.moe_mul_id(x, scale, r)
    }

    fn add_bias_id(
        &self,
        x: &mut CudaAct,
        bias: &CudaWeight,
        r: &CudaRouting,
    ) -> Result<(), KernelError> {
        self.moe_add_bias_id(x, bias, r)
    }

    fn moe_combine(&self, y: &CudaAct, r: &CudaRouting) -> Result<CudaAct, KernelError> {
        self.moe_weighted_sum(y, r)
    }

    fn layer_runs(&self) -> CudaLayerRuns {
        CudaLayerRuns::new()
    }

    fn run_layers<E: From<KernelError>>(
        &self,
        runs: &mut CudaLayerRuns,
        index: &BatchIndex<'_>,
        x: CudaAct,
        run: &mut dyn FnMut(CudaAct) -> Result<CudaAct, E>,
    ) -> Result<CudaAct, E> {
        self.run_layers_graphed(runs, index, x, run)
    }
}
