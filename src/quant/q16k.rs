//! 16-bit activations for k-quant weights (256-element super-blocks). See `q16.rs` for why
//! 16 bits; the sums of 16- and 8-bit products with 6/8-bit scales accumulate in i64.
// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ4K, BlockQ6K, QK_K, scale_min_k4};
use super::float::f16_to_f32;
use super::kquants::unpack_q6k;
use super::multiversion::multiversion;
use bytemuck::{Pod, Zeroable};

/// 256 activations for k-quant weights: `x ≈ q * d`, with the sums of each 16 `q`s.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ16K {
    pub d: f32,
    pub bsums: [i32; QK_K / 16],
    pub qs: [i16; QK_K],
}

const _: () = assert!(size_of::<BlockQ16K>() == 580);

pub fn quantize_row_q16k(x: &[f32], out: &mut [BlockQ16K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        b.d = super::q16::quantize16(x, &mut b.qs, super::q16::Q16_MAX);
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i32).sum();
        }
    }
}

multiversion! {
    /// Q4_K weights · 16-bit activations.
    pub fn vec_dot_q4k_q16k / vec_dot_q4k_q16k_portable(w: &[BlockQ4K], x: &[BlockQ16K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let (mut sumi, mut summs) = (0i64, 0i64);
            for c in 0..4 {
                // Sub-block 2c: low nibbles of qs[32c..32c+32]; 2c+1: their high nibbles.
                let (mut s1, mut s2) = (0i32, 0i32);
                for l in 0..32 {
                    let q = w.qs[32 * c + l];
                    s1 += (q & 0xF) as i32 * x.qs[64 * c + l] as i32;
                    s2 += (q >> 4) as i32 * x.qs[64 * c + 32 + l] as i32;
                }
                let (sc1, m1) = scale_min_k4(2 * c, &w.scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, &w.scales);
                sumi += sc1 as i64 * s1 as i64 + sc2 as i64 * s2 as i64;
                let b = &x.bsums[4 * c..4 * c + 4];
                summs += m1 as i64 * (b[0] + b[1]) as i64 + m2 as i64 * (b[2] + b[3]) as i64;
            }
            sum += f16_to_f32(w.d) * x.d * sumi as f32 - f16_to_f32(w.dmin) * x.d * summs as f32;
        }
        sum
    }
}

multiversion! {
    /// Q6_K weights · 16-bit activations.
    pub fn vec_dot_q6k_q16k / vec_dot_q6k_q16k_portable(w: &[BlockQ6K], x: &[BlockQ16K]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let q = unpack_q6k(w);
            let mut sumi = 0i64;
            for s in 0..16 {
                let mut si = 0i32;
                for e in 16 * s..16 * (s + 1) {
                    si += q[e] as i32 * x.qs[e] as i32;
                }
                sumi += w.scales[s] as i64 * si as i64;
            }
            sum += f16_to_f32(w.d) * x.d * sumi as f32;
        }
        sum
    }
}
