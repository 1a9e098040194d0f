//! The emulated device: host memory, and kernels run by the host build of `kernels/*.cu`
//! (`kernels/emu/`: blocks one after another, a block's threads as fibers with real
//! barriers). Slow, but it runs the backend's every launch on any machine.

use super::device::{Device, Dims};
use super::kernels::{EmuDim, KernelParams, ballast_emu_launch};
use crate::backend::{BackendError, Result};
use std::alloc::Layout;
use std::ffi::CString;
use std::ptr::NonNull;

/// Host memory standing in for device memory (256-byte aligned, like cudaMalloc).
pub struct EmuBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory; the backend orders all access to it, as a device would.
unsafe impl Send for EmuBuffer {}
unsafe impl Sync for EmuBuffer {}

impl EmuBuffer {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), 256).expect("buffer layout")
    }
}

impl Drop for EmuBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[derive(Default)]
pub struct EmuDevice {
    launches: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

impl EmuDevice {
    pub fn new() -> EmuDevice {
        EmuDevice::default()
    }

    /// How many times kernel `name` has been launched (for tests of which path ran).
    pub fn launches(&self, name: &str) -> u64 {
        self.launches.lock().get(name).copied().unwrap_or(0)
    }
}

fn range_check(op: &'static str, buf: &EmuBuffer, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_some_and(|end| end <= buf.len) {
        Ok(())
    } else {
        Err(BackendError::Device(format!("{op}: {len} bytes at {offset} outside a buffer of {}", buf.len)))
    }
}

impl Device for EmuDevice {
    type Buffer = EmuBuffer;

    fn name(&self) -> String {
        "emulated CUDA device (host)".to_string()
    }

    fn alloc(&self, bytes: usize) -> Result<EmuBuffer> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(EmuBuffer::layout(bytes)) };
        let ptr = NonNull::new(ptr).ok_or(BackendError::OutOfMemory { what: "emulated device buffer", bytes })?;
        Ok(EmuBuffer { ptr, len: bytes })
    }

    fn address(&self, buf: &EmuBuffer) -> u64 {
        buf.ptr.as_ptr() as u64
    }

    fn upload(&self, buf: &EmuBuffer, offset: usize, data: &[u8]) -> Result<()> {
        range_check("upload", buf, offset, data.len())?;
        // SAFETY: in bounds (checked); launches run synchronously, so nothing else writes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    fn download(&self, buf: &EmuBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        range_check("download", buf, offset, out.len())?;
        // SAFETY: as in `upload`.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn launch<P: KernelParams>(&self, name: &str, grid: Dims, block: Dims, params: &P) -> Result<()> {
        let cname = CString::new(name).map_err(|_| BackendError::Device(format!("bad kernel name {name:?}")))?;
        *self.launches.lock().entry(name.to_string()).or_insert(0) += 1;
        let mut error = vec![0u8; 512];
        let dim = |d: Dims| EmuDim { x: d.x, y: d.y, z: d.z };
        // SAFETY: `params` is the kernel's params struct (KernelParams); the kernel reads only
        // memory the backend allocated for it.
        let rc = unsafe {
            ballast_emu_launch(
                cname.as_ptr(),
                dim(grid),
                dim(block),
                (params as *const P).cast(),
                error.as_mut_ptr().cast(),
                error.len() as u64,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
            Err(BackendError::Device(format!("emulated launch: {}", String::from_utf8_lossy(&error[..end]))))
        }
    }

    fn copy(&self, dst: &EmuBuffer, src: &EmuBuffer, bytes: usize) -> Result<()> {
        range_check("copy", dst, 0, bytes)?;
        range_check("copy", src, 0, bytes)?;
        // SAFETY: both in bounds (checked); distinct allocations unless the same buffer, where
        // `copy` (memmove) is still defined.
        unsafe { std::ptr::copy(src.ptr.as_ptr(), dst.ptr.as_ptr(), bytes) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(()) // launches run to completion
    }

    fn memory(&self) -> Result<(usize, usize)> {
        // A notional 512 MiB device: the engine's KV pool then takes ~200 MiB of host memory.
        Ok((512 << 20, 512 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::kernels::EmuSelfTestParams;

    fn run(mode: u32, grid: u32, block: Dims) -> (Result<()>, Vec<u32>) {
        let dev = EmuDevice::new();
        let n = (block.x * block.y) as usize;
        let words = grid as usize * n * 6 + 1;
        let buf = dev.alloc(words * 4).unwrap();
        let p = EmuSelfTestParams { out: dev.address(&buf) as *mut u32, mode };
        let r = dev.launch("emu_selftest", Dims::x(grid), block, &p);
        let mut out = vec![0u32; words];
        dev.download(&buf, 0, bytemuck::cast_slice_mut(&mut out)).unwrap();
        (r, out)
    }

    #[test]
    fn shuffles_votes_shared_memory_and_atomics_behave_as_cuda_defines() {
        let block = Dims::xy(32, 3);
        let (r, out) = run(0, 2, block);
        r.unwrap();
        let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |m, l| m | 1 << l);
        for b in 0..2u32 {
            for tid in 0..96u32 {
                let lane = tid % 32;
                let o = &out[((b * 96 + tid) * 6) as usize..][..6];
                let v = |l: u32| l * 10 + b;
                assert_eq!(o[0], v(lane ^ 5), "xor, block {b} thread {tid}");
                assert_eq!(o[1], if lane + 3 < 32 { v(lane + 3) } else { v(lane) }, "down");
                assert_eq!(o[2], v(7), "broadcast");
                assert_eq!(o[3], ballot, "ballot");
                assert_eq!(o[4], 95 - tid, "shared memory after __syncthreads");
                assert_eq!(o[5], 496, "warp_sum of 0..32");
            }
        }
        assert_eq!(out[2 * 96 * 6], 192, "every thread's atomicAdd");
    }

    #[test]
    fn a_barrier_that_cannot_complete_is_an_error_not_a_hang() {
        let (r, _) = run(1, 1, Dims::x(64));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("deadlock") && err.contains("__syncthreads"), "{err}");
        let (r, _) = run(2, 1, Dims::x(64));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("deadlock") && err.contains("32 of 64 threads have exited"), "{err}");
        // The device is still usable afterwards.
        run(0, 1, Dims::x(32)).0.unwrap();
    }

    #[test]
    fn bad_launches_are_errors() {
        let dev = EmuDevice::new();
        let p = EmuSelfTestParams { out: std::ptr::null_mut(), mode: 0 };
        let err = dev.launch("no_such_kernel", Dims::x(1), Dims::x(32), &p).unwrap_err();
        assert!(err.to_string().contains("no kernel named no_such_kernel"), "{err}");
        let err = dev.launch("emu_selftest", Dims::x(1), Dims::x(33), &p).unwrap_err();
        assert!(err.to_string().contains("whole number of warps"), "{err}");
        assert!(dev.upload(&dev.alloc(8).unwrap(), 4, &[0; 8]).is_err());
    }
}
