//! Weight matrices in the device's formats (`kernels/params.h`, `BallastMatrix`).
//!
//! Q4_0, Q4_1 and Q8_0 are split into their quants (16 or 32 bytes per block, so a thread
//! loads a whole block in one or two 16-byte loads) and one u32 of scales per block (f16 d,
//! and Q4_1's f16 min). F32, F16 and BF16 rows are copied as they are. Any other format is
//! dequantized to F16 here, so every model the CPU runs also runs on the GPU.

use super::kernels::{BALLAST_BF16, BALLAST_F16, BALLAST_F32, BALLAST_Q4_0, BALLAST_Q4_1, BALLAST_Q8_0};
use crate::backend::{BackendError, Result};
use crate::model::weights::{HostMatrix, Layout};
use crate::quant::GgmlType;

/// A matrix ready to copy to the device.
pub struct DeviceLayout {
    pub format: u32,
    pub qs: Vec<u8>,
    /// One per 32-element block (quantized formats only).
    pub scales: Vec<u32>,
}

fn q4_split(m: &HostMatrix, with_min: bool) -> DeviceLayout {
    let block_bytes = if with_min { 20 } else { 18 };
    let blocks = m.rows * m.cols / 32;
    let mut qs = Vec::with_capacity(blocks * 16);
    let mut scales = Vec::with_capacity(blocks);
    for b in m.data.chunks_exact(block_bytes) {
        let d = u16::from_le_bytes([b[0], b[1]]) as u32;
        let (min, quants) = if with_min { (u16::from_le_bytes([b[2], b[3]]) as u32, &b[4..]) } else { (0, &b[2..]) };
        scales.push(d | (min << 16));
        qs.extend_from_slice(quants);
    }
    DeviceLayout { format: if with_min { BALLAST_Q4_1 } else { BALLAST_Q4_0 }, qs, scales }
}

fn q8_split(m: &HostMatrix) -> DeviceLayout {
    let blocks = m.rows * m.cols / 32;
    let mut qs = Vec::with_capacity(blocks * 32);
    let mut scales = Vec::with_capacity(blocks);
    for b in m.data.chunks_exact(34) {
        scales.push(u16::from_le_bytes([b[0], b[1]]) as u32);
        qs.extend_from_slice(&b[2..]);
    }
    DeviceLayout { format: BALLAST_Q8_0, qs, scales }
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
    Ok(DeviceLayout { format: BALLAST_F16, qs, scales: Vec::new() })
}

pub fn device_layout(m: &HostMatrix) -> Result<DeviceLayout> {
    if m.layout != Layout::RowMajor {
        return dequantized_f16(m);
    }
    let raw = |format| DeviceLayout { format, qs: m.data.to_vec(), scales: Vec::new() };
    Ok(match m.dtype {
        GgmlType::F32 => raw(BALLAST_F32),
        GgmlType::F16 => raw(BALLAST_F16),
        GgmlType::BF16 => raw(BALLAST_BF16),
        GgmlType::Q4_0 => q4_split(m, false),
        GgmlType::Q4_1 => q4_split(m, true),
        GgmlType::Q8_0 => q8_split(m),
        _ => dequantized_f16(m)?,
    })
}
