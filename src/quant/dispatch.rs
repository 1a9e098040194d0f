//! Type-dispatched, checked entry points over byte rows. The hot loops use the typed kernels
//! directly; these are for loading, tests, and anything that is not per-element hot.

use super::GgmlType;
use super::blocks::*;
use super::q16::BlockQ16x2;
use super::q16k::BlockQ16K;
use super::{float, kquants, kquants_low, q4, q5, q8, q16, q16k};
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
    #[error("{act:?} activations: {len} elements is not a whole number of blocks")]
    ActLength { act: ActType, len: usize },
    #[error("{act:?} activations: buffer has {found} bytes, expected {expected}")]
    ActSize { act: ActType, expected: usize, found: usize },
    #[error("{act:?} activations: buffer is not aligned for its blocks")]
    ActMisaligned { act: ActType },
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
        GgmlType::Q5_0 => q5::dequantize_q5_0(view(dtype, row)?, out),
        GgmlType::Q5_1 => q5::dequantize_q5_1(view(dtype, row)?, out),
        GgmlType::Q8_0 => q8::dequantize_q8_0(view(dtype, row)?, out),
        GgmlType::Q8_1 => q8::dequantize_q8_1(view(dtype, row)?, out),
        GgmlType::Q8K => q8::dequantize_q8_k(view(dtype, row)?, out),
        GgmlType::Q2K => kquants_low::dequantize_q2k(view(dtype, row)?, out),
        GgmlType::Q3K => kquants_low::dequantize_q3k(view(dtype, row)?, out),
        GgmlType::Q4K => kquants::dequantize_q4k(view(dtype, row)?, out),
        GgmlType::Q5K => kquants::dequantize_q5k(view(dtype, row)?, out),
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
        GgmlType::Q5_0 => q5::quantize_row_q5_0(x, view_mut(dtype, out)?),
        GgmlType::Q5_1 => q5::quantize_row_q5_1(x, view_mut(dtype, out)?),
        GgmlType::Q8_0 => q8::quantize_row_q8_0(x, view_mut(dtype, out)?),
        GgmlType::Q8_1 => q8::quantize_row_q8_1(x, view_mut(dtype, out)?),
        GgmlType::Q8K => q8::quantize_row_q8_k(x, view_mut(dtype, out)?),
        GgmlType::Q2K => kquants_low::quantize_row_q2k(x, view_mut(dtype, out)?),
        GgmlType::Q3K => kquants_low::quantize_row_q3k(x, view_mut(dtype, out)?),
        GgmlType::Q4K => kquants::quantize_row_q4k(x, view_mut(dtype, out)?),
        GgmlType::Q5K => kquants::quantize_row_q5k(x, view_mut(dtype, out)?),
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
    if !x.len().is_multiple_of(block) {
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

/// Bits per activation element on the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActBits {
    /// ggml's 8-bit activation blocks: llama.cpp's arithmetic.
    Eight,
    /// 16-bit activation blocks: the default (see `q16.rs`).
    Sixteen,
}

/// The format of an activation row handed to the fast dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
    Q16,
    Q16K,
    /// [`BlockQ16`](super::BlockQ16): the packed kernels' activations (every format).
    Q16P,
    /// [`BlockQ8P`](super::BlockQ8P): the packed kernels' 8-bit activations.
    Q8P,
}

impl ActType {
    pub fn block_size(self) -> usize {
        match self {
            ActType::F32 => 1,
            ActType::Q8_0 | ActType::Q8_1 | ActType::Q16 | ActType::Q16P | ActType::Q8P => QK,
            ActType::Q8K | ActType::Q16K => QK_K,
        }
    }

    /// Bytes of a row of `n` activations, or `None` if `n` is not whole blocks. (Q16 blocks
    /// come in pairs: a row of an odd number of blocks ends with a zero block.)
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let blocks = n.is_multiple_of(self.block_size()).then(|| n / self.block_size())?;
        Some(match self {
            ActType::F32 => blocks * 4,
            ActType::Q8_0 => blocks * size_of::<BlockQ8_0>(),
            ActType::Q8_1 => blocks * size_of::<BlockQ8_1>(),
            ActType::Q8K => blocks * size_of::<BlockQ8K>(),
            ActType::Q16 => q16::q16_pairs(blocks) * size_of::<BlockQ16x2>(),
            ActType::Q16K => blocks * size_of::<BlockQ16K>(),
            ActType::Q16P => blocks * size_of::<super::BlockQ16>(),
            ActType::Q8P => blocks * size_of::<super::BlockQ8P>(),
        })
    }
}

