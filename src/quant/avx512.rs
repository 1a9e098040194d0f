//! AVX-512 VNNI kernels for 16-bit activations: the arithmetic of `q16.rs`, a pair of blocks
//! (sixteen lanes) per step. A pair's first halves go through `vpmaddwd` and its second
//! halves are added by `vpdpwssd` (exact: it does not saturate), leaving each lane the same
//! integer as the portable twin's; the two fused multiply-adds per lane follow in the same
//! order, so results are bit-identical.
//!
//! Weights are unpacked once per pair and used for every activation row of the call, so with
//! `N` rows a pair costs one unpack plus, per row, two loads folded into the integer ops, one
//! conversion, one multiply and one or two fused multiply-adds: 64 multiply-adds.

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use super::q16::{BlockQ16x2, WeightBlock, finish};
use std::arch::x86_64::*;

/// A pair of blocks unpacked to 16-bit weights in the activation layout: `w1` holds both
/// blocks' elements `0..16`, `w2` their elements `16..32`; `d` and `m` each block's scale
/// and min in its eight lanes. A missing second block is all zeros.
pub struct Pair512 {
    w1: __m512i,
    w2: __m512i,
    d: __m512,
    m: __m512,
}

/// Weight blocks the AVX-512 kernel can unpack.
pub trait Unpack512: WeightBlock {
    /// Unpacks blocks `2p` and (if it exists) `2p + 1` of `w`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/DQ; `2p < w.len()`.
    unsafe fn unpack512(w: &[Self], p: usize) -> Pair512;
}

/// Four f16 values (given as bits, `v[i]` in lane `i`) as f32, then spread: lanes `0..8`
/// take value `lo`, lanes `8..16` value `hi`. One conversion and one permute: far cheaper
/// than converting and broadcasting each block's scale on its own.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread(v: __m128i, lo: i32, hi: i32) -> __m512 {
    let f = _mm512_castps128_ps512(_mm_cvtph_ps(v));
    let idx = _mm512_setr_epi32(lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi);
    _mm512_permutexvar_ps(idx, f)
}

/// The f16 bits of a block's scale (and min), as stored.
#[inline(always)]
fn bits(x: half::f16) -> i32 {
    x.to_bits() as i32
}

/// 16 bytes from each of two blocks (the second may be missing: zeros) as one 256-bit value.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
fn two_halves(a: *const u8, b: Option<*const u8>) -> __m256i {
    // SAFETY: the callers pass pointers to 16 readable bytes inside a block.
    unsafe {
        let lo = _mm_loadu_si128(a as *const __m128i);
        let hi = match b {
            Some(b) => _mm_loadu_si128(b as *const __m128i),
            None => _mm_setzero_si128(),
        };
        _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1)
    }
}

/// Nibbles of two 4-bit blocks' 16 bytes each, minus `offset`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibble_pair(qs0: &[u8; 16], qs1: Option<&[u8; 16]>, offset: i16) -> (__m512i, __m512i) {
    let z = _mm512_cvtepu8_epi16(two_halves(qs0.as_ptr(), qs1.map(|q| q.as_ptr())));
    let off = _mm512_set1_epi16(offset);
    let w1 = _mm512_sub_epi16(_mm512_and_si512(z, _mm512_set1_epi16(0x0F)), off);
    let w2 = _mm512_sub_epi16(_mm512_srli_epi16(z, 4), off);
    (w1, w2)
}

impl Unpack512 for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack512(w: &[Self], p: usize) -> Pair512 {
        // SAFETY: `2p < w.len()` (the caller's contract).
        let b0 = unsafe { w.get_unchecked(2 * p) };
        let b1 = w.get(2 * p + 1);
        let (w1, w2) = nibble_pair(&b0.qs, b1.map(|b| &b.qs), 0);
        // [d0, m0, d1, m1]; a missing block's fields are zero.
        let (d1, m1) = match b1 {
            Some(b) => (bits(b.d), bits(b.m)),
            None => (0, 0),
        };
        let v = _mm_setr_epi16(bits(b0.d) as i16, bits(b0.m) as i16, d1 as i16, m1 as i16, 0, 0, 0, 0);
        Pair512 { w1, w2, d: spread(v, 0, 2), m: spread(v, 1, 3) }
    }
}

