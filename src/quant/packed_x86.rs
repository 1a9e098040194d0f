//! AVX-512 VNNI and AVX2 kernels for packed weights: the arithmetic of `packed.rs`.
//!
//! Per 32-element block, each format unpacks its sixteen registers four at a time
//! ([`PackedSimd::regs512`], in `packed_simd.rs`: elements `8c..8c+8` of all sixteen rows as 16-bit pairs, lane
//! `r` for row `r`); for every token each register meets the token's matching activation
//! pair, broadcast from memory, in one `vpdpwssd` (AVX2: `vpmaddwd` then `vpaddd`, rows in
//! two halves of eight). A sub-block's integer sums then go through the module's two fused
//! multiply-adds, lane by lane, exactly as the portable twin rounds. Weights are unpacked once
//! per call for all its tokens, and prefetched a few KiB ahead of the block being read
//! ([`PREFETCH_BYTES`]), which is what lets single-token decode run at the memory's speed.

use super::packed::{BlockQ8P, BlockQ16, PACK, PackedAct, PackedFormat};
use super::packed_simd::PackedSimd;
use std::arch::x86_64::*;
use std::ops::Range;

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

/// `acc[i % C] += Σ of the four byte products of w[i] · x[i]` per 32-bit lane for the two
/// registers `w` (unsigned bytes) and the 32-bit words `i` at `x` (signed bytes), broadcast:
/// two `vpdpbusd` into `C` (1 or 2) chains, in assembly for the reason of [`dpwssd4`].
///
/// # Safety
/// AVX-512 F/VNNI; `x` readable for 8 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd2<const C: usize>(acc: &mut [__m512i], w: &[__m512i; 2], x: *const i32) {
    // SAFETY (each block): the caller's contract; the instructions read 8 bytes at `x`.
    unsafe {
        match C {
            1 => std::arch::asm!(
                "vpdpbusd {a}, {w0}, dword ptr [{x}]{{1to16}}",
                "vpdpbusd {a}, {w1}, dword ptr [{x} + 4]{{1to16}}",
                a = inout(zmm_reg) acc[0],
                w0 = in(zmm_reg) w[0], w1 = in(zmm_reg) w[1],
                x = in(reg) x,
                options(pure, readonly, nostack, preserves_flags)
            ),
            _ => std::arch::asm!(
                "vpdpbusd {a0}, {w0}, dword ptr [{x}]{{1to16}}",
                "vpdpbusd {a1}, {w1}, dword ptr [{x} + 4]{{1to16}}",
                a0 = inout(zmm_reg) acc[0], a1 = inout(zmm_reg) acc[1],
                w0 = in(zmm_reg) w[0], w1 = in(zmm_reg) w[1],
                x = in(reg) x,
                options(pure, readonly, nostack, preserves_flags)
            ),
        }
    }
}

/// `packed_simd::merge_bytes512` for eight rows (the AVX2 8-bit path takes signed quants as they are).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes256(a: __m256i, b: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi16(0xFF)), _mm256_slli_epi16(b, 8))
}

/// An activation block with x86 kernels: how a sub-block's integer sums `Σ u·q_x` are
/// computed, for sixteen rows (AVX-512) or eight (AVX2, rows of `half`) and `N` tokens.
///
/// # Safety (both methods)
/// The features of the kernel they are called from; `planes` points at one 32-element
/// block's planes of format `F`, `chunks` lies in `0..4`.
pub trait X86Act: PackedAct {
    unsafe fn isums512<F: PackedSimd, const N: usize>(planes: *const u8, chunks: Range<usize>, xb: &[&Self; N]) -> [__m512i; N];
    unsafe fn isums256<F: PackedSimd, const N: usize>(
        planes: *const u8,
        chunks: Range<usize>,
        half: usize,
        xb: &[&Self; N],
    ) -> [__m256i; N];
}

impl X86Act for BlockQ16 {
    /// `vpdpwssd` of each register with the token's matching activation pair.
    #[inline(always)]
    unsafe fn isums512<F: PackedSimd, const N: usize>(planes: *const u8, chunks: Range<usize>, xb: &[&Self; N]) -> [__m512i; N] {
        // SAFETY: the trait's contract; the kernel has AVX-512 VNNI.
        unsafe {
            // Few tokens: several independent chains per token (integer sums, so the order
            // does not matter), else one `vpdpwssd` waits on the last.
            let mut chains = [[_mm512_setzero_si512(); CHAINS]; N];
            for c in chunks {
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
            std::array::from_fn(|k| add_chains(&chains[k], chains_for(N)))
        }
    }

    #[inline(always)]
    unsafe fn isums256<F: PackedSimd, const N: usize>(
        planes: *const u8,
        chunks: Range<usize>,
        half: usize,
        xb: &[&Self; N],
    ) -> [__m256i; N] {
        // SAFETY: the trait's contract.
        unsafe {
            let mut isum = [_mm256_setzero_si256(); N];
            for c in chunks {
                let regs = F::regs256(planes, c, half);
                for (i, reg) in regs.iter().enumerate() {
                    for k in 0..N {
                        let word = *(xb[k].qs.as_ptr() as *const i32).add(4 * c + i);
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(*reg, _mm256_set1_epi32(word)));
                    }
                }
            }
            isum
        }
    }
}

