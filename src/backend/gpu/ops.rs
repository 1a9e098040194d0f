//! [`Backend`] for [`GpuBackend`]: shape checks on the host, then one launch per op (two for
//! split attention).

use super::kernels::*;
use super::upload::device_layout;
use super::{Device, Dims, GpuBackend, GpuKvPool, GpuMatrix, GpuStep, GpuTensor, SPLIT_LEN, STEP_HEADROOM, Scratch, check_kv, kv_budget};
use crate::backend::{AttentionShape, Backend, BackendError, Result, RopeShape};
use crate::kv::KvLayout;
use crate::model::RopeStyle;
use crate::model::weights::HostMatrix;
use crate::plan::BatchPlan;
use std::ptr::null;

/// Tokens from which a matmul runs on the tensor cores (unless deterministic).
pub const MMA_MIN_TOKENS: usize = 16;

/// Blocks along a grid's y (and z) axis at most.
const MAX_GRID_Y: usize = 65535;

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

fn same_shape<B>(op: &'static str, a: &GpuTensor<B>, b: &GpuTensor<B>) -> Result<()> {
    if a.rows == b.rows && a.cols == b.cols {
        Ok(())
    } else {
        Err(shape_err(op, format!("{}x{} vs {}x{}", a.rows, a.cols, b.rows, b.cols)))
    }
}

fn grid_len(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| shape_err(op, format!("grid of {n} blocks")))
}

impl<D: Device> GpuBackend<D> {
    fn eltwise(&self, x: &mut GpuTensor<D::Buffer>, y: &GpuTensor<D::Buffer>, op: u32, y_cols: usize) -> Result<()> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let p = EltwiseParams { x: x.ptr(), y: y.ptr(), n: n as u64, op, y_cols: y_cols as u32 };
        self.device.launch("eltwise", Dims::x(grid_len("eltwise", n.div_ceil(256))?), Dims::x(256), &p)
    }

    fn norm(
        &self,
        residual: *mut f32,
        delta: *const f32,
        (rows, cols): (usize, usize),
        w: &GpuTensor<D::Buffer>,
        eps: f32,
        out: &mut GpuTensor<D::Buffer>,
    ) -> Result<()> {
        if w.cols != cols || out.cols != cols {
            return Err(shape_err("rms_norm", format!("{cols} columns, weight {}, out {}", w.cols, out.cols)));
        }
        out.set_rows("rms_norm", rows)?;
        if rows == 0 {
            return Ok(());
        }
        let p = RmsNormParams { residual, delta, weight: w.ptr(), out: out.ptr(), rows: rows as u32, cols: cols as u32, eps };
        self.device.launch("rms_norm", Dims::x(grid_len("rms_norm", rows)?), Dims::x(256), &p)
    }

    fn rope_kv(&self, p: &RopeKvParams, tokens: usize) -> Result<()> {
        if tokens == 0 {
            return Ok(());
        }
        self.device.launch("rope_kv", Dims::x(grid_len("rope_kv", tokens)?), Dims::x(128), p)
    }
}

/// The attention kernel for a GQA group of `g` query heads per KV head and `head_dim`.
fn attention_kernel(g: usize, head_dim: usize) -> Option<String> {
    let dl = match head_dim {
        1..=32 => 1,
        33..=64 => 2,
        65..=128 => 4,
        129..=256 => 8,
        _ => return None,
    };
    (1..=8).contains(&g).then(|| format!("attention_g{g}_d{dl}"))
}

impl<D: Device> Backend for GpuBackend<D> {
    type Tensor = GpuTensor<D::Buffer>;
    type Matrix = GpuMatrix<D::Buffer>;
    type KvPool = GpuKvPool<D::Buffer>;
    type Step<'a> = GpuStep<'a>;

    fn name(&self) -> String {
        self.device.name()
    }

    fn alloc(&self, max_rows: usize, cols: usize) -> Result<Self::Tensor> {
        self.tensor(max_rows, cols)
    }

    fn upload_vector(&self, data: &[f32]) -> Result<Self::Tensor> {
        self.upload_tensor(1, data)
    }

    fn upload_matrix(&self, m: HostMatrix) -> Result<Self::Matrix> {
        let l = device_layout(&m)?;
        let qs = self.device.alloc(l.qs.len())?;
        self.device.upload(&qs, 0, &l.qs)?;
        let scales = if l.scales.is_empty() {
            None
        } else {
            let s = self.device.alloc(l.scales.len() * 4)?;
            self.device.upload(&s, 0, bytemuck::cast_slice(&l.scales))?;
            Some(s)
        };
        let qs_addr = self.device.address(&qs);
        let scales_addr = scales.as_ref().map_or(0, |s| self.device.address(s));
        Ok(GpuMatrix { _qs: qs, _scales: scales, qs_addr, scales_addr, rows: m.rows, cols: m.cols, format: l.format })
    }

