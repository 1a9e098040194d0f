//! 8-bit formats: Q8_0 (weights and activations), Q8_1 (activations for Q4_1), Q8_K
//! (activations for k-quants). Quantizers follow ggml's reference ones, so activations round
//! exactly as llama.cpp's do.

use super::blocks::{BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K};
use super::float::f16_to_f32;
use super::multiversion::multiversion;
use half::f16;

#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Symmetric 8-bit: `d = max|x| / 127`, `q = round(x / d)`.
#[inline(always)]
fn quantize_symmetric(x: &[f32], qs: &mut [i8]) -> f32 {
    let d = amax(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// `x.len()` must equal `out.len() * 32`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        b.d = f16::from_f32(quantize_symmetric(x, &mut b.qs));
    }
}

/// Like Q8_0, plus `s = d * Σq` (ggml stores both scales as f16).
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let d = quantize_symmetric(x, &mut b.qs);
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
}

/// Q8_K: scale from the element of largest magnitude (`-127 / max`, keeping its sign),
/// round to nearest even, plus the sums of each 16 quants.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        if max == 0.0 {
            *b = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in b.qs.iter_mut().zip(x) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_1(blocks: &[BlockQ8_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_k(blocks: &[BlockQ8K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * b.d;
        }
    }
}

/// `Σ a[i] * b[i]` of two blocks of 32 signed bytes.
#[inline(always)]
pub fn dot_i8_32(a: &[i8; QK], b: &[i8; QK]) -> i32 {
    let mut sum = 0i32;
    for i in 0..QK {
        sum += a[i] as i32 * b[i] as i32;
    }
    sum
}

multiversion! {
    /// Q8_0 weights · Q8_0 activations.
    pub fn vec_dot_q8_0_q8_0 / vec_dot_q8_0_q8_0_portable(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            sum += (f16_to_f32(w.d) * f16_to_f32(x.d)) * dot_i8_32(&w.qs, &x.qs) as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_util::Rng;

    #[test]
    fn q8_0_rounds_half_away_from_zero_like_ggml() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0; // d = 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49;
        let mut b = [BlockQ8_0::zeroed()];
        quantize_row_q8_0(&x, &mut b);
        assert_eq!(f16_to_f32(b[0].d), 1.0);
        assert_eq!(&b[0].qs[..4], &[127, 3, -3, 0]);
    }

    #[test]
    fn q8_1_sum_is_scaled_sum_of_quants() {
        let x = Rng::new(1).floats(QK, 3.0);
        let mut b = [BlockQ8_1::zeroed()];
        quantize_row_q8_1(&x, &mut b);
        let sum: i32 = b[0].qs.iter().map(|&q| q as i32).sum();
        let expected = f16::from_f32(sum as f32 * (amax(&x) / 127.0));
        assert_eq!(b[0].s, expected);
    }

    #[test]
    fn q8_k_uses_the_signed_maximum_and_block_sums() {
        let mut x = Rng::new(2).floats(QK_K, 1.0);
        x[7] = -4.0; // the largest magnitude always maps to -127 (d takes the other sign)
        let mut b = [BlockQ8K::zeroed()];
        quantize_row_q8_k(&x, &mut b);
        assert_eq!(b[0].qs[7], -127);
        assert!((b[0].d - 4.0 / 127.0).abs() < 1e-7);
        for j in 0..16 {
            let s: i16 = b[0].qs[16 * j..16 * (j + 1)].iter().map(|&q| q as i16).sum();
            assert_eq!(b[0].bsums[j], s);
        }
        let mut back = vec![0.0; QK_K];
        dequantize_q8_k(&b, &mut back);
        for (a, r) in x.iter().zip(&back) {
            assert!((a - r).abs() <= 4.0 / 127.0 * 0.5 + 1e-6);
        }
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let x = [0.0f32; QK_K];
        let mut b = [BlockQ8K::zeroed()];
        quantize_row_q8_k(&x, &mut b);
        assert!(b[0].qs.iter().all(|&q| q == 0) && b[0].d == 0.0);
        let mut b0 = [BlockQ8_0::zeroed()];
        quantize_row_q8_0(&x[..QK], &mut b0);
        assert!(b0[0].qs.iter().all(|&q| q == 0));
    }

    use bytemuck::Zeroable;
}
