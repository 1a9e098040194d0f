//! The CPU backend: the reference every other backend is tested against, and the embedded
//! default.
//!
//! Ops parallelise internally on a fixed pool of `num_threads` threads (the caller and
//! persistent workers that spin briefly between ops, see `pool.rs`).
//! Every output element is computed by one thread in a fixed order that depends only on its
//! own inputs, never on the batch, so a sequence's results do not change with what else is in
//! the step.
//!
//! Three arithmetic modes for quantized weights ([`Precision`]):
//! - `Reference`: f32 activations against dequantized weights (the plain twin);
//! - `Int16` (default): activations quantized per block to 16-bit integers and multiplied
//!   with the quantized weights in integer arithmetic — as close to the reference as f32
//!   activations in the goldens, at the same weight traffic. Q4_0/Q4_1/Q8_0 matrices are
//!   repacked sixteen rows at a time when uploaded, for kernels with one lane per row
//!   (`quant::packed`);
//! - `Int8`: activations quantized per block of 32 to 8 bits (ggml's Q8_0 rounding, the
//!   precision llama.cpp's CPU kernels work at), on the same packed matrices: the AVX-512
//!   kernels then do four multiply-adds per lane and instruction (`vpdpbusd`) instead of
//!   two, which is what prompt processing, compute-bound, gains. Row-major matrices (tests,
//!   library callers) meet ggml's 8-bit blocks.
//!
//! Float weights (F32/F16/BF16) always meet f32 activations.

mod attention;
mod bandwidth;
mod matmul;
mod ops;
mod pack;
mod par;
mod pool;
mod softmax;
mod tensor;

pub use bandwidth::read_bandwidth;
pub use tensor::{CpuKvPool, CpuTensor};

use super::{AttentionShape, Backend, BackendError, Result, RopeShape};
use crate::kv::KvLayout;
use crate::model::weights::{HostMatrix, HostWeights, ModelWeights};
use crate::plan::BatchPlan;
use parking_lot::Mutex;

/// How the CPU backend multiplies activations with quantized weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations times dequantized weights.
    Reference,
    /// 16-bit quantized activations, integer dot products with quantized weights.
    #[default]
    Int16,
    /// 8-bit quantized activations, integer dot products.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Reference => "reference",
            Precision::Int16 => "int16",
            Precision::Int8 => "int8",
        }
    }
}

pub struct CpuBackend {
    pool: pool::ThreadPool,
    precision: Precision,
    /// Quantized activations of the current matmul (u32 keeps blocks with f32 fields aligned).
    act_scratch: Mutex<Vec<u32>>,
}

impl CpuBackend {
    pub fn new(num_threads: usize, precision: Precision) -> Result<CpuBackend> {
        let pool = pool::ThreadPool::new(num_threads, "ballast-cpu")
            .map_err(|e| BackendError::Device(format!("cannot start CPU threads: {e}")))?;
        Ok(CpuBackend { pool, precision, act_scratch: Mutex::new(Vec::new()) })
    }

    /// One worker per available core.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn num_threads(&self) -> usize {
        self.pool.num_threads()
    }
}

