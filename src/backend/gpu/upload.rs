//! Weight matrices in the device's formats (`kernels/params.h`, `BallastMatrix`).
//!
//! Quantized matrices keep their bits, re-laid out per 32-element block so that one decoder
//! (`kernels/quant.cuh`) reads every format: the low bits in `qs` (a 4-bit block in 16 bytes
//! as ggml's Q4_0 orders them, so a thread loads it in one 16-byte load; Q8_0 in 32; 2-bit in
//! 8), the high bits in `qh` (a u32 or two a block), the f16 scales in `scales` (a u32 a
//! block, or a super-block for the k-quants) and the k-quants' sub-block scales in `sub` (a
//! u16 a block). Device memory stays within a few percent of the file. F32, F16 and BF16 rows
//! are copied as they are.

use super::kernels::{
    BALLAST_BF16, BALLAST_F16, BALLAST_F32, BALLAST_Q2_K, BALLAST_Q3_K, BALLAST_Q4_0, BALLAST_Q4_1, BALLAST_Q4_K, BALLAST_Q5_0,
    BALLAST_Q5_1, BALLAST_Q5_K, BALLAST_Q6_K, BALLAST_Q8_0,
};
use crate::backend::{BackendError, Result};
use crate::model::weights::{HostMatrix, Layout};
use crate::quant::{self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, GgmlType, QK, QK_K};
use bytemuck::Pod;

/// A matrix ready to copy to the device.
#[derive(Default)]
pub struct DeviceLayout {
    pub format: u32,
    pub qs: Vec<u8>,
    pub scales: Vec<u32>,
    /// High bits (formats of more than 4 bits, and Q3_K).
    pub qh: Vec<u32>,
    /// k-quant sub-block scales, one per 32-element block.
    pub sub: Vec<u16>,
}

impl DeviceLayout {
    fn new(format: u32) -> DeviceLayout {
        DeviceLayout { format, ..DeviceLayout::default() }
    }

    /// Appends one 32-element block's unsigned quants: the low `low` bits (4 or 2) to `qs`,
    /// the next `high` bits (0, 1 or 2) to `qh`.
    fn push_quants(&mut self, u: &[u8], low: u32, high: u32) {
        debug_assert_eq!(u.len(), QK);
        if low == 4 {
            self.qs.extend((0..QK / 2).map(|j| (u[j] & 15) | (u[j + QK / 2] & 15) << 4));
        } else {
            let bits = u.iter().enumerate().fold(0u64, |acc, (e, &q)| acc | ((q & 3) as u64) << (2 * e));
            self.qs.extend_from_slice(&bits.to_le_bytes());
        }
        match high {
            0 => {}
            1 => self.qh.push(u.iter().enumerate().fold(0u32, |acc, (e, &q)| acc | (((q >> low) & 1) as u32) << e)),
            _ => {
                let bits = u.iter().enumerate().fold(0u64, |acc, (e, &q)| acc | (((q >> low) & 3) as u64) << (2 * e));
                self.qh.extend([bits as u32, (bits >> 32) as u32]);
            }
        }
    }
}

fn f16_pair(lo: half::f16, hi: half::f16) -> u32 {
    lo.to_bits() as u32 | (hi.to_bits() as u32) << 16
}

/// The matrix's blocks (copied where the bytes sit at an odd address).
fn blocks<T: Pod>(m: &HostMatrix) -> Vec<T> {
    bytemuck::pod_collect_to_vec(&m.data)
}

fn q4_split(m: &HostMatrix, with_min: bool) -> DeviceLayout {
    let block_bytes = if with_min { 20 } else { 18 };
    let mut l = DeviceLayout::new(if with_min { BALLAST_Q4_1 } else { BALLAST_Q4_0 });
    for b in m.data.chunks_exact(block_bytes) {
        let d = u16::from_le_bytes([b[0], b[1]]) as u32;
        let (min, quants) = if with_min { (u16::from_le_bytes([b[2], b[3]]) as u32, &b[4..]) } else { (0, &b[2..]) };
        l.scales.push(d | (min << 16));
        l.qs.extend_from_slice(quants);
    }
    l
}

fn q8_split(m: &HostMatrix) -> DeviceLayout {
    let mut l = DeviceLayout::new(BALLAST_Q8_0);
    for b in m.data.chunks_exact(34) {
        l.scales.push(u16::from_le_bytes([b[0], b[1]]) as u32);
        l.qs.extend_from_slice(&b[2..]);
    }
    l
}

