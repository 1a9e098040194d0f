//! 4-bit 32-element formats: Q4_0 (`(q - 8) * d`) and Q4_1 (`q * d + m`).

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use super::float::f16_to_f32;
use super::multiversion::multiversion;
use half::f16;

/// The 32 nibbles of a block in element order (low nibbles, then high nibbles).
#[inline(always)]
fn unpack(qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0xF;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

#[inline(always)]
fn pack(q: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = q[j] | (q[j + QK / 2] << 4);
    }
    qs
}

pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (o, q) in y.iter_mut().zip(unpack(&b.qs)) {
            *o = (q as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (o, q) in y.iter_mut().zip(unpack(&b.qs)) {
            *o = q as f32 * d + m;
        }
    }
}

/// ggml's reference: `d = max / -8` for the element of largest magnitude (sign kept), so it
/// maps to 0 and the grid spans `[-8d, 7d]`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK];
        for (q, v) in q.iter_mut().zip(x) {
            *q = ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        }
        b.d = f16::from_f32(d);
        b.qs = pack(&q);
    }
}

/// ggml's reference: `m = min`, `d = (max - min) / 15`, `q = round((x - m) / d)`.
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK];
        for (q, v) in q.iter_mut().zip(x) {
            *q = (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        }
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        b.qs = pack(&q);
    }
}

multiversion! {
    /// Q4_0 weights · Q8_0 activations: `Σ_blocks d_w d_x Σ (q - 8) q_x`.
    pub fn vec_dot_q4_0_q8_0 / vec_dot_q4_0_q8_0_portable(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let b = w.qs[j];
                sumi += ((b & 0xF) as i32 - 8) * x.qs[j] as i32 + ((b >> 4) as i32 - 8) * x.qs[j + QK / 2] as i32;
            }
            sum += (f16_to_f32(w.d) * f16_to_f32(x.d)) * sumi as f32;
        }
        sum
    }
}

multiversion! {
    /// Q4_1 weights · Q8_1 activations: `Σ_blocks d_w d_x Σ q q_x + m_w s_x`.
    pub fn vec_dot_q4_1_q8_1 / vec_dot_q4_1_q8_1_portable(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let b = w.qs[j];
                sumi += (b & 0xF) as i32 * x.qs[j] as i32 + (b >> 4) as i32 * x.qs[j + QK / 2] as i32;
            }
            sum += (f16_to_f32(w.d) * f16_to_f32(x.d)) * sumi as f32 + f16_to_f32(w.m) * f16_to_f32(x.s);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn q4_1_block_decodes_nibbles_in_element_order() {
        let mut b = BlockQ4_1::zeroed();
        b.d = f16::from_f32(0.5);
        b.m = f16::from_f32(-1.0);
        for j in 0..16 {
            b.qs[j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut y = [0.0; QK];
        dequantize_q4_1(&[b], &mut y);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.5 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q4_0_block_decodes_around_eight() {
        let mut b = BlockQ4_0::zeroed();
        b.d = f16::from_f32(2.0);
        b.qs[0] = 0x0F; // element 0: 15 → 14, element 16: 0 → -16
        b.qs[1] = 0x88; // elements 1 and 17: 8 → 0
        let mut y = [0.0; QK];
        dequantize_q4_0(&[b], &mut y);
        assert_eq!((y[0], y[16], y[1], y[17]), (14.0, -16.0, 0.0, 0.0));
    }

    #[test]
    fn quantizers_hit_the_grid_ends_exactly() {
        let mut x = [0.0f32; QK];
        for (i, v) in x.iter_mut().enumerate() {
            *v = i as f32 / 31.0 * 3.0 - 1.0; // -1 .. 2
        }
        let mut b1 = [BlockQ4_1::zeroed()];
        quantize_row_q4_1(&x, &mut b1);
        let mut y = [0.0; QK];
        dequantize_q4_1(&b1, &mut y);
        assert_eq!(y[0], -1.0);
        assert!((y[31] - 2.0).abs() < 2e-3);
        let mut b0 = [BlockQ4_0::zeroed()];
        quantize_row_q4_0(&x, &mut b0);
        dequantize_q4_0(&b0, &mut y);
        assert!((y[31] - 2.0).abs() < 2e-3, "the max maps to -8·d = max");
    }
}
