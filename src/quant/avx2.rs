//! AVX2 kernels for 16-bit activations: the arithmetic of `q16.rs`, one block (eight lanes)
//! per step. Per block, `madd_epi16` of the block's first halves plus one of its second
//! halves leaves lane `l` with elements `{2l, 2l+1, 16+2l, 17+2l}`; the lane then takes the
//! same two fused multiply-adds as the portable twin, so results are bit-identical.

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use super::q16::{BlockQ16x2, WeightBlock, finish};
use std::arch::x86_64::*;

/// A block unpacked to 16-bit weights: elements `0..16` and `16..32`.
pub struct Block256 {
    lo: __m256i,
    hi: __m256i,
}

/// Weight blocks the AVX2 kernel can unpack.
pub trait Unpack256: WeightBlock {
    /// # Safety
    /// The CPU must support AVX2.
    unsafe fn unpack256(&self) -> Block256;
}

/// Low and high nibbles of 16 bytes, widened to i16 (elements 0..16 and 16..32).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; QK / 2]) -> Block256 {
    // SAFETY: `qs` is 16 bytes; unaligned load.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm256_cvtepu8_epi16(_mm_and_si128(q, mask));
    let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
    Block256 { lo, hi }
}

impl Unpack256 for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack256(&self) -> Block256 {
        nibbles(&self.qs)
    }
}

impl Unpack256 for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack256(&self) -> Block256 {
        let Block256 { lo, hi } = nibbles(&self.qs);
        let eight = _mm256_set1_epi16(8);
        Block256 { lo: _mm256_sub_epi16(lo, eight), hi: _mm256_sub_epi16(hi, eight) }
    }
}

impl Unpack256 for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack256(&self) -> Block256 {
        let p = self.qs.as_ptr() as *const __m128i;
        // SAFETY: `qs` holds 32 bytes, read as two unaligned 16-byte halves.
        let (lo, hi) = unsafe { (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1))) };
        Block256 { lo: _mm256_cvtepi8_epi16(lo), hi: _mm256_cvtepi8_epi16(hi) }
    }
}

/// One weight row · `N` activation rows; see `q16::vec_dot_q16_xn`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; every `x[k]` must have `w.len().div_ceil(2)` pairs.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q16_xn<W: Unpack256, const N: usize>(w: &[W], x: [&[BlockQ16x2]; N]) -> [f32; N] {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (b, wb) in w.iter().enumerate() {
        let (p, h) = (b / 2, b % 2);
        // SAFETY: the CPU supports AVX2.
        let Block256 { lo, hi } = unsafe { wb.unpack256() };
        let (d, m) = (_mm256_set1_ps(wb.scale()), _mm256_set1_ps(wb.min()));
        for k in 0..N {
            // SAFETY: `x[k]` has a pair for every two weight blocks (the caller's contract).
            let pair = unsafe { x[k].get_unchecked(p) };
            let qs = pair.qs.as_ptr();
            // SAFETY: `qs` holds 64 i16; each load reads 16 of them at offset 16h or 32 + 16h.
            let (x1, x2) = unsafe {
                (_mm256_loadu_si256(qs.add(16 * h) as *const __m256i), _mm256_loadu_si256(qs.add(32 + 16 * h) as *const __m256i))
            };
            let sums = _mm256_add_epi32(_mm256_madd_epi16(lo, x1), _mm256_madd_epi16(hi, x2));
            // SAFETY: `d` and `s` hold 16 f32; this reads the block's eight.
            let (dx, sx) = unsafe { (_mm256_loadu_ps(pair.d.as_ptr().add(8 * h)), _mm256_loadu_ps(pair.s.as_ptr().add(8 * h))) };
            let a = &mut acc[k][h];
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(d, dx), *a);
            if W::HAS_MIN {
                *a = _mm256_fmadd_ps(m, sx, *a);
            }
        }
    }
    std::array::from_fn(|k| {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 f32; unaligned stores.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k][0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[k][1]);
        }
        finish(&lanes)
    })
}

/// Consecutive weight rows · one activation row; see `avx512::vec_dot_q16_rows`.
///
/// # Safety
/// As [`vec_dot_q16_xn`]; `w.len() == out.len() * row_blocks`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q16_rows<W: Unpack256>(w: &[W], row_blocks: usize, x: &[BlockQ16x2], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_blocks)) {
        // SAFETY: the caller's contract.
        *o = unsafe { vec_dot_q16_xn(row, [x]) }[0];
    }
}

