//! AVX-512 VNNI and AVX2 kernels for packed weights: the arithmetic of `packed.rs`.
//!
//! Per 32-element block, each format unpacks its sixteen registers four at a time
//! ([`PackedSimd::regs512`]: elements `8c..8c+8` of all sixteen rows as 16-bit pairs, lane
//! `r` for row `r`); for every token each register meets the token's matching activation
//! pair, broadcast from memory, in one `vpdpwssd` (AVX2: `vpmaddwd` then `vpaddd`, rows in
//! two halves of eight). A sub-block's integer sums then go through the module's two fused
//! multiply-adds, lane by lane, exactly as the portable twin rounds. Weights are unpacked once
//! per call for all its tokens, and prefetched a few KiB ahead of the block being read
//! ([`PREFETCH_BYTES`]), which is what lets single-token decode run at the memory's speed.

use super::blocks::*;
use super::packed::{BlockQ16, PACK, PackedFormat};
use std::arch::x86_64::*;

/// A packed format's vector unpacking (pointers are to a unit's header or to one 32-element
/// block's planes).
///
/// # Safety (every method)
/// The CPU supports the method's features (AVX-512 F/BW/DQ for the 512-bit ones, AVX2 for the
/// others); the pointer addresses a whole header or planes of this format; `c < 4`,
/// `j` < the unit's sub-blocks, `half < 2`.
pub trait PackedSimd: PackedFormat {
    unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4];
    unsafe fn scale512(header: *const u8, j: usize) -> __m512;
    unsafe fn min512(_header: *const u8, _j: usize) -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4];
    unsafe fn scale256(header: *const u8, j: usize, half: usize) -> __m256;
    unsafe fn min256(_header: *const u8, _j: usize, _half: usize) -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
}

// Building blocks, compiled with the features of the kernels they are inlined into.

/// NIB registers `4c..4c+4` (see `packed.rs`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn nib512(planes: *const u8, c: usize) -> [__m512i; 4] {
    unsafe {
        let lo = _mm512_set1_epi16(0xF);
        let z0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(planes.add(64 * c) as *const __m256i));
        let z1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(planes.add(64 * c + 32) as *const __m256i));
        [_mm512_and_si512(z0, lo), _mm512_srli_epi16(z0, 4), _mm512_and_si512(z1, lo), _mm512_srli_epi16(z1, 4)]
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nib256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
    unsafe {
        let lo = _mm256_set1_epi16(0xF);
        let z0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(planes.add(64 * c + 16 * half) as *const __m128i));
        let z1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(planes.add(64 * c + 32 + 16 * half) as *const __m128i));
        [_mm256_and_si256(z0, lo), _mm256_srli_epi16(z0, 4), _mm256_and_si256(z1, lo), _mm256_srli_epi16(z1, 4)]
    }
}

