//! Each format's packed unit (see `packed.rs` for the planes and the arithmetic): which
//! scales its header holds, which planes its quants use, and how a row's block is written.
//!
//! | format | header (16 rows) | planes per 32 elements | scale `s`, min `m` |
//! |---|---|---|---|
//! | Q4_0 | `d` | NIB | `d`, `-8d` |
//! | Q4_1 | `d`, `m` | NIB | `d`, `m` |
//! | Q5_0 | `d` | NIB + HI1 | `d`, `-16d` |
//! | Q5_1 | `d`, `m` | NIB + HI1 | `d`, `m` |
//! | Q8_0 | `d` | BYTE (signed) | `d`, none |
//! | Q2_K | `d`, `dmin`, per 16: `sc \| mn << 4` | TWO | `d·sc`, `-dmin·mn` |
//! | Q3_K | `d`, per 16: `sc` (i8) | TWO + HI1 | `d·sc`, `-4s` |
//! | Q4_K | `d`, `dmin`, per 32: `sc`, `mn` | NIB | `d·sc`, `-dmin·mn` |
//! | Q5_K | as Q4_K | NIB + HI1 | `d·sc`, `-dmin·mn` |
//! | Q6_K | `d`, per 16: `sc` (i8) | NIB + TWO | `d·sc`, `-32s` |
//!
//! `d`, `dmin` and `m` are f16, two bytes per row; a k-quant's sub-block scales are one byte
//! per row, sub-block `j`'s sixteen at `16j` of their table.

use super::GgmlType;
use super::blocks::*;
use super::float::f16_to_f32;
use super::kquants::{unpack_q5k, unpack_q6k};
use super::kquants_low::{unpack_q2k, unpack_q3k};
use super::packed::{PACK, PackedFormat};
use super::q5::unpack5;

/// Where element `e` (of a 32-element block) of row `r` sits in each plane.
mod at {
    /// NIB: byte and shift.
    pub fn nib(r: usize, e: usize) -> (usize, u32) {
        let k = e / 2;
        (32 * (k / 2) + 2 * r + e % 2, 4 * (k % 2) as u32)
    }
    /// BYTE: byte.
    pub fn byte(r: usize, e: usize) -> usize {
        32 * (e / 2) + 2 * r + e % 2
    }
    /// HI1: byte and shift.
    pub fn hi1(r: usize, e: usize) -> (usize, u32) {
        let (lane, k) = (2 * r + e % 2, e / 2);
        (2 * lane + k / 8, (k % 8) as u32)
    }
    /// TWO: byte and shift.
    pub fn two(r: usize, e: usize) -> (usize, u32) {
        let (lane, k) = (2 * r + e % 2, e / 2);
        let bit = 2 * (k % 8);
        (64 * (k / 8) + 2 * lane + bit / 8, (bit % 8) as u32)
    }
}

/// Bits `shift..shift + width` of `planes[i]`.
fn bits(planes: &[u8], (i, shift): (usize, u32), width: u32) -> i32 {
    ((planes[i] >> shift) & ((1 << width) - 1)) as i32
}

/// The f16 at index `i` of a header table starting at byte `at`.
fn f16_at(header: &[u8], at: usize, i: usize) -> f32 {
    f16_to_f32(half::f16::from_bits(u16::from_le_bytes([header[at + 2 * i], header[at + 2 * i + 1]])))
}

