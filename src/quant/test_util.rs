//! Test inputs: the project's generator ([`crate::testing::Rng`]) and random quant blocks.

pub use crate::testing::Rng;

/// `n` blocks of `dtype` from random bytes, every f16 field a finite value below `scale`:
/// every bit of every quant, scale and min field exercised.
pub fn random_block_bytes(rng: &mut Rng, dtype: super::GgmlType, n: usize, scale: f32) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..n * dtype.type_size()).map(|_| rng.next_u64() as u8).collect();
    for block in bytes.chunks_exact_mut(dtype.type_size()) {
        for &(at, _) in super::random::f16_fields(dtype) {
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(rng.float(scale)).to_le_bytes());
        }
    }
    bytes
}
