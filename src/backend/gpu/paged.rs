//! The ops on the paged KV pool: rotary embedding fused with the K/V write (`rope_kv`),
//! attention (`attention_g{G}_d{D}`, plus `attention_combine` for split contexts) and block
//! copies.

use super::kernels::{self, *};
use super::ops::{grid_len, same_shape, shape_err};
use super::{Device, Dims, GpuBackend, GpuKvPool, GpuStep, GpuTensor, SPLIT_LEN, Scratch};
use crate::backend::{AttentionShape, BackendError, Result, RopeShape};
use crate::model::RopeStyle;

/// Blocks along a grid's y (and z) axis at most.
const MAX_GRID_Y: usize = 65535;

/// K and V to store into `layer` of `pool` (rotating k first when `rotate_k`).
pub(super) struct KvWrite<'t, B> {
    pub layer: usize,
    pub k: &'t GpuTensor<B>,
    pub v: &'t GpuTensor<B>,
    pub rotate_k: bool,
    pub pool: &'t mut GpuKvPool<B>,
}

/// A tensor of heads to rotate by each token's position.
pub(super) struct Rotate<'t, B> {
    pub x: &'t mut GpuTensor<B>,
    pub inv_freq: &'t GpuTensor<B>,
    pub shape: RopeShape,
}

impl<D: Device> GpuBackend<D> {
    /// One `rope_kv` launch: rotates `rope`'s tensor (q, or k alone for `Backend::rope`) and,
    /// with `kv`, stores k and v in their slots (k rotated too when `rotate_k`).
    pub(super) fn rotate_and_store(
        &self,
        step: &GpuStep<'_>,
        rope: Option<Rotate<'_, D::Buffer>>,
        kv: Option<KvWrite<'_, D::Buffer>>,
    ) -> Result<()> {
        self.current(step)?;
        let n = step.plan.num_tokens();
        let mut p = RopeKvParams { positions: step.positions as *const u32, ..RopeKvParams::default() };
        if let Some(Rotate { x, inv_freq, shape }) = rope {
            let RopeShape { num_heads, head_dim, num_rotary_dims: rot, style } = shape;
            if x.cols != num_heads * head_dim || x.rows != n || inv_freq.cols != rot / 2 || rot > head_dim {
                return Err(shape_err("rope", format!("x {}x{}, {num_heads} heads of {head_dim}, {rot} rotary dims", x.rows, x.cols)));
            }
            p.q = x.ptr();
            p.inv_freq = inv_freq.ptr();
            p.num_heads = num_heads as u32;
            p.head_dim = head_dim as u32;
            p.rotary_dims = rot as u32;
            p.neox = (style == RopeStyle::HalfSplit) as u32;
        }
        if let Some(KvWrite { layer, k, v, rotate_k, pool }) = kv {
            let l = pool.layout;
            same_shape("write_kv", k, v)?;
            if k.cols != l.token_stride() || k.rows != n || layer >= l.num_layers {
                return Err(shape_err("write_kv", format!("k {}x{} into layer {layer} of {l:?}", k.rows, k.cols)));
            }
            p.k = k.ptr();
            p.v = v.ptr();
            p.rotate_k = rotate_k as u32;
            p.slot_mapping = step.slots as *const u32;
            p.k_cache = pool.k_layer(layer);
            p.v_cache = pool.v_layer(layer);
            p.num_kv_heads = l.num_kv_heads as u32;
            p.head_dim = l.head_dim as u32;
            p.block_size = l.block_size as u32;
        }
        if n == 0 {
            return Ok(());
        }
        self.launch(&kernels::ROPE_KV, Dims::x(grid_len("rope_kv", n)?), &p)
    }

