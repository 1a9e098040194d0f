//! A small deterministic generator for tests (xorshift64*).

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-scale, scale)`.
    pub fn float(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.float(scale)).collect()
    }
}

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