/// The activation format of `weight`'s fast dot product (float weights take f32).
pub fn act_type(weight: GgmlType, bits: ActBits) -> ActType {
    match (weight, bits) {
        (GgmlType::Q4_0 | GgmlType::Q8_0, ActBits::Eight) => ActType::Q8_0,
        (GgmlType::Q4_1, ActBits::Eight) => ActType::Q8_1,
        (GgmlType::Q4K | GgmlType::Q6K, ActBits::Eight) => ActType::Q8K,
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0, ActBits::Sixteen) => ActType::Q16,
        (GgmlType::Q4K | GgmlType::Q6K, ActBits::Sixteen) => ActType::Q16K,
        _ => ActType::F32,
    }
}

fn check_act(act: ActType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let expected = act.row_bytes(n).ok_or(QuantError::ActLength { act, len: n })?;
    if bytes != expected {
        return Err(QuantError::ActSize { act, expected, found: bytes });
    }
    Ok(())
}

fn act_view<T: Pod>(act: ActType, bytes: &[u8]) -> Result<&[T], QuantError> {
    try_cast_slice(bytes).map_err(|_| QuantError::ActMisaligned { act })
}

/// Quantizes a row of activations into `act` blocks: `out.len()` is `act.row_bytes(x.len())`.
pub fn quantize_act(act: ActType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_act(act, x.len(), out.len())?;
    let mis = |_| QuantError::ActMisaligned { act };
    match act {
        ActType::F32 => try_cast_slice_mut::<u8, f32>(out).map_err(mis)?.copy_from_slice(x),
        ActType::Q8_0 => q8::quantize_row_q8_0(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q8_1 => q8::quantize_row_q8_1(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q8K => q8::quantize_row_q8_k(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q16 => q16::quantize_row_q16(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q16K => q16k::quantize_row_q16k(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q16P => super::quantize_row_q16p(x, try_cast_slice_mut(out).map_err(mis)?),
        ActType::Q8P => super::quantize_row_q8p(x, try_cast_slice_mut(out).map_err(mis)?),
    }
    Ok(())
}

/// The fast dot product: weight row (`weight`, `n` elements) · activation row in `act`
/// format (which must be `act_type(weight, ..)`).
pub fn vec_dot(weight: GgmlType, row: &[u8], act: ActType, x: &[u8], n: usize) -> Result<f32, QuantError> {
    check(weight, n, row.len())?;
    check_act(act, n, x.len())?;
    Ok(match (weight, act) {
        (GgmlType::F32, ActType::F32) => float::dot_f32_f32(view(weight, row)?, act_view(act, x)?),
        (GgmlType::F16, ActType::F32) => float::dot_f16_f32(view(weight, row)?, act_view(act, x)?),
        (GgmlType::BF16, ActType::F32) => float::dot_bf16_f32(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4_0, ActType::Q8_0) => q4::vec_dot_q4_0_q8_0(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4_1, ActType::Q8_1) => q4::vec_dot_q4_1_q8_1(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q8_0, ActType::Q8_0) => q8::vec_dot_q8_0_q8_0(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4K, ActType::Q8K) => kquants::vec_dot_q4k_q8k(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q6K, ActType::Q8K) => kquants::vec_dot_q6k_q8k(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4_0, ActType::Q16) => q16::vec_dot_q16::<BlockQ4_0>(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4_1, ActType::Q16) => q16::vec_dot_q16::<BlockQ4_1>(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q8_0, ActType::Q16) => q16::vec_dot_q16::<BlockQ8_0>(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q4K, ActType::Q16K) => q16k::vec_dot_q4k_q16k(view(weight, row)?, act_view(act, x)?),
        (GgmlType::Q6K, ActType::Q16K) => q16k::vec_dot_q6k_q16k(view(weight, row)?, act_view(act, x)?),
        _ => return Err(QuantError::Unsupported { dtype: weight, op: "this activation format" }),
    })
}
