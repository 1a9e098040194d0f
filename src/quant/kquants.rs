//! k-quants with 256-element super-blocks: Q4_K, Q5_K and Q6_K (the 2- and 3-bit ones are
//! in `kquants_low.rs`); Q4_K and Q6_K also dotted with Q8_K activations (llama.cpp's
//! arithmetic).
//!
//! Q6_K layout: each half `n` of the block (128 elements) uses `ql[64n..64n+64]`,
//! `qh[32n..32n+32]`; for `l < 32` the four elements `128n + 32g + l` (g = 0..4) take their
//! low 4 bits from `ql[64n + l]` (g = 0 low nibble, g = 2 high nibble) or `ql[64n + 32 + l]`
//! (g = 1 low, g = 3 high), and their top 2 bits from bits `2g..2g+2` of `qh[32n + l]`.
//! Element `e` uses scale `scales[e / 16]`.
// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K, pack_scale_min_k4, scale_min_k4};
use super::float::f16_to_f32;
use super::multiversion::multiversion;
use half::f16;

/// The 256 signed 6-bit quants (−32..31) of a Q6_K block in element order.
#[inline(always)]
pub(crate) fn unpack_q6k(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for n in 0..2 {
        for l in 0..32 {
            let (lo, hi, h) = (b.ql[64 * n + l], b.ql[64 * n + 32 + l], b.qh[32 * n + l]);
            let base = 128 * n + l;
            q[base] = ((lo & 0xF) | ((h & 3) << 4)) as i8 - 32;
            q[base + 32] = ((hi & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
            q[base + 64] = ((lo >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            q[base + 96] = ((hi >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

fn pack_q6k(q: &[i8; QK_K], b: &mut BlockQ6K) {
    for n in 0..2 {
        for l in 0..32 {
            let base = 128 * n + l;
            let u = [0, 32, 64, 96].map(|g| (q[base + g] + 32) as u8);
            b.ql[64 * n + l] = (u[0] & 0xF) | ((u[2] & 0xF) << 4);
            b.ql[64 * n + 32 + l] = (u[1] & 0xF) | ((u[3] & 0xF) << 4);
            b.qh[32 * n + l] = (u[0] >> 4) | ((u[1] >> 4) << 2) | ((u[2] >> 4) << 4) | ((u[3] >> 4) << 6);
        }
    }
}

pub fn dequantize_q4k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, o1, d2, o2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
            for l in 0..32 {
                let q = b.qs[32 * c + l];
                y[64 * c + l] = d1 * (q & 0xF) as f32 - o1;
                y[64 * c + 32 + l] = d2 * (q >> 4) as f32 - o2;
            }
        }
    }
}

/// The 256 nibbles of a Q4_K block in element order.
pub(crate) fn unpack_q4k(b: &BlockQ4K) -> [u8; QK_K] {
    std::array::from_fn(|e| (b.qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0xF)
}

/// The 256 unsigned 5-bit quants of a Q5_K block in element order.
#[inline(always)]
pub(crate) fn unpack_q5k(b: &BlockQ5K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (c, h, l) = (e / 64, (e / 32) % 2, e % 32);
        let nibble = (b.qs[32 * c + l] >> (4 * h)) & 0xF;
        nibble | ((b.qh[l] >> (2 * c + h)) & 1) << 4
    })
}

pub fn dequantize_q5k(blocks: &[BlockQ5K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let q = unpack_q5k(b);
        for (j, (y, q)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * q as f32 - ml;
            }
        }
    }
}

pub fn dequantize_q6k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let q = unpack_q6k(b);
        for (e, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[e / 16] as f32 * q[e] as f32;
        }
    }
}

/// A plain min/max quantizer (not ggml's iterative search): valid blocks for building test
/// data and for quantizing on load.
pub fn quantize_row_q4k(x: &[f32], out: &mut [BlockQ4K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        for (j, sub) in x.chunks_exact(32).enumerate() {
            let lo = sub.iter().fold(0.0f32, |m, &v| m.min(v));
            let hi = sub.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            scales[j] = (hi - lo) / 15.0;
            mins[j] = -lo;
        }
        let d = scales.iter().fold(0.0f32, |m, &v| m.max(v)) / 63.0;
        let dmin = mins.iter().fold(0.0f32, |m, &v| m.max(v)) / 63.0;
        let (d16, dmin16) = (f16::from_f32(d), f16::from_f32(dmin));
        let six_bit = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 };
        let sc: [u8; 8] = std::array::from_fn(|j| six_bit(scales[j], d));
        let m: [u8; 8] = std::array::from_fn(|j| six_bit(mins[j], dmin));
        b.d = d16;
        b.dmin = dmin16;
        b.scales = pack_scale_min_k4(&sc, &m);
        for c in 0..4 {
            let q = |j: usize, v: f32| {
                let step = f16_to_f32(d16) * sc[j] as f32;
                let off = f16_to_f32(dmin16) * m[j] as f32;
                if step > 0.0 { ((v + off) / step).round().clamp(0.0, 15.0) as u8 } else { 0 }
            };
            for l in 0..32 {
                b.qs[32 * c + l] = q(2 * c, x[64 * c + l]) | (q(2 * c + 1, x[64 * c + 32 + l]) << 4);
            }
        }
    }
}

/// Six-bit scales and mins of eight 32-element sub-blocks over a grid of `levels` steps
/// (min/max per sub-block, not ggml's search): `(d, dmin, sc, m)`.
fn scales_mins_k(x: &[f32], levels: f32) -> (f16, f16, [u8; 8], [u8; 8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = sub.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        scales[j] = (hi - lo) / levels;
        mins[j] = -lo;
    }
    let d = f16::from_f32(scales.iter().fold(0.0f32, |m, &v| m.max(v)) / 63.0);
    let dmin = f16::from_f32(mins.iter().fold(0.0f32, |m, &v| m.max(v)) / 63.0);
    let six_bit = |v: f32, unit: f16| {
        let unit = f16_to_f32(unit);
        if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 }
    };
    (d, dmin, scales.map(|v| six_bit(v, d)), mins.map(|v| six_bit(v, dmin)))
}

