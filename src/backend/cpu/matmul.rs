//! `out[t] = W · x[t]` straight over the weight's blocks, for one weight or several that
//! share their input (Q/K/V, gate/up: one quantization of `x`, one parallel region).
//!
//! Work is split by weight rows: each task owns a contiguous range of one matrix's output
//! features and computes them for every token, so each weight row is read once per call
//! however many tokens the step has. With 16-bit activations, Q4_0/Q4_1/Q8_0 weights go
//! through kernels that take tokens in groups and unpack each weight block once per group:
//! packed matrices (the CPU backend packs every quantized type when it takes a model, see
//! `quant::packed` and [`packed`]) sixteen rows per call, row-major ones (Q4_0/Q4_1/Q8_0) a
//! row per call, tokens in groups of 8, then 4, then one by one.
//! Each output element is still one dot product in a fixed order, bit-identical whatever the
//! grouping or token count (batch invariance).

use super::Precision;
use super::par::{SharedOut, chunk_len};
use super::pool::ThreadPool;
use super::tensor::CpuTensor;
use crate::backend::{BackendError, Result};
use crate::model::weights::{HostMatrix, Layout};
use crate::quant::{self, ActBits, ActType, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ16x2, GgmlType, Isa, Q16Weight};
use bytemuck::cast_slice;
use std::cell::RefCell;
use std::ops::Range;

mod packed;

use packed::packed_kernel;

/// Below this many multiply-adds a matmul runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// From this many activation rows on, quantizing them is a parallel job of its own.
const PARALLEL_MIN_ROWS: usize = 4;

/// Bytes of activations a token group may take (L1 is 32-48 KiB on current x86 cores).
const L1_ACTIVATIONS: usize = 24 << 10;

/// Minimum weight rows per task.
const MIN_ROWS_PER_TASK: usize = 8;

type RowDot = fn(&[u8], &[u8]) -> f32;

/// Rows `rows` of `w` against every token of the 16-bit activations (see [`q16_rows`] and
/// [`packed_rows`]).
type Q16Rows = fn(&HostMatrix, Acts, usize, Range<usize>, &SharedOut<f32>);

/// One activation format's quantized rows: token `t` is `bytes[t * row_bytes..][..row_bytes]`.
#[derive(Clone, Copy)]
struct Acts<'a> {
    bytes: &'a [u8],
    row_bytes: usize,
}

