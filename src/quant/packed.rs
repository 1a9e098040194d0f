//! Weights packed sixteen rows at a time, for every quantized format: one 32-bit lane per
//! weight row, activations broadcast.
//!
//! Row-major kernels give each vector lane a few elements of one row and must add the lanes
//! up per block and per row; most of their instructions are that bookkeeping, not
//! multiply-adds. Here a vector holds the same two elements of sixteen *rows*, the activation
//! pair they multiply is broadcast from memory into the multiply-add itself, and a lane's sum
//! is already that row's: per 32 elements and token, sixteen `vpdpwssd` (AVX-512 VNNI) do 512
//! multiply-adds and nothing is reduced across lanes. With 8-bit activations ([`BlockQ8P`],
//! `--precision int8`) two such registers merge into one of bytes and eight `vpdpbusd` do
//! the same work; the integer sums are the same exact numbers either way.
//!
//! # One arithmetic for every format
//!
//! Every format is read as unsigned integer quants `u` (signed for Q8_0) with, per sub-block
//! of 32 or 16 elements, a scale `s` and a min `m`, so that the weight is `s·u + m`: Q4_0 is
//! `u = q`, `m = -8d`; Q4_K is `s = d·sc`, `m = -dmin·mn`; Q6_K is `s = d·sc`, `m = -32s`;
//! and so on (`packed_formats.rs`). Both are exact in f32 (an f16 times a small integer). For
//! row `r` and activations in [`BlockQ16`] blocks, sub-blocks in order:
//!
//! `acc = fma(Σ u·q_x as f32, s · d_x, acc)`, then where the format has mins
//! `acc = fma(m, d_x Σq_x, acc)` (the activation sum over the sub-block, [`BlockQ16::sum`] or
//! [`BlockQ16::half`]),
//!
//! with `Σ u·q_x` the sub-block's exact integer dot product and `acc` starting at 0. That is
//! the result: no reduction follows. The portable twin here and the AVX2 and AVX-512 kernels
//! (`packed_x86.rs`) perform exactly these roundings, so they agree bit for bit, and a row's
//! result never depends on the other rows of its group, the other tokens of a call, or how
//! tokens are grouped (batch invariance).
//!
//! # Layout
//!
//! Rows are taken in groups of [`PACK`] (the last group padded with zero rows). A group is
//! the matrix's *units* back to back (a unit is one source block: 32 elements, or 256 for
//! the k-quants), each `F::HEADER` bytes of the sixteen rows' scales (f16 `d`, `dmin`, `m`;
//! k-quant sub-block scales as one byte per row) and then, per 32 elements, `F::PLANES` bytes
//! of quant planes. Register `k` (0..16) of a 32-element block holds elements `2k, 2k+1` of
//! every row, row `r` in 16-bit lanes `2r, 2r+1`; the planes are laid out so that it unpacks
//! in a few instructions:
//!
//! - `NIB` (low 4 bits, 256 bytes): 32-byte chunk `k / 2`, byte `2r + e % 2`, the low
//!   nibble for even `k`, the high one for odd;
//! - `BYTE` (Q8_0's signed 8 bits, 512 bytes): 32-byte chunk `k`, byte `2r + e % 2`;
//! - `HI1` (one more bit: Q5's fifth, Q3_K's third; 64 bytes): bit `k` of 16-bit lane
//!   `2r + e % 2`;
//! - `TWO` (two bits: Q6_K's top two, Q2_K/Q3_K's low two; 128 bytes): bits
//!   `2(k % 8)..` of 16-bit lane `2r + e % 2` of 64-byte plane `k / 8`.
//!
//! A packed matrix takes about the bytes of its padded row-major self (the k-quants' scales
//! spread to a byte each: +2.8% for Q4_K, none for Q6_K).

// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::GgmlType;
use super::blocks::QK;
use super::q16::{Isa, quantize16};
use bytemuck::{Pod, Zeroable};

/// Rows per packed group: one per 32-bit lane of a 512-bit register.
pub const PACK: usize = 16;

/// 32 activations for the packed kernels: `x ≈ q * d`, element `e` in `qs[e]` (so 32-bit word
/// `k` holds elements `2k, 2k+1`, the pair register `k` of the weights meets).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ16 {
    pub qs: [i16; QK],
    pub d: f32,
    /// `d Σq` over the block.
    pub sum: f32,
    /// `d Σq` over elements `0..16` and `16..32`.
    pub half: [f32; 2],
}

