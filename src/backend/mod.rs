//! The backend boundary: exactly the ops a Llama-family forward pass needs.
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
    fn alloc_kv(&self, layout: &KvLayout) -> Result<Self::KvPool>;

    fn prepare<'a>(&'a self, plan: &'a BatchPlan) -> Result<Self::Step<'a>>;

    /// `out[t] = table[token_ids[t]]` for every token of the step.
    fn embedding(&self, step: &Self::Step<'_>, table: &Self::Matrix, out: &mut Self::Tensor)
    -> Result<()>;
    /// `out[t] = x[t] / rms(x[t]) * weight`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
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
    /// `x[t] += bias`.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Rotates every head of `x` (`[tokens, num_heads * head_dim]`) by its token's position.
    fn rope(
        &self,
        step: &Self::Step<'_>,
        x: &mut Self::Tensor,
        inv_freq: &Self::Tensor,
        shape: RopeShape,
    ) -> Result<()>;
    /// Stores each token's K and V (`[tokens, kv_dim]`) in its slot of `layer`.
    fn write_kv(
        &self,
        step: &Self::Step<'_>,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        pool: &mut Self::KvPool,
    ) -> Result<()>;
    /// Causal attention of each token's queries over its sequence's cached K/V up to and
    /// including its own position. `q`, `out`: `[tokens, num_heads * head_dim]`.
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
    /// `out` = the rows of `x` named by the plan's `logits_rows`.
    fn gather_logits_rows(
        &self,
        step: &Self::Step<'_>,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Copies `x` to host memory (`rows * cols` floats, row-major) into `out`.
    fn read(&self, x: &Self::Tensor, out: &mut Vec<f32>) -> Result<()>;
}
