//! Causal attention over the paged KV pool, with an online softmax.
//!
//! A task is (sequence, KV head, block of up to `QUERY_BLOCK` query rows): each cached K/V
//! vector is loaded (and widened from f16) once per task and used by every query head that
//! shares the KV head (GQA) and every query row of the block. Every (row, head) accumulator
//! visits positions `0..=pos` in order with the same operations whatever block it sits in,
//! so results do not depend on how the batch is composed.

use super::par::SharedOut;
use super::tensor::{CpuKvPool, CpuTensor};
use crate::backend::{AttentionShape, BackendError, Result};
use crate::kv::KvLayout;
use crate::plan::{BatchPlan, SeqPlan};
use half::f16;
use half::slice::HalfFloatSliceExt;
use super::pool::ThreadPool;
use std::cell::RefCell;

const QUERY_BLOCK: usize = 16;

/// An element type the KV pool can hold.
trait KvElem: Copy + Send + Sync {
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

pub fn attention(
    pool: &ThreadPool,
    plan: &BatchPlan,
    layer: usize,
    q: &CpuTensor,
    kv: &CpuKvPool,
    shape: AttentionShape,
    out: &mut CpuTensor,
) -> Result<()> {
    let layout = kv.layout();
    let width = shape.num_heads * shape.head_dim;
    let ok = q.cols() == width
        && out.cols() == width
        && q.rows() == plan.num_tokens()
        && layout.num_kv_heads == shape.num_kv_heads
        && layout.head_dim == shape.head_dim
        && layout.block_size == plan.block_size
        && shape.num_kv_heads > 0
        && shape.num_heads.is_multiple_of(shape.num_kv_heads)
        && layer < layout.num_layers;
    if !ok {
        return Err(BackendError::Shape {
            op: "attention",
            detail: format!("q {}x{}, {shape:?}, {layout:?}, layer {layer}", q.rows(), q.cols()),
        });
    }
    out.set_rows("attention", q.rows())?;
    let ctx = Ctx { plan, layer, q, layout, shape };
    let out = SharedOut::new(out.as_mut_slice());
    match kv {
        CpuKvPool::F32 { k, v, .. } => ctx.run(pool, k, v, &out),
        CpuKvPool::F16 { k, v, .. } => ctx.run(pool, k, v, &out),
    }
    Ok(())
}

struct Ctx<'a> {
    plan: &'a BatchPlan,
    layer: usize,
    q: &'a CpuTensor,
    layout: &'a KvLayout,
    shape: AttentionShape,
}

thread_local! {
    /// Per task: widened K and V vectors, then (max, sum, acc[head_dim]) per (row, head).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Ctx<'_> {
    fn run<E: KvElem>(&self, pool: &ThreadPool, k: &[E], v: &[E], out: &SharedOut<f32>) {
        let num_kv_heads = self.shape.num_kv_heads;
        let seq_tasks = |s: &SeqPlan| s.num_query_tokens.div_ceil(QUERY_BLOCK) * num_kv_heads;
        let num_tasks: usize = self.plan.seqs.iter().map(seq_tasks).sum();
        // Task `i` counts through the sequences' tasks in order: (query block, KV head).
        let task = |mut i: usize| {
            for seq in &self.plan.seqs {
                let n = seq_tasks(seq);
                if i >= n {
                    i -= n;
                    continue;
                }
                let (block, kv_head) = (i / num_kv_heads, i % num_kv_heads);
                let first = block * QUERY_BLOCK;
                let rows = first..(first + QUERY_BLOCK).min(seq.num_query_tokens);
                return self.block(seq, rows, kv_head, k, v, out);
            }
        };
        pool.for_each(num_tasks, task);
    }

    /// Attention of query rows `rows` (relative to the sequence) for the heads of `kv_head`.
    fn block<E: KvElem>(
        &self,
        seq: &SeqPlan,
        rows: std::ops::Range<usize>,
        kv_head: usize,
        k: &[E],
        v: &[E],
        out: &SharedOut<f32>,
    ) {
        let AttentionShape { num_heads, num_kv_heads, head_dim: d, scale } = self.shape;
        let group = num_heads / num_kv_heads;
        let (bs, table) = (self.layout.block_size, self.plan.block_table(seq));
        let n_acc = rows.len() * group;
        let first_row = seq.query_start + rows.start;
        let last_pos = self.plan.positions[seq.query_start + rows.end - 1] as usize;
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            buf.resize(2 * d + n_acc * (d + 2), 0.0);
            let (kv_buf, acc) = buf.split_at_mut(2 * d);
            let (kf, vf) = kv_buf.split_at_mut(d);
            for a in acc.chunks_mut(d + 2) {
                a[0] = f32::NEG_INFINITY;
            }
            for j in 0..=last_pos {
                let slot = table[j / bs] as usize * bs + j % bs;
                let off = self.layout.slot_offset(self.layer, slot) + kv_head * d;
                E::widen(&k[off..off + d], kf);
                E::widen(&v[off..off + d], vf);
                for (r, accs) in acc.chunks_mut(group * (d + 2)).enumerate() {
                    let row = first_row + r;
                    if (self.plan.positions[row] as usize) < j {
                        continue; // causal: this row's position is before key j
                    }
                    let q_row = self.q.row(row);
                    for (h, a) in accs.chunks_mut(d + 2).enumerate() {
                        let head = kv_head * group + h;
                        let qh = &q_row[head * d..(head + 1) * d];
                        let s = crate::quant::dot_f32_f32(qh, kf) * scale;
                        online_softmax_step(a, s, vf);
                    }
                }
            }
            for (r, accs) in acc.chunks(group * (d + 2)).enumerate() {
                for (h, a) in accs.chunks(d + 2).enumerate() {
                    let head = kv_head * group + h;
                    // SAFETY: (row, head) pairs are unique to this task: rows belong to one
                    // sequence's query block and heads to one KV head's group.
                    let o = unsafe { out.slice((first_row + r) * num_heads * d + head * d, d) };
                    let inv = 1.0 / a[1];
                    for (o, x) in o.iter_mut().zip(&a[2..]) {
                        *o = x * inv;
                    }
                }
            }
        });
    }
}

/// `a = [running max, running sum, acc[d]]`; folds in score `s` with value vector `v`.
#[inline]
fn online_softmax_step(a: &mut [f32], s: f32, v: &[f32]) {
    let (m, l) = (a[0], a[1]);
    if s > m {
        let c = (m - s).exp(); // 0 on the first key (m = -inf)
        a[0] = s;
        a[1] = l * c + 1.0;
        for (x, &vi) in a[2..].iter_mut().zip(v) {
            *x = *x * c + vi;
        }
    } else {
        let p = (s - m).exp();
        a[1] = l + p;
        for (x, &vi) in a[2..].iter_mut().zip(v) {
            *x += p * vi;
        }
    }
}
