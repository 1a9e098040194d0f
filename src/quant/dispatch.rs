//! Type-dispatched, checked entry points over byte rows. The hot loops use the typed kernels
//! directly; these are for loading, tests, and anything that is not per-element hot.

use super::GgmlType;
use super::blocks::*;
use super::{float, kquants, q4, q8};
use bytemuck::{Pod, try_cast_slice, try_cast_slice_mut};
use half::{bf16, f16};

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    #[error("{dtype}: a row of {len} elements is not a whole number of blocks")]
    RowLength { dtype: GgmlType, len: usize },
    #[error("{dtype}: buffer has {found} bytes, expected {expected}")]
    BufferSize { dtype: GgmlType, expected: usize, found: usize },
    #[error("{dtype} does not support {op}")]
    Unsupported { dtype: GgmlType, op: &'static str },
    #[error("{dtype}: buffer is not aligned for its blocks")]
    Misaligned { dtype: GgmlType },
}

/// Checks that `bytes` holds exactly `n` elements of `dtype`.
fn check(dtype: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let expected = dtype.row_bytes(n as u64).ok_or(QuantError::RowLength { dtype, len: n })? as usize;
    if bytes != expected {
        return Err(QuantError::BufferSize { dtype, expected, found: bytes });
    }
    Ok(())
}

fn view<T: Pod>(dtype: GgmlType, bytes: &[u8]) -> Result<&[T], QuantError> {
    try_cast_slice(bytes).map_err(|_| QuantError::Misaligned { dtype })
}

fn view_mut<T: Pod>(dtype: GgmlType, bytes: &mut [u8]) -> Result<&mut [T], QuantError> {
    try_cast_slice_mut(bytes).map_err(|_| QuantError::Misaligned { dtype })
}

/// Dequantizes one row: `row` holds exactly `out.len()` elements of `dtype`.
pub fn dequantize_row(dtype: GgmlType, row: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check(dtype, out.len(), row.len())?;
    match dtype {
        GgmlType::F32 => out.copy_from_slice(view(dtype, row)?),
        GgmlType::F16 => float::f16_to_f32_slice(view::<f16>(dtype, row)?, out),
        GgmlType::BF16 => float::bf16_to_f32_slice(view::<bf16>(dtype, row)?, out),
        GgmlType::Q4_0 => q4::dequantize_q4_0(view(dtype, row)?, out),
        GgmlType::Q4_1 => q4::dequantize_q4_1(view(dtype, row)?, out),
        GgmlType::Q8_0 => q8::dequantize_q8_0(view(dtype, row)?, out),
        GgmlType::Q8_1 => q8::dequantize_q8_1(view(dtype, row)?, out),
        GgmlType::Q8K => q8::dequantize_q8_k(view(dtype, row)?, out),
        GgmlType::Q4K => kquants::dequantize_q4k(view(dtype, row)?, out),
        GgmlType::Q6K => kquants::dequantize_q6k(view(dtype, row)?, out),
    }
    Ok(())
}

/// Quantizes one row of floats: `out.len()` must be `dtype.row_bytes(x.len())`.
pub fn quantize_row(dtype: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check(dtype, x.len(), out.len())?;
    match dtype {
        GgmlType::F32 => view_mut::<f32>(dtype, out)?.copy_from_slice(x),
        GgmlType::F16 => float::f32_to_f16_slice(x, view_mut(dtype, out)?),
        GgmlType::BF16 => float::f32_to_bf16_slice(x, view_mut(dtype, out)?),
        GgmlType::Q4_0 => q4::quantize_row_q4_0(x, view_mut(dtype, out)?),
        GgmlType::Q4_1 => q4::quantize_row_q4_1(x, view_mut(dtype, out)?),
        GgmlType::Q8_0 => q8::quantize_row_q8_0(x, view_mut(dtype, out)?),
        GgmlType::Q8_1 => q8::quantize_row_q8_1(x, view_mut(dtype, out)?),
        GgmlType::Q8K => q8::quantize_row_q8_k(x, view_mut(dtype, out)?),
        GgmlType::Q4K => kquants::quantize_row_q4k(x, view_mut(dtype, out)?),
        GgmlType::Q6K => kquants::quantize_row_q6k(x, view_mut(dtype, out)?),
    }
    Ok(())
}

/// The reference dot product: dequantized weight row · `x`, in f32. Each block is
/// dequantized and dotted on its own, and block results are summed in order.
pub fn dot_f32(dtype: GgmlType, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    check(dtype, x.len(), row.len())?;
    let block = dtype.block_size().max(super::QK);
    let block_bytes = dtype.row_bytes(block as u64).unwrap_or(0) as usize;
    let mut buf = [0f32; QK_K];
    let mut sum = 0.0f32;
    if x.len() % block != 0 {
        // Float rows of odd lengths: one pass.
        let mut all = vec![0f32; x.len()];
        dequantize_row(dtype, row, &mut all)?;
        return Ok(float::dot_f32_f32(&all, x));
    }
    for (w, xs) in row.chunks_exact(block_bytes).zip(x.chunks_exact(block)) {
        dequantize_row(dtype, w, &mut buf[..block])?;
        sum += float::dot_f32_f32(&buf[..block], xs);
    }
    Ok(sum)
}

/// The activation type of `dtype`'s fast dot product (floats stay f32).
pub fn vec_dot_type(dtype: GgmlType) -> GgmlType {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 => GgmlType::Q8_1,
        GgmlType::Q4K | GgmlType::Q6K => GgmlType::Q8K,
        _ => GgmlType::F32,
    }
}

/// The fast dot product: weight row (`dtype`) · activation row of `n` elements already
/// quantized to [`vec_dot_type`]`(dtype)` (raw f32 bytes for float weights).
pub fn vec_dot(dtype: GgmlType, row: &[u8], act: &[u8], n: usize) -> Result<f32, QuantError> {
    let act_type = vec_dot_type(dtype);
    check(dtype, n, row.len())?;
    check(act_type, n, act.len())?;
    Ok(match dtype {
        GgmlType::F32 => float::dot_f32_f32(view(dtype, row)?, view(act_type, act)?),
        GgmlType::F16 => float::dot_f16_f32(view(dtype, row)?, view(act_type, act)?),
        GgmlType::BF16 => float::dot_bf16_f32(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q4_0 => q4::vec_dot_q4_0_q8_0(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q4_1 => q4::vec_dot_q4_1_q8_1(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q8_0 => q8::vec_dot_q8_0_q8_0(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q4K => kquants::vec_dot_q4k_q8k(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q6K => kquants::vec_dot_q6k_q8k(view(dtype, row)?, view(act_type, act)?),
        GgmlType::Q8_1 | GgmlType::Q8K => return Err(QuantError::Unsupported { dtype, op: "weight dot products" }),
    })
}