fn put_f16(header: &mut [u8], at: usize, i: usize, v: half::f16) {
    header[at + 2 * i..at + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
}

/// The planes of the 32-element block holding unit element `e`, and `e` within it.
fn planes<F: PackedFormat>(unit: &[u8], e: usize) -> (&[u8], usize) {
    (&unit[F::HEADER + (e / 32) * F::PLANES..][..F::PLANES], e % 32)
}

/// Writes row `r`'s unsigned quants `u` (unit element order) into the planes: the low
/// `low` bits as NIB (4) or TWO (2), the rest as HI1 (1 bit) or TWO (2 bits) after them.
/// Every plane byte belongs to one row (its 16-bit lane), so each is written whole, once
/// (a read-modify-write per element made packing ~15% slower).
fn put_quants<F: PackedFormat>(unit: &mut [u8], r: usize, u: &[u8], low: u32, high: u32) {
    let low_size = if low == 4 { 256 } else { 128 };
    for (b, u) in u.chunks_exact(QK).enumerate() {
        let base = F::HEADER + b * F::PLANES;
        let planes = &mut unit[base..base + F::PLANES];
        for p in 0..2 {
            let lane = 2 * r + p;
            // The lane's quants: element `2k + p` for register `k`.
            let q: [u8; QK / 2] = std::array::from_fn(|k| u[2 * k + p]);
            if low == 4 {
                for c in 0..QK / 4 {
                    planes[32 * c + lane] = (q[2 * c] & 0xF) | (q[2 * c + 1] & 0xF) << 4;
                }
            } else {
                put_two(&mut planes[..128], lane, &q, 0);
            }
            match high {
                0 => {}
                1 => {
                    let bits = (0..QK / 2).fold(0u16, |acc, k| acc | (((q[k] >> low) & 1) as u16) << k);
                    planes[low_size + 2 * lane..][..2].copy_from_slice(&bits.to_le_bytes());
                }
                _ => put_two(&mut planes[low_size..], lane, &q, low),
            }
        }
    }
}

/// A TWO plane's two 16-bit words of `lane`: bits `2(k % 8)..` of word `k / 8` are bits
/// `shift..shift + 2` of `q[k]`.
fn put_two(plane: &mut [u8], lane: usize, q: &[u8; QK / 2], shift: u32) {
    for half in 0..2 {
        let word = (0..8).fold(0u16, |acc, i| acc | (((q[8 * half + i] >> shift) & 3) as u16) << (2 * i));
        plane[64 * half + 2 * lane..][..2].copy_from_slice(&word.to_le_bytes());
    }
}

/// The unsigned quant of row `r`, unit element `e` (as [`put_quants`] wrote it).
fn get_quant<F: PackedFormat>(unit: &[u8], r: usize, e: usize, low: u32, high: u32) -> i32 {
    let (planes, e) = planes::<F>(unit, e);
    let (lo, low_size) = if low == 4 { (bits(planes, at::nib(r, e), 4), 256) } else { (bits(planes, at::two(r, e), 2), 128) };
    let hi = match high {
        0 => 0,
        1 => bits(&planes[low_size..], at::hi1(r, e), 1),
        _ => bits(&planes[low_size..], at::two(r, e), 2),
    };
    lo | hi << low
}

/// The 32-element 4- and 5-bit formats: `d` per block and either an f16 min (`header: 64`)
/// or a min of `offset` steps (`header: 32`, the symmetric ones).
macro_rules! legacy {
    ($t:ty, $dtype:expr, header: $header:expr, planes: $planes:expr, high: $high:expr, offset: $offset:expr,
     min: $min:expr, unpack: $unpack:expr) => {
        impl PackedFormat for $t {
            const DTYPE: GgmlType = $dtype;
            const BLOCKS: usize = 1;
            const HEADER: usize = $header;
            const PLANES: usize = $planes;
            const HALVES: bool = false;
            const HAS_MIN: bool = true;
            fn put(unit: &mut [u8], r: usize, b: &Self) {
                put_f16(unit, 0, r, b.d);
                if $header == 64 {
                    put_f16(unit, 32, r, $min(b));
                }
                let u: [u8; QK] = $unpack(b);
                put_quants::<Self>(unit, r, &u, 4, $high);
            }
            fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
                get_quant::<Self>(unit, r, e, 4, $high)
            }
            fn scale(unit: &[u8], r: usize, _j: usize) -> f32 {
                f16_at(unit, 0, r)
            }
            fn min(unit: &[u8], r: usize, _j: usize) -> f32 {
                if $header == 64 { f16_at(unit, 32, r) } else { $offset as f32 * f16_at(unit, 0, r) }
            }
            fn value(unit: &[u8], r: usize, e: usize) -> f32 {
                let (u, d) = (Self::quant(unit, r, e), f16_at(unit, 0, r));
                if $header == 64 { u as f32 * d + f16_at(unit, 32, r) } else { (u + $offset) as f32 * d }
            }
        }
    };
}

