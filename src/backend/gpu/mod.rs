//! The GPU backend: the model's ops as launches of our kernels (`kernels/*.cu`).
//!
//! [`GpuBackend`] is written against [`Device`], which a real GPU ([`cuda::CudaDevice`],
//! cudarc) and the host emulation ([`emu::EmuDevice`]) both implement: the tests run this
//! whole file, launch geometry included, on machines without a GPU, and compare every op with
//! the CPU backend.
//!
//! Memory: activations are f32 row-major; weights stay quantized in device memory
//! (`upload.rs`); the KV pool is f16, laid out per layer as
//! `[block][kv head][slot in block][head dim]` for K and for V, so a KV head's block is one
//! contiguous run. Each step's plan (token ids, positions, slots, per-token attention spans,
//! block tables) is copied to the device once, in [`Backend::prepare`](crate::backend::Backend::prepare).
//!
//! Every kernel computes a token's outputs from that token's inputs alone, in an order fixed
//! by the shapes: a request's results never depend on what else is in the batch.

pub mod any;
pub mod bench;
pub mod cuda;
pub mod device;
pub mod emu;
pub mod kernels;
mod ops;
mod paged;
mod upload;

pub use device::{Device, Dims};

use crate::backend::{BackendError, GpuOptions, Result};
use crate::kv::{KvDtype, KvLayout, KvOrder};
use crate::plan::BatchPlan;
use kernels::{BallastMatrix, TokenAttn};
use parking_lot::Mutex;

/// Keys per split of a long context (flash-decoding). Fixed, so a token's splits depend only
/// on its own context length.
pub const SPLIT_LEN: usize = 512;

pub struct GpuBackend<D: Device> {
    device: D,
    options: GpuOptions,
    staging: Mutex<Staging<D::Buffer>>,
    /// Bytes of split-attention partials per launch group ([`PARTIALS_BYTES`]).
    partials_cap: usize,
}

/// Device memory kept free of the KV pool for each step's scratch buffers (the attention
/// partials take at most [`PARTIALS_BYTES`]).
const STEP_HEADROOM: usize = 256 << 20;

/// Per-step device memory, grown as needed and reused (allocating per step would cost a
/// device-wide synchronisation at every free).
struct Staging<B> {
    /// Counts prepared steps: an op given an older step's plan refuses it.
    generation: u64,
    buffers: [Option<(B, usize)>; 5],
    bytes: Vec<u8>,
}

/// Appends `plan`'s arrays to `bytes` (each 256-byte aligned): their offsets (token ids,
/// positions, slots, per-token attention info, block tables, logits rows) and the splits of
/// its longest context.
fn put_plan(plan: &BatchPlan, bytes: &mut Vec<u8>) -> ([u64; 6], usize) {
    let mut tokens = Vec::with_capacity(plan.num_tokens());
    let mut splits = 1;
    for seq in &plan.seqs {
        let first = seq.num_context_tokens - seq.num_query_tokens;
        for i in 0..seq.num_query_tokens {
            let context_len = first + i + 1;
            splits = splits.max(context_len.div_ceil(SPLIT_LEN));
            tokens.push([seq.query_start as u32, context_len as u32, seq.block_table_start as u32, 0]);
        }
    }
    const _: () = assert!(std::mem::size_of::<TokenAttn>() == 16);
    let mut offsets = [0u64; 6];
    let mut put = |i: usize, data: &[u8]| {
        offsets[i] = bytes.len() as u64;
        bytes.extend_from_slice(data);
        bytes.resize(bytes.len().next_multiple_of(256), 0);
    };
    put(0, bytemuck::cast_slice(&plan.token_ids));
    put(1, bytemuck::cast_slice(&plan.positions));
    put(2, bytemuck::cast_slice(&plan.slot_mapping));
    put(3, bytemuck::cast_slice(&tokens));
    put(4, bytemuck::cast_slice(&plan.block_tables));
    put(5, bytemuck::cast_slice(&plan.logits_rows));
    (offsets, splits)
}