impl<'a> Acts<'a> {
    fn row(&self, t: usize) -> &'a [u8] {
        &self.bytes[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
}

/// How one matrix's elements are computed.
enum Kernel<'a> {
    /// Float weights · f32 activations.
    Float(RowDot, &'a CpuTensor),
    /// Quantized weights · quantized activations, one dot product per element.
    Quant(RowDot, Acts<'a>),
    /// Q4_0/Q4_1/Q8_0 · 16-bit activations, tokens grouped: row-major weights (`q16_rows`)
    /// or packed ones (`packed_rows`).
    Q16(Q16Rows, Acts<'a>),
    /// The reference: dequantized weight rows · f32 activations.
    Dequant(&'a CpuTensor),
}

/// One matrix of a (multi-)matmul with where its outputs go.
struct Part<'a> {
    w: &'a HostMatrix,
    out: SharedOut<'a, f32>,
    kernel: Kernel<'a>,
}

pub fn matmul(
    pool: &ThreadPool,
    precision: Precision,
    x: &CpuTensor,
    w: &HostMatrix,
    out: &mut CpuTensor,
    scratch: &mut Vec<u32>,
) -> Result<()> {
    matmul_multi(pool, precision, x, &[w], &mut [out], scratch)
}

/// `outs[i][t] = ws[i] · x[t]` for every `i`, as one parallel job.
pub fn matmul_multi(
    pool: &ThreadPool,
    precision: Precision,
    x: &CpuTensor,
    ws: &[&HostMatrix],
    outs: &mut [&mut CpuTensor],
    scratch: &mut Vec<u32>,
) -> Result<()> {
    if ws.len() != outs.len() {
        return Err(BackendError::Shape { op: "matmul", detail: format!("{} weights, {} outputs", ws.len(), outs.len()) });
    }
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        if x.cols() != w.cols || out.cols() != w.rows {
            return Err(BackendError::Shape {
                op: "matmul",
                detail: format!("x {}x{}, W {}x{}, out width {}", x.rows(), x.cols(), w.rows, w.cols, out.cols()),
            });
        }
        out.set_rows("matmul", x.rows())?;
    }
    let act_of = |w: &HostMatrix| act_format(precision, w);
    // Quantize `x` once per format the weights need, one after another in `scratch`.
    let mut formats: Vec<(ActType, usize, usize)> = Vec::new(); // (format, offset, row bytes)
    let mut total = 0;
    for w in ws {
        let Some(act) = act_of(w) else { continue };
        if formats.iter().all(|f| f.0 != act) {
            let row_bytes = act.row_bytes(w.cols).ok_or_else(|| unsupported(w))?;
            formats.push((act, total, row_bytes));
            total += row_bytes * x.rows();
        }
    }
    scratch.resize(total.div_ceil(4), 0);
    let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut::<u32, u8>(scratch)[..total];
    for &(act, offset, row_bytes) in &formats {
        quantize_rows(pool, x, act, &mut bytes[offset..offset + row_bytes * x.rows()])?;
    }
    let bytes = &*bytes;
    let mut parts = Vec::with_capacity(ws.len());
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let kernel = match act_of(w) {
            None => match float_dot(w.dtype) {
                Some(dot) => Kernel::Float(dot, x),
                None => Kernel::Dequant(x),
            },
            Some(act) => {
                let &(_, offset, row_bytes) = formats.iter().find(|f| f.0 == act).expect("quantized above");
                let acts = Acts { bytes: &bytes[offset..offset + row_bytes * x.rows()], row_bytes };
                match (act, q16_kernel(w.dtype)) {
                    (ActType::Q16P, _) => Kernel::Q16(packed_kernel(w.dtype, false).ok_or_else(|| unsupported(w))?, acts),
                    (ActType::Q8P, _) => Kernel::Q16(packed_kernel(w.dtype, true).ok_or_else(|| unsupported(w))?, acts),
                    (ActType::Q16, Some(rows)) => Kernel::Q16(rows, acts),
                    _ => Kernel::Quant(quant_dot(w.dtype, act).ok_or_else(|| unsupported(w))?, acts),
                }
            }
        };
        parts.push(Part { w, out: SharedOut::new(out.as_mut_slice()), kernel });
    }
    run_parts(pool, &parts, x.rows());
    Ok(())
}

/// The activation format of `w`'s integer kernel at `precision`, or `None` for f32
/// activations: float weights, the reference, and row-major formats without an integer
/// kernel (the dequantizing path; the CPU backend packs every quantized matrix at int16, so
/// only tests and library callers with row-major weights meet it).
fn act_format(precision: Precision, w: &HostMatrix) -> Option<ActType> {
    let bits = match precision {
        Precision::Int16 => ActBits::Sixteen,
        Precision::Int8 => ActBits::Eight,
        Precision::Reference => return None,
    };
    if w.layout == Layout::Packed16 {
        return Some(if bits == ActBits::Eight { ActType::Q8P } else { ActType::Q16P });
    }
    let act = quant::act_type(w.dtype, bits);
    (act != ActType::F32).then_some(act)
}

/// Quantizes every row of `x` into `out` (`x.rows()` rows of `act`), as a parallel job when
/// there are several.
fn quantize_rows(pool: &ThreadPool, x: &CpuTensor, act: ActType, out: &mut [u8]) -> Result<()> {
    let row_bytes = out.len() / x.rows().max(1);
    let rows = SharedOut::new(out);
    let failure = parking_lot::Mutex::new(None);
    let quantize = |t: usize| {
        // SAFETY: task `t` alone writes activation row `t`.
        if let Err(e) = quant::quantize_act(act, x.row(t), unsafe { rows.slice(t * row_bytes, row_bytes) }) {
            failure.lock().get_or_insert(e);
        }
    };
    if x.rows() >= PARALLEL_MIN_ROWS {
        pool.for_each(x.rows(), quantize);
    } else {
        (0..x.rows()).for_each(quantize);
    }
    match failure.into_inner() {
        Some(e) => Err(BackendError::Unsupported { op: "matmul", what: e.to_string() }),
        None => Ok(()),
    }
}

fn unsupported(w: &HostMatrix) -> BackendError {
    let packed = if w.layout == Layout::Packed16 { "packed " } else { "" };
    BackendError::Unsupported { op: "matmul", what: format!("{packed}{} weights with these activations", w.dtype) }
}

/// Splits every part's rows into tasks of one common size and runs them all as one job.
fn run_parts(pool: &ThreadPool, parts: &[Part], n_tok: usize) {
    let total_rows: usize = parts.iter().map(|p| p.w.rows).sum();
    let macs: usize = parts.iter().map(|p| p.w.rows * p.w.cols * n_tok).sum();
    let mut chunk = chunk_len(total_rows, pool.num_threads(), MIN_ROWS_PER_TASK);
    if parts.iter().any(|p| p.w.layout == Layout::Packed16) {
        // Tasks take whole groups of packed rows.
        chunk = chunk.next_multiple_of(quant::PACK);
    }
    let num_tasks: usize = parts.iter().map(|p| p.w.rows.div_ceil(chunk)).sum();
    // Task `i` counts through the parts' chunks in order.
    let task = |mut i: usize| {
        for p in parts {
            let n = p.w.rows.div_ceil(chunk);
            if i < n {
                return p.run(i * chunk..((i + 1) * chunk).min(p.w.rows), n_tok);
            }
            i -= n;
        }
    };
    if macs < PARALLEL_MIN_MACS {
        (0..num_tasks).for_each(task);
    } else {
        pool.for_each(num_tasks, task);
    }
}

impl Part<'_> {
    /// Computes rows `rows` of this matrix's output for every token. The caller hands each
    /// row range to one task only, which is what makes the `SharedOut` writes disjoint.
    fn run(&self, rows: Range<usize>, n_tok: usize) {
        let (w, out) = (self.w, &self.out);
        // SAFETY (all writes below): this task alone owns columns `rows` of every output row.
        let each = |dot: &dyn Fn(usize, usize) -> f32| {
            for t in 0..n_tok {
                let o = unsafe { out.slice(t * w.rows + rows.start, rows.len()) };
                for (r, o) in rows.clone().zip(o) {
                    *o = dot(r, t);
                }
            }
        };
        match self.kernel {
            Kernel::Float(dot, x) => each(&|r, t| dot(w.row(r), cast_slice(x.row(t)))),
            Kernel::Quant(dot, acts) => each(&|r, t| dot(w.row(r), acts.row(t))),
            Kernel::Q16(q16_rows, acts) => q16_rows(w, acts, n_tok, rows, out),
            Kernel::Dequant(x) => dequantized(w, x, rows, out),
        }
    }
}

