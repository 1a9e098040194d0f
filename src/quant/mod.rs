//! Tensor element types: the ggml block layouts ballast reads and computes on.
//!
//! A quantized row of `n` elements is `n / block_size()` blocks laid out back to back, each
//! `type_size()` bytes. The numeric ids are ggml's (`ggml_type`), which is what GGUF stores.
//!
//! Two kinds of dot product per weight type:
//! - [`dot_f32`]: the plain reference — dequantized weights times f32 activations;
//! - [`vec_dot`]: the fast path — activations quantized per block to integers
//!   ([`act_type`]: 16-bit by default, or ggml's 8-bit blocks as llama.cpp uses), integer
//!   multiply-accumulate inside each block, one scale per block.
//!
//! The typed kernels (`vec_dot_q16_xn`, ...) are what the CPU backend calls in its inner
//! loops; each has a portable twin and x86 versions chosen at run time (AVX2, and AVX-512
//! VNNI for the 16-bit kernels), all bit-identical.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
mod dispatch;
mod float;
mod kquants;
mod kquants_low;
pub(crate) mod multiversion;
mod packed;
mod packed_formats;
#[cfg(target_arch = "x86_64")]
mod packed_simd;
#[cfg(test)]
mod packed_tests;
#[cfg(target_arch = "x86_64")]
mod packed_x86;
mod q16;
mod q16k;
mod q4;
mod q5;
mod q8;
mod random;
#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests;

pub use blocks::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K,
    scale_k3, scale_min_k4,
};
pub use dispatch::{ActBits, ActType, QuantError, act_type, dequantize_row, dot_f32, quantize_act, quantize_row, vec_dot};
pub use float::{dot_bf16_f32, dot_f16_f32, dot_f32_f32, f16_to_f32, widen_f16};
pub use kquants::{vec_dot_q4k_q8k, vec_dot_q6k_q8k};
pub use q4::{random_q4_1, vec_dot_q4_0_q8_0, vec_dot_q4_1_q8_1};
pub use random::random_blocks;
/// Each format's quants in element order, for code that re-lays blocks out (the GPU upload).
#[cfg_attr(not(feature = "cuda"), allow(unused_imports))]
pub(crate) mod unpack {
    pub(crate) use super::kquants::{unpack_q4k, unpack_q5k, unpack_q6k};
    pub(crate) use super::kquants_low::{unpack_q2k, unpack_q3k};
    pub(crate) use super::q5::unpack5;
}
pub use packed::{
    ActKernel, BlockQ8P, BlockQ16, PACK, PackedAct, PackedFormat, PackedKernel, dequantize_packed_row, dot_packed_portable,
    dot_packed_xn_on, pack_into, packed_bytes, quantize_row_q8p, quantize_row_q16p, with_packed_format,
};
pub use q8::{quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, vec_dot_q8_0_q8_0};
pub use q16::{
    BlockQ16x2, Isa, Q16Weight, WeightBlock, dequantize_row_q16, q16_pairs, quantize_row_q16, quantize_row_q16_portable, vec_dot_q16,
    vec_dot_q16_portable, vec_dot_q16_rows_on, vec_dot_q16_xn, vec_dot_q16_xn_on,
};
pub use q16k::{BlockQ16K, quantize_row_q16k, vec_dot_q4k_q16k, vec_dot_q6k_q16k};

use std::fmt;

/// A tensor element type with its ggml id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// Activation-side type for `Q4_1` dot products (never stored in model files by us).
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// Activation-side type for k-quant dot products.
    Q8K,
    BF16,
}

impl GgmlType {
    /// Every type ballast knows, in id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::BF16,
    ];

    /// The type for a ggml id, or `None` for ids ballast does not support.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q8_1 => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
        }
    }

    /// Bytes of a row of `num_elements`, or `None` if the count is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, num_elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if !num_elements.is_multiple_of(block) {
            return None;
        }
        (num_elements / block).checked_mul(self.type_size() as u64)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// The type named `name` (as [`GgmlType::name`] spells it, any case: `q4_k`, `Q8_0`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The block-quantized types model files store (not the activation-only Q8_1 and Q8_K).
    pub const FILE_QUANTS: [GgmlType; 10] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The 32-element format llama.cpp falls back to for a k-quant when a row is not a
    /// whole number of 256-element super-blocks (e.g. width 896); the type itself otherwise.
    pub fn fallback_for_row(self, num_elements: u64) -> GgmlType {
        if self.row_bytes(num_elements).is_some() {
            return self;
        }
        match self {
            GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            other => other,
        }
    }

    /// Whether the type is a block-quantized format (as opposed to a float type).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