/// `round(s)` half away from zero, as i32: `trunc` plus a ±1 step where the dropped fraction
/// is at least ½ (exact: the fraction of an f32 below 2^23 is exact), so the same integer as
/// the portable `f32::round` for finite `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_half_away(s: __m256) -> __m256i {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    let away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(s, t)), _mm256_set1_ps(0.5), _CMP_GE_OQ);
    let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(s, sign), _mm256_set1_ps(1.0)));
    _mm256_cvttps_epi32(_mm256_add_ps(t, step))
}

/// `q16::quantize16` in vector instructions: `max|x|` by vector maxima (the same value in any
/// order for finite inputs), the same `d` and `1/d`, and the rounding of
/// [`quantize_row_q16`], sixteen elements at a time stored in element order.
///
/// # Safety
/// The CPU must support AVX2; `x.len()` a multiple of 16 and `qs.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize16(x: &[f32], qs: &mut [i16], qmax: f32) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        // SAFETY: eight floats; unaligned load.
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) }));
    }
    let a = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    let amax = _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
    let d = amax / qmax;
    if d != 0.0 && !(1.0 / d).is_finite() {
        // As in `quantize_row_q16`: a tiny block's `1/d` overflows; the portable way.
        return super::q16::quantize16_portable(x, qs, qmax);
    }
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let round = |v: __m256| round_half_away(_mm256_mul_ps(v, id));
    for (x, q) in x.chunks_exact(16).zip(qs.chunks_exact_mut(16)) {
        // SAFETY: sixteen floats read and sixteen i16 written; unaligned.
        unsafe {
            let (lo, hi) = (round(_mm256_loadu_ps(x.as_ptr())), round(_mm256_loadu_ps(x.as_ptr().add(8))));
            // `packs` interleaves 128-bit halves; the permute puts elements back in order.
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
        }
    }
    d
}

/// `q16::quantize_row_q16` with vector rounding: each block's `max|x|` by vector maxima, then
/// `q = round(x · (1/d))` half away from zero as `trunc` plus a ±1 step where the dropped
/// fraction is at least ½ (exact: the fraction of an f32 below 2^23 is exact), the sixteen-bit
/// halves stored straight into the pair's layout. Bit-identical to the portable quantizer for
/// finite inputs.
///
/// # Safety
/// The CPU must support AVX2; `out` must have `x.len().div_ceil(64)` pairs and `x` whole blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16x2]) {
    let sign = _mm256_set1_ps(-0.0);
    'pairs: for (pair, pair_x) in out.iter_mut().zip(x.chunks(2 * QK)) {
        *pair = bytemuck::Zeroable::zeroed();
        for (h, x) in pair_x.chunks_exact(QK).enumerate() {
            // SAFETY: `x` is 32 floats; unaligned loads.
            let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
            let a = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let a = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            let amax = _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
            let d = amax / super::q16::Q16_MAX;
            if d != 0.0 && !(1.0 / d).is_finite() {
                // `max|x|` below ~1e-34: `1/d` overflows, where the portable cast saturates
                // and the vector one would not. Such a pair goes the portable way (whose bits
                // the vector way gives for its other block).
                super::q16::quantize_row_q16_portable(pair_x, std::slice::from_mut(pair));
                continue 'pairs;
            }
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q: [__m256i; 4] = std::array::from_fn(|i| round_half_away(_mm256_mul_ps(v[i], id)));
            // `packs` interleaves 128-bit halves; the permute puts elements back in order.
            let first = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
            let second = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
            let base = pair.qs.as_mut_ptr();
            // SAFETY: elements 0..16 of block `h` sit at `16h`, 16..32 at `32 + 16h` (`q16_slot`).
            unsafe {
                _mm256_storeu_si256(base.add(16 * h) as *mut __m256i, first);
                _mm256_storeu_si256(base.add(32 + 16 * h) as *mut __m256i, second);
            }
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
            pair.d[8 * h..8 * h + 8].fill(d);
            pair.s[8 * h] = d * sum as f32;
        }
    }
}
