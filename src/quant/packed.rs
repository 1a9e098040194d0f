//! Weights packed sixteen rows at a time for the 16-bit kernels: one 32-bit lane per weight
//! row, activations broadcast.
//!
//! The row-major kernels (`q16.rs`) give each lane a few elements of one row and must add the
//! lanes up per block and per row; most of their instructions are that bookkeeping, not
//! multiply-adds. Here a vector holds the same two elements of sixteen *rows*, the activation
//! pair they multiply is broadcast from memory into the multiply-add itself, and a lane's sum
//! is already that row's: per block and token, sixteen `vpdpwssd` (AVX-512 VNNI) and five
//! other instructions do 512 multiply-adds, and nothing is reduced across lanes.
//!
//! # Layout
//!
//! Rows are taken in groups of [`PACK`] (the last group padded with zero rows). A group is
//! `blocks` block-groups back to back, one per 32-element block `b` of the rows, each the
//! same size as the sixteen blocks it replaces (`16 * size_of::<W>()` bytes), so a packed
//! matrix takes the bytes of its padded row-major self:
//!
//! - the sixteen rows' scales `d` as f16, then (Q4_1) their mins `m` as f16;
//! - the quants in 32-byte chunks, each chunk two bytes per row (row `r` at bytes `2r`,
//!   `2r + 1`):
//!   - 4-bit: chunk `c` holds elements `4c, 4c+1` of every row in the low nibbles and
//!     `4c+2, 4c+3` in the high nibbles (8 chunks);
//!   - 8-bit: chunk `p` holds elements `2p, 2p+1` (16 chunks).
//!
//! # Arithmetic
//!
//! For row `r` and one activation row ([`BlockQ16x2`], block `b` = half `b % 2` of pair
//! `b / 2`), blocks in order:
//!
//! `acc = fma(Σ w·x as f32, d_w · d_x, acc)`, then for Q4_1 `acc = fma(m_w, s_x, acc)`,
//!
//! where `Σ w·x` is the block's exact integer dot product (Q4_0's weights are `q - 8`) and
//! `acc` starts at 0. That is the result: no reduction follows. The portable twin here and the
//! AVX2 and AVX-512 kernels (`packed_x86.rs`) perform exactly these roundings, so they agree
//! bit for bit, and the result of a row never depends on the other rows of its group, on the
//! other tokens of a call, or on how tokens are grouped.

// Kernels index fixed-size blocks by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use super::float::f16_to_f32;
use super::q16::{BlockQ16x2, Isa, WeightBlock, q16_pairs, q16_slot};
use half::f16;

/// Rows per packed group: one per 32-bit lane of a 512-bit register.
pub const PACK: usize = 16;

/// A 32-element weight format with a packed layout.
pub trait PackedWeight: WeightBlock {
    /// Bytes of quants in one block-group.
    const QS_BYTES: usize;
    /// Bytes of one block-group: the sixteen blocks it replaces.
    const GROUP_BLOCK: usize = PACK * size_of::<Self>();
    /// Bytes of f16 scales (and mins) before the quants.
    const HEADER: usize = Self::GROUP_BLOCK - Self::QS_BYTES;
    /// The f16 min of a block (zero where the format has none).
    fn min_bits(&self) -> f16 {
        f16::ZERO
    }
    fn scale_bits(&self) -> f16;
    /// Writes row `r`'s 32 quants (as [`WeightBlock::unpack`] gives them) into a
    /// block-group's quants.
    fn put_row(qs: &mut [u8], r: usize, q: &[i16; QK]);
    /// Reads back quant `e` of row `r`, as [`PackedWeight::put_row`] wrote it.
    fn get(qs: &[u8], r: usize, e: usize) -> i16;
}

/// Byte and shift of a 4-bit element in a block-group's quants.
#[inline(always)]
fn nibble_at(r: usize, e: usize) -> (usize, u32) {
    (32 * (e / 4) + 2 * r + e % 2, 4 * ((e / 2) % 2) as u32)
}