/// A plain min/max quantizer (see [`quantize_row_q4k`]).
pub fn quantize_row_q5k(x: &[f32], out: &mut [BlockQ5K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (d, dmin, sc, m) = scales_mins_k(x, 31.0);
        (b.d, b.dmin, b.scales) = (d, dmin, pack_scale_min_k4(&sc, &m));
        b.qs = [0; QK_K / 2];
        b.qh = [0; QK_K / 8];
        for (e, &v) in x.iter().enumerate() {
            let j = e / 32;
            let step = f16_to_f32(d) * sc[j] as f32;
            let off = f16_to_f32(dmin) * m[j] as f32;
            let q = if step > 0.0 { ((v + off) / step).round().clamp(0.0, 31.0) as u8 } else { 0 };
            let (c, h, l) = (e / 64, (e / 32) % 2, e % 32);
            b.qs[32 * c + l] |= (q & 0xF) << (4 * h);
            b.qh[l] |= (q >> 4) << (2 * c + h);
        }
    }
}

/// A plain per-sub-block absmax quantizer (see [`quantize_row_q4k`]).
pub fn quantize_row_q6k(x: &[f32], out: &mut [BlockQ6K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let sub_scale: [f32; 16] = std::array::from_fn(|s| x[16 * s..16 * (s + 1)].iter().fold(0.0f32, |m, &v| m.max(v.abs())) / 31.0);
        let d = sub_scale.iter().fold(0.0f32, |m, &v| m.max(v)) / 127.0;
        let d16 = f16::from_f32(d);
        b.d = d16;
        let mut q = [0i8; QK_K];
        for s in 0..16 {
            let sc = if d > 0.0 { (sub_scale[s] / d).round().clamp(-127.0, 127.0) as i8 } else { 0 };
            b.scales[s] = sc;
            let step = f16_to_f32(d16) * sc as f32;
            for e in 16 * s..16 * (s + 1) {
                q[e] = if step != 0.0 { (x[e] / step).round().clamp(-32.0, 31.0) as i8 } else { 0 };
            }
        }
        pack_q6k(&q, b);
    }
}

multiversion! {
    /// Q4_K weights · Q8_K activations.
    pub fn vec_dot_q4k_q8k / vec_dot_q4k_q8k_portable(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let (mut sumi, mut summs) = (0i32, 0i32);
            for c in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * c, &w.scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, &w.scales);
                let (mut s1, mut s2) = (0i32, 0i32);
                for l in 0..32 {
                    let q = w.qs[32 * c + l];
                    s1 += (q & 0xF) as i32 * x.qs[64 * c + l] as i32;
                    s2 += (q >> 4) as i32 * x.qs[64 * c + 32 + l] as i32;
                }
                sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
                let b = &x.bsums[4 * c..4 * c + 4];
                summs += m1 as i32 * (b[0] as i32 + b[1] as i32) + m2 as i32 * (b[2] as i32 + b[3] as i32);
            }
            sum += f16_to_f32(w.d) * x.d * sumi as f32 - f16_to_f32(w.dmin) * x.d * summs as f32;
        }
        sum
    }
}