    pub(super) fn paged_attention(
        &self,
        step: &GpuStep<'_>,
        layer: usize,
        q: &GpuTensor<D::Buffer>,
        pool: &GpuKvPool<D::Buffer>,
        shape: AttentionShape,
        out: &mut GpuTensor<D::Buffer>,
    ) -> Result<()> {
        self.current(step)?;
        let l = pool.layout;
        let AttentionShape { num_heads, num_kv_heads, head_dim, scale, window } = shape;
        let n = step.plan.num_tokens();
        let fits = q.cols == num_heads * head_dim
            && out.cols == q.cols
            && q.rows == n
            && num_kv_heads == l.num_kv_heads
            && head_dim == l.head_dim
            && layer < l.num_layers
            && num_kv_heads > 0
            && num_heads % num_kv_heads == 0;
        if !fits {
            return Err(shape_err("attention", format!("q {}x{}, {shape:?}, pool {l:?}", q.rows, q.cols)));
        }
        let kernel = kernels::attention(num_heads / num_kv_heads, head_dim).ok_or_else(|| BackendError::Unsupported {
            op: "attention",
            what: format!("{num_heads} query heads over {num_kv_heads} KV heads of {head_dim} dims (up to 8 per KV head, 256 dims)"),
        })?;
        out.set_rows("attention", n)?;
        if n == 0 {
            return Ok(());
        }
        let splits = step.splits;
        let mut p = AttentionParams {
            q: q.ptr(),
            out: out.ptr(),
            k_cache: pool.k_layer(layer),
            v_cache: pool.v_layer(layer),
            tokens: step.tokens as *const TokenAttn,
            block_tables: step.tables as *const u32,
            partials: std::ptr::null_mut(),
            first_token: 0,
            num_tokens: n as u32,
            num_heads: num_heads as u32,
            num_kv_heads: num_kv_heads as u32,
            head_dim: head_dim as u32,
            block_size: l.block_size as u32,
            split_len: SPLIT_LEN as u32,
            splits: splits as u32,
            scale,
            window: window.map_or(0, |w| w.min(u32::MAX as usize) as u32),
        };
        if splits == 1 {
            // Every token's context fits one split: one launch writes the outputs.
            for first in (0..n).step_by(MAX_GRID_Y) {
                p.first_token = first as u32;
                let grid = Dims::xyz(num_kv_heads as u32, (n - first).min(MAX_GRID_Y) as u32, 1);
                self.launch(kernel, grid, &p)?;
            }
            return Ok(());
        }
        // Split contexts: groups of tokens whose partials fit the cap, each finished
        // by attention_combine. A token's arithmetic does not depend on its group.
        let per_token = num_heads * splits * (head_dim + 2) * 4;
        let group = (self.partials_cap / per_token).clamp(1, MAX_GRID_Y);
        self.with_scratch(Scratch::Partials, group.min(n) * per_token, |buf| {
            p.partials = self.device.address(buf) as *mut f32;
            for first in (0..n).step_by(group) {
                let len = (n - first).min(group) as u32;
                p.first_token = first as u32;
                self.launch(kernel, Dims::xyz(num_kv_heads as u32, len, splits as u32), &p)?;
                let c = CombineParams {
                    partials: p.partials,
                    out: out.ptr(),
                    tokens: p.tokens,
                    first_token: first as u32,
                    num_heads: num_heads as u32,
                    head_dim: head_dim as u32,
                    split_len: SPLIT_LEN as u32,
                    splits: splits as u32,
                };
                self.launch(&kernels::ATTENTION_COMBINE, Dims::xy(num_heads as u32, len), &c)?;
            }
            Ok(())
        })
    }

    /// Whole blocks `src → dst`, every layer, K and V, pairs in order.
    pub(super) fn copy_kv_blocks(&self, pool: &mut GpuKvPool<D::Buffer>, pairs: &[(u32, u32)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let l = pool.layout;
        if let Some(&(a, b)) = pairs.iter().find(|&&(a, b)| a as usize >= l.num_blocks || b as usize >= l.num_blocks) {
            return Err(shape_err("copy_blocks", format!("pair ({a}, {b}) in a pool of {} blocks", l.num_blocks)));
        }
        let flat: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        self.with_scratch(Scratch::Pairs, flat.len() * 4, |buf| {
            self.device.upload(buf, 0, bytemuck::cast_slice(&flat))?;
            let p = CopyBlocksParams {
                k_cache: pool.k_layer(0),
                v_cache: pool.v_layer(0),
                pairs: self.device.address(buf) as *const u32,
                n: pairs.len() as u32,
                num_layers: l.num_layers as u32,
                block_elems: l.block_elems() as u64,
                layer_elems: pool.layout.layer_stride() as u64,
            };
            self.launch(&kernels::COPY_BLOCKS, Dims::x(1), &p)
        })
    }
}
