//! The Llama-family forward pass, written only against [`Backend`].
//!
//! One call computes every token of a [`BatchPlan`]: sequences of different lengths at
//! different positions (prefill chunks and decode tokens mixed), reading and writing K/V
//! through their block tables. Activation buffers are allocated once for `max_batch_tokens`
//! rows and reused every step.

use super::ModelConfig;
use super::weights::{HostWeights, ModelWeights};
use crate::backend::{AttentionShape, Backend, BackendError, RopeShape};
use crate::kv::{KvDtype, KvLayout};
use crate::plan::BatchPlan;

/// Reusable activation buffers, `[rows, width]`.
struct Buffers<T> {
    /// Residual stream `[tokens, hidden]`.
    x: T,
    /// Normalised residual `[tokens, hidden]`.
    xn: T,
    /// `[tokens, q_dim]`
    q: T,
    /// `[tokens, kv_dim]`
    k: T,
    v: T,
    /// Attention output `[tokens, q_dim]`.
    attn: T,
    /// Output of the attention or MLP block `[tokens, hidden]`.
    delta: T,
    /// `[tokens, intermediate]`
    gate: T,
    up: T,
    /// Normalised rows that produce logits `[logit rows, hidden]`.
    last: T,
    /// `[logit rows, vocab]`
    logits: T,
}

pub struct Llama<B: Backend> {
    config: ModelConfig,
    weights: ModelWeights<B::Matrix, B::Tensor>,
    /// `[num_rotary_dims / 2]`
    inv_freq: B::Tensor,
    buffers: Buffers<B::Tensor>,
    max_batch_tokens: usize,
}

impl<B: Backend> Llama<B> {
    /// Moves `weights` into the backend and allocates buffers for steps of up to
    /// `max_batch_tokens` tokens.
    pub fn new(backend: &B, config: ModelConfig, weights: HostWeights, max_batch_tokens: usize) -> Result<Llama<B>, BackendError> {
        let max_batch_tokens = max_batch_tokens.max(1);
        let inv_freq = backend.upload_vector(&config.rope.inv_freq())?;
        let weights = backend.upload_weights(weights)?;
        let (t, h) = (max_batch_tokens, config.hidden_size);
        let buffers = Buffers {
            x: backend.alloc(t, h)?,
            xn: backend.alloc(t, h)?,
            q: backend.alloc(t, config.q_dim())?,
            k: backend.alloc(t, config.kv_dim())?,
            v: backend.alloc(t, config.kv_dim())?,
            attn: backend.alloc(t, config.q_dim())?,
            delta: backend.alloc(t, h)?,
            gate: backend.alloc(t, config.intermediate_size)?,
            up: backend.alloc(t, config.intermediate_size)?,
            last: backend.alloc(t, h)?,
            logits: backend.alloc(t, config.vocab_size)?,
        };
        Ok(Llama { config, weights, inv_freq, buffers, max_batch_tokens })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    /// The KV pool layout this model needs for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize, dtype: KvDtype) -> KvLayout {
        KvLayout {
            num_layers: self.config.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            dtype,
        }
    }

    /// Runs every token of `plan`, writing their K/V into `kv`, and leaves the logits of the
    /// plan's `logits_rows` in `logits` (`[rows, vocab]`, row-major).
    pub fn forward(&mut self, backend: &B, plan: &BatchPlan, kv: &mut B::KvPool, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        logits.clear();
        if self.compute(backend, plan, kv)? {
            backend.read(&self.buffers.logits, logits)?;
        }
        Ok(())
    }

    /// As [`Llama::forward`], but each logits row's argmax (greedy sampling) is computed by
    /// the backend where the logits live, and only the ids come back: `Ok(false)` when the
    /// backend cannot, and `logits` then holds the logits instead.
    pub fn forward_argmax(
        &mut self,
        backend: &B,
        plan: &BatchPlan,
        kv: &mut B::KvPool,
        ids: &mut Vec<u32>,
        logits: &mut Vec<f32>,
    ) -> Result<bool, BackendError> {
        ids.clear();
        logits.clear();
        if !self.compute(backend, plan, kv)? {
            return Ok(true);
        }
        if backend.argmax(&self.buffers.logits, ids)? {
            return Ok(true);
        }
        backend.read(&self.buffers.logits, logits)?;
        Ok(false)
    }

    /// The forward pass up to the logits tensor; false if no row wants logits.
    fn compute(&mut self, backend: &B, plan: &BatchPlan, kv: &mut B::KvPool) -> Result<bool, BackendError> {
        if plan.num_tokens() == 0 || plan.num_tokens() > self.max_batch_tokens {
            return Err(BackendError::Shape {
                op: "forward",
                detail: format!("{} tokens (1 to {} allowed)", plan.num_tokens(), self.max_batch_tokens),
            });
        }
        let step = backend.prepare(plan)?;
        let (c, w, b) = (&self.config, &self.weights, &mut self.buffers);
        let eps = c.rms_eps;
        backend.embedding(&step, &w.embed, &mut b.x)?;
        backend.rms_norm(&b.x, &w.layers[0].attn_norm, eps, &mut b.xn)?;
        for (i, layer) in w.layers.iter().enumerate() {
            attention_block(backend, &step, c, i, layer, &self.inv_freq, kv, b)?;
            backend.add_rms_norm(&mut b.x, &b.delta, &layer.ffn_norm, eps, &mut b.xn)?;
            backend.matmul_multi(&b.xn, &[&layer.w_gate, &layer.w_up], &mut [&mut b.gate, &mut b.up])?;
            backend.silu_mul(&mut b.gate, &b.up)?;
            backend.matmul(&b.gate, &layer.w_down, &mut b.delta)?;
            let next_norm = w.layers.get(i + 1).map_or(&w.final_norm, |l| &l.attn_norm);
            backend.add_rms_norm(&mut b.x, &b.delta, next_norm, eps, &mut b.xn)?;
        }
        if plan.logits_rows.is_empty() {
            return Ok(false);
        }
        backend.gather_logits_rows(&step, &b.xn, &mut b.last)?;
        backend.matmul(&b.last, w.output(), &mut b.logits)?;
        Ok(true)
    }
}

/// `b.delta = attention(b.xn)` for layer `i`, writing this step's K/V.
#[allow(clippy::too_many_arguments)]
fn attention_block<B: Backend>(
    backend: &B,
    step: &B::Step<'_>,
    c: &ModelConfig,
    i: usize,
    layer: &super::weights::LayerWeights<B::Matrix, B::Tensor>,
    inv_freq: &B::Tensor,
    kv: &mut B::KvPool,
    b: &mut Buffers<B::Tensor>,
) -> Result<(), BackendError> {
    backend.matmul_multi(&b.xn, &[&layer.wq, &layer.wk, &layer.wv], &mut [&mut b.q, &mut b.k, &mut b.v])?;
    for (x, bias) in [(&mut b.q, &layer.bq), (&mut b.k, &layer.bk), (&mut b.v, &layer.bv)] {
        if let Some(bias) = bias {
            backend.add_bias(x, bias)?;
        }
    }
    let rope = |num_heads| RopeShape { num_heads, head_dim: c.head_dim, num_rotary_dims: c.rope.num_rotary_dims, style: c.rope.style };
    backend.rope_write_kv(step, i, &mut b.q, &mut b.k, &b.v, inv_freq, rope(c.num_heads), c.num_kv_heads, kv)?;
    let shape = AttentionShape {
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    };
    backend.attention(step, i, &b.q, kv, shape, &mut b.attn)?;
    backend.matmul(&b.attn, &layer.wo, &mut b.delta)
}