impl Unpack512 for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack512(w: &[Self], p: usize) -> Pair512 {
        // SAFETY: `2p < w.len()` (the caller's contract).
        let b0 = unsafe { w.get_unchecked(2 * p) };
        let b1 = w.get(2 * p + 1);
        // A missing block's zero bytes become -8: harmless, its activations are zero.
        let (w1, w2) = nibble_pair(&b0.qs, b1.map(|b| &b.qs), 8);
        let d1 = match b1 {
            Some(b) => bits(b.d),
            None => 0,
        };
        let v = _mm_setr_epi16(bits(b0.d) as i16, d1 as i16, 0, 0, 0, 0, 0, 0);
        Pair512 { w1, w2, d: spread(v, 0, 1), m: _mm512_setzero_ps() }
    }
}

impl Unpack512 for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack512(w: &[Self], p: usize) -> Pair512 {
        // SAFETY: `2p < w.len()` (the caller's contract).
        let b0 = unsafe { w.get_unchecked(2 * p) };
        let b1 = w.get(2 * p + 1);
        let (q0, q1) = (b0.qs.as_ptr() as *const u8, b1.map(|b| b.qs.as_ptr() as *const u8));
        // SAFETY: each block's `qs` is 32 bytes: halves at offsets 0 and 16.
        let (first, second) = unsafe { (two_halves(q0, q1), two_halves(q0.add(16), q1.map(|q| q.add(16)))) };
        let d1 = match b1 {
            Some(b) => bits(b.d),
            None => 0,
        };
        let v = _mm_setr_epi16(bits(b0.d) as i16, d1 as i16, 0, 0, 0, 0, 0, 0);
        Pair512 { w1: _mm512_cvtepi8_epi16(first), w2: _mm512_cvtepi8_epi16(second), d: spread(v, 0, 1), m: _mm512_setzero_ps() }
    }
}

/// One weight row · `N` activation rows; see `q16::vec_dot_q16_xn`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL/VNNI, AVX2, FMA and F16C; every `x[k]` must have
/// `w.len().div_ceil(2)` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q16_xn<W: Unpack512, const N: usize>(w: &[W], x: [&[BlockQ16x2]; N]) -> [f32; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..w.len().div_ceil(2) {
        // SAFETY: `2p < w.len()`; the CPU has the features.
        let Pair512 { w1, w2, d, m } = unsafe { W::unpack512(w, p) };
        for k in 0..N {
            // SAFETY: `x[k]` has `w.len().div_ceil(2)` pairs (the caller's contract).
            let pair = unsafe { x[k].get_unchecked(p) };
            let qs = pair.qs.as_ptr() as *const __m512i;
            // SAFETY: `qs` is 128 bytes, `d` and `s` 64 each; unaligned loads.
            let (x1, x2, dx, sx) = unsafe {
                (_mm512_loadu_si512(qs), _mm512_loadu_si512(qs.add(1)), _mm512_loadu_ps(pair.d.as_ptr()), _mm512_loadu_ps(pair.s.as_ptr()))
            };
            let sums = _mm512_dpwssd_epi32(_mm512_madd_epi16(w1, x1), w2, x2);
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(d, dx), acc[k]);
            if W::HAS_MIN {
                acc[k] = _mm512_fmadd_ps(m, sx, acc[k]);
            }
        }
    }
    std::array::from_fn(|k| {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 f32; unaligned store.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[k]) };
        finish(&lanes)
    })
}

/// Consecutive weight rows (`out.len()` rows of `row_blocks` blocks) · one activation row:
/// [`vec_dot_q16_xn`] per row, with the loop inside the vector code.
///
/// # Safety
/// As [`vec_dot_q16_xn`]; `w.len() == out.len() * row_blocks` and `x` has
/// `row_blocks.div_ceil(2)` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn vec_dot_q16_rows<W: Unpack512>(w: &[W], row_blocks: usize, x: &[BlockQ16x2], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_blocks)) {
        // SAFETY: the caller's contract.
        *o = unsafe { vec_dot_q16_xn(row, [x]) }[0];
    }
}
