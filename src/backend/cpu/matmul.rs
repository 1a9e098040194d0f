//! `out[t] = W · x[t]` straight over the weight's blocks.
//!
//! Work is split by weight rows: each task owns a contiguous range of output features and
//! computes them for every token, so each weight row is read once per call however many
//! tokens the step has. For Q4_1 and Q8_0 weights with 16-bit activations, tokens go in
//! groups of 8 (then 4, then one by one) through kernels that unpack each weight block once
//! for the whole group. Each output element is still one dot product in a fixed order,
//! bit-identical whatever the grouping or token count (batch invariance).

use super::Precision;
use super::par::{SharedOut, chunk_len};
use super::tensor::CpuTensor;
use crate::backend::{BackendError, Result};
use crate::model::weights::HostMatrix;
use crate::quant::{self, ActBits, ActType, GgmlType};
use bytemuck::cast_slice;
use rayon::prelude::*;
use std::cell::RefCell;

/// Below this many multiply-adds a matmul runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Minimum weight rows per task.
const MIN_ROWS_PER_TASK: usize = 8;

type RowDot = fn(&[u8], &[u8]) -> f32;

/// One weight row against 8 (and 4) activation rows, each result bit-identical to [`RowDot`].
type RowDot8 = fn(&[u8], [&[u8]; 8]) -> [f32; 8];
type RowDot4 = fn(&[u8], [&[u8]; 4]) -> [f32; 4];

/// The multi-row kernels that exist (weights whose blocks are worth unpacking once).
fn quant_dot_n(dtype: GgmlType, act: ActType) -> Option<(RowDot8, RowDot4)> {
    Some(match (dtype, act) {
        (GgmlType::Q4_1, ActType::Q16) => (
            |w, a| quant::vec_dot_q4_1_q16_xn(cast_slice(w), a.map(cast_slice)),
            |w, a| quant::vec_dot_q4_1_q16_xn(cast_slice(w), a.map(cast_slice)),
        ),
        (GgmlType::Q8_0, ActType::Q16) => (
            |w, a| quant::vec_dot_q8_0_q16_xn(cast_slice(w), a.map(cast_slice)),
            |w, a| quant::vec_dot_q8_0_q16_xn(cast_slice(w), a.map(cast_slice)),
        ),
        _ => return None,
    })
}

pub fn matmul(
    pool: &rayon::ThreadPool,
    precision: Precision,
    x: &CpuTensor,
    w: &HostMatrix,
    out: &mut CpuTensor,
    scratch: &mut Vec<u32>,
) -> Result<()> {
    if x.cols() != w.cols || out.cols() != w.rows {
        return Err(BackendError::Shape {
            op: "matmul",
            detail: format!("x {}x{}, W {}x{}, out width {}", x.rows(), x.cols(), w.rows, w.cols, out.cols()),
        });
    }
    out.set_rows("matmul", x.rows())?;
    match (precision, float_dot(w.dtype)) {
        (_, Some(dot)) => {
            run(pool, w, x.rows(), out, |r, t| dot(w.row(r), bytes_of(x.row(t))));
            Ok(())
        }
        (Precision::Int16, None) => quantized(pool, x, w, out, ActBits::Sixteen, scratch),
        (Precision::Int8, None) => quantized(pool, x, w, out, ActBits::Eight, scratch),
        (Precision::Reference, None) => dequantized(pool, x, w, out),
    }
}

fn bytes_of(x: &[f32]) -> &[u8] {
    cast_slice(x)
}

/// Dot products of float weight rows with f32 activations (bytes of an f32 row).
fn float_dot(dtype: GgmlType) -> Option<RowDot> {
    Some(match dtype {
        GgmlType::F32 => |w, x| quant::dot_f32_f32(cast_slice(w), cast_slice(x)),
        GgmlType::F16 => |w, x| quant::dot_f16_f32(cast_slice(w), cast_slice(x)),
        GgmlType::BF16 => |w, x| quant::dot_bf16_f32(cast_slice(w), cast_slice(x)),
        _ => return None,
    })
}

