//! A real GPU through cudarc, with the driver library loaded at run time: the same binary
//! starts on machines without one. [`driver_present`] must be asked first, because cudarc's
//! loader panics when the library is missing.
//!
//! All work goes to the legacy default stream, so launches and the synchronous copies are
//! ordered without events. Device errors come back as [`BackendError::Device`].

use super::device::{Device, Dims};
use super::kernels::{FATBINS, KernelParams};
use crate::backend::{BackendError, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg, result};
use std::collections::HashMap;
use std::sync::Arc;

/// Whether the CUDA driver library can be loaded (false on machines without NVIDIA's driver).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> std::result::Result<usize, String> {
    if !driver_present() {
        return Err("no CUDA driver library (libcuda.so) on this machine".to_string());
    }
    result::init().map_err(|e| format!("the CUDA driver did not initialise: {e}"))?;
    let n = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    Ok(n.max(0) as usize)
}

fn device_err(what: &str) -> impl Fn(result::DriverError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("{what}: {e}"))
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    name: String,
    /// `BALLAST_CUDA_SYNC=1`: wait after every launch, so a kernel fault is reported against
    /// the kernel that caused it (debugging, `scripts/gpu-check`), not at the next copy.
    sync_launches: bool,
}

/// Device memory from `cuMemAlloc`, freed on drop.
pub struct CudaBuffer {
    ptr: CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        // Bind without cudarc's error bookkeeping (which would clear an error recorded for
        // someone else); a failure here can only leak the allocation.
        // SAFETY: the context outlives the buffer (`ctx`); the pointer came from `malloc_sync`,
        // and freeing waits for the work that may still use it.
        unsafe {
            if result::ctx::set_current(self.ctx.cu_ctx()).is_ok() {
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

/// A params struct as cudarc's kernel argument (the same bytes).
#[repr(transparent)]
struct Arg<P>(P);
// SAFETY: KernelParams are repr(C) plain data of params.h.
unsafe impl<P: KernelParams> DeviceRepr for Arg<P> {}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel. Errors (not panics) when there is no
    /// driver, no such device, or the kernels do not load on it.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count().map_err(BackendError::Device)?;
        if ordinal >= count {
            return Err(BackendError::Device(format!("no CUDA device {ordinal}: this machine has {count}")));
        }
        let ctx = CudaContext::new(ordinal).map_err(device_err("cannot open the CUDA device"))?;
        let stream = ctx.default_stream();
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
        let (major, minor) = ctx.compute_capability().map_err(device_err("compute capability"))?;
        let mut functions = HashMap::new();
        for (file, image) in FATBINS {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                .map_err(|e| BackendError::Device(format!("kernels/{file}.cu does not load on {gpu} (sm_{major}{minor}): {e}")))?;
            for name in kernel_names(file) {
                let f = module.load_function(&name).map_err(device_err("missing kernel"))?;
                functions.insert(name, f);
            }
        }
        let name = format!("cuda:{ordinal} ({gpu}, sm_{major}{minor})");
        let sync_launches = std::env::var("BALLAST_CUDA_SYNC").is_ok_and(|v| v == "1");
        Ok(CudaDevice { ctx, stream, functions, name, sync_launches })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(device_err("cannot bind the CUDA context"))
    }
}

/// The kernels each source defines (the emulation registers the same names).
pub(super) fn kernel_names(file: &str) -> Vec<String> {
    match file {
        "attention" => {
            let mut v: Vec<String> = (1..=8).flat_map(|g| [1, 2, 4, 8].map(|d| format!("attention_g{g}_d{d}"))).collect();
            v.push("attention_combine".to_string());
            v
        }
        "eltwise" => vec!["eltwise".into(), "gather_rows".into(), "copy_blocks".into()],
        "gemm" => vec!["matmul_mma".into(), "row_scales".into()],
        other => vec![other.to_string()],
    }
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuffer> {
        self.bind()?;
        let len = bytes.max(1);
        // SAFETY: plain allocation; zeroed before use.
        let ptr = unsafe { result::malloc_sync(len) }.map_err(|e| match e.0 {
            cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory { what: "GPU memory", bytes },
            _ => BackendError::Device(format!("allocating {bytes} bytes: {e}")),
        })?;
        let buf = CudaBuffer { ptr, len, ctx: self.ctx.clone() };
        // SAFETY: `ptr` has `len` bytes.
        unsafe { result::memset_d8_sync(ptr, 0, len) }.map_err(device_err("memset"))?;
        Ok(buf)
    }

    fn address(&self, buf: &CudaBuffer) -> u64 {
        buf.ptr
    }

    fn upload(&self, buf: &CudaBuffer, offset: usize, data: &[u8]) -> Result<()> {
        if offset.checked_add(data.len()).is_none_or(|end| end > buf.len) {
            return Err(BackendError::Device(format!("upload of {} bytes at {offset} into {}", data.len(), buf.len)));
        }
        self.bind()?;
        // SAFETY: in bounds (checked); the copy is synchronous.
        unsafe { result::memcpy_htod_sync(buf.ptr + offset as u64, data) }.map_err(device_err("copy to the GPU"))
    }

    fn download(&self, buf: &CudaBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        if offset.checked_add(out.len()).is_none_or(|end| end > buf.len) {
            return Err(BackendError::Device(format!("download of {} bytes at {offset} from {}", out.len(), buf.len)));
        }
        self.bind()?;
        // SAFETY: in bounds (checked); the copy waits for the work before it.
        unsafe { result::memcpy_dtoh_sync(out, buf.ptr + offset as u64) }.map_err(device_err("copy from the GPU"))
    }

    fn launch<P: KernelParams>(&self, name: &str, grid: Dims, block: Dims, params: &P) -> Result<()> {
        let f = self.functions.get(name).ok_or_else(|| BackendError::Device(format!("no kernel named {name}")))?;
        self.bind()?;
        let cfg = LaunchConfig { grid_dim: (grid.x, grid.y, grid.z), block_dim: (block.x, block.y, block.z), shared_mem_bytes: 0 };
        let arg = Arg(*params);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(&arg);
        // SAFETY: the params match the kernel's signature (one struct of params.h, by value)
        // and point at buffers the backend keeps alive until the work is done.
        unsafe { launch.launch(cfg) }.map_err(|e| BackendError::Device(format!("launch of {name}: {e}")))?;
        if self.sync_launches {
            result::ctx::synchronize().map_err(|e| BackendError::Device(format!("{name} failed on the GPU: {e}")))?;
        }
        Ok(())
    }

    fn copy(&self, dst: &CudaBuffer, src: &CudaBuffer, bytes: usize) -> Result<()> {
        if bytes > dst.len || bytes > src.len {
            return Err(BackendError::Device(format!("copy of {bytes} bytes between buffers of {} and {}", src.len, dst.len)));
        }
        self.bind()?;
        // SAFETY: both ranges in bounds (checked); on the default stream, after earlier work.
        unsafe { cudarc::driver::sys::cuMemcpyDtoDAsync_v2(dst.ptr, src.ptr, bytes, std::ptr::null_mut()) }
            .result()
            .map_err(device_err("device copy"))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        result::ctx::synchronize().map_err(device_err("synchronize"))
    }

    fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(device_err("memory info"))
    }
}