multiversion! {
    /// Q6_K weights · Q8_K activations.
    pub fn vec_dot_q6k_q8k / vec_dot_q6k_q8k_portable(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let q = unpack_q6k(w);
            let mut sumi = 0i32;
            for s in 0..16 {
                let mut si = 0i32;
                for e in 16 * s..16 * (s + 1) {
                    si += q[e] as i32 * x.qs[e] as i32;
                }
                sumi += w.scales[s] as i32 * si;
            }
            sum += f16_to_f32(w.d) * x.d * sumi as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn q4k_scale_packing_round_trips_for_all_sub_blocks() {
        let sc = [1, 17, 33, 63, 0, 31, 48, 62];
        let m = [63, 2, 40, 9, 59, 16, 1, 35];
        let packed = pack_scale_min_k4(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4k_block_decodes_known_values() {
        let mut b = BlockQ4K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        let sc = [1, 2, 3, 4, 5, 6, 7, 8];
        let m = [0, 4, 0, 4, 8, 0, 8, 0];
        b.scales = pack_scale_min_k4(&sc, &m);
        for c in 0..4 {
            for l in 0..32 {
                b.qs[32 * c + l] = (l as u8 % 16) | ((15 - l as u8 % 16) << 4);
            }
        }
        let mut y = vec![0.0; QK_K];
        dequantize_q4k(&[b], &mut y);
        for c in 0..4 {
            for l in 0..32 {
                let (lo, hi) = ((l % 16) as f32, (15 - l % 16) as f32);
                assert_eq!(y[64 * c + l], 0.5 * sc[2 * c] as f32 * lo - 0.25 * m[2 * c] as f32);
                assert_eq!(y[64 * c + 32 + l], 0.5 * sc[2 * c + 1] as f32 * hi - 0.25 * m[2 * c + 1] as f32);
            }
        }
    }

    #[test]
    fn q6k_bit_layout_round_trips_every_position() {
        let q: [i8; QK_K] = std::array::from_fn(|e| ((e * 7 + 3) % 64) as i8 - 32);
        let mut b = BlockQ6K::zeroed();
        pack_q6k(&q, &mut b);
        assert_eq!(unpack_q6k(&b), q);
        // Element 0: low bits in ql[0] low nibble, high bits in qh[0] bits 0-1.
        let u0 = (q[0] + 32) as u8;
        assert_eq!(b.ql[0] & 0xF, u0 & 0xF);
        assert_eq!(b.qh[0] & 3, u0 >> 4);
        // Element 96 + 128: second half, g = 3: ql[64 + 32] high nibble, qh[32] bits 6-7.
        let u = (q[224] + 32) as u8;
        assert_eq!(b.ql[96] >> 4, u & 0xF);
        assert_eq!(b.qh[32] >> 6, u >> 4);
    }

    #[test]
    fn q5k_fifth_bits_sit_in_qh_by_sub_block() {
        let mut b = BlockQ5K::zeroed();
        b.d = f16::from_f32(1.0);
        b.scales = pack_scale_min_k4(&[1; 8], &[0; 8]);
        // Element 64c + 32h + l takes bit 2c + h of qh[l].
        b.qh[5] = 1 << 3; // c = 1, h = 1: element 64 + 32 + 5
        b.qs[32 + 5] = 0x20; // its nibble (high nibble of qs[32 + 5]) is 2
        let mut y = vec![0.0; QK_K];
        dequantize_q5k(&[b], &mut y);
        assert_eq!(y[101], 18.0);
        assert_eq!(y.iter().filter(|&&v| v != 0.0).count(), 1);
    }

    #[test]
    fn q6k_scales_apply_per_sixteen() {
        let mut b = BlockQ6K::zeroed();
        b.d = f16::from_f32(0.25);
        for s in 0..16 {
            b.scales[s] = s as i8 - 8;
        }
        let q = [5i8; QK_K];
        pack_q6k(&q, &mut b);
        let mut y = vec![0.0; QK_K];
        dequantize_q6k(&[b], &mut y);
        for e in 0..QK_K {
            assert_eq!(y[e], 0.25 * ((e / 16) as f32 - 8.0) * 5.0);
        }
    }
}