    fn alloc_kv(&self, layout: &KvLayout) -> Result<Self::KvPool> {
        check_kv(layout)?;
        let bytes = layout.num_bytes() / 2;
        let k = self.device.alloc(bytes)?;
        let v = self.device.alloc(bytes)?;
        let (k_addr, v_addr) = (self.device.address(&k), self.device.address(&v));
        Ok(GpuKvPool { _k: k, _v: v, k_addr, v_addr, layout: *layout })
    }

    fn prepare<'a>(&'a self, plan: &'a BatchPlan) -> Result<GpuStep<'a>> {
        self.stage(plan)
    }

    fn embedding(&self, step: &GpuStep<'_>, table: &Self::Matrix, out: &mut Self::Tensor) -> Result<()> {
        self.current(step)?;
        if let Some(&id) = step.plan.token_ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(BackendError::TokenOutOfRange { token_id: id, vocab_size: table.rows });
        }
        if out.cols != table.cols {
            return Err(shape_err("embedding", format!("table has {} columns, out {}", table.cols, out.cols)));
        }
        let n = step.plan.num_tokens();
        out.set_rows("embedding", n)?;
        if n == 0 {
            return Ok(());
        }
        let p = EmbeddingParams { table: table.desc(), token_ids: step.token_ids as *const u32, out: out.ptr(), num_tokens: n as u32 };
        self.device.launch("embedding", Dims::x(grid_len("embedding", n)?), Dims::x(128), &p)
    }

    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32, out: &mut Self::Tensor) -> Result<()> {
        self.norm(x.ptr(), null(), (x.rows, x.cols), w, eps, out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        same_shape("add_rms_norm", residual, delta)?;
        self.norm(residual.ptr(), delta.ptr(), (residual.rows, residual.cols), w, eps, out)
    }

    fn matmul(&self, x: &Self::Tensor, w: &Self::Matrix, out: &mut Self::Tensor) -> Result<()> {
        if x.cols != w.cols || out.cols != w.rows {
            return Err(shape_err("matmul", format!("x {}x{}, w {}x{}, out cols {}", x.rows, x.cols, w.rows, w.cols, out.cols)));
        }
        out.set_rows("matmul", x.rows)?;
        if x.rows == 0 {
            return Ok(());
        }
        let mut p = MatmulParams { w: w.desc(), x: x.ptr(), out: out.ptr(), tokens: x.rows as u32, ..MatmulParams::default() };
        // The tensor cores take any format, in 32-element blocks along the row.
        if w.cols % 32 == 0 && x.rows >= MMA_MIN_TOKENS && !self.options.deterministic {
            // f16 activations: each token scaled by a power of two into range first.
            return self.with_scratch(Scratch::Scales, x.rows * 4, |scales| {
                let rs = RowScaleParams { x: x.ptr(), scale: self.device.address(scales) as *mut f32, cols: x.cols as u32 };
                self.device.launch("row_scales", Dims::x(grid_len("matmul", x.rows)?), Dims::x(256), &rs)?;
                p.x_scale = rs.scale;
                let grid = Dims::xy(grid_len("matmul", w.rows.div_ceil(64))?, grid_len("matmul", x.rows.div_ceil(64))?);
                self.device.launch("matmul_mma", grid, Dims::x(128), &p)
            });
        }
        let grid = Dims::xy(grid_len("matmul", w.rows.div_ceil(4))?, grid_len("matmul", x.rows.div_ceil(8))?);
        self.device.launch("matmul", grid, Dims::x(128), &p)
    }

    /// On the GEMV path, up to three weights sharing `x` (Q/K/V, gate/up) in one launch.
    fn matmul_multi(&self, x: &Self::Tensor, ws: &[&Self::Matrix], outs: &mut [&mut Self::Tensor]) -> Result<()> {
        let gemv = x.rows < MMA_MIN_TOKENS || self.options.deterministic;
        let one_launch = gemv && (2..=3).contains(&ws.len()) && ws.len() == outs.len() && ws.iter().all(|w| w.cols == x.cols && w.rows > 0);
        if !one_launch || x.rows == 0 {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                self.matmul(x, w, out)?;
            }
            return Ok(());
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            if out.cols != w.rows {
                return Err(shape_err("matmul_multi", format!("w {}x{} into out cols {}", w.rows, w.cols, out.cols)));
            }
            out.set_rows("matmul_multi", x.rows)?;
        }
        let mut p = MatmulParams { w: ws[0].desc(), x: x.ptr(), out: outs[0].ptr(), tokens: x.rows as u32, ..MatmulParams::default() };
        for (i, (w, out)) in ws.iter().zip(outs.iter()).enumerate() {
            p.blocks[i] = w.rows.div_ceil(4) as u32;
            if i > 0 {
                p.w_more[i - 1] = w.desc();
                p.out_more[i - 1] = out.ptr();
            }
        }
        let blocks: usize = p.blocks.iter().map(|&b| b as usize).sum();
        let grid = Dims::xy(grid_len("matmul", blocks)?, grid_len("matmul", x.rows.div_ceil(8))?);
        self.device.launch("matmul", grid, Dims::x(128), &p)
    }

    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor) -> Result<()> {
        if bias.cols != x.cols {
            return Err(shape_err("add_bias", format!("bias of {} for rows of {}", bias.cols, x.cols)));
        }
        self.eltwise(x, bias, BALLAST_ADD, bias.cols)
    }

    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()> {
        same_shape("add", x, y)?;
        self.eltwise(x, y, BALLAST_ADD, 0)
    }

    fn rope(&self, step: &GpuStep<'_>, x: &mut Self::Tensor, inv_freq: &Self::Tensor, shape: RopeShape) -> Result<()> {
        self.current(step)?;
        let RopeShape { num_heads, head_dim, num_rotary_dims: rot, style } = shape;
        let ok = x.cols == num_heads * head_dim && x.rows == step.plan.num_tokens() && inv_freq.cols == rot / 2 && rot <= head_dim;
        if !ok {
            return Err(shape_err("rope", format!("x {}x{}, {num_heads} heads of {head_dim}, {rot} rotary dims", x.rows, x.cols)));
        }
        let p = RopeKvParams {
            q: x.ptr(),
            positions: step.positions as *const u32,
            inv_freq: inv_freq.ptr(),
            num_heads: num_heads as u32,
            head_dim: head_dim as u32,
            rotary_dims: rot as u32,
            neox: (style == RopeStyle::HalfSplit) as u32,
            ..RopeKvParams::default()
        };
        self.rope_kv(&p, x.rows)
    }

    fn write_kv(
        &self,
        step: &GpuStep<'_>,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        pool: &mut Self::KvPool,
    ) -> Result<()> {
        self.current(step)?;
        let l = pool.layout;
        same_shape("write_kv", k, v)?;
        if k.cols != l.token_stride() || k.rows != step.plan.num_tokens() || layer >= l.num_layers {
            return Err(shape_err("write_kv", format!("k {}x{} into layer {layer} of {:?}", k.rows, k.cols, l)));
        }
        let p = RopeKvParams {
            k: k.ptr(),
            v: v.ptr(),
            positions: step.positions as *const u32,
            slot_mapping: step.slots as *const u32,
            k_cache: pool.k_layer(layer),
            v_cache: pool.v_layer(layer),
            num_kv_heads: l.num_kv_heads as u32,
            head_dim: l.head_dim as u32,
            block_size: l.block_size as u32,
            ..RopeKvParams::default()
        };
        self.rope_kv(&p, k.rows)
    }

    /// One `rope_kv` launch: q and k rotated, k and v written to the pool.
    fn rope_write_kv(
        &self,
        step: &GpuStep<'_>,
        layer: usize,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        inv_freq: &Self::Tensor,
        rope: RopeShape,
        num_kv_heads: usize,
        pool: &mut Self::KvPool,
    ) -> Result<()> {
        self.current(step)?;
        let l = pool.layout;
        let RopeShape { num_heads, head_dim, num_rotary_dims: rot, style } = rope;
        let n = step.plan.num_tokens();
        same_shape("rope_write_kv", k, v)?;
        let ok = q.cols == num_heads * head_dim
            && q.rows == n
            && k.rows == n
            && k.cols == num_kv_heads * head_dim
            && num_kv_heads == l.num_kv_heads
            && head_dim == l.head_dim
            && inv_freq.cols == rot / 2
            && rot <= head_dim
            && layer < l.num_layers;
        if !ok {
            return Err(shape_err("rope_write_kv", format!("q {}x{}, k {}x{}, {rope:?}, pool {l:?}", q.rows, q.cols, k.rows, k.cols)));
        }
        let p = RopeKvParams {
            q: q.ptr(),
            k: k.ptr(),
            v: v.ptr(),
            positions: step.positions as *const u32,
            inv_freq: inv_freq.ptr(),
            slot_mapping: step.slots as *const u32,
            k_cache: pool.k_layer(layer),
            v_cache: pool.v_layer(layer),
            num_heads: num_heads as u32,
            num_kv_heads: num_kv_heads as u32,
            head_dim: head_dim as u32,
            rotary_dims: rot as u32,
            neox: (style == RopeStyle::HalfSplit) as u32,
            rotate_k: 1,
            block_size: l.block_size as u32,
        };
        self.rope_kv(&p, n)
    }

    fn attention(
        &self,
        step: &GpuStep<'_>,
        layer: usize,
        q: &Self::Tensor,
        pool: &Self::KvPool,
        shape: AttentionShape,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.current(step)?;
        let l = pool.layout;
        let AttentionShape { num_heads, num_kv_heads, head_dim, scale } = shape;
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
        let kernel = attention_kernel(num_heads / num_kv_heads, head_dim).ok_or_else(|| BackendError::Unsupported {
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
        };
        if splits == 1 {
            // Every token's context fits one split: one launch writes the outputs.
            for first in (0..n).step_by(MAX_GRID_Y) {
                p.first_token = first as u32;
                let grid = Dims::xyz(num_kv_heads as u32, (n - first).min(MAX_GRID_Y) as u32, 1);
                self.device.launch(&kernel, grid, Dims::x(128), &p)?;
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
                self.device.launch(&kernel, Dims::xyz(num_kv_heads as u32, len, splits as u32), Dims::x(128), &p)?;
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
                self.device.launch("attention_combine", Dims::xy(num_heads as u32, len), Dims::x(128), &c)?;
            }
            Ok(())
        })
    }

    fn copy_blocks(&self, pool: &mut Self::KvPool, pairs: &[(u32, u32)]) -> Result<()> {
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
                block_elems: (l.block_size * l.token_stride()) as u64,
                layer_elems: pool.layer_elems() as u64,
            };
            self.device.launch("copy_blocks", Dims::x(1), Dims::x(256), &p)
        })
    }

    fn silu_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()> {
        same_shape("silu_mul", gate, up)?;
        self.eltwise(gate, up, BALLAST_SILU_MUL, 0)
    }

    fn gather_logits_rows(&self, step: &GpuStep<'_>, x: &Self::Tensor, out: &mut Self::Tensor) -> Result<()> {
        self.current(step)?;
        let rows = &step.plan.logits_rows;
        if out.cols != x.cols || rows.iter().any(|&r| r as usize >= x.rows) {
            return Err(shape_err("gather_logits_rows", format!("rows {rows:?} of {}x{} into cols {}", x.rows, x.cols, out.cols)));
        }
        out.set_rows("gather_logits_rows", rows.len())?;
        if rows.is_empty() {
            return Ok(());
        }
        let p = GatherParams { src: x.ptr(), dst: out.ptr(), rows: step.logits_rows as *const u32, n: rows.len() as u32, cols: x.cols as u32 };
        self.device.launch("gather_rows", Dims::x(rows.len() as u32), Dims::x(128), &p)
    }

    fn read(&self, x: &Self::Tensor, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.resize(x.rows * x.cols, 0.0);
        self.device.download(&x.buf, 0, bytemuck::cast_slice_mut(out))
    }

    /// The `argmax` kernel: one id per row comes back instead of the logits.
    fn argmax(&self, logits: &Self::Tensor, out: &mut Vec<u32>) -> Result<bool> {
        out.clear();
        out.resize(logits.rows, 0);
        if logits.rows == 0 {
            return Ok(true);
        }
        self.with_scratch(Scratch::Ids, logits.rows * 4, |ids| {
            let p = ArgmaxParams { logits: logits.ptr(), out: self.device.address(ids) as *mut u32, rows: logits.rows as u32, cols: logits.cols as u32 };
            self.device.launch("argmax", Dims::x(logits.rows as u32), Dims::x(256), &p)?;
            self.device.download(ids, 0, bytemuck::cast_slice_mut(out))
        })?;
        Ok(true)
    }

    /// What `--gpu-memory-fraction` leaves once the weights and activations are in.
    fn kv_memory_budget(&self) -> Result<Option<usize>> {
        let (free, total) = self.device.memory()?;
        let budget = kv_budget(free, total, self.options.memory_fraction);
        if budget == 0 {
            return Err(BackendError::OutOfMemory { what: "the KV cache (the weights fill the GPU's share)", bytes: STEP_HEADROOM });
        }
        Ok(Some(budget))
    }
}