const _: () = assert!(size_of::<BlockQ16>() == 80);

/// Quantizes `x` (whole 32-element blocks) into `x.len() / 32` blocks.
pub fn quantize_row_q16p(x: &[f32], out: &mut [BlockQ16]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        b.d = quantize16(x, &mut b.qs, super::q16::Q16_MAX);
        let sum = |q: &[i16]| q.iter().map(|&q| q as i32).sum::<i32>() as f32 * b.d;
        b.sum = sum(&b.qs);
        b.half = [sum(&b.qs[..16]), sum(&b.qs[16..])];
    }
}

/// 32 activations at 8 bits for the packed kernels' `vpdpbusd` path (`--precision int8`):
/// `x ≈ q * d` with `|q| ≤ 127`, ggml's Q8_0 rounding. Element `4j + i` is stored at
/// `qs[4j + [0, 2, 1, 3][i]]`: 32-bit word `j` then holds elements `4j, 4j+2, 4j+1, 4j+3`,
/// the order in which two weight registers `2j, 2j+1` (pairs `4j, 4j+1` and `4j+2, 4j+3`)
/// merge into one of bytes (`packed_x86.rs`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8P {
    pub qs: [i8; QK],
    pub d: f32,
    /// `d Σq` over the block.
    pub sum: f32,
    /// `d Σq` over elements `0..16` and `16..32`.
    pub half: [f32; 2],
    /// `Σq` over the block (the kernels' correction for signed weights).
    pub qsum: i32,
    _pad: [u32; 3],
}

const _: () = assert!(size_of::<BlockQ8P>() == 64);

/// Where element `e` of a block lies in [`BlockQ8P::qs`] (the permutation is its own inverse).
#[inline(always)]
pub const fn q8p_index(e: usize) -> usize {
    (e & !3) | [0, 2, 1, 3][e & 3]
}

/// Quantizes `x` (whole 32-element blocks) into `x.len() / 32` 8-bit blocks: per block
/// `d = max|x| / 127` and `q = round(x / d)`, as ggml's Q8_0 activations (the 16-bit
/// quantizer's vector code with another maximum).
pub fn quantize_row_q8p(x: &[f32], out: &mut [BlockQ8P]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let mut q = [0i16; QK];
        let d = quantize16(x, &mut q, 127.0);
        for (e, q) in q.iter_mut().enumerate() {
            // Within ±127 but for blocks so tiny that `1/d` overflows (the quotients saturate).
            *q = (*q).clamp(-127, 127);
            b.qs[q8p_index(e)] = *q as i8;
        }
        b.d = d;
        let sum = |q: &[i16]| q.iter().map(|&q| q as i32).sum::<i32>();
        b.qsum = sum(&q);
        b.sum = b.qsum as f32 * d;
        b.half = [sum(&q[..16]) as f32 * d, sum(&q[16..]) as f32 * d];
        b._pad = [0; 3];
    }
}

/// An activation block the packed kernels take: [`BlockQ16`] (16 bits, the default) or
/// [`BlockQ8P`] (8 bits).
pub trait PackedAct: Pod + Sync {
    /// Element `e`'s integer.
    fn q(&self, e: usize) -> i32;
    /// The block's scale.
    fn d(&self) -> f32;
    /// `d Σq` over the block.
    fn sum(&self) -> f32;
    /// `d Σq` over half `h` (elements `16h..16h+16`).
    fn half(&self, h: usize) -> f32;
}

/// Both activation blocks hold `d`, `sum` and `half` alike; only where element `e` lies differs.
macro_rules! packed_act {
    ($t:ty, $index:expr) => {
        impl PackedAct for $t {
            #[inline(always)]
            fn q(&self, e: usize) -> i32 {
                self.qs[$index(e)] as i32
            }
            #[inline(always)]
            fn d(&self) -> f32 {
                self.d
            }
            #[inline(always)]
            fn sum(&self) -> f32 {
                self.sum
            }
            #[inline(always)]
            fn half(&self, h: usize) -> f32 {
                self.half[h]
            }
        }
    };
}

