//! 16-bit integer activations for the 32-element weight formats (Q4_0, Q4_1, Q8_0): the
//! default fast path's arithmetic.
//!
//! llama.cpp rounds activations to 8 bits before its integer dot products; on SmolLM2 that
//! moves logits by up to ~0.3 and flips greedy choices wherever the top two are close. Sixteen
//! bits per element (one f32 scale per block) keep the integer dot products but leave an
//! error ~256 times smaller, indistinguishable from f32 activations in the goldens, at the
//! same weight traffic.
//!
//! # Layout and arithmetic
//!
//! Activations come in pairs of blocks ([`BlockQ16x2`]) laid out for sixteen 32-bit lanes,
//! lanes `0..8` for the pair's first block and `8..16` for its second. Lane `8h + l` of block
//! `h` holds the exact integer sum of `w·x` over elements `{2l, 2l+1, 16+2l, 17+2l}` —
//! which is what one `madd` of the block's first halves plus one of its second halves leaves
//! in a lane, with 512-bit registers (`vpmaddwd` + VNNI `vpdpwssd`, one pair per step) or
//! 256-bit ones (one block per step). Then, per lane,
//!
//! `acc = fma(sum as f32, d_w · d_x, acc)` and, for Q4_1, `acc = fma(m_w, s_x, acc)`,
//!
//! where `s_x = d_x Σq_x` sits in the block's first lane and zero in the others. A missing
//! second block (odd block counts) leaves its lanes alone. At the end lane `l` and `l + 8`
//! are added and the eight sums reduced in a fixed order ([`finish`]). Every implementation
//! — the portable one here, AVX2 (`avx2.rs`), AVX-512 VNNI (`avx512.rs`) — performs exactly
//! these roundings in this order, so all three give bit-identical results (tests hold them to
//! it), and grouping tokens (`_xn`) changes nothing either: batch invariance.
//!
//! Sums: four products of a 4- or 8-bit weight and a 16-bit activation fit an i32 lane.
// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use super::float::f16_to_f32;
use bytemuck::{Pod, Zeroable};

pub(super) const Q16_MAX: f32 = 32767.0;

/// Two blocks of 32 activations, `x ≈ q * d`, interleaved for sixteen lanes: `qs` holds
/// block 0's elements `0..16`, block 1's `0..16`, block 0's `16..32`, block 1's `16..32`;
/// `d` is each block's scale in its eight lanes; `s` is `d Σq` in each block's first lane.
/// A row with an odd number of blocks ends with an all-zero second block.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ16x2 {
    pub qs: [i16; 2 * QK],
    pub d: [f32; 16],
    pub s: [f32; 16],
}

const _: () = assert!(size_of::<BlockQ16x2>() == 256);

/// Where element `j` of block `h` (0 or 1) of a pair sits in `qs`.
#[inline(always)]
pub fn q16_slot(h: usize, j: usize) -> usize {
    if j < 16 { 16 * h + j } else { 32 + 16 * h + (j - 16) }
}

/// `d = max|x| / qmax` (32767 for 16-bit activations, 127 for 8-bit ones), `q = round(x / d)`;
/// returns `d`. With AVX2 (and whole sixteens of
/// elements) in vector instructions, bit-identical for finite inputs ([`super::avx2::quantize16`]):
/// compiled for AVX2 the portable loop stays scalar (`f32::max` and `round` do not vectorise),
/// and quantizing the activations of every matmul took ~5% of a prefill.
#[inline]
pub(super) fn quantize16(x: &[f32], qs: &mut [i16], qmax: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::multiversion::has_avx2() && x.len().is_multiple_of(16) && qs.len() == x.len() {
        // SAFETY: the CPU has AVX2; whole sixteens and as many outputs (checked).
        return unsafe { super::avx2::quantize16(x, qs, qmax) };
    }
    quantize16_portable(x, qs, qmax)
}

/// The portable quantizer (see [`quantize16`]).
pub(super) fn quantize16_portable(x: &[f32], qs: &mut [i16], qmax: f32) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / qmax;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i16;
    }
    d
}