fn same_shape(op: &'static str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    if a.rows() == b.rows() && a.cols() == b.cols() {
        Ok(())
    } else {
        Err(BackendError::Shape { op, detail: format!("{}x{} vs {}x{}", a.rows(), a.cols(), b.rows(), b.cols()) })
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = HostMatrix;
    type KvPool = CpuKvPool;
    type Step<'a> = &'a BatchPlan;

    fn name(&self) -> String {
        match self.precision {
            Precision::Reference => format!("cpu ({} threads, reference)", self.num_threads()),
            p => format!("cpu ({} threads, {}, {} kernels)", self.num_threads(), p.name(), crate::quant::Isa::best().name()),
        }
    }

    fn alloc(&self, max_rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::zeros(max_rows, cols)
    }

    fn upload_vector(&self, data: &[f32]) -> Result<CpuTensor> {
        Ok(CpuTensor::from_row(data))
    }

    /// With integer activations, quantized matrices are repacked sixteen rows at a time for
    /// the packed kernels (`quant::packed`).
    fn upload_matrix(&self, m: HostMatrix) -> Result<HostMatrix> {
        Ok(if self.precision != Precision::Reference { m.packed16() } else { m })
    }

    /// As [`Backend::upload_matrix`], with the packed matrices together in huge pages
    /// (`pack.rs`).
    fn upload_weights(&self, w: HostWeights) -> Result<ModelWeights<HostMatrix, CpuTensor>> {
        let w = if self.precision != Precision::Reference { pack::pack_model(w, self.num_threads())? } else { w };
        w.try_map(Ok, |v| self.upload_vector(&v))
    }

    const KV_ORDER: crate::kv::KvOrder = crate::kv::KvOrder::KeysByLane;
    const KV_MEDIUM: &'static str = "CPU";

    fn alloc_kv(&self, layout: &KvLayout) -> Result<CpuKvPool> {
        CpuKvPool::new(*layout)
    }

    fn prepare<'a>(&'a self, plan: &'a BatchPlan) -> Result<&'a BatchPlan> {
        Ok(plan)
    }

    fn local_step<'a>(&self, step: &Self::Step<'a>, group: usize) -> Result<Self::Step<'a>> {
        let detail = || format!("local plan {group} of {}", step.local.len());
        step.local.get(group).ok_or_else(|| BackendError::Shape { op: "local_step", detail: detail() })
    }

    fn embedding(&self, plan: &&BatchPlan, table: &HostMatrix, out: &mut CpuTensor) -> Result<()> {
        ops::embedding(&self.pool, plan, table, out)
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32, out: &mut CpuTensor) -> Result<()> {
        ops::rms_norm(&self.pool, x, w, eps, out)
    }

    fn add_rms_norm(&self, residual: &mut CpuTensor, delta: &CpuTensor, w: &CpuTensor, eps: f32, out: &mut CpuTensor) -> Result<()> {
        same_shape("add_rms_norm", residual, delta)?;
        ops::add(residual, delta);
        ops::rms_norm(&self.pool, residual, w, eps, out)
    }

    fn matmul(&self, x: &CpuTensor, w: &HostMatrix, out: &mut CpuTensor) -> Result<()> {
        let mut scratch = self.act_scratch.lock();
        matmul::matmul(&self.pool, self.precision, x, w, out, &mut scratch)
    }

    fn matmul_multi(&self, x: &CpuTensor, ws: &[&HostMatrix], outs: &mut [&mut CpuTensor]) -> Result<()> {
        let mut scratch = self.act_scratch.lock();
        matmul::matmul_multi(&self.pool, self.precision, x, ws, outs, &mut scratch)
    }

    fn head_rms_norm(&self, x: &mut CpuTensor, w: &CpuTensor, eps: f32, head_dim: usize) -> Result<()> {
        ops::head_rms_norm(&self.pool, x, w, eps, head_dim)
    }

    fn scale(&self, x: &mut CpuTensor, factor: f32) -> Result<()> {
        x.as_mut_slice().iter_mut().for_each(|v| *v *= factor);
        Ok(())
    }

    fn softcap(&self, x: &mut CpuTensor, cap: f32) -> Result<()> {
        x.as_mut_slice().iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        Ok(())
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuTensor) -> Result<()> {
        ops::add_bias(x, bias)
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        same_shape("add", x, y)?;
        ops::add(x, y);
        Ok(())
    }

    fn rope(&self, plan: &&BatchPlan, x: &mut CpuTensor, inv_freq: &CpuTensor, shape: RopeShape) -> Result<()> {
        ops::rope(&self.pool, plan, x, inv_freq, shape)
    }

    fn write_kv(&self, plan: &&BatchPlan, layer: usize, k: &CpuTensor, v: &CpuTensor, pool: &mut CpuKvPool) -> Result<()> {
        pool.write(plan, layer, k, v)
    }

    fn copy_blocks(&self, pool: &mut CpuKvPool, pairs: &[(u32, u32)]) -> Result<()> {
        pool.copy_blocks(pairs)
    }

    fn attention(
        &self,
        plan: &&BatchPlan,
        layer: usize,
        q: &CpuTensor,
        pool: &CpuKvPool,
        shape: AttentionShape,
        out: &mut CpuTensor,
    ) -> Result<()> {
        attention::attention(&self.pool, plan, layer, q, pool, shape, out)
    }

    fn silu_mul(&self, gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
        same_shape("silu_mul", gate, up)?;
        ops::silu_mul(&self.pool, gate, up);
        Ok(())
    }

    fn gelu_tanh_mul(&self, gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
        same_shape("gelu_tanh_mul", gate, up)?;
        ops::gelu_tanh_mul(&self.pool, gate, up);
        Ok(())
    }

    fn gather_logits_rows(&self, plan: &&BatchPlan, x: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        ops::gather_rows(x, &plan.logits_rows, out)
    }

    fn read(&self, x: &CpuTensor, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(x.as_slice());
        Ok(())
    }
}