fn q5_split(m: &HostMatrix, with_min: bool) -> DeviceLayout {
    let mut l = DeviceLayout::new(if with_min { BALLAST_Q5_1 } else { BALLAST_Q5_0 });
    let mut push = |d, min, qs: &[u8; 16], qh| {
        l.scales.push(f16_pair(d, min));
        l.push_quants(&quant::unpack::unpack5(qs, qh), 4, 1);
    };
    if with_min {
        blocks::<BlockQ5_1>(m).iter().for_each(|b| push(b.d, b.m, &b.qs, b.qh));
    } else {
        blocks::<BlockQ5_0>(m).iter().for_each(|b| push(b.d, half::f16::ZERO, &b.qs, b.qh));
    }
    l
}

/// Q4_K and Q5_K: d | dmin per super-block, each block's 6-bit scale | min << 8.
fn k4_split(m: &HostMatrix, five: bool) -> DeviceLayout {
    let mut l = DeviceLayout::new(if five { BALLAST_Q5_K } else { BALLAST_Q4_K });
    let mut push = |d, dmin, scales: &[u8; 12], u: [u8; QK_K]| {
        l.scales.push(f16_pair(d, dmin));
        for (j, u) in u.chunks_exact(QK).enumerate() {
            let (sc, mn) = quant::scale_min_k4(j, scales);
            l.sub.push(sc as u16 | (mn as u16) << 8);
            l.push_quants(u, 4, five as u32);
        }
    };
    if five {
        blocks::<BlockQ5K>(m).iter().for_each(|b| push(b.d, b.dmin, &b.scales, quant::unpack::unpack_q5k(b)));
    } else {
        blocks::<BlockQ4K>(m).iter().for_each(|b| push(b.d, b.dmin, &b.scales, quant::unpack::unpack_q4k(b)));
    }
    l
}

/// Q2_K, Q3_K and Q6_K: per block the two sub-block scale bytes of its halves.
fn k16_split(m: &HostMatrix) -> DeviceLayout {
    let push = |l: &mut DeviceLayout, sup: u32, scale: &dyn Fn(usize) -> u8, u: &[u8], low, high| {
        l.scales.push(sup);
        for (j, u) in u.chunks_exact(QK).enumerate() {
            l.sub.push(scale(2 * j) as u16 | (scale(2 * j + 1) as u16) << 8);
            l.push_quants(u, low, high);
        }
    };
    match m.dtype {
        GgmlType::Q6K => {
            let mut l = DeviceLayout::new(BALLAST_Q6_K);
            for b in blocks::<BlockQ6K>(m) {
                let u = quant::unpack::unpack_q6k(&b).map(|q| (q + 32) as u8);
                push(&mut l, f16_pair(b.d, half::f16::ZERO), &|s| b.scales[s] as u8, &u, 4, 2);
            }
            l
        }
        GgmlType::Q3K => {
            let mut l = DeviceLayout::new(BALLAST_Q3_K);
            for b in blocks::<BlockQ3K>(m) {
                let u = quant::unpack::unpack_q3k(&b);
                push(&mut l, f16_pair(b.d, half::f16::ZERO), &|s| quant::scale_k3(s, &b.scales) as u8, &u, 2, 1);
            }
            l
        }
        _ => {
            let mut l = DeviceLayout::new(BALLAST_Q2_K);
            for b in blocks::<BlockQ2K>(m) {
                let u = quant::unpack::unpack_q2k(&b);
                push(&mut l, f16_pair(b.d, b.dmin), &|s| b.scales[s], &u, 2, 0);
            }
            l
        }
    }
}

fn dequantized_f16(m: &HostMatrix) -> Result<DeviceLayout> {
    let mut row = vec![0f32; m.cols];
    let mut qs = Vec::with_capacity(m.rows * m.cols * 2);
    for r in 0..m.rows {
        m.dequantize_row(r, &mut row)
            .map_err(|e| BackendError::Unsupported { op: "upload_matrix", what: format!("{} weights: {e}", m.dtype) })?;
        for &x in &row {
            qs.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
    }
    Ok(DeviceLayout { qs, ..DeviceLayout::new(BALLAST_F16) })
}

pub fn device_layout(m: &HostMatrix) -> Result<DeviceLayout> {
    if m.layout != Layout::RowMajor {
        return dequantized_f16(m);
    }
    let raw = |format| DeviceLayout { qs: m.data.to_vec(), ..DeviceLayout::new(format) };
    Ok(match m.dtype {
        GgmlType::F32 => raw(BALLAST_F32),
        GgmlType::F16 => raw(BALLAST_F16),
        GgmlType::BF16 => raw(BALLAST_BF16),
        GgmlType::Q4_0 => q4_split(m, false),
        GgmlType::Q4_1 => q4_split(m, true),
        GgmlType::Q5_0 => q5_split(m, false),
        GgmlType::Q5_1 => q5_split(m, true),
        GgmlType::Q8_0 => q8_split(m),
        GgmlType::Q4K => k4_split(m, false),
        GgmlType::Q5K => k4_split(m, true),
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q6K => k16_split(m),
        _ => dequantized_f16(m)?,
    })
}
