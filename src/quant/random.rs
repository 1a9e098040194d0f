//! Synthetic weights of real shapes for benchmarks and tests (`ballast make-model`,
//! `bench-gpu`): blocks of any file format with random quants and scales, generated directly
//! (no float quantization: an 8B model's worth takes seconds).

use super::GgmlType;

/// Byte offsets of a block's f16 fields and what each holds.
pub(super) fn f16_fields(dtype: GgmlType) -> &'static [(usize, Field)] {
    use Field::*;
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[(0, Scale)],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[(0, Scale), (2, Min)],
        GgmlType::Q4K | GgmlType::Q5K => &[(0, Scale), (2, Scale)],
        GgmlType::Q2K => &[(80, Scale), (82, Scale)],
        GgmlType::Q3K => &[(108, Scale)],
        GgmlType::Q6K => &[(208, Scale)],
        _ => &[],
    }
}

/// What an f16 field of a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// Multiplies quants (and sub-block scales): `d`, `dmin`.
    Scale,
    /// Added to every element: Q4_1/Q5_1's `m`.
    Min,
}

/// The largest |quant × sub-block scale| of a format: a block's values reach about
/// `d` times this.
fn reach(dtype: GgmlType) -> f32 {
    match dtype {
        GgmlType::Q4_0 => 8.0,
        GgmlType::Q4_1 => 15.0,
        GgmlType::Q5_0 => 16.0,
        GgmlType::Q5_1 => 31.0,
        GgmlType::Q8_0 => 127.0,
        GgmlType::Q2K => 3.0 * 15.0,
        GgmlType::Q3K => 4.0 * 32.0,
        GgmlType::Q4K => 15.0 * 63.0,
        GgmlType::Q5K => 31.0 * 63.0,
        GgmlType::Q6K => 32.0 * 128.0,
        _ => 1.0,
    }
}

/// `n` elements (whole blocks) of `dtype` with random quants and sub-block scales (xorshift
/// from `seed`) and f16 scales chosen so values stay within about `±scale`.
///
/// # Panics
/// If `dtype` is not a quantized file format or `n` is not whole blocks.
pub fn random_blocks(dtype: GgmlType, n: usize, scale: f32, seed: u64) -> Vec<u8> {
    assert!(!f16_fields(dtype).is_empty(), "{dtype} is not a quantized file format");
    let bytes = dtype.row_bytes(n as u64).expect("whole blocks") as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; bytes];
    for chunk in out.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let d = half::f16::from_f32(scale / reach(dtype)).to_le_bytes();
    let m = half::f16::from_f32(-scale / 2.0).to_le_bytes();
    for block in out.chunks_exact_mut(dtype.type_size()) {
        for &(at, field) in f16_fields(dtype) {
            block[at..at + 2].copy_from_slice(if field == Field::Scale { &d } else { &m });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_blocks_of_every_format_decode_to_bounded_values() {
        for dtype in GgmlType::ALL.into_iter().filter(|t| !f16_fields(*t).is_empty()) {
            let n = 4 * 256;
            let bytes = random_blocks(dtype, n, 0.5, 3);
            let mut x = vec![0.0; n];
            crate::quant::dequantize_row(dtype, &bytes, &mut x).unwrap();
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max > 0.05 && max <= 1.05, "{dtype}: max |x| {max}");
            let distinct = x.iter().map(|v| v.to_bits()).collect::<std::collections::HashSet<_>>().len();
            assert!(distinct > 8, "{dtype}: {distinct} distinct values");
        }
    }
}