packed_act!(BlockQ16, |e: usize| e);
packed_act!(BlockQ8P, q8p_index);

/// A block format with a packed layout: how a unit of sixteen rows is written and read.
pub trait PackedFormat: Pod + Sync {
    const DTYPE: GgmlType;
    /// 32-element blocks per unit (per source block): 1, or 8 for the k-quants.
    const BLOCKS: usize;
    /// Bytes of a unit's scales for sixteen rows.
    const HEADER: usize;
    /// Bytes of a 32-element block's quant planes for sixteen rows.
    const PLANES: usize;
    /// Scales per 16 elements (else per 32).
    const HALVES: bool;
    /// Whether the format has mins (the `m · d_x Σq_x` term).
    const HAS_MIN: bool;
    /// Whether the quants are signed (Q8_0; the others are unsigned, below 64).
    const SIGNED: bool = matches!(Self::DTYPE, GgmlType::Q8_0);
    /// Bytes of a unit.
    const UNIT: usize = Self::HEADER + Self::BLOCKS * Self::PLANES;

    /// Writes row `r`'s block into a zeroed unit (its scales and quants).
    fn put(unit: &mut [u8], r: usize, block: &Self);
    /// The quant of row `r`, element `e` of the unit.
    fn quant(unit: &[u8], r: usize, e: usize) -> i32;
    /// The scale of row `r`, sub-block `j` (of 32 elements, or of 16 with `HALVES`).
    fn scale(unit: &[u8], r: usize, j: usize) -> f32;
    /// The min of row `r`, sub-block `j` (zero where the format has none).
    fn min(_unit: &[u8], _r: usize, _j: usize) -> f32 {
        0.0
    }
    /// Element `e` of row `r` as the row-major block dequantizes it, bit for bit.
    fn value(unit: &[u8], r: usize, e: usize) -> f32;
}

/// Bytes of `rows` rows of `units` source blocks each, packed.
pub fn packed_bytes<F: PackedFormat>(rows: usize, units: usize) -> usize {
    rows.div_ceil(PACK) * units * F::UNIT
}

/// Packs row-major blocks (`rows` rows of `units` blocks) into `out` ([`packed_bytes`] long;
/// every byte is written, padding rows included).
///
/// # Panics
/// If `w` does not hold `rows * units` blocks or `out` has the wrong length.
pub fn pack_into<F: PackedFormat>(w: &[F], rows: usize, units: usize, out: &mut [u8]) {
    assert_eq!(w.len(), rows * units, "pack: block count");
    assert_eq!(out.len(), packed_bytes::<F>(rows, units), "pack: output size");
    out.fill(0);
    for (g, group) in out.chunks_exact_mut(units * F::UNIT).enumerate() {
        for (u, unit) in group.chunks_exact_mut(F::UNIT).enumerate() {
            for r in 0..PACK.min(rows.saturating_sub(PACK * g)) {
                F::put(unit, r, &w[(PACK * g + r) * units + u]);
            }
        }
    }
}

/// Row `r` of a packed matrix (`units` units a row), dequantized into `out`: exactly what
/// the row-major row dequantizes to.
pub fn dequantize_packed_row<F: PackedFormat>(packed: &[u8], units: usize, r: usize, out: &mut [f32]) {
    let group = &packed[(r / PACK) * units * F::UNIT..][..units * F::UNIT];
    let elems = F::BLOCKS * QK;
    for (unit, y) in group.chunks_exact(F::UNIT).zip(out.chunks_exact_mut(elems)) {
        for (e, y) in y.iter_mut().enumerate() {
            *y = F::value(unit, r % PACK, e);
        }
    }
}

