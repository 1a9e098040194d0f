//! The 2- and 3-bit k-quants: Q2_K and Q3_K, 16 sub-blocks of 16 elements per 256-element
//! super-block (bit layouts on their block types in `blocks.rs`).
//!
//! Both store an element's low 2 bits the same way: element `128n + 32j + 16h + l` is bits
//! `2j..2j+2` of `qs[32n + 16h + l]`.
// Blocks indexed by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ2K, BlockQ3K, QK_K, pack_scale_k3, scale_k3};
use super::float::f16_to_f32;
use half::f16;

/// Byte and shift of element `e`'s low 2 bits in `qs`.
#[inline(always)]
fn low2_at(e: usize) -> (usize, usize) {
    let (n, j, hl) = (e / 128, (e % 128) / 32, e % 32);
    (32 * n + hl, 2 * j)
}

/// The 256 unsigned 2-bit quants of a Q2_K block in element order.
#[inline(always)]
pub(crate) fn unpack_q2k(b: &BlockQ2K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (i, shift) = low2_at(e);
        (b.qs[i] >> shift) & 3
    })
}

/// The 256 unsigned 3-bit quants (value `q - 4`) of a Q3_K block in element order: the low
/// 2 bits as in Q2_K, the third from bit `4n + j` of `hmask[e % 32]`.
#[inline(always)]
pub(crate) fn unpack_q3k(b: &BlockQ3K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (i, shift) = low2_at(e);
        let bit = (b.hmask[e % 32] >> (4 * (e / 128) + (e % 128) / 32)) & 1;
        ((b.qs[i] >> shift) & 3) | bit << 2
    })
}

pub fn dequantize_q2k(blocks: &[BlockQ2K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let q = unpack_q2k(b);
        for (s, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let (dl, ml) = (d * (b.scales[s] & 0xF) as f32, dmin * (b.scales[s] >> 4) as f32);
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * q as f32 - ml;
            }
        }
    }
}

pub fn dequantize_q3k(blocks: &[BlockQ3K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let q = unpack_q3k(b);
        for (s, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * scale_k3(s, &b.scales) as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * (q as i32 - 4) as f32;
            }
        }
    }
}

fn put_low2(qs: &mut [u8; QK_K / 4], e: usize, q: u8) {
    let (i, shift) = low2_at(e);
    qs[i] |= (q & 3) << shift;
}

/// A plain min/max quantizer (not ggml's search): 4-bit scales and mins per 16 elements.
pub fn quantize_row_q2k(x: &[f32], out: &mut [BlockQ2K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let lo: [f32; 16] = std::array::from_fn(|s| x[16 * s..16 * s + 16].iter().fold(0.0f32, |m, &v| m.min(v)));
        let hi: [f32; 16] = std::array::from_fn(|s| x[16 * s..16 * s + 16].iter().fold(0.0f32, |m, &v| m.max(v)));
        let scale: [f32; 16] = std::array::from_fn(|s| (hi[s] - lo[s]) / 3.0);
        let d = f16::from_f32(scale.iter().fold(0.0f32, |m, &v| m.max(v)) / 15.0);
        let dmin = f16::from_f32(lo.iter().fold(0.0f32, |m, &v| m.max(-v)) / 15.0);
        let four_bit = |v: f32, unit: f16| {
            let unit = f16_to_f32(unit);
            if unit > 0.0 { (v / unit).round().clamp(0.0, 15.0) as u8 } else { 0 }
        };
        (b.d, b.dmin, b.qs) = (d, dmin, [0; QK_K / 4]);
        for s in 0..16 {
            let (sc, m) = (four_bit(scale[s], d), four_bit(-lo[s], dmin));
            b.scales[s] = sc | m << 4;
            let (step, off) = (f16_to_f32(d) * sc as f32, f16_to_f32(dmin) * m as f32);
            for e in 16 * s..16 * s + 16 {
                let q = if step > 0.0 { ((x[e] + off) / step).round().clamp(0.0, 3.0) as u8 } else { 0 };
                put_low2(&mut b.qs, e, q);
            }
        }
    }
}

/// A plain absmax quantizer: per 16 elements the signed maximum maps to `-4` (as Q4_0 does
/// per block), the sub-block scales to 6 signed bits of `d`.
pub fn quantize_row_q3k(x: &[f32], out: &mut [BlockQ3K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let sub: [f32; 16] =
            std::array::from_fn(|s| x[16 * s..16 * s + 16].iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m }) / -4.0);
        let d = f16::from_f32(sub.iter().fold(0.0f32, |m, &v| m.max(v.abs())) / 31.0);
        let sc: [i8; 16] = std::array::from_fn(|s| {
            let unit = f16_to_f32(d);
            if unit > 0.0 { (sub[s] / unit).round().clamp(-32.0, 31.0) as i8 } else { 0 }
        });
        (b.d, b.scales, b.qs, b.hmask) = (d, pack_scale_k3(&sc), [0; QK_K / 4], [0; QK_K / 8]);
        for (e, &v) in x.iter().enumerate() {
            let step = f16_to_f32(d) * sc[e / 16] as f32;
            let q = if step != 0.0 { ((v / step).round() + 4.0).clamp(0.0, 7.0) as u8 } else { 4 };
            put_low2(&mut b.qs, e, q);
            b.hmask[e % 32] |= (q >> 2) << (4 * (e / 128) + (e % 128) / 32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn q3k_scales_round_trip_for_every_sub_block() {
        let sc: [i8; 16] = std::array::from_fn(|s| (s as i8 * 7 + 3) % 64 - 32);
        let packed = pack_scale_k3(&sc);
        for s in 0..16 {
            assert_eq!(scale_k3(s, &packed), sc[s], "sub-block {s}");
        }
    }

    #[test]
    fn q2k_element_bits_follow_the_ggml_loop() {
        let mut b = BlockQ2K::zeroed();
        b.d = f16::from_f32(1.0);
        b.scales = [1; 16];
        // n = 1, j = 2, h = 1, l = 3: element 128 + 64 + 16 + 3 = 211, byte 32 + 16 + 3, shift 4.
        b.qs[51] = 3 << 4;
        let mut y = vec![0.0; QK_K];
        dequantize_q2k(&[b], &mut y);
        assert_eq!(y[211], 3.0);
        assert_eq!(y.iter().filter(|&&v| v != 0.0).count(), 1);
    }

    #[test]
    fn q3k_high_bit_clear_subtracts_four() {
        let mut b = BlockQ3K::zeroed();
        b.d = f16::from_f32(0.5);
        b.scales = pack_scale_k3(&[2; 16]);
        b.hmask = [0xFF; 32];
        // Element 128 + 32 + 5 (n = 1, j = 1): hmask[5] bit 5 cleared → q - 4 = -4.
        b.hmask[5] &= !(1 << 5);
        let mut y = vec![0.0; QK_K];
        dequantize_q3k(&[b], &mut y);
        assert_eq!(y[165], -4.0);
        assert_eq!(y.iter().filter(|&&v| v != 0.0).count(), 1);
    }
}
