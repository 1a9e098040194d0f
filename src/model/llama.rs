//! The forward pass of the Llama family and Gemma 3, written only against [`Backend`].
//!
//! Gemma 3 is a Llama block with more (see [`crate::model::Features`]): the embedding scaled by
//! √d, each query and key head RMS-normalised before the rope, the attention and FFN outputs
//! normalised before they join the residual, a GELU gate, and sliding-window attention with
//! its own rope base on five layers of six.
//!
//! One call computes every token of a [`BatchPlan`]: sequences of different lengths at
//! different positions (prefill chunks and decode tokens mixed), reading and writing K/V
//! through their block tables. Activation buffers are allocated once for `max_batch_tokens`
//! rows and reused every step.

use super::weights::{HostWeights, ModelWeights};
use super::{Activation, ModelConfig};
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
    /// The normalised attention or MLP output `[tokens, hidden]`, for models with post-norms.
    post: Option<T>,
}

pub struct Llama<B: Backend> {
    config: ModelConfig,
    weights: ModelWeights<B::Matrix, B::Tensor>,
    /// `[num_rotary_dims / 2]`
    inv_freq: B::Tensor,
    /// The local (sliding-window) layers' frequencies, where they have their own.
    inv_freq_local: Option<B::Tensor>,
    buffers: Buffers<B::Tensor>,
    max_batch_tokens: usize,
    /// Each layer's [`ModelConfig::kv_place`] (used when the plan has local plans).
    kv_places: Vec<(usize, usize)>,
}

impl<B: Backend> Llama<B> {
    /// Moves `weights` into the backend and allocates buffers for steps of up to
    /// `max_batch_tokens` tokens.
    pub fn new(backend: &B, config: ModelConfig, weights: HostWeights, max_batch_tokens: usize) -> Result<Llama<B>, BackendError> {
        let max_batch_tokens = max_batch_tokens.max(1);
        let inv_freq = backend.upload_vector(&config.rope.inv_freq())?;
        let inv_freq_local = config.local_rope().map(|r| backend.upload_vector(&r.inv_freq())).transpose()?;
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
            post: if config.features.post_norms { Some(backend.alloc(t, h)?) } else { None },
        };
        let kv_places = (0..config.num_layers).map(|i| config.kv_place(i)).collect();
        Ok(Llama { config, weights, inv_freq, inv_freq_local, buffers, max_batch_tokens, kv_places })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    /// The KV pool layout this model needs for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize, dtype: KvDtype) -> KvLayout {
        self.kv_layout_of(self.config.num_layers, num_blocks, block_size, dtype)
    }

    /// The pool layout of `num_pages` pages when the local layers keep only their window
    /// ([`ModelConfig::kv_groups`]); `None` for a model without both kinds of layer.
    pub fn kv_page_layout(&self, num_pages: usize, block_size: usize, dtype: KvDtype) -> Option<KvLayout> {
        let (page_layers, _) = self.config.kv_groups()?;
        Some(self.kv_layout_of(page_layers, num_pages, block_size, dtype))
    }

    fn kv_layout_of(&self, num_layers: usize, num_blocks: usize, block_size: usize, dtype: KvDtype) -> KvLayout {
        KvLayout { num_layers, num_blocks, block_size, num_kv_heads: self.config.num_kv_heads, head_dim: self.config.head_dim, dtype }
    }

    /// Runs every token of `plan`, writing their K/V into `kv` (a pool of
    /// [`Self::kv_page_layout`] when the plan has local plans, of [`Self::kv_layout`] otherwise), and leaves the logits of the
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
        let local_steps = (0..plan.local.len()).map(|g| backend.local_step(&step, g)).collect::<Result<Vec<_>, _>>()?;
        let (c, w, b) = (&self.config, &self.weights, &mut self.buffers);
        let groups = c.kv_groups().map_or(0, |(_, local_pages)| local_pages);
        if !local_steps.is_empty() && local_steps.len() != groups {
            let detail = format!("{} local plans for {groups} groups of local layers", local_steps.len());
            return Err(BackendError::Shape { op: "forward", detail });
        }
        let eps = c.rms_eps;
        backend.embedding(&step, &w.embed, &mut b.x)?;
        if let Some(s) = c.features.embed_scale {
            backend.scale(&mut b.x, s)?;
        }
        backend.rms_norm(&b.x, &w.layers[0].attn_norm, eps, &mut b.xn)?;
        for (i, layer) in w.layers.iter().enumerate() {
            let inv_freq = match (c.layer_window(i), &self.inv_freq_local) {
                (Some(_), Some(local)) => local,
                _ => &self.inv_freq,
            };
            // Where this layer's K/V lives: the one pool's layer `i`, or its page group's.
            let (kv_step, kv_layer) = match self.kv_places[i] {
                _ if local_steps.is_empty() => (&step, i),
                (0, at) => (&step, at),
                (g, at) => (&local_steps[g - 1], at),
            };
            attention_block(backend, kv_step, c, (i, kv_layer), layer, inv_freq, kv, b)?;
            let delta = post_norm(backend, &b.delta, layer.norms.post_attn.as_ref(), eps, &mut b.post)?;
            backend.add_rms_norm(&mut b.x, delta, &layer.ffn_norm, eps, &mut b.xn)?;
            backend.matmul_multi(&b.xn, &[&layer.w_gate, &layer.w_up], &mut [&mut b.gate, &mut b.up])?;
            match c.features.activation {
                Activation::Silu => backend.silu_mul(&mut b.gate, &b.up)?,
                Activation::GeluTanh => backend.gelu_tanh_mul(&mut b.gate, &b.up)?,
            }
            backend.matmul(&b.gate, &layer.w_down, &mut b.delta)?;
            let delta = post_norm(backend, &b.delta, layer.norms.post_ffn.as_ref(), eps, &mut b.post)?;
            let next_norm = w.layers.get(i + 1).map_or(&w.final_norm, |l| &l.attn_norm);
            backend.add_rms_norm(&mut b.x, delta, next_norm, eps, &mut b.xn)?;
        }
        if plan.logits_rows.is_empty() {
            return Ok(false);
        }
        backend.gather_logits_rows(&step, &b.xn, &mut b.last)?;
        backend.matmul(&b.last, w.output(), &mut b.logits)?;
        if let Some(cap) = c.features.final_logit_softcap {
            backend.softcap(&mut b.logits, cap)?;
        }
        Ok(true)
    }
}

