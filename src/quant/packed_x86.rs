//! AVX-512 VNNI and AVX2 kernels for packed weights: the arithmetic of `packed.rs`.
//!
//! Per block-group, the sixteen rows' scales (and mins) are converted from f16 in one
//! instruction, then eight steps each unpack four elements of every row into two registers
//! of 16-bit pairs, one lane per row; for every token, each register meets the token's
//! matching activation pair, broadcast from memory, in one `vpdpwssd` (AVX2: `vpmaddwd` then
//! `vpaddd`, rows in two halves of eight). The block's integer sums then go through the
//! module's two fused multiply-adds, lane by lane, exactly as the portable twin rounds.
//! Weights are unpacked once per call for all its tokens.

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use super::packed::{PACK, PackedWeight};
use super::q16::BlockQ16x2;
use std::arch::x86_64::*;

/// Unpacks a block-group's quants four elements at a time.
pub trait Chunks: PackedWeight {
    /// Elements `4s, 4s+1` and `4s+2, 4s+3` of all sixteen rows as 16-bit pairs, lane `r` for
    /// row `r`.
    ///
    /// # Safety
    /// AVX-512 F/BW; `qs` points at a block-group's quants, `s < 8`.
    unsafe fn step512(qs: *const u8, s: usize) -> (__m512i, __m512i);
    /// The same for rows `8 * half..8 * half + 8`.
    ///
    /// # Safety
    /// AVX2; as [`Chunks::step512`], `half < 2`.
    unsafe fn step256(qs: *const u8, s: usize, half: usize) -> (__m256i, __m256i);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles512(z: __m512i, offset: i16) -> (__m512i, __m512i) {
    let off = _mm512_set1_epi16(offset);
    (_mm512_sub_epi16(_mm512_and_si512(z, _mm512_set1_epi16(0x0F)), off), _mm512_sub_epi16(_mm512_srli_epi16(z, 4), off))
}

#[inline]
#[target_feature(enable = "avx2")]
fn nibbles256(z: __m256i, offset: i16) -> (__m256i, __m256i) {
    let off = _mm256_set1_epi16(offset);
    (_mm256_sub_epi16(_mm256_and_si256(z, _mm256_set1_epi16(0x0F)), off), _mm256_sub_epi16(_mm256_srli_epi16(z, 4), off))
}

/// 4-bit chunks: `offset` is 8 for Q4_0 (`q - 8`), 0 for Q4_1.
macro_rules! four_bit {
    ($t:ty, $offset:expr) => {
        impl Chunks for $t {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw")]
            unsafe fn step512(qs: *const u8, s: usize) -> (__m512i, __m512i) {
                // SAFETY: chunk `s` is 32 readable bytes (the caller's contract).
                let z = unsafe { _mm512_cvtepu8_epi16(_mm256_loadu_si256(qs.add(32 * s) as *const __m256i)) };
                nibbles512(z, $offset)
            }
            #[inline]
            #[target_feature(enable = "avx2")]
            unsafe fn step256(qs: *const u8, s: usize, half: usize) -> (__m256i, __m256i) {
                // SAFETY: as above; a half is 16 of the chunk's bytes.
                let z = unsafe { _mm256_cvtepu8_epi16(_mm_loadu_si128(qs.add(32 * s + 16 * half) as *const __m128i)) };
                nibbles256(z, $offset)
            }
        }
    };
}

four_bit!(BlockQ4_0, 8);
four_bit!(BlockQ4_1, 0);

impl Chunks for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn step512(qs: *const u8, s: usize) -> (__m512i, __m512i) {
        // SAFETY: chunks `2s` and `2s + 1` are 64 readable bytes (the caller's contract).
        unsafe {
            let p = qs.add(64 * s) as *const __m256i;
            (_mm512_cvtepi8_epi16(_mm256_loadu_si256(p)), _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(1))))
        }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn step256(qs: *const u8, s: usize, half: usize) -> (__m256i, __m256i) {
        // SAFETY: as above; a half is 16 bytes of each chunk.
        unsafe {
            let p = qs.add(64 * s + 16 * half);
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(32) as *const __m128i)),
            )
        }
    }
}

/// The 32-bit word of a pair's `qs` that holds elements `e, e + 1` (`e` even) of block `h`.
#[inline(always)]
fn pair_word(h: usize, e: usize) -> usize {
    8 * h + e / 2 + if e >= 16 { 8 } else { 0 }
}