fn nibbles(qs: &[u8; QK / 2]) -> [u8; QK] {
    std::array::from_fn(|j| if j < QK / 2 { qs[j] & 0xF } else { qs[j - QK / 2] >> 4 })
}

fn no_min<B>(_: &B) -> half::f16 {
    half::f16::ZERO
}

legacy!(BlockQ4_0, GgmlType::Q4_0, header: 32, planes: 256, high: 0, offset: -8, min: no_min,
    unpack: |b: &BlockQ4_0| nibbles(&b.qs));
legacy!(BlockQ4_1, GgmlType::Q4_1, header: 64, planes: 256, high: 0, offset: 0, min: |b: &BlockQ4_1| b.m,
    unpack: |b: &BlockQ4_1| nibbles(&b.qs));
legacy!(BlockQ5_0, GgmlType::Q5_0, header: 32, planes: 320, high: 1, offset: -16, min: no_min,
    unpack: |b: &BlockQ5_0| unpack5(&b.qs, b.qh));
legacy!(BlockQ5_1, GgmlType::Q5_1, header: 64, planes: 320, high: 1, offset: 0, min: |b: &BlockQ5_1| b.m,
    unpack: |b: &BlockQ5_1| unpack5(&b.qs, b.qh));

impl PackedFormat for BlockQ8_0 {
    const DTYPE: GgmlType = GgmlType::Q8_0;
    const BLOCKS: usize = 1;
    const HEADER: usize = 32;
    const PLANES: usize = 512;
    const HALVES: bool = false;
    const HAS_MIN: bool = false;
    fn put(unit: &mut [u8], r: usize, b: &Self) {
        put_f16(unit, 0, r, b.d);
        for (e, &q) in b.qs.iter().enumerate() {
            unit[32 + at::byte(r, e)] = q as u8;
        }
    }
    fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
        unit[32 + at::byte(r, e)] as i8 as i32
    }
    fn scale(unit: &[u8], r: usize, _j: usize) -> f32 {
        f16_at(unit, 0, r)
    }
    fn value(unit: &[u8], r: usize, e: usize) -> f32 {
        Self::quant(unit, r, e) as f32 * f16_at(unit, 0, r)
    }
}

/// Q4_K and Q5_K: `d`, `dmin`, then eight sub-block scales and eight mins, a byte per row.
macro_rules! k4_header {
    () => {
        const BLOCKS: usize = 8;
        const HEADER: usize = 64 + 2 * 8 * PACK;
        const HALVES: bool = false;
        const HAS_MIN: bool = true;
        fn scale(unit: &[u8], r: usize, j: usize) -> f32 {
            f16_at(unit, 0, r) * unit[64 + 16 * j + r] as f32
        }
        fn min(unit: &[u8], r: usize, j: usize) -> f32 {
            -(f16_at(unit, 32, r) * unit[192 + 16 * j + r] as f32)
        }
        fn value(unit: &[u8], r: usize, e: usize) -> f32 {
            let j = e / 32;
            Self::scale(unit, r, j) * Self::quant(unit, r, e) as f32 - f16_at(unit, 32, r) * unit[192 + 16 * j + r] as f32
        }
    };
}

fn put_k4_header(unit: &mut [u8], r: usize, d: half::f16, dmin: half::f16, scales: &[u8; 12]) {
    put_f16(unit, 0, r, d);
    put_f16(unit, 32, r, dmin);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        unit[64 + 16 * j + r] = sc;
        unit[192 + 16 * j + r] = m;
    }
}

impl PackedFormat for BlockQ4K {
    const DTYPE: GgmlType = GgmlType::Q4K;
    const PLANES: usize = 256;
    k4_header!();
    fn put(unit: &mut [u8], r: usize, b: &Self) {
        put_k4_header(unit, r, b.d, b.dmin, &b.scales);
        put_quants::<Self>(unit, r, &super::kquants::unpack_q4k(b), 4, 0);
    }
    fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
        get_quant::<Self>(unit, r, e, 4, 0)
    }
}