/// A 4-bit row at once: chunk `c`'s two bytes for row `r` are elements `4c, 4c+1` (low
/// nibbles) and `4c+2, 4c+3` (high), each quant `q + offset`.
fn put4_row(qs: &mut [u8], r: usize, q: &[i16; QK], offset: i16) {
    let n = |e: usize| (q[e] + offset) as u8 & 0xF;
    for c in 0..QK / 4 {
        qs[32 * c + 2 * r] = n(4 * c) | n(4 * c + 2) << 4;
        qs[32 * c + 2 * r + 1] = n(4 * c + 1) | n(4 * c + 3) << 4;
    }
}

fn get4(qs: &[u8], r: usize, e: usize) -> u8 {
    let (i, shift) = nibble_at(r, e);
    (qs[i] >> shift) & 0xF
}

impl PackedWeight for BlockQ4_0 {
    const QS_BYTES: usize = 256;
    fn scale_bits(&self) -> f16 {
        self.d
    }
    fn put_row(qs: &mut [u8], r: usize, q: &[i16; QK]) {
        put4_row(qs, r, q, 8);
    }
    fn get(qs: &[u8], r: usize, e: usize) -> i16 {
        get4(qs, r, e) as i16 - 8
    }
}

impl PackedWeight for BlockQ4_1 {
    const QS_BYTES: usize = 256;
    fn scale_bits(&self) -> f16 {
        self.d
    }
    fn min_bits(&self) -> f16 {
        self.m
    }
    fn put_row(qs: &mut [u8], r: usize, q: &[i16; QK]) {
        put4_row(qs, r, q, 0);
    }
    fn get(qs: &[u8], r: usize, e: usize) -> i16 {
        get4(qs, r, e) as i16
    }
}

impl PackedWeight for BlockQ8_0 {
    const QS_BYTES: usize = 512;
    fn scale_bits(&self) -> f16 {
        self.d
    }
    fn put_row(qs: &mut [u8], r: usize, q: &[i16; QK]) {
        // Chunk `p` holds elements `2p, 2p+1` of every row, two bytes a row.
        for (p, pair) in q.chunks_exact(2).enumerate() {
            qs[32 * p + 2 * r] = pair[0] as i8 as u8;
            qs[32 * p + 2 * r + 1] = pair[1] as i8 as u8;
        }
    }
    fn get(qs: &[u8], r: usize, e: usize) -> i16 {
        qs[32 * (e / 2) + 2 * r + e % 2] as i8 as i16
    }
}

/// Bytes of `rows` rows of `blocks` blocks each, packed (rows padded to a whole group).
pub fn packed_bytes<W: PackedWeight>(rows: usize, blocks: usize) -> usize {
    rows.div_ceil(PACK) * blocks * W::GROUP_BLOCK
}

/// Packs row-major blocks (`rows` rows of `blocks` blocks) into [`packed_bytes`] bytes.
///
/// # Panics
/// If `w` does not hold `rows * blocks` blocks.
pub fn pack<W: PackedWeight>(w: &[W], rows: usize, blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; packed_bytes::<W>(rows, blocks)];
    pack_into(w, rows, blocks, &mut out);
    out
}

/// [`pack`] into `out` (exactly [`packed_bytes`] long; every byte is written: scales, mins
/// and quants of all sixteen rows, padding rows included).
///
/// # Panics
/// If `w` does not hold `rows * blocks` blocks or `out` has the wrong length.
pub fn pack_into<W: PackedWeight>(w: &[W], rows: usize, blocks: usize, out: &mut [u8]) {
    assert_eq!(w.len(), rows * blocks, "pack: block count");
    assert_eq!(out.len(), packed_bytes::<W>(rows, blocks), "pack: output size");
    let zero = f16::ZERO.to_bits().to_le_bytes();
    for (g, group) in out.chunks_exact_mut(blocks * W::GROUP_BLOCK).enumerate() {
        for (b, gb) in group.chunks_exact_mut(W::GROUP_BLOCK).enumerate() {
            let (header, qs) = gb.split_at_mut(W::HEADER);
            for r in 0..PACK {
                let row = PACK * g + r;
                let (d, m, q) = match (row < rows).then(|| &w[row * blocks + b]) {
                    Some(blk) => (blk.scale_bits().to_bits().to_le_bytes(), blk.min_bits().to_bits().to_le_bytes(), blk.unpack()),
                    // Padding rows: zero scale and min, quants that stand for zero.
                    None => (zero, zero, [0; QK]),
                };
                header[2 * r..2 * r + 2].copy_from_slice(&d);
                if W::HAS_MIN {
                    header[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&m);
                }
                W::put_row(qs, r, &q);
            }
        }
    }
}