/// See `packed::dot_packed_xn_on`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL/VNNI, AVX2, FMA and F16C; `group` must hold
/// `blocks` block-groups and every `x[k]` `blocks.div_ceil(2)` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_packed_avx512<W: Chunks, const N: usize>(group: &[u8], blocks: usize, x: [&[BlockQ16x2]; N]) -> [[f32; PACK]; N] {
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..blocks {
        let h = b % 2;
        // SAFETY (the loads below): block-group `b` and pair `b / 2` lie inside `group` and
        // each `x[k]` (the caller's contract); every load is unaligned.
        unsafe {
            let gb = group.as_ptr().add(b * W::GROUP_BLOCK);
            let d_w = _mm512_cvtph_ps(_mm256_loadu_si256(gb as *const __m256i));
            let m_w = if W::HAS_MIN { _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(32) as *const __m256i)) } else { _mm512_setzero_ps() };
            let qs = gb.add(W::HEADER);
            let pairs: [&BlockQ16x2; N] = std::array::from_fn(|k| x[k].get_unchecked(b / 2));
            let mut isum = [_mm512_setzero_si512(); N];
            for s in 0..8 {
                let (wa, wb) = W::step512(qs, s);
                let (ia, ib) = (pair_word(h, 4 * s), pair_word(h, 4 * s + 2));
                for k in 0..N {
                    let xq = pairs[k].qs.as_ptr() as *const i32;
                    isum[k] = _mm512_dpwssd_epi32(isum[k], wa, _mm512_set1_epi32(*xq.add(ia)));
                    isum[k] = _mm512_dpwssd_epi32(isum[k], wb, _mm512_set1_epi32(*xq.add(ib)));
                }
            }
            for k in 0..N {
                let scale = _mm512_mul_ps(d_w, _mm512_set1_ps(pairs[k].d[8 * h]));
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), scale, acc[k]);
                if W::HAS_MIN {
                    acc[k] = _mm512_fmadd_ps(m_w, _mm512_set1_ps(pairs[k].s[8 * h]), acc[k]);
                }
            }
        }
    }
    std::array::from_fn(|k| {
        let mut lanes = [0f32; PACK];
        // SAFETY: `lanes` holds 16 f32; unaligned store.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[k]) };
        lanes
    })
}

/// See `packed::dot_packed_xn_on`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; sizes as [`dot_packed_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_packed_avx2<W: Chunks, const N: usize>(group: &[u8], blocks: usize, x: [&[BlockQ16x2]; N]) -> [[f32; PACK]; N] {
    let mut out = [[0f32; PACK]; N];
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let h = b % 2;
            // SAFETY: as in `dot_packed_avx512`.
            unsafe {
                let gb = group.as_ptr().add(b * W::GROUP_BLOCK);
                let d_w = _mm256_cvtph_ps(_mm_loadu_si128(gb.add(16 * half) as *const __m128i));
                let m_w = if W::HAS_MIN {
                    _mm256_cvtph_ps(_mm_loadu_si128(gb.add(32 + 16 * half) as *const __m128i))
                } else {
                    _mm256_setzero_ps()
                };
                let qs = gb.add(W::HEADER);
                let pairs: [&BlockQ16x2; N] = std::array::from_fn(|k| x[k].get_unchecked(b / 2));
                let mut isum = [_mm256_setzero_si256(); N];
                for s in 0..8 {
                    let (wa, wb) = W::step256(qs, s, half);
                    let (ia, ib) = (pair_word(h, 4 * s), pair_word(h, 4 * s + 2));
                    for k in 0..N {
                        let xq = pairs[k].qs.as_ptr() as *const i32;
                        let pa = _mm256_madd_epi16(wa, _mm256_set1_epi32(*xq.add(ia)));
                        let pb = _mm256_madd_epi16(wb, _mm256_set1_epi32(*xq.add(ib)));
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_add_epi32(pa, pb));
                    }
                }
                for k in 0..N {
                    let scale = _mm256_mul_ps(d_w, _mm256_set1_ps(pairs[k].d[8 * h]));
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), scale, acc[k]);
                    if W::HAS_MIN {
                        acc[k] = _mm256_fmadd_ps(m_w, _mm256_set1_ps(pairs[k].s[8 * h]), acc[k]);
                    }
                }
            }
        }
        for k in 0..N {
            // SAFETY: eight f32 at `8 * half` of a 16-element array; unaligned store.
            unsafe { _mm256_storeu_ps(out[k].as_mut_ptr().add(8 * half), acc[k]) };
        }
    }
    out
}