/// The grouped 16-bit kernel for `dtype`, if it has one.
fn q16_kernel(dtype: GgmlType) -> Option<Q16Rows> {
    Some(match dtype {
        GgmlType::Q4_0 => q16_rows::<BlockQ4_0>,
        GgmlType::Q4_1 => q16_rows::<BlockQ4_1>,
        GgmlType::Q8_0 => q16_rows::<BlockQ8_0>,
        _ => return None,
    })
}

/// Rows `rows` of `w` against every token: tokens in groups of 8 (when their activations
/// fit in L1), then 4, then one by one, each weight row's blocks unpacked once per group.
fn q16_rows<W: Q16Weight>(w: &HostMatrix, acts: Acts, n_tok: usize, rows: Range<usize>, out: &SharedOut<f32>) {
    let isa = Isa::best();
    let x = |t: usize| cast_slice::<u8, BlockQ16x2>(acts.row(t));
    let wrow = |r: usize| cast_slice::<u8, W>(w.row(r));
    let store = |t: usize, r: usize, v: &[f32]| {
        for (k, &v) in v.iter().enumerate() {
            // SAFETY: this task alone owns columns `rows` of every output row.
            unsafe { out.slice((t + k) * w.rows + r, 1)[0] = v };
        }
    };
    let mut t = 0;
    // Eight rows of activations must stay in L1 beside the streaming weights, or four do
    // better (Zen 4: 29 vs 26 G multiply-adds/s at 1536 columns).
    let eight_fit = 8 * acts.row_bytes <= L1_ACTIVATIONS;
    while eight_fit && t + 8 <= n_tok {
        for r in rows.clone() {
            store(t, r, &quant::vec_dot_q16_xn_on::<W, 8>(isa, wrow(r), std::array::from_fn(|k| x(t + k))));
        }
        t += 8;
    }
    while t + 4 <= n_tok {
        for r in rows.clone() {
            store(t, r, &quant::vec_dot_q16_xn_on::<W, 4>(isa, wrow(r), std::array::from_fn(|k| x(t + k))));
        }
        t += 4;
    }
    let all_rows = cast_slice::<u8, W>(w.rows_bytes(rows.clone()));
    for t in t..n_tok {
        // SAFETY: this task alone owns columns `rows` of every output row.
        let o = unsafe { out.slice(t * w.rows + rows.start, rows.len()) };
        quant::vec_dot_q16_rows_on(isa, all_rows, w.cols / quant::QK, x(t), o);
    }
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
        (GgmlType::Q4_0, ActType::Q16) => |w, a| quant::vec_dot_q16::<BlockQ4_0>(cast_slice(w), cast_slice(a)),
        (GgmlType::Q4_1, ActType::Q16) => |w, a| quant::vec_dot_q16::<BlockQ4_1>(cast_slice(w), cast_slice(a)),
        (GgmlType::Q8_0, ActType::Q16) => |w, a| quant::vec_dot_q16::<BlockQ8_0>(cast_slice(w), cast_slice(a)),
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

thread_local! {
    /// Dequantized weight rows of the current task (reference path).
    static DEQUANT_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Reference path: dequantize the task's weight rows to f32 once, then f32 dot products.
fn dequantized(w: &HostMatrix, x: &CpuTensor, rows: Range<usize>, out: &SharedOut<f32>) {
    let cols = w.cols;
    DEQUANT_ROWS.with_borrow_mut(|buf| {
        buf.resize(rows.len() * cols, 0.0);
        for (r, dst) in rows.clone().zip(buf.chunks_mut(cols)) {
            // Cannot fail: row sizes were validated when the matrix was built.
            let _ = w.dequantize_row(r, dst);
        }
        for t in 0..x.rows() {
            // SAFETY: this task alone owns columns `rows` of every output row.
            let o = unsafe { out.slice(t * w.rows + rows.start, rows.len()) };
            for (o, wr) in o.iter_mut().zip(buf.chunks(cols)) {
                *o = quant::dot_f32_f32(wr, x.row(t));
            }
        }
    });
}

#[cfg(test)]
mod tests;