/// `x` shifted left by `n` bits per 16-bit lane (right for negative `n`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn shift512(x: __m512i, n: i32) -> __m512i {
    if n >= 0 { _mm512_sll_epi16(x, _mm_cvtsi32_si128(n)) } else { _mm512_srl_epi16(x, _mm_cvtsi32_si128(-n)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn shift256(x: __m256i, n: i32) -> __m256i {
    if n >= 0 { _mm256_sll_epi16(x, _mm_cvtsi32_si128(n)) } else { _mm256_srl_epi16(x, _mm_cvtsi32_si128(-n)) }
}

/// Adds HI1's bits of registers `4c..4c+4` (plane at `hi`) to `regs` at bit `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn hi1_512(regs: [__m512i; 4], hi: *const u8, c: usize, at: i32) -> [__m512i; 4] {
    unsafe {
        let h = _mm512_loadu_si512(hi as *const __m512i);
        let mask = _mm512_set1_epi16(1 << at);
        // (shifted & mask) | reg
        std::array::from_fn(|i| _mm512_ternarylogic_epi32(shift512(h, at - (4 * c + i) as i32), mask, regs[i], 0xEA))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hi1_256(regs: [__m256i; 4], hi: *const u8, c: usize, half: usize, at: i32) -> [__m256i; 4] {
    unsafe {
        let h = _mm256_loadu_si256(hi.add(32 * half) as *const __m256i);
        let mask = _mm256_set1_epi16(1 << at);
        std::array::from_fn(|i| _mm256_or_si256(_mm256_and_si256(shift256(h, at - (4 * c + i) as i32), mask), regs[i]))
    }
}

/// Adds TWO's fields of registers `4c..4c+4` (planes at `two`) to `regs` at bit `at`, one
/// shift and one three-way logic instruction a register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn two_into512(regs: [__m512i; 4], two: *const u8, c: usize, at: i32) -> [__m512i; 4] {
    unsafe {
        let t = _mm512_loadu_si512(two.add(64 * (c / 2)) as *const __m512i);
        let mask = _mm512_set1_epi16(3 << at);
        // (shifted & mask) | reg
        std::array::from_fn(|i| _mm512_ternarylogic_epi32(shift512(t, at - (2 * (4 * (c % 2) + i)) as i32), mask, regs[i], 0xEA))
    }
}

/// TWO's fields of registers `4c..4c+4` (planes at `two`), at bit `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn two512(two: *const u8, c: usize, at: i32) -> [__m512i; 4] {
    unsafe {
        let t = _mm512_loadu_si512(two.add(64 * (c / 2)) as *const __m512i);
        let mask = _mm512_set1_epi16(3 << at);
        std::array::from_fn(|i| _mm512_and_si512(shift512(t, at - (2 * (4 * (c % 2) + i)) as i32), mask))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two256(two: *const u8, c: usize, half: usize, at: i32) -> [__m256i; 4] {
    unsafe {
        let t = _mm256_loadu_si256(two.add(64 * (c / 2) + 32 * half) as *const __m256i);
        let mask = _mm256_set1_epi16(3 << at);
        std::array::from_fn(|i| _mm256_and_si256(shift256(t, at - (2 * (4 * (c % 2) + i)) as i32), mask))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn or256(a: [__m256i; 4], b: [__m256i; 4]) -> [__m256i; 4] {
    std::array::from_fn(|i| _mm256_or_si256(a[i], b[i]))
}

/// Sixteen f16 at `p` (rows 0..16) / eight (rows of `half`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn f16x16(p: *const u8) -> __m512 {
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x8(p: *const u8, half: usize) -> __m256 {
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * half) as *const __m128i)) }
}

/// Sixteen bytes at `p` as f32, unsigned or signed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn u8x16(p: *const u8) -> __m512i {
    unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8x8(p: *const u8, half: usize) -> __m256i {
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * half) as *const __m128i)) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn i8x16(p: *const u8) -> __m512 {
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8x8(p: *const u8, half: usize) -> __m256 {
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * half) as *const __m128i))) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn neg512(x: __m512) -> __m512 {
    _mm512_xor_ps(x, _mm512_set1_ps(-0.0))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn neg256(x: __m256) -> __m256 {
    _mm256_xor_ps(x, _mm256_set1_ps(-0.0))
}

/// Q4_0, Q4_1, Q5_0, Q5_1: `d` at 0; an f16 min at 32 (`header: 64`) or `offset · d`.
macro_rules! legacy_simd {
    ($t:ty, high: $high:expr, offset: $offset:expr) => {
        impl PackedSimd for $t {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4] {
                unsafe {
                    let lo = nib512(planes, c);
                    if $high { hi1_512(lo, planes.add(256), c, 4) } else { lo }
                }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn scale512(header: *const u8, _j: usize) -> __m512 {
                unsafe { f16x16(header) }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn min512(header: *const u8, _j: usize) -> __m512 {
                unsafe { if Self::HEADER == 64 { f16x16(header.add(32)) } else { _mm512_mul_ps(f16x16(header), _mm512_set1_ps($offset)) } }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
                unsafe {
                    let lo = nib256(planes, c, half);
                    if $high { hi1_256(lo, planes.add(256), c, half, 4) } else { lo }
                }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn scale256(header: *const u8, _j: usize, half: usize) -> __m256 {
                unsafe { f16x8(header, half) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn min256(header: *const u8, _j: usize, half: usize) -> __m256 {
                unsafe {
                    if Self::HEADER == 64 {
                        f16x8(header.add(32), half)
                    } else {
                        _mm256_mul_ps(f16x8(header, half), _mm256_set1_ps($offset))
                    }
                }
            }
        }
    };
}

legacy_simd!(BlockQ4_0, high: false, offset: -8.0);
legacy_simd!(BlockQ4_1, high: false, offset: 0.0);
legacy_simd!(BlockQ5_0, high: true, offset: -16.0);
legacy_simd!(BlockQ5_1, high: true, offset: 0.0);

impl PackedSimd for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4] {
        unsafe { std::array::from_fn(|i| _mm512_cvtepi8_epi16(_mm256_loadu_si256(planes.add(32 * (4 * c + i)) as *const __m256i))) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn scale512(header: *const u8, _j: usize) -> __m512 {
        unsafe { f16x16(header) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
        unsafe {
            std::array::from_fn(|i| _mm256_cvtepi8_epi16(_mm_loadu_si128(planes.add(32 * (4 * c + i) + 16 * half) as *const __m128i)))
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale256(header: *const u8, _j: usize, half: usize) -> __m256 {
        unsafe { f16x8(header, half) }
    }
}

/// Q4_K and Q5_K: `d` at 0, `dmin` at 32, scales at 64, mins at 192 (sixteen bytes per
/// sub-block).
macro_rules! k4_simd {
    ($t:ty, high: $high:expr) => {
        impl PackedSimd for $t {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4] {
                unsafe {
                    let lo = nib512(planes, c);
                    if $high { hi1_512(lo, planes.add(256), c, 4) } else { lo }
                }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn scale512(header: *const u8, j: usize) -> __m512 {
                unsafe { _mm512_mul_ps(f16x16(header), _mm512_cvtepi32_ps(u8x16(header.add(64 + 16 * j)))) }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn min512(header: *const u8, j: usize) -> __m512 {
                unsafe { neg512(_mm512_mul_ps(f16x16(header.add(32)), _mm512_cvtepi32_ps(u8x16(header.add(192 + 16 * j))))) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
                unsafe {
                    let lo = nib256(planes, c, half);
                    if $high { hi1_256(lo, planes.add(256), c, half, 4) } else { lo }
                }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn scale256(header: *const u8, j: usize, half: usize) -> __m256 {
                unsafe { _mm256_mul_ps(f16x8(header, half), _mm256_cvtepi32_ps(u8x8(header.add(64 + 16 * j), half))) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn min256(header: *const u8, j: usize, half: usize) -> __m256 {
                unsafe { neg256(_mm256_mul_ps(f16x8(header.add(32), half), _mm256_cvtepi32_ps(u8x8(header.add(192 + 16 * j), half)))) }
            }
        }
    };
}

k4_simd!(BlockQ4K, high: false);
k4_simd!(BlockQ5K, high: true);

/// Q3_K and Q6_K: `d` at 0, signed scales at 32 (sixteen bytes per sub-block of 16); the
/// min is `offset` steps.
macro_rules! signed16_simd {
    ($t:ty, offset: $offset:expr, regs512: $r512:expr, regs256: $r256:expr) => {
        impl PackedSimd for $t {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4] {
                unsafe { $r512(planes, c) }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn scale512(header: *const u8, j: usize) -> __m512 {
                unsafe { _mm512_mul_ps(f16x16(header), i8x16(header.add(32 + 16 * j))) }
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn min512(header: *const u8, j: usize) -> __m512 {
                unsafe { _mm512_mul_ps(_mm512_set1_ps($offset), Self::scale512(header, j)) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
                unsafe { $r256(planes, c, half) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn scale256(header: *const u8, j: usize, half: usize) -> __m256 {
                unsafe { _mm256_mul_ps(f16x8(header, half), i8x8(header.add(32 + 16 * j), half)) }
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn min256(header: *const u8, j: usize, half: usize) -> __m256 {
                unsafe { _mm256_mul_ps(_mm256_set1_ps($offset), Self::scale256(header, j, half)) }
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn q6k_regs512(p: *const u8, c: usize) -> [__m512i; 4] {
    unsafe { two_into512(nib512(p, c), p.add(256), c, 4) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_regs256(p: *const u8, c: usize, half: usize) -> [__m256i; 4] {
    unsafe { or256(nib256(p, c, half), two256(p.add(256), c, half, 4)) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn q3k_regs512(p: *const u8, c: usize) -> [__m512i; 4] {
    unsafe { hi1_512(two512(p, c, 0), p.add(128), c, 2) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3k_regs256(p: *const u8, c: usize, half: usize) -> [__m256i; 4] {
    unsafe { hi1_256(two256(p, c, half, 0), p.add(128), c, half, 2) }
}

signed16_simd!(BlockQ6K, offset: -32.0, regs512: q6k_regs512, regs256: q6k_regs256);
signed16_simd!(BlockQ3K, offset: -4.0, regs512: q3k_regs512, regs256: q3k_regs256);

impl PackedSimd for BlockQ2K {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn regs512(planes: *const u8, c: usize) -> [__m512i; 4] {
        unsafe { two512(planes, c, 0) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn scale512(header: *const u8, j: usize) -> __m512 {
        unsafe {
            let sc = _mm512_and_si512(u8x16(header.add(64 + 16 * j)), _mm512_set1_epi32(0xF));
            _mm512_mul_ps(f16x16(header), _mm512_cvtepi32_ps(sc))
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn min512(header: *const u8, j: usize) -> __m512 {
        unsafe {
            let m = _mm512_srli_epi32(u8x16(header.add(64 + 16 * j)), 4);
            neg512(_mm512_mul_ps(f16x16(header.add(32)), _mm512_cvtepi32_ps(m)))
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn regs256(planes: *const u8, c: usize, half: usize) -> [__m256i; 4] {
        unsafe { two256(planes, c, half, 0) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale256(header: *const u8, j: usize, half: usize) -> __m256 {
        unsafe {
            let sc = _mm256_and_si256(u8x8(header.add(64 + 16 * j), half), _mm256_set1_epi32(0xF));
            _mm256_mul_ps(f16x8(header, half), _mm256_cvtepi32_ps(sc))
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn min256(header: *const u8, j: usize, half: usize) -> __m256 {
        unsafe {
            let m = _mm256_srli_epi32(u8x8(header.add(64 + 16 * j), half), 4);
            neg256(_mm256_mul_ps(f16x8(header.add(32), half), _mm256_cvtepi32_ps(m)))
        }
    }
}

/// `acc[i % C] += Σ pairs of w[i] · x[i]` per 32-bit lane for the four registers `w`, where
/// `x[i]` is the 32-bit word `i` at `x` broadcast: four `vpdpwssd` with broadcast memory
/// operands into `C` (1, 2 or 4) independent chains. Written as assembly because LLVM's
/// machine combiner otherwise splits most of them into `vpbroadcastd` + `vpmaddwd` + `vpaddd`
/// for generic x86-64 tuning (three instructions for one, half the kernel's speed); the four
/// share one address register, with the words at fixed displacements.
///
/// # Safety
/// AVX-512 F/VNNI; `x` readable for 16 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd4<const C: usize>(acc: &mut [__m512i], w: &[__m512i; 4], x: *const i32) {
    // SAFETY (each block): the caller's contract; the instructions read 16 bytes at `x`.
    unsafe {
        match C {
            1 => std::arch::asm!(
                "vpdpwssd {a}, {w0}, dword ptr [{x}]{{1to16}}",
                "vpdpwssd {a}, {w1}, dword ptr [{x} + 4]{{1to16}}",
                "vpdpwssd {a}, {w2}, dword ptr [{x} + 8]{{1to16}}",
                "vpdpwssd {a}, {w3}, dword ptr [{x} + 12]{{1to16}}",
                a = inout(zmm_reg) acc[0],
                w0 = in(zmm_reg) w[0], w1 = in(zmm_reg) w[1], w2 = in(zmm_reg) w[2], w3 = in(zmm_reg) w[3],
                x = in(reg) x,
                options(pure, readonly, nostack, preserves_flags)
            ),
            2 => std::arch::asm!(
                "vpdpwssd {a0}, {w0}, dword ptr [{x}]{{1to16}}",
                "vpdpwssd {a1}, {w1}, dword ptr [{x} + 4]{{1to16}}",
                "vpdpwssd {a0}, {w2}, dword ptr [{x} + 8]{{1to16}}",
                "vpdpwssd {a1}, {w3}, dword ptr [{x} + 12]{{1to16}}",
                a0 = inout(zmm_reg) acc[0], a1 = inout(zmm_reg) acc[1],
                w0 = in(zmm_reg) w[0], w1 = in(zmm_reg) w[1], w2 = in(zmm_reg) w[2], w3 = in(zmm_reg) w[3],
                x = in(reg) x,
                options(pure, readonly, nostack, preserves_flags)
            ),
            _ => std::arch::asm!(
                "vpdpwssd {a0}, {w0}, dword ptr [{x}]{{1to16}}",
                "vpdpwssd {a1}, {w1}, dword ptr [{x} + 4]{{1to16}}",
                "vpdpwssd {a2}, {w2}, dword ptr [{x} + 8]{{1to16}}",
                "vpdpwssd {a3}, {w3}, dword ptr [{x} + 12]{{1to16}}",
                a0 = inout(zmm_reg) acc[0], a1 = inout(zmm_reg) acc[1], a2 = inout(zmm_reg) acc[2], a3 = inout(zmm_reg) acc[3],
                w0 = in(zmm_reg) w[0], w1 = in(zmm_reg) w[1], w2 = in(zmm_reg) w[2], w3 = in(zmm_reg) w[3],
                x = in(reg) x,
                options(pure, readonly, nostack, preserves_flags)
            ),
        }
    }
}

/// How far ahead of the block being read the kernels prefetch, in bytes.
///
/// A packed matrix is read front to back, but the hardware prefetchers alone kept
/// single-token decode at 57–65% of the machine's read bandwidth on an Intel Xeon (the
/// kernel stalls on each block's lines); asking for the lines 4 KiB ahead brought it to
/// 82–99% (2 KiB did about as well; `ballast bench --offline` prints both figures).
const PREFETCH_BYTES: usize = 4096;

/// Prefetches into all cache levels, [`PREFETCH_BYTES`] ahead, the bytes of 32-element
/// block `b` of `unit` (the unit's header with its first block): the whole matrix once, a
/// few lines at a time (asking for a k-quant unit's 37 to 53 lines at once fills the core's miss
/// buffers and measured slower). Past the matrix's end too: a prefetch never faults, and
/// the address is only computed, never read.
#[inline(always)]
fn prefetch_block<F: PackedFormat>(unit: *const u8, b: usize) {
    let (start, end) = (if b == 0 { 0 } else { F::HEADER + b * F::PLANES }, F::HEADER + (b + 1) * F::PLANES);
    for line in (start..end).step_by(64) {
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(unit.wrapping_add(PREFETCH_BYTES + line) as *const i8) };
    }
}

/// Most dependency chains of integer sums per token (see [`chains_for`]).
const CHAINS: usize = 4;

/// Chains of integer sums per token for `n` tokens at once: enough independent `vpdpwssd` in
/// flight to cover its latency without running out of registers.
const fn chains_for(n: usize) -> usize {
    if n == 1 {
        4
    } else if n < 8 {
        2
    } else {
        1
    }
}

/// Sub-blocks per 32 elements and register chunks (of four) per sub-block.
const fn subs<F: PackedFormat>() -> (usize, usize) {
    if F::HALVES { (2, 2) } else { (1, 4) }
}

/// See `packed::dot_packed_xn_on`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL/VNNI, AVX2, FMA and F16C; `group` must hold
/// `units` units and every `x[k]` `units * F::BLOCKS` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_packed_avx512<F: PackedSimd, const N: usize>(
    group: &[u8],
    units: usize,
    x: [&[BlockQ16]; N],
    acc_in: &[[f32; PACK]; N],
) -> [[f32; PACK]; N] {
    // SAFETY: each `acc_in[k]` holds 16 f32; unaligned load.
    let mut acc: [__m512; N] = std::array::from_fn(|k| unsafe { _mm512_loadu_ps(acc_in[k].as_ptr()) });
    let (num_subs, chunks) = subs::<F>();
    for u in 0..units {
        // SAFETY (the loads below): unit `u` lies inside `group` and block `u * BLOCKS + b`
        // inside each `x[k]` (the caller's contract); every load is unaligned.
        unsafe {
            let unit = group.as_ptr().add(u * F::UNIT);
            for b in 0..F::BLOCKS {
                let planes = unit.add(F::HEADER + b * F::PLANES);
                prefetch_block::<F>(unit, b);
                let xb: [&BlockQ16; N] = std::array::from_fn(|k| x[k].get_unchecked(u * F::BLOCKS + b));
                for h in 0..num_subs {
                    // Few tokens: several independent chains per token (integer sums, so the
                    // order does not matter), else one `vpdpwssd` waits on the last.
                    let mut chains = [[_mm512_setzero_si512(); CHAINS]; N];
                    for c in chunks * h..chunks * (h + 1) {
                        let regs = F::regs512(planes, c);
                        for k in 0..N {
                            let x = (xb[k].qs.as_ptr() as *const i32).add(4 * c);
                            match chains_for(N) {
                                1 => dpwssd4::<1>(&mut chains[k], &regs, x),
                                2 => dpwssd4::<2>(&mut chains[k], &regs, x),
                                _ => dpwssd4::<4>(&mut chains[k], &regs, x),
                            }
                        }
                    }
                    let isum: [__m512i; N] = std::array::from_fn(|k| {
                        let ch = &chains[k];
                        match chains_for(N) {
                            1 => ch[0],
                            2 => _mm512_add_epi32(ch[0], ch[1]),
                            _ => _mm512_add_epi32(_mm512_add_epi32(ch[0], ch[1]), _mm512_add_epi32(ch[2], ch[3])),
                        }
                    });
                    let j = num_subs * b + h;
                    let scale = F::scale512(unit, j);
                    let min = if F::HAS_MIN { F::min512(unit, j) } else { _mm512_setzero_ps() };
                    for k in 0..N {
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_mul_ps(scale, _mm512_set1_ps(xb[k].d)), acc[k]);
                        if F::HAS_MIN {
                            let sx = if F::HALVES { xb[k].half[h] } else { xb[k].sum };
                            acc[k] = _mm512_fmadd_ps(min, _mm512_set1_ps(sx), acc[k]);
                        }
                    }
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
pub unsafe fn dot_packed_avx2<F: PackedSimd, const N: usize>(
    group: &[u8],
    units: usize,
    x: [&[BlockQ16]; N],
    acc_in: &[[f32; PACK]; N],
) -> [[f32; PACK]; N] {
    let mut out = [[0f32; PACK]; N];
    let (num_subs, chunks) = subs::<F>();
    for half in 0..2 {
        // SAFETY: eight f32 at `8 * half` of a 16-element array; unaligned load.
        let mut acc: [__m256; N] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(acc_in[k].as_ptr().add(8 * half)) });
        for u in 0..units {
            // SAFETY: as in `dot_packed_avx512`.
            unsafe {
                let unit = group.as_ptr().add(u * F::UNIT);
                for b in 0..F::BLOCKS {
                    let planes = unit.add(F::HEADER + b * F::PLANES);
                    if half == 0 {
                        prefetch_block::<F>(unit, b);
                    }
                    let xb: [&BlockQ16; N] = std::array::from_fn(|k| x[k].get_unchecked(u * F::BLOCKS + b));
                    for h in 0..num_subs {
                        let mut isum = [_mm256_setzero_si256(); N];
                        for c in chunks * h..chunks * (h + 1) {
                            let regs = F::regs256(planes, c, half);
                            for (i, reg) in regs.iter().enumerate() {
                                for k in 0..N {
                                    let word = *(xb[k].qs.as_ptr() as *const i32).add(4 * c + i);
                                    isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(*reg, _mm256_set1_epi32(word)));
                                }
                            }
                        }
                        let j = num_subs * b + h;
                        let scale = F::scale256(unit, j, half);
                        let min = if F::HAS_MIN { F::min256(unit, j, half) } else { _mm256_setzero_ps() };
                        for k in 0..N {
                            let s = _mm256_mul_ps(scale, _mm256_set1_ps(xb[k].d));
                            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), s, acc[k]);
                            if F::HAS_MIN {
                                let sx = if F::HALVES { xb[k].half[h] } else { xb[k].sum };
                                acc[k] = _mm256_fmadd_ps(min, _mm256_set1_ps(sx), acc[k]);
                            }
                        }
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