/// Quantizes `x` (whole 32-element blocks) into `x.len() / 32` blocks, paired; with AVX2,
/// vector code that rounds exactly as [`quantize_row_q16_portable`] (finite inputs).
pub fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16x2]) {
    #[cfg(target_arch = "x86_64")]
    if super::multiversion::has_avx2() && x.len().is_multiple_of(QK) && out.len() == x.len().div_ceil(2 * QK) {
        // SAFETY: the CPU has AVX2; whole blocks and one pair per two of them (checked).
        return unsafe { super::avx2::quantize_row_q16(x, out) };
    }
    quantize_row_q16_portable(x, out)
}

/// The portable quantizer: `quantize16` per block, scattered into the pair layout.
pub fn quantize_row_q16_portable(x: &[f32], out: &mut [BlockQ16x2]) {
    for (pair, x) in out.iter_mut().zip(x.chunks(2 * QK)) {
        *pair = BlockQ16x2::zeroed();
        for (h, x) in x.chunks_exact(QK).enumerate() {
            let mut q = [0i16; QK];
            let d = quantize16_portable(x, &mut q, Q16_MAX);
            for (j, &q) in q.iter().enumerate() {
                pair.qs[q16_slot(h, j)] = q;
            }
            pair.d[8 * h..8 * h + 8].fill(d);
            pair.s[8 * h] = d * q.iter().map(|&q| q as i32).sum::<i32>() as f32;
        }
    }
}

/// The activations a paired row stands for (`q * d`): `out.len()` elements.
pub fn dequantize_row_q16(x: &[BlockQ16x2], out: &mut [f32]) {
    for (b, y) in out.chunks_mut(QK).enumerate() {
        let (pair, h) = (&x[b / 2], b % 2);
        for (j, y) in y.iter_mut().enumerate() {
            *y = pair.qs[q16_slot(h, j)] as f32 * pair.d[8 * h];
        }
    }
}

/// A 32-element weight block as the 16-bit kernels see it: `w = q * scale + min`.
pub trait WeightBlock: Pod + Sync {
    /// Whether `min` can be non-zero (only then do kernels add the `m_w s_x` term).
    const HAS_MIN: bool;
    fn unpack(&self) -> [i16; QK];
    fn scale(&self) -> f32;
    fn min(&self) -> f32 {
        0.0
    }
}

/// The nibbles of a 4-bit block in element order (element `j < 16` is the low nibble of
/// byte `j`, element `j + 16` its high nibble), minus `offset`.
#[inline(always)]
fn nibbles(qs: &[u8; QK / 2], offset: i16) -> [i16; QK] {
    std::array::from_fn(|i| if i < QK / 2 { (qs[i] & 0xF) as i16 } else { (qs[i - QK / 2] >> 4) as i16 } - offset)
}