/// The scratch buffers of [`Staging`].
#[derive(Clone, Copy)]
enum Scratch {
    /// The step's plan.
    Plan = 0,
    /// Split attention's partial results (at most [`PARTIALS_BYTES`]).
    Partials = 1,
    /// The tensor-core matmul's per-token activation scales.
    Scales = 2,
    /// Greedy ids.
    Ids = 3,
    /// Block pairs to copy.
    Pairs = 4,
}

/// Split attention runs in groups of tokens whose partials fit this.
pub const PARTIALS_BYTES: usize = 64 << 20;

pub struct GpuTensor<B> {
    buf: B,
    addr: u64,
    rows: usize,
    cols: usize,
    max_rows: usize,
}

impl<B> GpuTensor<B> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn ptr(&self) -> *mut f32 {
        self.addr as *mut f32
    }

    fn set_rows(&mut self, op: &'static str, rows: usize) -> Result<()> {
        if rows > self.max_rows {
            return Err(BackendError::Shape { op, detail: format!("{rows} rows into a tensor of {}", self.max_rows) });
        }
        self.rows = rows;
        Ok(())
    }
}

pub struct GpuMatrix<B> {
    /// The buffers the addresses point into (quants; scales, high bits and sub-block scales
    /// where the format has them), kept alive with the matrix.
    _buffers: Vec<B>,
    qs_addr: u64,
    scales_addr: u64,
    qh_addr: u64,
    sub_addr: u64,
    rows: usize,
    cols: usize,
    format: u32,
}

impl<B> GpuMatrix<B> {
    fn desc(&self) -> BallastMatrix {
        BallastMatrix {
            qs: self.qs_addr as *const _,
            scales: self.scales_addr as *const u32,
            qh: self.qh_addr as *const u32,
            sub: self.sub_addr as *const u16,
            rows: self.rows as u32,
            cols: self.cols as u32,
            format: self.format,
        }
    }
}

pub struct GpuKvPool<B> {
    _k: B,
    _v: B,
    k_addr: u64,
    v_addr: u64,
    layout: KvLayout,
}

/// K and V in f16, each arranged as [`crate::kv::KvOrder::HeadMajor`] (the kernels index a
/// layer's pointer as `[block][kv head][slot in block][head dim]`, `KvLayout::k_at`).
impl<B> GpuKvPool<B> {
    fn k_layer(&self, layer: usize) -> *mut u16 {
        (self.k_addr + (self.layout.k_at(KvOrder::HeadMajor, layer, 0, 0, 0) * 2) as u64) as *mut u16
    }

    fn v_layer(&self, layer: usize) -> *mut u16 {
        (self.v_addr + (self.layout.v_at(KvOrder::HeadMajor, layer, 0, 0, 0) * 2) as u64) as *mut u16
    }
}

/// The step's plan on the device. The backend keeps one: [`Backend::prepare`] replaces the
/// previous step's (the model runs one step at a time). The plan's local plans (sliding-window
/// pages) go up with it, each a step of its own ([`Backend::local_step`]).
///
/// [`Backend::prepare`]: crate::backend::Backend::prepare
/// [`Backend::local_step`]: crate::backend::Backend::local_step
#[derive(Clone)]
pub struct GpuStep<'a> {
    plan: &'a BatchPlan,
    token_ids: u64,
    positions: u64,
    slots: u64,
    tokens: u64,
    tables: u64,
    logits_rows: u64,
    /// Splits of the longest context.
    splits: usize,
    generation: u64,
    /// The steps of `plan.local`, staged in the same upload.
    local: Vec<GpuStep<'a>>,
}

impl<D: Device> GpuBackend<D> {
    /// Launches `kernel` with its declared block size.
    fn launch<P: kernels::KernelParams>(&self, kernel: &kernels::Kernel<P>, grid: Dims, params: &P) -> Result<()> {
        self.device.launch(kernel.name, grid, Dims::x(kernel.block), params)
    }
}

impl<D: Device> GpuBackend<D> {
    pub fn new(device: D) -> GpuBackend<D> {
        GpuBackend::with_options(device, GpuOptions::default())
    }

