//! Causal attention over the paged KV pool, with an online softmax over chunks of keys.
//!
//! A task is (sequence, KV head, block of up to `QUERY_BLOCK` query rows): each cached K/V
//! vector is loaded (and widened from f16) once per task and used by every query head that
//! shares the KV head (GQA) and every query row of the block. Every (row, head) accumulator
//! visits positions `0..=pos` in chunks of `KEY_CHUNK` aligned at position 0, in order, with
//! the same operations whatever block it sits in, so results do not depend on how the batch
//! is composed. With a sliding window a row skips the chunks before its window and takes
//! only its window's keys of the chunk where the window starts. Within a chunk, scores run
//! one key per lane (K is stored dimension-major per KV block), and the exponentials and
//! weighted sums run as vector loops.

use super::par::SharedOut;
use super::pool::ThreadPool;
use super::softmax;
use super::tensor::{CpuKvPool, CpuTensor};
use crate::backend::{AttentionShape, BackendError, Result};
use crate::kv::KvLayout;
use crate::plan::{BatchPlan, SeqPlan};
use half::f16;
use std::cell::RefCell;

const QUERY_BLOCK: usize = 16;

/// Keys per softmax step, rounded down to whole KV blocks (see [`Ctx::block`]).
const KEY_CHUNK: usize = 64;

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
        crate::quant::widen_f16(src, dst);
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
    /// Per task: a chunk's widened K and V vectors and scores, then (max, sum, acc[head_dim])
    /// per (row, head).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Ctx<'_> {
    fn run<E: KvElem>(&self, pool: &ThreadPool, k: &[E], v: &[E], out: &SharedOut<f32>) {
        let num_kv_heads = self.shape.num_kv_heads;
        let blocks: usize = self.plan.seqs.iter().map(|s| s.num_query_tokens.div_ceil(QUERY_BLOCK)).sum();
        // With enough query blocks to share out, a task takes every KV head of its block, so
        // it reads each cached token's K and V as one stream; otherwise one KV head each.
        let heads_per_task = if blocks >= 4 * pool.num_threads() { num_kv_heads } else { 1 };
        let per_block = num_kv_heads / heads_per_task;
        let seq_tasks = |s: &SeqPlan| s.num_query_tokens.div_ceil(QUERY_BLOCK) * per_block;
        let num_tasks: usize = self.plan.seqs.iter().map(seq_tasks).sum();
        // Task `i` counts through the sequences' tasks in order: (query block, KV heads).
        let task = |mut i: usize| {
            for seq in &self.plan.seqs {
                let n = seq_tasks(seq);
                if i >= n {
                    i -= n;
                    continue;
                }
                let (block, part) = (i / per_block, i % per_block);
                let first = block * QUERY_BLOCK;
                let rows = first..(first + QUERY_BLOCK).min(seq.num_query_tokens);
                for kv_head in part * heads_per_task..(part + 1) * heads_per_task {
                    self.block(seq, rows.clone(), kv_head, k, v, out);
                }
                return;
            }
        };
        pool.for_each(num_tasks, task);
    }

    /// Attention of query rows `rows` (relative to the sequence) for the heads of `kv_head`.
    ///
    /// Keys go in chunks of [`KEY_CHUNK`] positions (whole KV blocks) aligned to position 0:
    /// a chunk's K blocks and V vectors are widened once for every row and head of the task; each (row, head) takes
    /// the chunk's scores, rescales its accumulator to the new running maximum, and adds the
    /// chunk's probabilities and weighted values. Chunk boundaries are absolute positions,
    /// so a row's arithmetic is the same in any batch or query block.
    fn block<E: KvElem>(&self, seq: &SeqPlan, rows: std::ops::Range<usize>, kv_head: usize, k: &[E], v: &[E], out: &SharedOut<f32>) {
        let AttentionShape { num_heads, num_kv_heads, head_dim: d, scale, window } = self.shape;
        // The first position a row at `pos` sees (sliding window), or 0.
        let first_key = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let group = num_heads / num_kv_heads;
        let (bs, table) = (self.layout.block_size, self.plan.block_table(seq));
        let n_acc = rows.len() * group;
        let first_row = seq.query_start + rows.start;
        let last_pos = self.plan.positions[seq.query_start + rows.end - 1] as usize;
        // Rows' positions rise through the block, so the first row sees the earliest key.
        let lo = first_key(self.plan.positions[first_row] as usize);
        // Whole blocks per chunk: a block's keys sit together in K (see `KvLayout`).
        let chunk_keys = (KEY_CHUNK / bs).max(1) * bs;
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            buf.resize(2 * chunk_keys * d + chunk_keys + n_acc * (d + 2), 0.0);
            let (kv_buf, rest) = buf.split_at_mut(2 * chunk_keys * d);
            let (kf, vf) = kv_buf.split_at_mut(chunk_keys * d);
            let (scores, acc) = rest.split_at_mut(chunk_keys);
            for a in acc.chunks_mut(d + 2) {
                a[0] = f32::NEG_INFINITY;
            }
            for c0 in (lo / chunk_keys * chunk_keys..=last_pos).step_by(chunk_keys) {
                let c1 = (c0 + chunk_keys).min(last_pos + 1);
                // K: each block's `d` rows of `bs` keys for this KV head, as they lie.
                for (&block, dst) in table[c0 / bs..c1.div_ceil(bs)].iter().zip(kf.chunks_exact_mut(d * bs)) {
                    let off = self.layout.k_index(self.layer, block as usize * bs, kv_head * d);
                    E::widen(&k[off..off + d * bs], dst);
                }
                for j in c0.max(lo)..c1 {
                    let slot = table[j / bs] as usize * bs + j % bs;
                    let off = self.layout.slot_offset(self.layer, slot) + kv_head * d;
                    E::widen(&v[off..off + d], &mut vf[(j - c0) * d..(j - c0 + 1) * d]);
                }
                for (r, accs) in acc.chunks_mut(group * (d + 2)).enumerate() {
                    let row = first_row + r;
                    let pos = self.plan.positions[row] as usize;
                    let row_lo = first_key(pos);
                    if pos < c0 || row_lo >= c1 {
                        continue; // the whole chunk is after this row, or before its window
                    }
                    // The row's keys in this chunk: `start..n`, relative to `c0`.
                    let (start, n) = (row_lo.max(c0) - c0, (pos + 1).min(c1) - c0);
                    let q_row = self.q.row(row);
                    for (h, a) in accs.chunks_mut(d + 2).enumerate() {
                        let head = kv_head * group + h;
                        let qh = &q_row[head * d..(head + 1) * d];
                        // Every key of the blocks holding the row's `n` keys (each key's
                        // score is its own lane: the ones past `n` are not used).
                        for b in start / bs..n.div_ceil(bs) {
                            let kt = &kf[b * d * bs..(b + 1) * d * bs];
                            softmax::scores_keys_in_lanes(qh, kt, scale, &mut scores[b * bs..(b + 1) * bs]);
                        }
                        let s = &mut scores[start..n];
                        fold_chunk(a, s, &vf[start * d..n * d]);
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

/// `a = [running max, running sum, acc[d]]`; folds in one chunk's scores `s` (overwritten
/// with their probabilities) and value rows `v`.
#[inline]
fn fold_chunk(a: &mut [f32], s: &mut [f32], v: &[f32]) {
    let m_chunk = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let m = a[0].max(m_chunk);
    // e^(old max - new max): 0 on the first chunk (old max = -inf), 1 if the max held.
    let keep = softmax::exp_nonpositive(a[0] - m);
    let sum = softmax::exp_and_sum(s, m);
    a[0] = m;
    a[1] = a[1] * keep + sum;
    softmax::scale_and_accumulate(&mut a[2..], keep, s, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvDtype;
    use crate::plan::LogitsFor;
    use crate::quant::test_util::Rng;

    /// Plain attention in f64 for one query row and head: softmax over positions `0..=pos`.
    fn naive(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let s: Vec<f64> = keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let l: f64 = p.iter().sum();
        (0..q.len()).map(|i| (p.iter().zip(values).map(|(p, v)| p * v[i] as f64).sum::<f64>() / l) as f32).collect()
    }

    /// The chunked online softmax against plain f64 attention, on awkward shapes: GQA ratios
    /// 1, 3 and 8, contexts across chunk and block edges, prefill blocks and single decode
    /// rows in one batch, scattered (non-contiguous) block tables, f32 and f16 caches; full
    /// attention and sliding windows of 1, 20 and 70 keys.
    #[test]
    fn matches_plain_attention_on_awkward_shapes() {
        let pool = ThreadPool::new(2, "test").unwrap();
        let mut rng = Rng::new(23);
        for (num_heads, num_kv_heads, dtype) in [(4, 4, KvDtype::F32), (9, 3, KvDtype::F16), (8, 1, KvDtype::F32)] {
            let (d, bs, num_blocks) = (16, 16, 64);
            let layout = KvLayout { num_layers: 2, num_blocks, block_size: bs, num_kv_heads, head_dim: d, dtype };
            let mut kv = CpuKvPool::new(layout).unwrap();
            // (cached tokens, new tokens): a fresh prefill, a prefill after a cached prefix
            // and decode rows whose context crosses 64-key chunks and 16-slot blocks.
            let seqs = [(0usize, 37usize), (60, 9), (63, 1), (64, 1), (200, 1), (129, 20)];
            let mut plan = BatchPlan::new(bs, num_blocks);
            let mut next_block = 0u32;
            let mut tables = Vec::new();
            for &(cached, new) in &seqs {
                // Scatter each sequence's blocks: every third id, wrapping.
                let table: Vec<u32> = (0..(cached + new).div_ceil(bs))
                    .map(|_| {
                        next_block = (next_block + 3) % num_blocks as u32;
                        next_block
                    })
                    .collect();
                plan.push_seq(&vec![1; new], cached, &table, LogitsFor::None).unwrap();
                tables.push(table);
            }
            let width = num_kv_heads * d;
            // Every position of every sequence gets K/V: write all of them through plans that
            // cover the whole context (the step's own plan only writes the new tokens).
            let mut all_k: Vec<Vec<Vec<f32>>> = Vec::new();
            let mut all_v: Vec<Vec<Vec<f32>>> = Vec::new();
            for (&(cached, new), table) in seqs.iter().zip(&tables) {
                let n = cached + new;
                let (k, v) = (rng.floats(n * width, 1.0), rng.floats(n * width, 1.0));
                let mut full = BatchPlan::new(bs, num_blocks);
                full.push_seq(&vec![1; n], 0, table, LogitsFor::None).unwrap();
                kv.write(&full, 1, &CpuTensor::from_rows(&k, width), &CpuTensor::from_rows(&v, width)).unwrap();
                // What the cache holds (f16 rounds).
                let held = |x: &[f32]| -> Vec<Vec<f32>> {
                    x.chunks(width)
                        .map(|r| r.iter().map(|&e| if dtype == KvDtype::F16 { f16::from_f32(e).to_f32() } else { e }).collect())
                        .collect()
                };
                all_k.push(held(&k));
                all_v.push(held(&v));
            }
            let q = CpuTensor::from_rows(&rng.floats(plan.num_tokens() * num_heads * d, 1.0), num_heads * d);
            // Full attention, and windows of one key, shorter and longer than a chunk.
            for window in [None, Some(1), Some(20), Some(70)] {
                let mut out = CpuTensor::zeros(plan.num_tokens(), num_heads * d).unwrap();
                let shape = AttentionShape { num_heads, num_kv_heads, head_dim: d, scale: 0.3, window };
                attention(&pool, &plan, 1, &q, &kv, shape, &mut out).unwrap();
                let group = num_heads / num_kv_heads;
                for (s, seq) in plan.seqs.iter().enumerate() {
                    for r in 0..seq.num_query_tokens {
                        let row = seq.query_start + r;
                        let pos = plan.positions[row] as usize;
                        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                        for h in 0..num_heads {
                            let kvh = h / group;
                            let keys: Vec<Vec<f32>> = all_k[s][lo..=pos].iter().map(|k| k[kvh * d..(kvh + 1) * d].to_vec()).collect();
                            let vals: Vec<Vec<f32>> = all_v[s][lo..=pos].iter().map(|v| v[kvh * d..(kvh + 1) * d].to_vec()).collect();
                            let want = naive(&q.row(row)[h * d..(h + 1) * d], &keys, &vals, 0.3);
                            let got = &out.row(row)[h * d..(h + 1) * d];
                            for (g, w) in got.iter().zip(&want) {
                                assert!((g - w).abs() <= 2e-5 * (1.0 + w.abs()), "window {window:?} seq {s} row {r} head {h}: {g} vs {w}");
                            }
                        }
                    }
                }
            }
        }
    }
}
