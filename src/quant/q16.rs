//! 16-bit integer activations: the default fast path's arithmetic.
//!
//! llama.cpp rounds activations to 8 bits before its integer dot products; on SmolLM2 that
//! moves logits by up to ~0.3 and flips greedy choices wherever the top two are close. Sixteen
//! bits per element (one f32 scale per block) keep the integer dot products but leave an
//! error ~256 times smaller, indistinguishable from f32 activations in the goldens, at the
//! same weight traffic (decode is bound by reading the 4-bit weights, not by arithmetic).
//!
//! Sums: a block of 32 products of a 4- or 8-bit weight and a 16-bit activation fits an i32;
//! k-quant super-blocks multiply sub-block sums by 6/8-bit scales, so they accumulate in i64.
// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, QK, QK_K, scale_min_k4};
use super::float::f16_to_f32;
use super::kquants::unpack_q6k;
use super::multiversion::multiversion;
use bytemuck::{Pod, Zeroable};

const Q16_MAX: f32 = 32767.0;

/// 32 activations: `x ≈ q * d`, `s = d * Σq`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ16 {
    pub d: f32,
    pub s: f32,
    pub qs: [i16; QK],
}

/// 256 activations for k-quant weights: `x ≈ q * d`, with the sums of each 16 `q`s.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ16K {
    pub d: f32,
    pub bsums: [i32; QK_K / 16],
    pub qs: [i16; QK_K],
}

const _: () = assert!(size_of::<BlockQ16>() == 72);
const _: () = assert!(size_of::<BlockQ16K>() == 580);

/// `d = max|x| / 32767`, `q = round(x / d)`; returns `d`.
#[inline(always)]
fn quantize16(x: &[f32], qs: &mut [i16]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / Q16_MAX;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i16;
    }
    d
}

pub fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        b.d = quantize16(x, &mut b.qs);
        b.s = b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
}

pub fn quantize_row_q16k(x: &[f32], out: &mut [BlockQ16K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        b.d = quantize16(x, &mut b.qs);
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i32).sum();
        }
    }
}

/// Sums eight lanes in a fixed order (the AVX2 kernels end the same way).
#[inline(always)]
pub(super) fn sum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// Eight exact lane sums of `q · x` over a block; lane `l` covers elements
/// `{2l, 2l+1, 16+2l, 17+2l}` (the lanes of AVX2's `madd_epi16` on the two halves).
#[inline(always)]
fn lane_sums(q: &[i16; QK], x: &[i16; QK]) -> [i32; 8] {
    let p = |i: usize| q[i] as i32 * x[i] as i32;
    std::array::from_fn(|l| p(2 * l) + p(2 * l + 1) + p(16 + 2 * l) + p(17 + 2 * l))
}

/// `acc[l] += lanes[l] · d` (multiply, then add: no fused rounding).
#[inline(always)]
fn accumulate(acc: &mut [f32; 8], lanes: [i32; 8], d: f32) {
    for (a, s) in acc.iter_mut().zip(lanes) {
        *a += s as f32 * d;
    }
}

#[inline(always)]
fn nibbles(qs: &[u8; QK / 2], offset: i16) -> [i16; QK] {
    std::array::from_fn(|i| if i < QK / 2 { (qs[i] & 0xF) as i16 } else { (qs[i - QK / 2] >> 4) as i16 } - offset)
}

/// Runs the AVX2 kernel when the CPU has it, else the portable twin.
macro_rules! dispatch {
    ($avx2:ident, $portable:ident, $w:expr, $x:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if super::multiversion::has_avx2() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { super::avx2::$avx2($w, $x) };
        }
        $portable($w, $x)
    }};
}

/// Q4_0 weights · 16-bit activations.
pub fn vec_dot_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16]) -> f32 {
    dispatch!(vec_dot_q4_0_q16, vec_dot_q4_0_q16_portable, w, x)
}

pub fn vec_dot_q4_0_q16_portable(w: &[BlockQ4_0], x: &[BlockQ16]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, x) in w.iter().zip(x) {
        accumulate(&mut acc, lane_sums(&nibbles(&w.qs, 8), &x.qs), f16_to_f32(w.d) * x.d);
    }
    sum8(&acc)
}

/// Q4_1 weights · 16-bit activations: `d_w d_x Σ q q_x` in lanes, plus `Σ m_w s_x`.
pub fn vec_dot_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16]) -> f32 {
    dispatch!(vec_dot_q4_1_q16, vec_dot_q4_1_q16_portable, w, x)
}

pub fn vec_dot_q4_1_q16_portable(w: &[BlockQ4_1], x: &[BlockQ16]) -> f32 {
    let mut acc = [0f32; 8];
    let mut sum_min = 0.0f32;
    for (w, x) in w.iter().zip(x) {
        accumulate(&mut acc, lane_sums(&nibbles(&w.qs, 0), &x.qs), f16_to_f32(w.d) * x.d);
        sum_min += f16_to_f32(w.m) * x.s;
    }
    sum8(&acc) + sum_min
}

/// `N` dot products of one weight row with `N` activation rows; each result is
/// bit-identical to [`vec_dot_q4_1_q16`] of that row (the AVX2 kernel unpacks each weight
/// block once for all of them).
pub fn vec_dot_q4_1_q16_xn<const N: usize>(w: &[BlockQ4_1], x: [&[BlockQ16]; N]) -> [f32; N] {
    assert!(x.iter().all(|x| x.len() == w.len()), "activation rows must match the weight row");
    #[cfg(target_arch = "x86_64")]
    if super::multiversion::has_avx2() {
        // SAFETY: the CPU supports AVX2 and the lengths match.
        return unsafe { super::avx2::vec_dot_q4_1_q16_xn(w, x) };
    }
    x.map(|x| vec_dot_q4_1_q16_portable(w, x))
}

/// `N` Q8_0 dot products (see [`vec_dot_q4_1_q16_xn`]).
pub fn vec_dot_q8_0_q16_xn<const N: usize>(w: &[BlockQ8_0], x: [&[BlockQ16]; N]) -> [f32; N] {
    assert!(x.iter().all(|x| x.len() == w.len()), "activation rows must match the weight row");
    #[cfg(target_arch = "x86_64")]
    if super::multiversion::has_avx2() {
        // SAFETY: the CPU supports AVX2 and the lengths match.
        return unsafe { super::avx2::vec_dot_q8_0_q16_xn(w, x) };
    }
    x.map(|x| vec_dot_q8_0_q16_portable(w, x))
}

/// Q8_0 weights · 16-bit activations.
pub fn vec_dot_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16]) -> f32 {
    dispatch!(vec_dot_q8_0_q16, vec_dot_q8_0_q16_portable, w, x)
}

pub fn vec_dot_q8_0_q16_portable(w: &[BlockQ8_0], x: &[BlockQ16]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, x) in w.iter().zip(x) {
        let q: [i16; QK] = std::array::from_fn(|i| w.qs[i] as i16);
        accumulate(&mut acc, lane_sums(&q, &x.qs), f16_to_f32(w.d) * x.d);
    }
    sum8(&acc)
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