    pub fn with_options(device: D, options: GpuOptions) -> GpuBackend<D> {
        let staging = Mutex::new(Staging { generation: 0, buffers: Default::default(), bytes: Vec::new() });
        GpuBackend { device, options, staging, partials_cap: PARTIALS_BYTES }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Caps split attention's partials at `bytes` per launch group (default
    /// [`PARTIALS_BYTES`]): tests make groups of one or two tokens with it.
    pub fn set_partials_cap(&mut self, bytes: usize) {
        self.partials_cap = bytes.max(1);
    }

    fn tensor(&self, max_rows: usize, cols: usize) -> Result<GpuTensor<D::Buffer>> {
        let bytes = max_rows.checked_mul(cols).and_then(|n| n.checked_mul(4));
        let bytes = bytes.ok_or(BackendError::OutOfMemory { what: "tensor", bytes: usize::MAX })?;
        let buf = self.device.alloc(bytes)?;
        let addr = self.device.address(&buf);
        Ok(GpuTensor { buf, addr, rows: 0, cols, max_rows })
    }

    /// Uploads `plan` (and its local plans) for one step.
    fn stage<'a>(&self, plan: &'a BatchPlan) -> Result<GpuStep<'a>> {
        let mut st = self.staging.lock();
        let st = &mut *st;
        let bytes = &mut st.bytes;
        bytes.clear();
        let placed: Vec<([u64; 6], usize)> = std::iter::once(plan).chain(&plan.local).map(|p| put_plan(p, bytes)).collect();
        let buf = grow(&self.device, &mut st.buffers[Scratch::Plan as usize], bytes.len())?;
        self.device.upload(buf, 0, bytes)?;
        let base = self.device.address(buf);
        st.generation += 1;
        let generation = st.generation;
        let step = |plan: &'a BatchPlan, (offsets, splits): ([u64; 6], usize)| GpuStep {
            plan,
            token_ids: base + offsets[0],
            positions: base + offsets[1],
            slots: base + offsets[2],
            tokens: base + offsets[3],
            tables: base + offsets[4],
            logits_rows: base + offsets[5],
            splits,
            generation,
            local: Vec::new(),
        };
        let mut placed = placed.into_iter();
        let mut main = step(plan, placed.next().expect("the plan itself"));
        main.local = plan.local.iter().zip(placed).map(|(p, at)| step(p, at)).collect();
        Ok(main)
    }

    /// Errors if `step` is not the latest prepared one (its plan on the device was replaced).
    fn current(&self, step: &GpuStep<'_>) -> Result<()> {
        let latest = self.staging.lock().generation;
        if step.generation == latest {
            Ok(())
        } else {
            Err(BackendError::Device(format!("step {} used after step {latest} was prepared", step.generation)))
        }
    }

    /// A tensor of `rows` rows holding `data` (row-major).
    pub fn upload_tensor(&self, rows: usize, data: &[f32]) -> Result<GpuTensor<D::Buffer>> {
        let cols = data.len().checked_div(rows).unwrap_or(0);
        if rows * cols != data.len() {
            return Err(BackendError::Shape { op: "upload_tensor", detail: format!("{} floats in {rows} rows", data.len()) });
        }
        let mut t = self.tensor(rows, cols)?;
        self.device.upload(&t.buf, 0, bytemuck::cast_slice(data))?;
        t.rows = rows;
        Ok(t)
    }

    /// Runs `f` with scratch buffer `which`, at least `bytes` long. `f` must not prepare a
    /// step or take another scratch buffer (the staging lock is held).
    fn with_scratch<R>(&self, which: Scratch, bytes: usize, f: impl FnOnce(&D::Buffer) -> Result<R>) -> Result<R> {
        let mut st = self.staging.lock();
        f(grow(&self.device, &mut st.buffers[which as usize], bytes)?)
    }
}

impl GpuBackend<cuda::CudaDevice> {
    /// GPU `ordinal` with every kernel loaded.
    pub fn open_cuda(ordinal: usize, options: GpuOptions) -> Result<Self> {
        let device = cuda::CudaDevice::open(ordinal)?;
        tracing::info!("running on {}", device.name());
        Ok(GpuBackend::with_options(device, options))
    }
}

/// The KV pool's share of a device with `free` of `total` bytes free once the weights are in:
/// what `fraction` of the device leaves, less headroom for per-step buffers.
fn kv_budget(free: usize, total: usize, fraction: f64) -> usize {
    let reserved = ((1.0 - fraction) * total as f64).ceil() as usize;
    free.saturating_sub(reserved).saturating_sub(STEP_HEADROOM)
}