impl X86Act for BlockQ8P {
    /// Registers merged two by two into bytes ([`PackedSimd::bytes512`]), each meeting the token's
    /// matching four activations in one `vpdpbusd`: half the multiply-add instructions of
    /// the 16-bit path.
    #[inline(always)]
    unsafe fn isums512<F: PackedSimd, const N: usize>(planes: *const u8, chunks: Range<usize>, xb: &[&Self; N]) -> [__m512i; N] {
        // SAFETY: the trait's contract; the kernel has AVX-512 VNNI.
        unsafe {
            let c8 = if N < 8 { 2 } else { 1 };
            let mut chains = [[_mm512_setzero_si512(); 2]; N];
            for c in chunks {
                let b = F::bytes512(planes, c);
                for k in 0..N {
                    let x = (xb[k].qs.as_ptr() as *const i32).add(2 * c);
                    match c8 {
                        1 => dpbusd2::<1>(&mut chains[k], &b, x),
                        _ => dpbusd2::<2>(&mut chains[k], &b, x),
                    }
                }
            }
            std::array::from_fn(|k| {
                let isum = add_chains(&chains[k], c8);
                if F::SIGNED { _mm512_sub_epi32(isum, _mm512_set1_epi32(128 * xb[k].qsum)) } else { isum }
            })
        }
    }

    /// Bytes as for AVX-512, then `vpmaddubsw` (pairs of products into 16 bits: at most
    /// 2·128·127, which fits) and `vpmaddwd` by ones. Signed weights go in as their absolute
    /// values, the sign moved onto the activations.
    #[inline(always)]
    unsafe fn isums256<F: PackedSimd, const N: usize>(
        planes: *const u8,
        chunks: Range<usize>,
        half: usize,
        xb: &[&Self; N],
    ) -> [__m256i; N] {
        // SAFETY: the trait's contract.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut isum = [_mm256_setzero_si256(); N];
            for c in chunks {
                let regs = F::regs256(planes, c, half);
                for i in 0..2 {
                    let w = bytes256(regs[2 * i], regs[2 * i + 1]);
                    let u = if F::SIGNED { _mm256_abs_epi8(w) } else { w };
                    for k in 0..N {
                        let word = _mm256_set1_epi32(*(xb[k].qs.as_ptr() as *const i32).add(2 * c + i));
                        let x = if F::SIGNED { _mm256_sign_epi8(word, w) } else { word };
                        let pairs = _mm256_maddubs_epi16(u, x);
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            isum
        }
    }
}

/// The sum of the first `n` (1, 2 or 4) chains.
#[inline(always)]
unsafe fn add_chains(ch: &[__m512i], n: usize) -> __m512i {
    // SAFETY: plain AVX-512 F adds; the callers have it.
    unsafe {
        match n {
            1 => ch[0],
            2 => _mm512_add_epi32(ch[0], ch[1]),
            _ => _mm512_add_epi32(_mm512_add_epi32(ch[0], ch[1]), _mm512_add_epi32(ch[2], ch[3])),
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
pub unsafe fn dot_packed_avx512<F: PackedSimd, A: X86Act, const N: usize>(
    group: &[u8],
    units: usize,
    x: [&[A]; N],
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
                let xb: [&A; N] = std::array::from_fn(|k| x[k].get_unchecked(u * F::BLOCKS + b));
                for h in 0..num_subs {
                    let isum = A::isums512::<F, N>(planes, chunks * h..chunks * (h + 1), &xb);
                    let j = num_subs * b + h;
                    let scale = F::scale512(unit, j);
                    let min = if F::HAS_MIN { F::min512(unit, j) } else { _mm512_setzero_ps() };
                    for k in 0..N {
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_mul_ps(scale, _mm512_set1_ps(xb[k].d())), acc[k]);
                        if F::HAS_MIN {
                            let sx = if F::HALVES { xb[k].half(h) } else { xb[k].sum() };
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
pub unsafe fn dot_packed_avx2<F: PackedSimd, A: X86Act, const N: usize>(
    group: &[u8],
    units: usize,
    x: [&[A]; N],
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
                    let xb: [&A; N] = std::array::from_fn(|k| x[k].get_unchecked(u * F::BLOCKS + b));
                    for h in 0..num_subs {
                        let isum = A::isums256::<F, N>(planes, chunks * h..chunks * (h + 1), half, &xb);
                        let j = num_subs * b + h;
                        let scale = F::scale256(unit, j, half);
                        let min = if F::HAS_MIN { F::min256(unit, j, half) } else { _mm256_setzero_ps() };
                        for k in 0..N {
                            let s = _mm256_mul_ps(scale, _mm256_set1_ps(xb[k].d()));
                            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), s, acc[k]);
                            if F::HAS_MIN {
                                let sx = if F::HALVES { xb[k].half(h) } else { xb[k].sum() };
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
