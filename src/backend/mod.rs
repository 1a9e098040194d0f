//! The backend boundary: exactly the ops the forward pass needs (Llama family and Gemma 3).
//!
//! The model (`model::llama`) is written only against [`Backend`]. The CPU backend is the
//! reference implementation; every other backend is tested op by op against it.
//!
//! Conventions:
//! - A [`Backend::Tensor`] is a row-major f32 matrix with a fixed row capacity set at
//!   allocation; ops set the number of rows of their output (always ≤ capacity), so buffers
//!   are allocated once and reused every step.
//! - A [`Backend::Matrix`] is a weight `[out_features, in_features]` in any supported element
//!   type; `matmul` computes `out[t] = W · x[t]` for every row `t`.
//! - K/V live in one pool with the layout of [`crate::kv::KvLayout`]; `write_kv` and
//!   `attention` address it through the step's plan (slot mapping and block tables).
//! - A backend's per-step view of the plan ([`Backend::Step`]) is made once per step by
//!   [`Backend::prepare`] and passed to every op that needs it.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod gpu;

use crate::kv::KvLayout;
use crate::model::RopeStyle;
use crate::model::weights::{HostMatrix, HostWeights, ModelWeights};
use crate::plan::BatchPlan;

#[derive(thiserror::Error, Debug)]
pub enum BackendError {
    #[error("out of memory allocating {what} ({bytes} bytes)")]
    OutOfMemory { what: &'static str, bytes: usize },
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op} does not support {what}")]
    Unsupported { op: &'static str, what: String },
    #[error("token id {token_id} out of range (vocabulary of {vocab_size})")]
    TokenOutOfRange { token_id: u32, vocab_size: usize },
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Attention geometry of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the softmax (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding-window attention: a query at position `p` sees only the keys at positions
    /// `p - window < j <= p` (its own and the `window - 1` before it); `None`: all of `0..=p`.
    pub window: Option<usize>,
}

/// Rotary embedding parameters of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeShape {
    pub num_heads: usize,
    pub head_dim: usize,
    pub num_rotary_dims: usize,
    pub style: RopeStyle,
}

pub trait Backend: Send {
    /// f32 activations `[rows, cols]`.
    type Tensor: Send;
    /// A weight matrix in the backend's memory.
    type Matrix: Send;
    /// The paged K/V pool.
    type KvPool: Send;
    /// The backend's view of one step's plan.
    type Step<'a>
    where
        Self: 'a;

    fn name(&self) -> String;

    /// A tensor of up to `max_rows` rows of `cols` floats (initially 0 rows).
    fn alloc(&self, max_rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// A one-row tensor holding `data`.
    fn upload_vector(&self, data: &[f32]) -> Result<Self::Tensor>;
    fn upload_matrix(&self, m: HostMatrix) -> Result<Self::Matrix>;
    /// Moves a whole model's weights in (by default one matrix and vector at a time; a backend
    /// may lay them out together).
    fn upload_weights(&self, w: HostWeights) -> Result<ModelWeights<Self::Matrix, Self::Tensor>> {
        w.try_map(|m| self.upload_matrix(m), |v| self.upload_vector(&v))
    }
    /// How this backend's KV pools arrange a block ([`crate::kv::KvOrder`]; its index
    /// functions are the definition).
    const KV_ORDER: crate::kv::KvOrder;
    /// Where the KV pool lives, as KV-cache events name it: `"GPU"` or `"CPU"`.
    const KV_MEDIUM: &'static str;
    fn alloc_kv(&self, layout: &KvLayout) -> Result<Self::KvPool>;

    /// The step of `plan`, with those of its local plans (sliding-window pages,
    /// [`BatchPlan::local`]), which [`Backend::local_step`] gives out; preparing another plan
    /// may retire them all (a GPU keeps one step's plan on the device).
    fn prepare<'a>(&'a self, plan: &'a BatchPlan) -> Result<Self::Step<'a>>;
    /// The step of `plan.local[group]`, made by [`Backend::prepare`] with `step`.
    fn local_step<'a>(&self, step: &Self::Step<'a>, group: usize) -> Result<Self::Step<'a>>;

