//! ggml block layouts, byte for byte. Each is `#[repr(C)]` with its size pinned at compile
//! time, so a GGUF tensor's bytes can be viewed as a slice of blocks without copying.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per block of the 32-element formats.
pub const QK: usize = 32;
/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

/// 4-bit, symmetric: `x = (q - 8) * d`. Element `j < 16` is the low nibble of `qs[j]`,
/// element `j + 16` its high nibble.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 4-bit with offset: `x = q * d + m`; nibbles as in [`BlockQ4_0`].
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// 5-bit, symmetric: `x = (q - 16) * d`, `q` a nibble of `qs` (as in [`BlockQ4_0`]) plus
/// bit `j` of the little-endian `qh` as its fifth bit for element `j`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 5-bit with offset: `x = q * d + m`; quants as in [`BlockQ5_0`].
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 8-bit, symmetric: `x = q * d`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// 8-bit with the block's sum: `x = q * d`, `s = d * Σq` (activations for Q4_1 dots).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// 4-bit k-quant: 8 sub-blocks of 32, each with a 6-bit scale and min packed in `scales`
/// (see [`scale_min_k4`]): `x = d * sc * q - dmin * m`. `qs[32c + l]` holds element
/// `64c + l` (low nibble) and `64c + 32 + l` (high nibble).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// 5-bit k-quant: [`BlockQ4K`]'s scales and nibbles, plus a fifth bit for element
/// `64c + 32h + l` in bit `2c + h` of `qh[l]`: `x = d * sc * q - dmin * m`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 2-bit k-quant: 16 sub-blocks of 16, each with a 4-bit scale (low nibble of `scales[s]`)
/// and a 4-bit min (high nibble): `x = d * sc * q - dmin * m`. Element
/// `128n + 32j + 16h + l` is bits `2j..2j+2` of `qs[32n + 16h + l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// 3-bit k-quant: 16 sub-blocks of 16 with 6-bit scales (stored `sc + 32`, packed in
/// `scales`, see [`scale_k3`]): `x = d * sc * (q - 4)`. Element `128n + 32j + 16h + l` takes
/// its low 2 bits from bits `2j..2j+2` of `qs[32n + 16h + l]` and its third bit from bit
/// `4n + j` of `hmask[16h + l]`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// 6-bit k-quant: 16 sub-blocks of 16 with signed 8-bit scales: `x = d * sc * (q - 32)`.
/// The low 4 bits of `q` are in `ql`, the high 2 in `qh` (layout in `kquants.rs`).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 8-bit activations for k-quant dots: `x = q * d`, with sums of each 16 `q`s.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(size_of::<BlockQ5_0>() == 22);
const _: () = assert!(size_of::<BlockQ5_1>() == 24);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ8_1>() == 36);
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const _: () = assert!(size_of::<BlockQ6K>() == 210);
const _: () = assert!(size_of::<BlockQ2K>() == 84);
const _: () = assert!(size_of::<BlockQ3K>() == 110);
const _: () = assert!(size_of::<BlockQ5K>() == 176);
const _: () = assert!(size_of::<BlockQ8K>() == 292);

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block.
///
/// Sub-blocks 0–3 keep their scale and min in the low 6 bits of bytes `j` and `j + 4`;
/// sub-blocks 4–7 keep their low 4 bits in byte `j + 4` and their top 2 bits in the top bits
/// of bytes `j - 4` (scale) and `j` (min).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) }
}

/// Packs 8 six-bit scales and mins into the 12 bytes [`scale_min_k4`] reads.
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    q
}

/// The signed 6-bit scale (−32..31) of sub-block `s` (0..16) of a Q3_K block.
///
/// Scale `s` keeps its low 4 bits in a nibble of byte `s % 8` (low for `s < 8`, high after)
/// and its top 2 bits in bits `2 * (s / 4)` of byte `8 + s % 4`; the stored value is
/// `sc + 32`.
#[inline(always)]
pub fn scale_k3(s: usize, q: &[u8; 12]) -> i8 {
    let low = if s < 8 { q[s] & 0xF } else { q[s - 8] >> 4 };
    let high = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Packs 16 signed 6-bit scales (−32..31) into the 12 bytes [`scale_k3`] reads.
pub fn pack_scale_k3(sc: &[i8; 16]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for (s, &v) in sc.iter().enumerate() {
        let u = (v + 32) as u8 & 63;
        q[s % 8] |= (u & 0xF) << if s < 8 { 0 } else { 4 };
        q[8 + s % 4] |= (u >> 4) << (2 * (s / 4));
    }
    q
}