/// The f16 at `i` of a header (little-endian bytes) as f32.
#[inline(always)]
fn header_f32(header: &[u8], i: usize) -> f32 {
    f16_to_f32(f16::from_bits(u16::from_le_bytes([header[2 * i], header[2 * i + 1]])))
}

/// Row `r` of a packed matrix (`blocks` blocks a row), dequantized into `out`
/// (`blocks * 32` elements): exactly what the row-major row dequantizes to.
pub fn dequantize_packed_row<W: PackedWeight>(packed: &[u8], blocks: usize, r: usize, out: &mut [f32]) {
    let group = &packed[(r / PACK) * blocks * W::GROUP_BLOCK..][..blocks * W::GROUP_BLOCK];
    let lane = r % PACK;
    for (gb, y) in group.chunks_exact(W::GROUP_BLOCK).zip(out.chunks_exact_mut(QK)) {
        let (header, qs) = gb.split_at(W::HEADER);
        let d = header_f32(header, lane);
        let m = if W::HAS_MIN { header_f32(header, PACK + lane) } else { 0.0 };
        for (e, y) in y.iter_mut().enumerate() {
            let q = W::get(qs, lane, e) as f32;
            *y = if W::HAS_MIN { q * d + m } else { q * d };
        }
    }
}

/// The portable twin: one group's sixteen rows · one activation row, the arithmetic of the
/// module doc lane by lane. `group` is one group's `blocks` block-groups.
pub fn dot_packed_portable<W: PackedWeight>(group: &[u8], blocks: usize, x: &[BlockQ16x2]) -> [f32; PACK] {
    let mut acc = [0f32; PACK];
    for (b, gb) in group.chunks_exact(W::GROUP_BLOCK).take(blocks).enumerate() {
        let (pair, h) = (&x[b / 2], b % 2);
        let (header, qs) = gb.split_at(W::HEADER);
        for r in 0..PACK {
            let mut sum = 0i32;
            for e in 0..QK {
                sum += W::get(qs, r, e) as i32 * pair.qs[q16_slot(h, e)] as i32;
            }
            acc[r] = (sum as f32).mul_add(header_f32(header, r) * pair.d[8 * h], acc[r]);
            if W::HAS_MIN {
                acc[r] = header_f32(header, PACK + r).mul_add(pair.s[8 * h], acc[r]);
            }
        }
    }
    acc
}

/// A packed weight type with every implementation.
#[cfg(target_arch = "x86_64")]
pub trait PackedKernel: PackedWeight + super::packed_x86::Chunks {}
#[cfg(target_arch = "x86_64")]
impl<W: PackedWeight + super::packed_x86::Chunks> PackedKernel for W {}
/// A packed weight type with every implementation.
#[cfg(not(target_arch = "x86_64"))]
pub trait PackedKernel: PackedWeight {}
#[cfg(not(target_arch = "x86_64"))]
impl<W: PackedWeight> PackedKernel for W {}

/// One group's sixteen rows · `N` activation rows with a chosen implementation: `out[k][r]`
/// is row `r` · `x[k]`, bit-identical for every [`Isa`] and every `N`.
///
/// # Panics
/// If `group` is not `blocks` block-groups, an activation row does not have
/// `blocks.div_ceil(2)` pairs, or `isa` is beyond [`Isa::best`].
#[inline]
pub fn dot_packed_xn_on<W: PackedKernel, const N: usize>(
    isa: Isa,
    group: &[u8],
    blocks: usize,
    x: [&[BlockQ16x2]; N],
) -> [[f32; PACK]; N] {
    assert_eq!(group.len(), blocks * W::GROUP_BLOCK, "a packed group's size");
    assert!(x.iter().all(|x| x.len() == q16_pairs(blocks)), "activation rows must match the weight rows");
    assert!(isa <= Isa::best(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features (checked above); sizes match.
        Isa::Avx512Vnni => unsafe { super::packed_x86::dot_packed_avx512::<W, N>(group, blocks, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { super::packed_x86::dot_packed_avx2::<W, N>(group, blocks, x) },
        _ => x.map(|x| dot_packed_portable::<W>(group, blocks, x)),
    }
}