    /// `out[t] = table[token_ids[t]]` for every token of the step.
    fn embedding(&self, step: &Self::Step<'_>, table: &Self::Matrix, out: &mut Self::Tensor) -> Result<()>;
    /// `out[t] = x[t] / rms(x[t]) * weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32, out: &mut Self::Tensor) -> Result<()>;
    /// `residual += delta`, then `out = rms_norm(residual)`.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out[t] = w · x[t]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Matrix, out: &mut Self::Tensor) -> Result<()>;
    /// `outs[i][t] = ws[i] · x[t]` for weights that share their input (Q/K/V, gate/up). A
    /// backend can do them as one operation; the default runs them one by one.
    fn matmul_multi(&self, x: &Self::Tensor, ws: &[&Self::Matrix], outs: &mut [&mut Self::Tensor]) -> Result<()> {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(x, w, out)?;
        }
        Ok(())
    }
    /// Normalises each `head_dim`-wide head of every row of `x` in place:
    /// `head = head / rms(head) * weight` (`weight`: one row of `head_dim`), the per-head
    /// query/key norm of Gemma 3.
    fn head_rms_norm(&self, x: &mut Self::Tensor, weight: &Self::Tensor, eps: f32, head_dim: usize) -> Result<()>;
    /// `x *= factor`.
    fn scale(&self, x: &mut Self::Tensor, factor: f32) -> Result<()>;
    /// `x = cap * tanh(x / cap)`: Gemma's logit soft-capping.
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()>;
    /// `x[t] += bias`.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Rotates every head of `x` (`[tokens, num_heads * head_dim]`) by its token's position.
    fn rope(&self, step: &Self::Step<'_>, x: &mut Self::Tensor, inv_freq: &Self::Tensor, shape: RopeShape) -> Result<()>;
    /// Stores each token's K and V (`[tokens, kv_dim]`) in its slot of `layer`.
    fn write_kv(&self, step: &Self::Step<'_>, layer: usize, k: &Self::Tensor, v: &Self::Tensor, pool: &mut Self::KvPool) -> Result<()>;
    /// Rotates `q` (`rope.num_heads` heads) and `k` (`num_kv_heads` heads) by each token's
    /// position, then stores k and v in their slots of `layer`: [`Backend::rope`] twice and
    /// [`Backend::write_kv`], which a backend may do in one pass.
    #[allow(clippy::too_many_arguments)]
    fn rope_write_kv(
        &self,
        step: &Self::Step<'_>,
        layer: usize,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        inv_freq: &Self::Tensor,
        rope: RopeShape,
        num_kv_heads: usize,
        pool: &mut Self::KvPool,
    ) -> Result<()> {
        self.rope(step, q, inv_freq, rope)?;
        self.rope(step, k, inv_freq, RopeShape { num_heads: num_kv_heads, ..rope })?;
        self.write_kv(step, layer, k, v, pool)
    }
    /// Causal attention of each token's queries over its sequence's cached K/V up to and
    /// including its own position (the last `shape.window` of them when set). `q`, `out`: `[tokens, num_heads * head_dim]`.
    fn attention(
        &self,
        step: &Self::Step<'_>,
        layer: usize,
        q: &Self::Tensor,
        pool: &Self::KvPool,
        shape: AttentionShape,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Copies whole blocks `src → dst` (every layer, K and V) in order: the copy-on-write of a
    /// shared partial block.
    fn copy_blocks(&self, pool: &mut Self::KvPool, pairs: &[(u32, u32)]) -> Result<()>;
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()>;
    /// `gate = gelu_tanh(gate) * up`, with `gelu_tanh(x) = x/2 · (1 + tanh(√(2/π)(x + 0.044715x³)))`
    /// (PyTorch's `gelu(approximate="tanh")`).
    fn gelu_tanh_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()>;
    /// `out` = the rows of `x` named by the plan's `logits_rows`.
    fn gather_logits_rows(&self, step: &Self::Step<'_>, x: &Self::Tensor, out: &mut Self::Tensor) -> Result<()>;
    /// Copies `x` to host memory (`rows * cols` floats, row-major) into `out`.
    fn read(&self, x: &Self::Tensor, out: &mut Vec<f32>) -> Result<()>;
    /// Each row's greedy token into `out`: the index of its largest value, the first on ties,
    /// NaN never chosen over a number ([`crate::sampler::argmax`]), computed where `x` lives
    /// so only the ids are copied. `Ok(false)`: not supported here (the caller reads `x`).
    fn argmax(&self, x: &Self::Tensor, out: &mut Vec<u32>) -> Result<bool> {
        let _ = (x, out);
        Ok(false)
    }
    /// Bytes the KV pool should take, for a backend that sizes it from its own memory (a GPU,
    /// after the weights are in); `None`: the engine's configured budget.
    fn kv_memory_budget(&self) -> Result<Option<usize>> {
        Ok(None)
    }
}

/// Where the model runs (`--device`): `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first GPU when this build has CUDA and the machine a driver and a device; else the
    /// CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

/// What a GPU backend needs besides the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuOptions {
    /// Share of the GPU's memory this process may fill (weights, activations, KV pool).
    pub memory_fraction: f64,
    /// Batch invariance: one kernel per op whatever the batch size, so a request's output
    /// never depends on what else runs with it (off: the tensor-core GEMM takes matmuls of
    /// 16 tokens or more, with f16 activations).
    pub deterministic: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { memory_fraction: 0.9, deterministic: false }
    }
}

/// Code to run on whichever backend [`open`] chose (the backends are different types).
pub trait WithBackend {
    type Output;
    fn run<B: Backend + 'static>(self, backend: B) -> Self::Output;
}

/// Opens the backend `request` names and runs `work` on it. `cpu` builds the CPU backend
/// when that is the choice. `auto` falls back to the CPU with one log line saying why; an
/// explicit `cuda` request that cannot be met is an error.
pub fn open<W: WithBackend>(
    request: DeviceRequest,
    gpu: GpuOptions,
    cpu: impl FnOnce() -> Result<cpu::CpuBackend>,
    work: W,
) -> Result<W::Output> {
    if !(gpu.memory_fraction > 0.0 && gpu.memory_fraction <= 1.0) {
        return Err(BackendError::Device(format!("the GPU memory fraction must be in (0, 1], got {}", gpu.memory_fraction)));
    }
    match request {
        DeviceRequest::Cpu => Ok(work.run(cpu()?)),
        #[cfg(feature = "cuda")]
        DeviceRequest::Cuda(n) => Ok(work.run(gpu::GpuBackend::open_cuda(n, gpu)?)),
        #[cfg(not(feature = "cuda"))]
        DeviceRequest::Cuda(_) => Err(BackendError::Device("this binary was built without CUDA (cargo build --features cuda)".to_string())),
        #[cfg(feature = "cuda")]
        DeviceRequest::Auto => match gpu::cuda::device_count() {
            Ok(n) if n > 0 => Ok(work.run(gpu::GpuBackend::open_cuda(0, gpu)?)),
            Ok(_) => {
                tracing::info!("no CUDA device found: running on the CPU");
                Ok(work.run(cpu()?))
            }
            Err(why) => {
                tracing::info!("{why}: running on the CPU");
                Ok(work.run(cpu()?))
            }
        },
        #[cfg(not(feature = "cuda"))]
        DeviceRequest::Auto => Ok(work.run(cpu()?)),
    }
}

/// `ballast bench-gpu`: each GPU kernel's achieved bandwidth against a device-to-device copy on
/// `device` (`emulated`, `cuda`, `cuda:N`), as a table and a JSON value.
pub fn gpu_kernel_bench(device: &str) -> Result<(String, serde_json::Value)> {
    #[cfg(feature = "cuda")]
    {
        let (name, results) = gpu::bench::run(device)?;
        let mut table = format!("{name}\n| kernel | time | GB/s | of copy | GFLOP/s |\n|---|---|---|---|---|\n");
        for r in &results {
            table += &format!(
                "| {} | {:.1} us | {:.1} | {:.0}% | {:.1} |\n",
                r.name,
                r.seconds_per_call * 1e6,
                r.gb_per_s,
                r.of_copy * 100.0,
                r.gflop_per_s
            );
        }
        Ok((table, serde_json::json!({ "device": name, "kernels": results })))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Err(BackendError::Device("this binary was built without CUDA (cargo build --features cuda)".to_string()))
    }
}