/// `b.delta = attention(b.xn)` for layer `i`, writing this step's K/V at `kv_layer` of the
/// pool as `step` addresses it.
#[allow(clippy::too_many_arguments)]
fn attention_block<B: Backend>(
    backend: &B,
    step: &B::Step<'_>,
    c: &ModelConfig,
    (i, kv_layer): (usize, usize),
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
    for (x, norm) in [(&mut b.q, &layer.norms.q), (&mut b.k, &layer.norms.k)] {
        if let Some(norm) = norm {
            backend.head_rms_norm(x, norm, c.rms_eps, c.head_dim)?;
        }
    }
    let rope = |num_heads| RopeShape { num_heads, head_dim: c.head_dim, num_rotary_dims: c.rope.num_rotary_dims, style: c.rope.style };
    backend.rope_write_kv(step, kv_layer, &mut b.q, &mut b.k, &b.v, inv_freq, rope(c.num_heads), c.num_kv_heads, kv)?;
    let shape = AttentionShape {
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        scale: c.attention_scale(),
        window: c.layer_window(i),
    };
    backend.attention(step, kv_layer, &b.q, kv, shape, &mut b.attn)?;
    backend.matmul(&b.attn, &layer.wo, &mut b.delta)
}

/// `norm(delta)` into `post` where the block has that norm, else `delta` itself: what joins
/// the residual.
fn post_norm<'a, B: Backend>(
    backend: &B,
    delta: &'a B::Tensor,
    norm: Option<&B::Tensor>,
    eps: f32,
    post: &'a mut Option<B::Tensor>,
) -> Result<&'a B::Tensor, BackendError> {
    match (norm, post) {
        (Some(w), Some(out)) => {
            backend.rms_norm(delta, w, eps, out)?;
            Ok(out)
        }
        (Some(_), None) => Err(BackendError::Shape { op: "post_norm", detail: "no buffer for a post-norm".into() }),
        (None, _) => Ok(delta),
    }
}
