//! What the GPU backend needs from a device: memory, copies and kernel launches. Two
//! implementations: [`super::cuda::CudaDevice`] (a real GPU through cudarc) and
//! [`super::emu::EmuDevice`] (host memory, kernels run by the CUDA emulation), so every line
//! of the backend above this trait runs in CI.

use super::kernels::KernelParams;
use crate::backend::Result;

/// Launch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dims {
    pub fn x(x: u32) -> Dims {
        Dims { x, y: 1, z: 1 }
    }

    pub fn xy(x: u32, y: u32) -> Dims {
        Dims { x, y, z: 1 }
    }

    pub fn xyz(x: u32, y: u32, z: u32) -> Dims {
        Dims { x, y, z }
    }
}

pub trait Device: Send + Sync + 'static {
    /// Device memory; freed on drop.
    type Buffer: Send + Sync;

    fn name(&self) -> String;
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;
    /// The buffer's device address (what kernels receive).
    fn address(&self, buf: &Self::Buffer) -> u64;
    /// Copies `data` to `buf` at byte `offset`, after all work launched before.
    fn upload(&self, buf: &Self::Buffer, offset: usize, data: &[u8]) -> Result<()>;
    /// Copies bytes at `offset` of `buf` into `out`, after all work launched before.
    fn download(&self, buf: &Self::Buffer, offset: usize, out: &mut [u8]) -> Result<()>;
    /// Launches kernel `name` with `params` as its only argument.
    fn launch<P: KernelParams>(&self, name: &str, grid: Dims, block: Dims, params: &P) -> Result<()>;
    /// Copies `bytes` from the start of `src` to the start of `dst` on the device, ordered
    /// with the launches.
    fn copy(&self, dst: &Self::Buffer, src: &Self::Buffer, bytes: usize) -> Result<()>;
    /// Waits until all work launched so far has finished (for timing).
    fn synchronize(&self) -> Result<()>;
    /// Free and total device memory in bytes.
    fn memory(&self) -> Result<(usize, usize)>;
}

/// A shared device: the backend and its owner (a test counting launches, say) both hold it.
impl<D: Device> Device for std::sync::Arc<D> {
    type Buffer = D::Buffer;

    fn name(&self) -> String {
        (**self).name()
    }

    fn alloc(&self, bytes: usize) -> Result<Self::Buffer> {
        (**self).alloc(bytes)
    }

    fn address(&self, buf: &Self::Buffer) -> u64 {
        (**self).address(buf)
    }

    fn upload(&self, buf: &Self::Buffer, offset: usize, data: &[u8]) -> Result<()> {
        (**self).upload(buf, offset, data)
    }

    fn download(&self, buf: &Self::Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        (**self).download(buf, offset, out)
    }

    fn launch<P: KernelParams>(&self, name: &str, grid: Dims, block: Dims, params: &P) -> Result<()> {
        (**self).launch(name, grid, block, params)
    }

    fn copy(&self, dst: &Self::Buffer, src: &Self::Buffer, bytes: usize) -> Result<()> {
        (**self).copy(dst, src, bytes)
    }

    fn synchronize(&self) -> Result<()> {
        (**self).synchronize()
    }

    fn memory(&self) -> Result<(usize, usize)> {
        (**self).memory()
    }
}