impl WeightBlock for BlockQ4_0 {
    const HAS_MIN: bool = false;
    fn unpack(&self) -> [i16; QK] {
        nibbles(&self.qs, 8)
    }
    fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

impl WeightBlock for BlockQ4_1 {
    const HAS_MIN: bool = true;
    fn unpack(&self) -> [i16; QK] {
        nibbles(&self.qs, 0)
    }
    fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn min(&self) -> f32 {
        f16_to_f32(self.m)
    }
}

impl WeightBlock for BlockQ8_0 {
    const HAS_MIN: bool = false;
    fn unpack(&self) -> [i16; QK] {
        self.qs.map(|q| q as i16)
    }
    fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

/// A weight type with all three implementations.
#[cfg(target_arch = "x86_64")]
pub trait Q16Weight: WeightBlock + super::avx2::Unpack256 + super::avx512::Unpack512 {}
#[cfg(target_arch = "x86_64")]
impl<W: WeightBlock + super::avx2::Unpack256 + super::avx512::Unpack512> Q16Weight for W {}
/// A weight type the 16-bit kernels take.
#[cfg(not(target_arch = "x86_64"))]
pub trait Q16Weight: WeightBlock {}
#[cfg(not(target_arch = "x86_64"))]
impl<W: WeightBlock> Q16Weight for W {}

/// Which implementation runs the 16-bit kernels (ordered slowest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    /// AVX-512 F/BW/DQ/VL with VNNI (`vpdpwssd`).
    Avx512Vnni,
}

impl Isa {
    /// The fastest this CPU supports (detected once).
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static BEST: OnceLock<Isa> = OnceLock::new();
            *BEST.get_or_init(|| {
                use std::arch::is_x86_feature_detected as has;
                if super::multiversion::has_avx2()
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl")
                    && has!("avx512vnni")
                {
                    Isa::Avx512Vnni
                } else if super::multiversion::has_avx2() {
                    Isa::Avx2
                } else {
                    Isa::Portable
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Portable
    }

    /// The name logs and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Every implementation this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let best = Isa::best();
        [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|&i| i <= best).collect()
    }
}

/// Sums the sixteen lanes in the fixed order every implementation ends with.
#[inline(always)]
pub(super) fn finish(acc: &[f32; 16]) -> f32 {
    let a: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// Pairs of blocks a row of `num_blocks` weight blocks takes.
pub fn q16_pairs(num_blocks: usize) -> usize {
    num_blocks.div_ceil(2)
}

/// One weight row · `N` activation rows (each `q16_pairs(w.len())` pairs), with the fastest
/// implementation; each result is bit-identical to the row alone (`N = 1`) and to
/// [`vec_dot_q16_xn_on`] with any other [`Isa`].
#[inline]
pub fn vec_dot_q16_xn<W: Q16Weight, const N: usize>(w: &[W], x: [&[BlockQ16x2]; N]) -> [f32; N] {
    vec_dot_q16_xn_on(Isa::best(), w, x)
}

/// One weight row · one activation row.
#[inline]
pub fn vec_dot_q16<W: Q16Weight>(w: &[W], x: &[BlockQ16x2]) -> f32 {
    vec_dot_q16_xn(w, [x])[0]
}

/// [`vec_dot_q16_xn`] with a chosen implementation.
///
/// # Panics
/// If an activation row's length does not match the weight row, or `isa` is beyond
/// [`Isa::best`].
#[inline]
pub fn vec_dot_q16_xn_on<W: Q16Weight, const N: usize>(isa: Isa, w: &[W], x: [&[BlockQ16x2]; N]) -> [f32; N] {
    let pairs = q16_pairs(w.len());
    assert!(x.iter().all(|x| x.len() == pairs), "activation rows must match the weight row");
    assert!(isa <= Isa::best(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked above); lengths match.
        Isa::Avx512Vnni => unsafe { super::avx512::vec_dot_q16_xn(w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { super::avx2::vec_dot_q16_xn(w, x) },
        _ => x.map(|x| vec_dot_q16_portable(w, x)),
    }
}

/// `out[r]` = weight row `r` · `x`, for `out.len()` consecutive rows of `row_blocks` blocks
/// in `w`: each result exactly [`vec_dot_q16_xn_on`]'s, with one dispatch for all rows.
///
/// # Panics
/// If the lengths disagree, or `isa` is beyond [`Isa::best`].
pub fn vec_dot_q16_rows_on<W: Q16Weight>(isa: Isa, w: &[W], row_blocks: usize, x: &[BlockQ16x2], out: &mut [f32]) {
    assert!(row_blocks > 0 && w.len() == out.len() * row_blocks, "weight rows must match the outputs");
    assert!(x.len() == q16_pairs(row_blocks), "the activation row must match the weight rows");
    assert!(isa <= Isa::best(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked above); lengths match.
        Isa::Avx512Vnni => unsafe { super::avx512::vec_dot_q16_rows(w, row_blocks, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { super::avx2::vec_dot_q16_rows(w, row_blocks, x, out) },
        _ => {
            for (o, row) in out.iter_mut().zip(w.chunks_exact(row_blocks)) {
                *o = vec_dot_q16_portable(row, x);
            }
        }
    }
}

/// The portable twin: the arithmetic of the module doc, lane by lane.
pub fn vec_dot_q16_portable<W: WeightBlock>(w: &[W], x: &[BlockQ16x2]) -> f32 {
    let mut acc = [0f32; 16];
    for (p, pair) in x.iter().enumerate() {
        for h in 0..2 {
            let Some(b) = w.get(2 * p + h) else { continue };
            let (q, d, m) = (b.unpack(), b.scale(), b.min());
            for l in 0..8 {
                let lane = 8 * h + l;
                let prod = |j: usize| q[j] as i32 * pair.qs[q16_slot(h, j)] as i32;
                let sum = prod(2 * l) + prod(2 * l + 1) + prod(16 + 2 * l) + prod(17 + 2 * l);
                acc[lane] = (sum as f32).mul_add(d * pair.d[lane], acc[lane]);
                if W::HAS_MIN {
                    acc[lane] = m.mul_add(pair.s[lane], acc[lane]);
                }
            }
        }
    }
    finish(&acc)
}