/// Integer dot products of quantized weight rows with activation rows in `act` format.
fn quant_dot(dtype: GgmlType, act: ActType) -> Option<RowDot> {
    Some(match (dtype, act) {
        (GgmlType::Q4_0, ActType::Q16) => |w, a| quant::vec_dot_q4_0_q16(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4_1, ActType::Q16) => |w, a| quant::vec_dot_q4_1_q16(cast_slice(w), cast_slice(a)),
        (GgmlType::Q8_0, ActType::Q16) => |w, a| quant::vec_dot_q8_0_q16(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4K, ActType::Q16K) => |w, a| quant::vec_dot_q4k_q16k(cast_slice(w), cast_slice(a)),
        (GgmlType::Q6K, ActType::Q16K) => |w, a| quant::vec_dot_q6k_q16k(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4_0, ActType::Q8_0) => |w, a| quant::vec_dot_q4_0_q8_0(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4_1, ActType::Q8_1) => |w, a| quant::vec_dot_q4_1_q8_1(cast_slice(w), cast_slice(a)),
        (GgmlType::Q8_0, ActType::Q8_0) => |w, a| quant::vec_dot_q8_0_q8_0(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4K, ActType::Q8K) => |w, a| quant::vec_dot_q4k_q8k(cast_slice(w), cast_slice(a)),
        (GgmlType::Q6K, ActType::Q8K) => |w, a| quant::vec_dot_q6k_q8k(cast_slice(w), cast_slice(a)),
        _ => return None,
    })
}

/// Fast path: quantize each activation row once, then integer dot products.
fn quantized(
    pool: &rayon::ThreadPool,
    x: &CpuTensor,
    w: &HostMatrix,
    out: &mut CpuTensor,
    bits: ActBits,
    scratch: &mut Vec<u32>,
) -> Result<()> {
    let unsupported = || BackendError::Unsupported { op: "matmul", what: format!("{} weights", w.dtype) };
    let act_type = quant::act_type(w.dtype, bits);
    let dot = quant_dot(w.dtype, act_type).ok_or_else(unsupported)?;
    let act_row_bytes = act_type.row_bytes(w.cols).ok_or_else(unsupported)?;
    let total_bytes = act_row_bytes * x.rows();
    scratch.resize(total_bytes.div_ceil(4), 0);
    let acts: &mut [u8] = &mut bytemuck::cast_slice_mut::<u32, u8>(scratch)[..total_bytes];
    for (t, dst) in acts.chunks_mut(act_row_bytes).enumerate() {
        quant::quantize_act(act_type, x.row(t), dst).map_err(|e| BackendError::Unsupported {
            op: "matmul",
            what: e.to_string(),
        })?;
    }
    let acts = &*acts;
    let act = |t: usize| &acts[t * act_row_bytes..(t + 1) * act_row_bytes];
    match quant_dot_n(w.dtype, act_type) {
        Some((dot8, dot4)) if x.rows() >= 4 => {
            let kernels = Grouped {
                dot8: |r, t| dot8(w.row(r), std::array::from_fn(|k| act(t + k))),
                dot4: |r, t| dot4(w.row(r), std::array::from_fn(|k| act(t + k))),
                dot: |r, t| dot(w.row(r), act(t)),
            };
            run_grouped(pool, w, x.rows(), out, kernels)
        }
        _ => run(pool, w, x.rows(), out, |r, t| dot(w.row(r), act(t))),
    }
    Ok(())
}

/// The kernels of [`run_grouped`]: 8 tokens, 4 tokens, one token (from `t`).
struct Grouped<D8, D4, D1> {
    dot8: D8,
    dot4: D4,
    dot: D1,
}

/// [`run`] with tokens in groups of 8, then 4, the rest one by one. Same results, element for
/// element: grouping changes only how often a weight block is unpacked.
fn run_grouped<D8, D4, D1>(pool: &rayon::ThreadPool, w: &HostMatrix, n_tok: usize, out: &mut CpuTensor, k: Grouped<D8, D4, D1>)
where
    D8: Fn(usize, usize) -> [f32; 8] + Sync,
    D4: Fn(usize, usize) -> [f32; 4] + Sync,
    D1: Fn(usize, usize) -> f32 + Sync,
{
    let out_cols = w.rows;
    let chunk = chunk_len(w.rows, pool.current_num_threads(), MIN_ROWS_PER_TASK);
    let shared = SharedOut::new(out.as_mut_slice());
    let (n8, n4) = (n_tok / 8 * 8, n_tok / 4 * 4);
    let task = |c: usize| {
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(w.rows));
        let store = |t: usize, r: usize, v: &[f32]| {
            for (i, &v) in v.iter().enumerate() {
                // SAFETY: task `c` alone writes columns r0..r1 of every output row.
                unsafe { shared.slice((t + i) * out_cols + r, 1)[0] = v };
            }
        };
        for t in (0..n8).step_by(8) {
            for r in r0..r1 {
                store(t, r, &(k.dot8)(r, t));
            }
        }
        for t in (n8..n4).step_by(4) {
            for r in r0..r1 {
                store(t, r, &(k.dot4)(r, t));
            }
        }
        for t in n4..n_tok {
            for r in r0..r1 {
                store(t, r, &[(k.dot)(r, t)]);
            }
        }
    };
    let num_chunks = w.rows.div_ceil(chunk);
    if n_tok * w.rows * w.cols < PARALLEL_MIN_MACS {
        (0..num_chunks).for_each(task);
    } else {
        pool.install(|| (0..num_chunks).into_par_iter().for_each(task));
    }
}