impl PackedFormat for BlockQ5K {
    const DTYPE: GgmlType = GgmlType::Q5K;
    const PLANES: usize = 320;
    k4_header!();
    fn put(unit: &mut [u8], r: usize, b: &Self) {
        put_k4_header(unit, r, b.d, b.dmin, &b.scales);
        put_quants::<Self>(unit, r, &unpack_q5k(b), 4, 1);
    }
    fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
        get_quant::<Self>(unit, r, e, 4, 1)
    }
}

/// Q3_K and Q6_K: `d`, then sixteen signed sub-block scales, a byte per row; the min is
/// `-offset` steps.
macro_rules! signed16 {
    ($t:ty, $dtype:expr, $planes:expr, low: $low:expr, high: $high:expr, offset: $offset:expr, scale: $sc:expr, unpack: $unpack:expr) => {
        impl PackedFormat for $t {
            const DTYPE: GgmlType = $dtype;
            const BLOCKS: usize = 8;
            const HEADER: usize = 32 + 16 * PACK;
            const PLANES: usize = $planes;
            const HALVES: bool = true;
            const HAS_MIN: bool = true;
            fn put(unit: &mut [u8], r: usize, b: &Self) {
                put_f16(unit, 0, r, b.d);
                for s in 0..16 {
                    unit[32 + 16 * s + r] = $sc(b, s) as u8;
                }
                let u: [u8; QK_K] = $unpack(b);
                put_quants::<Self>(unit, r, &u, $low, $high);
            }
            fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
                get_quant::<Self>(unit, r, e, $low, $high)
            }
            fn scale(unit: &[u8], r: usize, j: usize) -> f32 {
                f16_at(unit, 0, r) * unit[32 + 16 * j + r] as i8 as f32
            }
            fn min(unit: &[u8], r: usize, j: usize) -> f32 {
                -$offset * Self::scale(unit, r, j)
            }
            fn value(unit: &[u8], r: usize, e: usize) -> f32 {
                Self::scale(unit, r, e / 16) * (Self::quant(unit, r, e) - $offset as i32) as f32
            }
        }
    };
}

signed16!(BlockQ6K, GgmlType::Q6K, 384, low: 4, high: 2, offset: 32.0, scale: |b: &BlockQ6K, s: usize| b.scales[s],
    unpack: |b: &BlockQ6K| unpack_q6k(b).map(|q| (q + 32) as u8));
signed16!(BlockQ3K, GgmlType::Q3K, 192, low: 2, high: 1, offset: 4.0, scale: |b: &BlockQ3K, s: usize| scale_k3(s, &b.scales),
    unpack: unpack_q3k);

impl PackedFormat for BlockQ2K {
    const DTYPE: GgmlType = GgmlType::Q2K;
    const BLOCKS: usize = 8;
    const HEADER: usize = 64 + 16 * PACK;
    const PLANES: usize = 128;
    const HALVES: bool = true;
    const HAS_MIN: bool = true;
    fn put(unit: &mut [u8], r: usize, b: &Self) {
        put_f16(unit, 0, r, b.d);
        put_f16(unit, 32, r, b.dmin);
        for s in 0..16 {
            unit[64 + 16 * s + r] = b.scales[s];
        }
        put_quants::<Self>(unit, r, &unpack_q2k(b), 2, 0);
    }
    fn quant(unit: &[u8], r: usize, e: usize) -> i32 {
        get_quant::<Self>(unit, r, e, 2, 0)
    }
    fn scale(unit: &[u8], r: usize, j: usize) -> f32 {
        f16_at(unit, 0, r) * (unit[64 + 16 * j + r] & 0xF) as f32
    }
    fn min(unit: &[u8], r: usize, j: usize) -> f32 {
        -(f16_at(unit, 32, r) * (unit[64 + 16 * j + r] >> 4) as f32)
    }
    fn value(unit: &[u8], r: usize, e: usize) -> f32 {
        let j = e / 16;
        Self::scale(unit, r, j) * Self::quant(unit, r, e) as f32 - f16_at(unit, 32, r) * (unit[64 + 16 * j + r] >> 4) as f32
    }
}
