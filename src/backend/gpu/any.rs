//! One device type for code that picks the real GPU or the emulation at run time: the tests
//! (`BALLAST_TEST_DEVICE=cuda` runs them on a GPU, `scripts/gpu-check`) and the kernel
//! benchmarks.

use super::cuda::{CudaBuffer, CudaDevice};
use super::device::{Device, Dims};
use super::emu::{EmuBuffer, EmuDevice};
use super::kernels::KernelParams;
use crate::backend::{BackendError, Result};

pub enum AnyDevice {
    Emulated(EmuDevice),
    Cuda(CudaDevice),
}

pub enum AnyBuffer {
    Emulated(EmuBuffer),
    Cuda(CudaBuffer),
}

impl AnyDevice {
    /// `emulated`, `cuda` or `cuda:N`.
    pub fn open(name: &str) -> Result<AnyDevice> {
        match name {
            "emulated" => Ok(AnyDevice::Emulated(EmuDevice::new())),
            "cuda" => Ok(AnyDevice::Cuda(CudaDevice::open(0)?)),
            _ => match name.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(AnyDevice::Cuda(CudaDevice::open(n)?)),
                None => Err(BackendError::Device(format!("unknown device {name:?}: emulated, cuda or cuda:N"))),
            },
        }
    }

    /// The device the GPU tests run on: `$BALLAST_TEST_DEVICE`, else the emulation.
    pub fn for_tests() -> AnyDevice {
        let name = std::env::var("BALLAST_TEST_DEVICE").unwrap_or_else(|_| "emulated".to_string());
        AnyDevice::open(&name).unwrap_or_else(|e| panic!("BALLAST_TEST_DEVICE={name}: {e}"))
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self, AnyDevice::Emulated(_))
    }

    /// Launches of kernel `name` so far, where the device counts them (the emulation).
    pub fn launches(&self, name: &str) -> Option<u64> {
        match self {
            AnyDevice::Emulated(d) => Some(d.launches(name)),
            AnyDevice::Cuda(_) => None,
        }
    }
}

fn mismatch() -> BackendError {
    BackendError::Device("a buffer of another device".to_string())
}

impl Device for AnyDevice {
    type Buffer = AnyBuffer;

    fn name(&self) -> String {
        match self {
            AnyDevice::Emulated(d) => d.name(),
            AnyDevice::Cuda(d) => d.name(),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<AnyBuffer> {
        Ok(match self {
            AnyDevice::Emulated(d) => AnyBuffer::Emulated(d.alloc(bytes)?),
            AnyDevice::Cuda(d) => AnyBuffer::Cuda(d.alloc(bytes)?),
        })
    }

    fn address(&self, buf: &AnyBuffer) -> u64 {
        match (self, buf) {
            (AnyDevice::Emulated(d), AnyBuffer::Emulated(b)) => d.address(b),
            (AnyDevice::Cuda(d), AnyBuffer::Cuda(b)) => d.address(b),
            _ => 0,
        }
    }

    fn upload(&self, buf: &AnyBuffer, offset: usize, data: &[u8]) -> Result<()> {
        match (self, buf) {
            (AnyDevice::Emulated(d), AnyBuffer::Emulated(b)) => d.upload(b, offset, data),
            (AnyDevice::Cuda(d), AnyBuffer::Cuda(b)) => d.upload(b, offset, data),
            _ => Err(mismatch()),
        }
    }

    fn download(&self, buf: &AnyBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        match (self, buf) {
            (AnyDevice::Emulated(d), AnyBuffer::Emulated(b)) => d.download(b, offset, out),
            (AnyDevice::Cuda(d), AnyBuffer::Cuda(b)) => d.download(b, offset, out),
            _ => Err(mismatch()),
        }
    }

    fn launch<P: KernelParams>(&self, name: &str, grid: Dims, block: Dims, params: &P) -> Result<()> {
        match self {
            AnyDevice::Emulated(d) => d.launch(name, grid, block, params),
            AnyDevice::Cuda(d) => d.launch(name, grid, block, params),
        }
    }

    fn copy(&self, dst: &AnyBuffer, src: &AnyBuffer, bytes: usize) -> Result<()> {
        match (self, dst, src) {
            (AnyDevice::Emulated(d), AnyBuffer::Emulated(a), AnyBuffer::Emulated(b)) => d.copy(a, b, bytes),
            (AnyDevice::Cuda(d), AnyBuffer::Cuda(a), AnyBuffer::Cuda(b)) => d.copy(a, b, bytes),
            _ => Err(mismatch()),
        }
    }

    fn synchronize(&self) -> Result<()> {
        match self {
            AnyDevice::Emulated(d) => d.synchronize(),
            AnyDevice::Cuda(d) => d.synchronize(),
        }
    }

    fn memory(&self) -> Result<(usize, usize)> {
        match self {
            AnyDevice::Emulated(d) => d.memory(),
            AnyDevice::Cuda(d) => d.memory(),
        }
    }
}