/// `slot`'s buffer, reallocated when smaller than `bytes`.
fn grow<'s, D: Device>(device: &D, slot: &'s mut Option<(D::Buffer, usize)>, bytes: usize) -> Result<&'s D::Buffer> {
    let bytes = bytes.max(256);
    if slot.as_ref().is_none_or(|(_, len)| *len < bytes) {
        *slot = None; // free first: the device may not hold both
        *slot = Some((device.alloc(bytes.next_power_of_two())?, bytes.next_power_of_two()));
    }
    Ok(&slot.as_ref().expect("just set").0)
}

fn check_kv(layout: &KvLayout) -> Result<()> {
    if layout.dtype != KvDtype::F16 {
        return Err(BackendError::Unsupported { op: "alloc_kv", what: format!("a {} KV cache (the GPU keeps f16)", layout.dtype.name()) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_pool_gets_what_the_memory_fraction_leaves() {
        const GB: usize = 1 << 30;
        // 80 GB device, weights and buffers took 10: 0.9 leaves 62 GB less the step headroom.
        assert_eq!(kv_budget(70 * GB, 80 * GB, 0.9), 62 * GB - STEP_HEADROOM);
        assert_eq!(kv_budget(70 * GB, 80 * GB, 1.0), 70 * GB - STEP_HEADROOM);
        // The weights already fill the share: nothing, never an underflow.
        assert_eq!(kv_budget(5 * GB, 80 * GB, 0.9), 0);
    }

    /// The kernels write K and V where `KvOrder::HeadMajor` (`KvLayout::k_at` / `v_at`) says:
    /// the Rust definition and the CUDA indexing are the same layout.
    #[test]
    fn the_kernels_write_the_kv_pool_in_head_major_order() {
        use crate::backend::Backend;
        use crate::plan::{BatchPlan, LogitsFor};
        let gpu = GpuBackend::new(emu::EmuDevice::new());
        let layout = KvLayout { num_layers: 2, num_blocks: 4, block_size: 16, num_kv_heads: 3, head_dim: 8, dtype: KvDtype::F16 };
        let mut pool = gpu.alloc_kv(&layout).unwrap();
        let mut plan = BatchPlan::new(16, 4);
        // 21 tokens over blocks 2 and 0 (slots 32..48, then 0..5).
        plan.push_seq(&[1; 21], 0, &[2, 0], LogitsFor::Last).unwrap();
        let step = gpu.prepare(&plan).unwrap();
        let width = layout.token_stride();
        let value = |kind: usize, t: usize, j: usize| (kind * 1000 + t * 24 + j) as f32 / 64.0;
        let k: Vec<f32> = (0..21 * width).map(|i| value(0, i / width, i % width)).collect();
        let v: Vec<f32> = (0..21 * width).map(|i| value(1, i / width, i % width)).collect();
        let (kt, vt) = (gpu.upload_tensor(21, &k).unwrap(), gpu.upload_tensor(21, &v).unwrap());
        gpu.write_kv(&step, 1, &kt, &vt, &mut pool).unwrap();
        let read = |buf| {
            let mut bytes = vec![0u8; layout.num_elements() * 2];
            gpu.device.download(buf, 0, &mut bytes).unwrap();
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect::<Vec<f32>>()
        };
        let (kp, vp) = (read(&pool._k), read(&pool._v));
        for t in 0..21 {
            let slot = if t < 16 { 32 + t } else { t - 16 };
            for head in 0..3 {
                for dim in 0..8 {
                    let j = head * 8 + dim;
                    assert_eq!(
                        kp[layout.k_at(KvOrder::HeadMajor, 1, slot, head, dim)],
                        value(0, t, j),
                        "K token {t} head {head} dim {dim}"
                    );
                    assert_eq!(
                        vp[layout.v_at(KvOrder::HeadMajor, 1, slot, head, dim)],
                        value(1, t, j),
                        "V token {t} head {head} dim {dim}"
                    );
                }
            }
        }
        assert_eq!(kp.iter().filter(|&&x| x != 0.0).count(), 21 * width - 1, "nothing else written (one value is 0)");
    }
}
