//! AVX2 kernels for the 16-bit-activation dot products of 32-element blocks.
//!
//! Each mirrors its portable twin in `q16.rs` operation for operation: per block, eight i32
//! lane sums (exact integers) from `madd_epi16` — lane `l` covers elements
//! `{2l, 2l+1, 16+2l, 17+2l}` — converted to f32, multiplied by the block scale and added to
//! eight f32 accumulators (no fused multiply-add, so both round alike); the lanes are summed
//! in a fixed order at the end. The results are bit-identical (a test holds them to it).

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use super::float::f16_to_f32;
use super::q16::{BlockQ16, sum8};
use std::arch::x86_64::*;

/// Adds `sums · d` to `acc`, lane by lane.
#[inline]
#[target_feature(enable = "avx2")]
fn accumulate(acc: __m256, sums: __m256i, d: f32) -> __m256 {
    _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d)))
}

#[inline]
#[target_feature(enable = "avx2")]
fn lanes_to_array(acc: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 f32; unaligned store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

/// The 32 activations of a block as two vectors of 16 i16.
#[inline]
#[target_feature(enable = "avx2")]
fn load_x(x: &BlockQ16) -> (__m256i, __m256i) {
    let p = x.qs.as_ptr() as *const __m256i;
    // SAFETY: `qs` holds 32 i16 = two 32-byte vectors; unaligned loads.
    unsafe { (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))) }
}

/// Low and high nibbles of 16 bytes, widened to i16 (elements 0..16 and 16..32).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> (__m256i, __m256i) {
    // SAFETY: `qs` is 16 bytes; unaligned load.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm256_cvtepu8_epi16(_mm_and_si128(q, mask));
    let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
    (lo, hi)
}

/// Q4_1 weights · 16-bit activations.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn vec_dot_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut sum_min = 0.0f32;
    for (w, x) in w.iter().zip(x) {
        let (lo, hi) = nibbles(&w.qs);
        let (x0, x1) = load_x(x);
        let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
        acc = accumulate(acc, sums, f16_to_f32(w.d) * x.d);
        sum_min += f16_to_f32(w.m) * x.s;
    }
    sum8(&lanes_to_array(acc)) + sum_min
}

/// Q4_0 weights · 16-bit activations.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn vec_dot_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi16(8);
    for (w, x) in w.iter().zip(x) {
        let (lo, hi) = nibbles(&w.qs);
        let (lo, hi) = (_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight));
        let (x0, x1) = load_x(x);
        let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
        acc = accumulate(acc, sums, f16_to_f32(w.d) * x.d);
    }
    sum8(&lanes_to_array(acc))
}

/// Q8_0 weights · 16-bit activations.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn vec_dot_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, x) in w.iter().zip(x) {
        let p = w.qs.as_ptr() as *const __m128i;
        // SAFETY: `qs` holds 32 bytes, read as two unaligned 16-byte halves.
        let (lo, hi) = unsafe { (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1))) };
        let (lo, hi) = (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi));
        let (x0, x1) = load_x(x);
        let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
        acc = accumulate(acc, sums, f16_to_f32(w.d) * x.d);
    }
    sum8(&lanes_to_array(acc))
}

/// Q4_1 weights · `N` activation rows at once: each weight block is unpacked once and used
/// `N` times. Per row, the operations and their order are those of [`vec_dot_q4_1_q16`], so
/// each result is bit-identical to it (batch invariance does not depend on the grouping).
///
/// # Safety
/// The CPU must support AVX2; every `x[k]` must have `w.len()` blocks.
#[target_feature(enable = "avx2")]
pub unsafe fn vec_dot_q4_1_q16_xn<const N: usize>(w: &[BlockQ4_1], x: [&[BlockQ16]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut sum_min = [0.0f32; N];
    for (i, w) in w.iter().enumerate() {
        let (lo, hi) = nibbles(&w.qs);
        let (d, m) = (f16_to_f32(w.d), f16_to_f32(w.m));
        for k in 0..N {
            let xb = &x[k][i];
            let (x0, x1) = load_x(xb);
            let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
            acc[k] = accumulate(acc[k], sums, d * xb.d);
            sum_min[k] += m * xb.s;
        }
    }
    std::array::from_fn(|k| sum8(&lanes_to_array(acc[k])) + sum_min[k])
}

/// Q8_0 weights · `N` activation rows at once (see [`vec_dot_q4_1_q16_xn`]).
///
/// # Safety
/// The CPU must support AVX2; every `x[k]` must have `w.len()` blocks.
#[target_feature(enable = "avx2")]
pub unsafe fn vec_dot_q8_0_q16_xn<const N: usize>(w: &[BlockQ8_0], x: [&[BlockQ16]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, w) in w.iter().enumerate() {
        let p = w.qs.as_ptr() as *const __m128i;
        // SAFETY: `qs` holds 32 bytes, read as two unaligned 16-byte halves.
        let (lo, hi) = unsafe { (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1))) };
        let (lo, hi) = (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi));
        let d = f16_to_f32(w.d);
        for k in 0..N {
            let xb = &x[k][i];
            let (x0, x1) = load_x(xb);
            let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
            acc[k] = accumulate(acc[k], sums, d * xb.d);
        }
    }
    std::array::from_fn(|k| sum8(&lanes_to_array(acc[k])))
}
