//! 5-bit 32-element formats: Q5_0 (`(q - 16) * d`) and Q5_1 (`q * d + m`). A quant is a
//! nibble of `qs` (element `j < 16` low, `j + 16` high, as in Q4_0) plus bit `j` of the
//! little-endian 32-bit `qh` as its fifth bit.
//!
//! Files whose rows are not a whole number of 256-element super-blocks (widths such as 896)
//! store their "K" matrices in these formats: Qwen2.5-0.5B's Q4_K_M is mostly Q5_0.
// Blocks indexed by element: clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::blocks::{BlockQ5_0, BlockQ5_1, QK};
use super::float::f16_to_f32;
use half::f16;

/// The 32 unsigned 5-bit quants of a block in element order.
#[inline(always)]
pub(crate) fn unpack5(qs: &[u8; QK / 2], qh: [u8; 4]) -> [u8; QK] {
    let high = u32::from_le_bytes(qh);
    std::array::from_fn(|j| {
        let nibble = if j < QK / 2 { qs[j] & 0xF } else { qs[j - QK / 2] >> 4 };
        nibble | (((high >> j) & 1) as u8) << 4
    })
}

fn pack5(q: &[u8; QK]) -> ([u8; QK / 2], [u8; 4]) {
    let qs = std::array::from_fn(|j| (q[j] & 0xF) | (q[j + QK / 2] & 0xF) << 4);
    let high = q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v >> 4) & 1) as u32) << j);
    (qs, high.to_le_bytes())
}

pub fn dequantize_q5_0(blocks: &[BlockQ5_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, q) in y.iter_mut().zip(unpack5(&b.qs, b.qh)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(blocks: &[BlockQ5_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (o, q) in y.iter_mut().zip(unpack5(&b.qs, b.qh)) {
            *o = q as f32 * d + m;
        }
    }
}

/// ggml's reference: `d = max / -16` for the element of largest magnitude (sign kept), so
/// the grid spans `[-16d, 15d]`.
pub fn quantize_row_q5_0(x: &[f32], out: &mut [BlockQ5_0]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: [u8; QK] = std::array::from_fn(|j| ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8);
        b.d = f16::from_f32(d);
        (b.qs, b.qh) = pack5(&q);
    }
}

/// ggml's reference: `m = min`, `d = (max - min) / 31`, `q = round((x - m) / d)`.
pub fn quantize_row_q5_1(x: &[f32], out: &mut [BlockQ5_1]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: [u8; QK] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        (b.qs, b.qh) = pack5(&q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn fifth_bit_of_element_j_is_bit_j_of_qh() {
        let q: [u8; QK] = std::array::from_fn(|j| ((j * 11 + 5) % 32) as u8);
        let (qs, qh) = pack5(&q);
        assert_eq!(unpack5(&qs, qh), q);
        let high = u32::from_le_bytes(qh);
        for j in 0..QK {
            assert_eq!((high >> j) & 1, (q[j] >> 4) as u32, "element {j}");
        }
        // Element 17: the high nibble of qs[1].
        assert_eq!(qs[1] >> 4, q[17] & 0xF);
    }

    #[test]
    fn known_blocks_decode() {
        let mut b = BlockQ5_0::zeroed();
        b.d = f16::from_f32(0.5);
        b.qs[0] = 0x3F; // element 0: nibble 15, element 16: nibble 3
        b.qh = 1u32.to_le_bytes(); // element 0 gets its fifth bit
        let mut y = [0.0; QK];
        dequantize_q5_0(&[b], &mut y);
        assert_eq!((y[0], y[16], y[1]), ((31.0 - 16.0) * 0.5, (3.0 - 16.0) * 0.5, -8.0));
        let mut b1 = BlockQ5_1::zeroed();
        (b1.d, b1.m) = (f16::from_f32(0.25), f16::from_f32(-1.0));
        b1.qh = (1u32 << 31).to_le_bytes();
        dequantize_q5_1(&[b1], &mut y);
        assert_eq!((y[31], y[30]), (16.0 * 0.25 - 1.0, -1.0));
    }
}