/// The portable twin: one group's sixteen rows · one activation row, the arithmetic of the
/// module doc lane by lane, continuing from `acc` (zeros to start a row; a row's units may
/// be taken in pieces, each continuing where the last stopped, with the same result).
/// `group` is `units` units of one group.
pub fn dot_packed_portable<F: PackedFormat, A: PackedAct>(group: &[u8], units: usize, x: &[A], acc: [f32; PACK]) -> [f32; PACK] {
    let mut acc = acc;
    let (subs, sub_len) = if F::HALVES { (2, 16) } else { (1, 32) };
    for (u, unit) in group.chunks_exact(F::UNIT).take(units).enumerate() {
        for b in 0..F::BLOCKS {
            let xb = &x[u * F::BLOCKS + b];
            for h in 0..subs {
                let j = subs * b + h;
                let sx = if F::HALVES { xb.half(h) } else { xb.sum() };
                for r in 0..PACK {
                    let mut isum = 0i32;
                    for e in sub_len * h..sub_len * (h + 1) {
                        isum += F::quant(unit, r, QK * b + e) * xb.q(e);
                    }
                    acc[r] = (isum as f32).mul_add(F::scale(unit, r, j) * xb.d(), acc[r]);
                    if F::HAS_MIN {
                        acc[r] = F::min(unit, r, j).mul_add(sx, acc[r]);
                    }
                }
            }
        }
    }
    acc
}

/// An activation block with every implementation.
#[cfg(target_arch = "x86_64")]
pub trait ActKernel: PackedAct + super::packed_x86::X86Act {}
#[cfg(target_arch = "x86_64")]
impl<A: PackedAct + super::packed_x86::X86Act> ActKernel for A {}
/// An activation block with every implementation.
#[cfg(not(target_arch = "x86_64"))]
pub trait ActKernel: PackedAct {}
#[cfg(not(target_arch = "x86_64"))]
impl<A: PackedAct> ActKernel for A {}

/// A packed format with every implementation.
#[cfg(target_arch = "x86_64")]
pub trait PackedKernel: PackedFormat + super::packed_simd::PackedSimd {}
#[cfg(target_arch = "x86_64")]
impl<F: PackedFormat + super::packed_simd::PackedSimd> PackedKernel for F {}
/// A packed format with every implementation.
#[cfg(not(target_arch = "x86_64"))]
pub trait PackedKernel: PackedFormat {}
#[cfg(not(target_arch = "x86_64"))]
impl<F: PackedFormat> PackedKernel for F {}

/// One group's sixteen rows · `N` activation rows with a chosen implementation, continuing
/// from `acc` (see [`dot_packed_portable`]): `out[k][r]` is row `r` · `x[k]`, bit-identical
/// for every [`Isa`] and every `N`.
///
/// # Panics
/// If `group` is not `units` units, an activation row does not have `units * F::BLOCKS`
/// blocks, or `isa` is beyond [`Isa::best`].
#[inline]
pub fn dot_packed_xn_on<F: PackedKernel, A: ActKernel, const N: usize>(
    isa: Isa,
    group: &[u8],
    units: usize,
    x: [&[A]; N],
    acc: &[[f32; PACK]; N],
) -> [[f32; PACK]; N] {
    assert_eq!(group.len(), units * F::UNIT, "a packed group's size");
    assert!(x.iter().all(|x| x.len() == units * F::BLOCKS), "activation rows must match the weight rows");
    assert!(isa <= Isa::best(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked above); sizes match.
        Isa::Avx512Vnni => unsafe { super::packed_x86::dot_packed_avx512::<F, A, N>(group, units, x, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { super::packed_x86::dot_packed_avx2::<F, A, N>(group, units, x, acc) },
        _ => std::array::from_fn(|k| dot_packed_portable::<F, A>(group, units, x[k], acc[k])),
    }
}

/// Runs `$body` with `$F` bound to the block type of `$dtype`'s packed format, or evaluates
/// `$none` for types without one (floats, activation-only types).
#[macro_export]
#[doc(hidden)]
macro_rules! with_packed_format {
    ($dtype:expr, $F:ident => $body:expr, _ => $none:expr) => {{
        use $crate::quant::{
            BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlType,
        };
        match $dtype {
            GgmlType::Q4_0 => {
                type $F = BlockQ4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $F = BlockQ4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $F = BlockQ5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $F = BlockQ5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $F = BlockQ8_0;
                $body
            }
            GgmlType::Q2K => {
                type $F = BlockQ2K;
                $body
            }
            GgmlType::Q3K => {
                type $F = BlockQ3K;
                $body
            }
            GgmlType::Q4K => {
                type $F = BlockQ4K;
                $body
            }
            GgmlType::Q5K => {
                type $F = BlockQ5K;
                $body
            }
            GgmlType::Q6K => {
                type $F = BlockQ6K;
                $body
            }
            _ => $none,
        }
    }};
}
pub use with_packed_format;
