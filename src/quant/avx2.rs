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
                (
                    _mm256_loadu_si256(qs.add(16 * h) as *const __m256i),
                    _mm256_loadu_si256(qs.add(32 + 16 * h) as *const __m256i),
                )
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
