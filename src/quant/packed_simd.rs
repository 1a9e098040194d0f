//! Each packed format's vector unpacking for the kernels of `packed_x86.rs`: sixteen rows'
//! weights of one 32-element block as 16-bit pairs in registers (AVX-512: all sixteen rows,
//! four registers at a time; AVX2: eight rows, a half), and the per-sub-block scales and mins
//! as float vectors, decoded exactly as `packed.rs` lays them out.

use super::blocks::*;
use super::packed::PackedFormat;
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
    /// Registers `4c..4c+4` as two of bytes for the 8-bit kernels ([`merge_bytes512`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn bytes512(planes: *const u8, c: usize) -> [__m512i; 2] {
        unsafe { merged512::<Self>(planes, c) }
    }
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

/// Two registers of 16-bit pairs (`a`: elements `4j, 4j+1` of every row; `b`: `4j+2, 4j+3`)
/// as one of bytes, lane `r` holding row `r`'s `4j, 4j+2, 4j+1, 4j+3` (`BlockQ8P`'s order):
/// `(a & 0xFF) | b << 8` per 16-bit lane, offset by 128 for signed formats (Q8_0), whose
/// quants then meet `vpdpbusd`'s unsigned operand (the kernel takes `128 Σq_x` back off).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(super) unsafe fn merge_bytes512<F: PackedFormat>(a: __m512i, b: __m512i) -> __m512i {
    let m = _mm512_ternarylogic_epi32(a, _mm512_slli_epi16(b, 8), _mm512_set1_epi16(0xFF), 0xEC);
    if F::SIGNED { _mm512_xor_si512(m, _mm512_set1_epi8(-128)) } else { m }
}

/// [`PackedSimd::bytes512`] from the format's 16-bit registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn merged512<F: PackedSimd>(planes: *const u8, c: usize) -> [__m512i; 2] {
    unsafe {
        let r = F::regs512(planes, c);
        [merge_bytes512::<F>(r[0], r[1]), merge_bytes512::<F>(r[2], r[3])]
    }
}

/// NIB's bytes straight from the planes: byte `b` of a 32-byte chunk, widened to 16 bits,
/// becomes `(b & 0xF) | (b >> 4) << 8` (its two nibbles are elements of registers `2j` and
/// `2j + 1`), three instructions a register instead of five through [`nib512`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn nib_bytes512(planes: *const u8, c: usize) -> [__m512i; 2] {
    unsafe {
        let mask = _mm512_set1_epi16(0x0F0F);
        std::array::from_fn(|i| {
            let z = _mm512_cvtepu8_epi16(_mm256_loadu_si256(planes.add(64 * c + 32 * i) as *const __m256i));
            // (z | z << 4) & 0x0F0F
            _mm512_ternarylogic_epi32(z, _mm512_slli_epi16(z, 4), mask, 0xA8)
        })
    }
}

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
            unsafe fn bytes512(planes: *const u8, c: usize) -> [__m512i; 2] {
                unsafe { if $high { merged512::<Self>(planes, c) } else { nib_bytes512(planes, c) } }
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
            unsafe fn bytes512(planes: *const u8, c: usize) -> [__m512i; 2] {
                unsafe { if $high { merged512::<Self>(planes, c) } else { nib_bytes512(planes, c) } }
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
