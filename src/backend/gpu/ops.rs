//! [`Backend`] for [`GpuBackend`]: shape checks on the host, then one launch per op. The
//! paged-KV ops (rope and the K/V write, attention, block copies) live in `paged.rs`.

use super::kernels::{self, *};
use super::paged::{KvWrite, Rotate};
use super::upload::device_layout;
use super::{Device, Dims, GpuBackend, GpuKvPool, GpuMatrix, GpuStep, GpuTensor, STEP_HEADROOM, Scratch, check_kv, kv_budget};
use crate::backend::{AttentionShape, Backend, BackendError, Result, RopeShape};
use crate::kv::KvLayout;
use crate::model::weights::HostMatrix;
use crate::plan::BatchPlan;
use std::ptr::null;

/// Tokens from which a matmul runs on the tensor cores (unless deterministic).
pub const MMA_MIN_TOKENS: usize = 16;

pub(super) fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

pub(super) fn same_shape<B>(op: &'static str, a: &GpuTensor<B>, b: &GpuTensor<B>) -> Result<()> {
    if a.rows == b.rows && a.cols == b.cols {
        Ok(())
    } else {
        Err(shape_err(op, format!("{}x{} vs {}x{}", a.rows, a.cols, b.rows, b.cols)))
    }
}

pub(super) fn grid_len(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| shape_err(op, format!("grid of {n} blocks")))
}