thread_local! {
    /// Dequantized weight rows of the current task (reference path).
    static DEQUANT_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Reference path: dequantize a task's weight rows to f32 once, then f32 dot products.
fn dequantized(pool: &rayon::ThreadPool, x: &CpuTensor, w: &HostMatrix, out: &mut CpuTensor) -> Result<()> {
    let (n_tok, cols, out_cols) = (x.rows(), w.cols, w.rows);
    let chunk = chunk_len(w.rows, pool.current_num_threads(), MIN_ROWS_PER_TASK);
    let shared = SharedOut::new(out.as_mut_slice());
    let task = |c: usize| {
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(w.rows));
        DEQUANT_ROWS.with_borrow_mut(|buf| {
            buf.resize(chunk * cols, 0.0);
            for r in r0..r1 {
                let dst = &mut buf[(r - r0) * cols..(r - r0 + 1) * cols];
                // Cannot fail: row sizes were validated when the matrix was built.
                let _ = quant::dequantize_row(w.dtype, w.row(r), dst);
            }
            for t in 0..n_tok {
                // SAFETY: task `c` alone writes columns r0..r1 of every output row.
                let o = unsafe { shared.slice(t * out_cols + r0, r1 - r0) };
                for (r, o) in (r0..r1).zip(o) {
                    *o = quant::dot_f32_f32(&buf[(r - r0) * cols..(r - r0 + 1) * cols], x.row(t));
                }
            }
        });
    };
    let num_chunks = w.rows.div_ceil(chunk);
    if n_tok * w.rows * cols < PARALLEL_MIN_MACS {
        (0..num_chunks).for_each(task);
    } else {
        pool.install(|| (0..num_chunks).into_par_iter().for_each(task));
    }
    Ok(())
}

/// Computes `out[t][r] = dot(r, t)` for every weight row `r` and token `t`.
fn run(
    pool: &rayon::ThreadPool,
    w: &HostMatrix,
    n_tok: usize,
    out: &mut CpuTensor,
    dot: impl Fn(usize, usize) -> f32 + Sync,
) {
    let out_cols = w.rows;
    let chunk = chunk_len(w.rows, pool.current_num_threads(), MIN_ROWS_PER_TASK);
    let shared = SharedOut::new(out.as_mut_slice());
    let task = |c: usize| {
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(w.rows));
        for t in 0..n_tok {
            // SAFETY: task `c` alone writes columns r0..r1 of every output row.
            let o = unsafe { shared.slice(t * out_cols + r0, r1 - r0) };
            for (r, o) in (r0..r1).zip(o) {
                *o = dot(r, t);
            }
        }
    };
    let num_chunks = w.rows.div_ceil(chunk);
    if n_tok * w.rows * w.cols < PARALLEL_MIN_MACS {
        (0..num_chunks).for_each(task);
    } else {
        pool.install(|| (0..num_chunks).into_par_iter().for_each(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bytes::TensorBytes;
    use crate::quant::test_util::Rng;

    /// The grouped (8 / 4 / 1 tokens) int16 matmul gives every output element bit-identical to
    /// the same row computed alone, for awkward token counts and both grouped weight types.
    #[test]
    fn grouped_tokens_match_each_token_alone() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut rng = Rng::new(41);
        for dtype in [GgmlType::Q4_1, GgmlType::Q8_0] {
            let (rows, cols) = (37, 96);
            let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
            let mut data = vec![0u8; rows * row_bytes];
            for r in 0..rows {
                quant::quantize_row(dtype, &rng.floats(cols, 1.0), &mut data[r * row_bytes..(r + 1) * row_bytes]).unwrap();
            }
            let w = HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).unwrap();
            for n_tok in [1, 3, 4, 5, 7, 8, 9, 12, 13, 17] {
                let xs = rng.floats(n_tok * cols, 2.0);
                let x = CpuTensor::from_rows(&xs, cols);
                let mut out = CpuTensor::zeros(n_tok, rows).unwrap();
                matmul(&pool, Precision::Int16, &x, &w, &mut out, &mut Vec::new()).unwrap();
                for t in 0..n_tok {
                    let one = CpuTensor::from_rows(x.row(t), cols);
                    let mut alone = CpuTensor::zeros(1, rows).unwrap();
                    matmul(&pool, Precision::Int16, &one, &w, &mut alone, &mut Vec::new()).unwrap();
                    let (a, b): (Vec<u32>, Vec<u32>) = (out.row(t).iter().map(|v| v.to_bits()).collect(), alone.row(0).iter().map(|v| v.to_bits()).collect());
                    assert_eq!(a, b, "{dtype} token {t} of {n_tok}");
                }
            }
        }
    }
}
