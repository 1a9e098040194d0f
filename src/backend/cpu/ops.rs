//! Element-wise and row-wise CPU ops: embedding, rms_norm (of rows and of heads), rope,
//! silu·mul and gelu·mul, adds, row gather.

use super::par::SharedOut;
use super::pool::ThreadPool;
use super::tensor::CpuTensor;
use crate::backend::{BackendError, Result, RopeShape};
use crate::model::RopeStyle;
use crate::model::weights::HostMatrix;
use crate::plan::BatchPlan;

/// Below this many elements an op runs on the calling thread: a pool round trip costs more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 12;

/// Runs `f(row_index, row)` over the rows of `data` (rows of `cols`), in parallel when large.
fn for_each_row(pool: &ThreadPool, data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / cols.max(1);
    if data.len() < PARALLEL_MIN_ELEMENTS || rows < 2 {
        data.chunks_mut(cols).enumerate().for_each(|(r, row)| f(r, row));
        return;
    }
    let chunk = super::par::chunk_len(rows, pool.num_threads(), 1);
    let shared = SharedOut::new(data);
    pool.for_each(rows.div_ceil(chunk), |c| {
        for r in c * chunk..((c + 1) * chunk).min(rows) {
            // SAFETY: each row index belongs to exactly one chunk `c`.
            f(r, unsafe { shared.slice(r * cols, cols) });
        }
    });
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

pub fn embedding(pool: &ThreadPool, plan: &BatchPlan, table: &HostMatrix, out: &mut CpuTensor) -> Result<()> {
    if out.cols() != table.cols {
        return Err(shape_err("embedding", format!("out width {} vs {}", out.cols(), table.cols)));
    }
    if let Some(&bad) = plan.token_ids.iter().find(|&&t| t as usize >= table.rows) {
        return Err(BackendError::TokenOutOfRange { token_id: bad, vocab_size: table.rows });
    }
    out.set_rows("embedding", plan.num_tokens())?;
    let cols = out.cols();
    for_each_row(pool, out.as_mut_slice(), cols, |t, row| {
        let token = plan.token_ids[t] as usize;
        // Cannot fail: the table's rows were validated against its dtype at load.
        let _ = table.dequantize_row(token, row);
    });
    Ok(())
}

/// `out[t] = x[t] * weight / sqrt(mean(x[t]^2) + eps)`, accumulated in f32 as HF does.
pub fn rms_norm(pool: &ThreadPool, x: &CpuTensor, weight: &CpuTensor, eps: f32, out: &mut CpuTensor) -> Result<()> {
    let cols = x.cols();
    if weight.cols() != cols || out.cols() != cols {
        return Err(shape_err("rms_norm", format!("x {cols}, weight {}, out {}", weight.cols(), out.cols())));
    }
    out.set_rows("rms_norm", x.rows())?;
    let w = weight.row(0);
    for_each_row(pool, out.as_mut_slice(), cols, |t, row| {
        let xr = x.row(t);
        let sum_sq = crate::quant::dot_f32_f32(xr, xr);
        let inv = 1.0 / (sum_sq / cols as f32 + eps).sqrt();
        for ((o, &xi), &wi) in row.iter_mut().zip(xr).zip(w) {
            *o = wi * (xi * inv);
        }
    });
    Ok(())
}

/// Each `head_dim`-wide head of every row of `x`, normalised in place with one `weight` row
/// shared by the heads (as [`rms_norm`] does a row).
pub fn head_rms_norm(pool: &ThreadPool, x: &mut CpuTensor, weight: &CpuTensor, eps: f32, head_dim: usize) -> Result<()> {
    let cols = x.cols();
    if weight.cols() != head_dim || head_dim == 0 || !cols.is_multiple_of(head_dim) {
        return Err(shape_err("head_rms_norm", format!("rows of {cols}, heads of {head_dim}, weight {}", weight.cols())));
    }
    let w = weight.row(0);
    for_each_row(pool, x.as_mut_slice(), cols, |_, row| {
        for head in row.chunks_mut(head_dim) {
            let sum_sq = crate::quant::dot_f32_f32(head, head);
            let inv = 1.0 / (sum_sq / head_dim as f32 + eps).sqrt();
            for (o, &wi) in head.iter_mut().zip(w) {
                *o = wi * (*o * inv);
            }
        }
    });
    Ok(())
}

pub fn add(x: &mut CpuTensor, y: &CpuTensor) {
    for (a, b) in x.as_mut_slice().iter_mut().zip(y.as_slice()) {
        *a += b;
    }
}

pub fn add_bias(x: &mut CpuTensor, bias: &CpuTensor) -> Result<()> {
    let cols = x.cols();
    if bias.cols() != cols {
        return Err(shape_err("add_bias", format!("x width {cols}, bias {}", bias.cols())));
    }
    let b = bias.row(0);
    for row in x.as_mut_slice().chunks_mut(cols) {
        for (a, bi) in row.iter_mut().zip(b) {
            *a += bi;
        }
    }
    Ok(())
}

pub fn silu_mul(pool: &ThreadPool, gate: &mut CpuTensor, up: &CpuTensor) {
    let cols = gate.cols();
    for_each_row(pool, gate.as_mut_slice(), cols, |t, row| super::softmax::silu_mul_row(row, up.row(t)));
}

pub fn gelu_tanh_mul(pool: &ThreadPool, gate: &mut CpuTensor, up: &CpuTensor) {
    let cols = gate.cols();
    for_each_row(pool, gate.as_mut_slice(), cols, |t, row| super::softmax::gelu_tanh_mul_row(row, up.row(t)));
}

/// Rotates each head of each row by `position * inv_freq[i]` per channel pair `i`.
pub fn rope(pool: &ThreadPool, plan: &BatchPlan, x: &mut CpuTensor, inv_freq: &CpuTensor, shape: RopeShape) -> Result<()> {
    let RopeShape { num_heads, head_dim, num_rotary_dims: rot, style } = shape;
    let ok = x.cols() == num_heads * head_dim && x.rows() == plan.num_tokens() && inv_freq.cols() == rot / 2 && rot <= head_dim;
    if !ok {
        return Err(shape_err("rope", format!("x {}x{}, {num_heads} heads of {head_dim}, {rot} rotary dims", x.rows(), x.cols())));
    }
    let freqs = inv_freq.row(0);
    let cols = x.cols();
    for_each_row(pool, x.as_mut_slice(), cols, |t, row| {
        let pos = plan.positions[t] as f32;
        for (i, &f) in freqs.iter().enumerate() {
            // HF computes the angle in f32 (position * inv_freq), then cos/sin of it.
            let (sin, cos) = (pos * f).sin_cos();
            for head in row.chunks_mut(head_dim) {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::HalfSplit => (i, i + rot / 2),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    });
    Ok(())
}

pub fn gather_rows(x: &CpuTensor, rows: &[u32], out: &mut CpuTensor) -> Result<()> {
    if out.cols() != x.cols() {
        return Err(shape_err("gather_rows", format!("width {} vs {}", out.cols(), x.cols())));
    }
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= x.rows()) {
        return Err(shape_err("gather_rows", format!("row {bad} of {}", x.rows())));
    }
    out.set_rows("gather_rows", rows.len())?;
    let cols = x.cols();
    for (dst, &r) in out.as_mut_slice().chunks_mut(cols).zip(rows) {
        dst.copy_from_slice(x.row(r as usize));
    }
    Ok(())
}