impl<D: Device> GpuBackend<D> {
    /// `op` over `x` with `y` (a tensor of x's shape, or one row of `y_cols` for every row;
    /// `None` for the ops that take the scalar `s` instead).
    fn eltwise(&self, x: &mut GpuTensor<D::Buffer>, y: Option<&GpuTensor<D::Buffer>>, op: u32, y_cols: usize, s: f32) -> Result<()> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let y = y.map_or(null(), |y| y.ptr() as *const f32);
        let p = EltwiseParams { x: x.ptr(), y, n: n as u64, op, y_cols: y_cols as u32, s };
        self.launch(&kernels::ELTWISE, Dims::x(grid_len("eltwise", n.div_ceil(256))?), &p)
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
        self.launch(&kernels::RMS_NORM, Dims::x(grid_len("rms_norm", rows)?), &p)
    }
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
        let mut buffers = Vec::new();
        // Each array in a buffer of its own; an empty one is address 0 (the format has none).
        let mut put = |bytes: &[u8]| -> Result<u64> {
            if bytes.is_empty() {
                return Ok(0);
            }
            let b = self.device.alloc(bytes.len())?;
            self.device.upload(&b, 0, bytes)?;
            let addr = self.device.address(&b);
            buffers.push(b);
            Ok(addr)
        };
        let qs_addr = put(&l.qs)?;
        let scales_addr = put(bytemuck::cast_slice(&l.scales))?;
        let qh_addr = put(bytemuck::cast_slice(&l.qh))?;
        let sub_addr = put(bytemuck::cast_slice(&l.sub))?;
        Ok(GpuMatrix { _buffers: buffers, qs_addr, scales_addr, qh_addr, sub_addr, rows: m.rows, cols: m.cols, format: l.format })
    }

    const KV_ORDER: crate::kv::KvOrder = crate::kv::KvOrder::HeadMajor;
    const KV_MEDIUM: &'static str = "GPU";

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

    fn local_step<'a>(&self, step: &Self::Step<'a>, group: usize) -> Result<Self::Step<'a>> {
        let detail = || format!("local plan {group} of {}", step.local.len());
        step.local.get(group).cloned().ok_or_else(|| BackendError::Shape { op: "local_step", detail: detail() })
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
        self.launch(&kernels::EMBEDDING, Dims::x(grid_len("embedding", n)?), &p)
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
                self.launch(&kernels::ROW_SCALES, Dims::x(grid_len("matmul", x.rows)?), &rs)?;
                p.x_scale = rs.scale;
                let grid = Dims::xy(grid_len("matmul", w.rows.div_ceil(64))?, grid_len("matmul", x.rows.div_ceil(64))?);
                self.launch(&kernels::MATMUL_MMA, grid, &p)
            });
        }
        let grid = Dims::xy(grid_len("matmul", w.rows.div_ceil(4))?, grid_len("matmul", x.rows.div_ceil(8))?);
        self.launch(&kernels::MATMUL, grid, &p)
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
        self.launch(&kernels::MATMUL, grid, &p)
    }

    /// The `rms_norm` kernel over the heads as rows, in place.
    fn head_rms_norm(&self, x: &mut Self::Tensor, w: &Self::Tensor, eps: f32, head_dim: usize) -> Result<()> {
        if w.cols != head_dim || head_dim == 0 || x.cols % head_dim != 0 {
            return Err(shape_err("head_rms_norm", format!("rows of {}, heads of {head_dim}, weight {}", x.cols, w.cols)));
        }
        let rows = x.rows * (x.cols / head_dim);
        if rows == 0 {
            return Ok(());
        }
        let p = RmsNormParams {
            residual: x.ptr(),
            delta: null(),
            weight: w.ptr(),
            out: x.ptr(),
            rows: rows as u32,
            cols: head_dim as u32,
            eps,
        };
        self.launch(&kernels::RMS_NORM, Dims::x(grid_len("head_rms_norm", rows)?), &p)
    }

    fn scale(&self, x: &mut Self::Tensor, factor: f32) -> Result<()> {
        self.eltwise(x, None, BALLAST_SCALE, 0, factor)
    }

    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()> {
        self.eltwise(x, None, BALLAST_SOFTCAP, 0, cap)
    }

    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor) -> Result<()> {
        if bias.cols != x.cols {
            return Err(shape_err("add_bias", format!("bias of {} for rows of {}", bias.cols, x.cols)));
        }
        self.eltwise(x, Some(bias), BALLAST_ADD, bias.cols, 0.0)
    }

    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()> {
        same_shape("add", x, y)?;
        self.eltwise(x, Some(y), BALLAST_ADD, 0, 0.0)
    }

    fn rope(&self, step: &GpuStep<'_>, x: &mut Self::Tensor, inv_freq: &Self::Tensor, shape: RopeShape) -> Result<()> {
        self.rotate_and_store(step, Some(Rotate { x, inv_freq, shape }), None)
    }

    fn write_kv(&self, step: &GpuStep<'_>, layer: usize, k: &Self::Tensor, v: &Self::Tensor, pool: &mut Self::KvPool) -> Result<()> {
        self.rotate_and_store(step, None, Some(KvWrite { layer, k, v, rotate_k: false, pool }))
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
        if num_kv_heads != pool.layout.num_kv_heads || rope.head_dim != pool.layout.head_dim {
            return Err(shape_err("rope_write_kv", format!("{num_kv_heads} KV heads of {} into {:?}", rope.head_dim, pool.layout)));
        }
        self.rotate_and_store(step, Some(Rotate { x: q, inv_freq, shape: rope }), Some(KvWrite { layer, k, v, rotate_k: true, pool }))
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
        self.paged_attention(step, layer, q, pool, shape, out)
    }

    fn copy_blocks(&self, pool: &mut Self::KvPool, pairs: &[(u32, u32)]) -> Result<()> {
        self.copy_kv_blocks(pool, pairs)
    }

    fn silu_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()> {
        same_shape("silu_mul", gate, up)?;
        self.eltwise(gate, Some(up), BALLAST_SILU_MUL, 0, 0.0)
    }

    fn gelu_tanh_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()> {
        same_shape("gelu_tanh_mul", gate, up)?;
        self.eltwise(gate, Some(up), BALLAST_GELU_MUL, 0, 0.0)
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
        let p =
            GatherParams { src: x.ptr(), dst: out.ptr(), rows: step.logits_rows as *const u32, n: rows.len() as u32, cols: x.cols as u32 };
        self.launch(&kernels::GATHER_ROWS, Dims::x(rows.len() as u32), &p)
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
            let p = ArgmaxParams {
                logits: logits.ptr(),
                out: self.device.address(ids) as *mut u32,
                rows: logits.rows as u32,
                cols: logits.cols as u32,
            };
            self.launch(&kernels::ARGMAX, Dims::x(logits.rows as u32), &p)?;
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
