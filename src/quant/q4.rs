//! 4-bit 32-element formats: Q4_0 (`(q - 8) * d`) and Q4_1 (`q * d + m`).

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use super::float::f16_to_f32;
#[cfg(target_arch = "x86_64")]
use super::multiversion::has_avx2;
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

// The two 4-bit × 8-bit kernels below do not use `multiversion!`: LLVM fully unrolls their
// 32-wide nibble loops and then only sometimes re-vectorises them (measured 1 to 6 GB/s for
// the same source depending on what else is in the build). An explicit AVX2/F16C copy is
// stable at 6-9 GB/s; the portable body is its plain twin, bit-identical (integer sums are
// exact, f16 scales convert exactly, and the float expression is the same).

/// Q4_0 weights · Q8_0 activations: `Σ_blocks d_w d_x Σ (q - 8) q_x`.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { avx2::vec_dot_q4_0_q8_0(w, x) };
    }
    vec_dot_q4_0_q8_0_portable(w, x)
}

/// [`vec_dot_q4_0_q8_0`] in plain integer arithmetic (any target).
pub fn vec_dot_q4_0_q8_0_portable(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
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

/// Q4_1 weights · Q8_1 activations: `Σ_blocks d_w d_x Σ q q_x + m_w s_x`.
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { avx2::vec_dot_q4_1_q8_1(w, x) };
    }
    vec_dot_q4_1_q8_1_portable(w, x)
}

/// [`vec_dot_q4_1_q8_1`] in plain integer arithmetic (any target).
pub fn vec_dot_q4_1_q8_1_portable(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK, f16};
    use std::arch::x86_64::*;

    /// The block's 32 nibbles as unsigned bytes in element order (low nibbles in the low
    /// 128-bit lane, matching activation elements 0..16).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nibbles(qs: &[u8; QK / 2]) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes; the load has no alignment requirement.
        let raw = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0xF);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_i8(x: &[i8; QK]) -> __m256i {
        // SAFETY: `x` is 32 readable bytes; the load has no alignment requirement.
        unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
    }

    /// Sum of the eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// `Σ (q - offset) x` exactly: `maddubs` forms pairwise i16 sums (|q x| ≤ 15 · 128, so a
    /// pair never saturates), `madd` widens them to i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot(q: __m256i, x: __m256i, offset: i8) -> i32 {
        let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(q, x), _mm256_maddubs_epi16(_mm256_set1_epi8(offset), x));
        hsum(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// Needs F16C as well as AVX2 (`has_avx2` checks both).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let sumi = dot(nibbles(&w.qs), load_i8(&x.qs), 8);
            let [wd, xd, _, _] = f16x4(w.d, x.d, f16::ZERO, f16::ZERO);
            sum += (wd * xd) * sumi as f32;
        }
        sum
    }

    /// `[a, b, c, d]` as f32 in one F16C conversion: exact, so equal to `f16_to_f32` on
    /// every non-NaN value (a NaN scale makes the whole dot product NaN either way).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn f16x4(a: f16, b: f16, c: f16, d: f16) -> [f32; 4] {
        let h = _mm_set_epi16(0, 0, 0, 0, d.to_bits() as i16, c.to_bits() as i16, b.to_bits() as i16, a.to_bits() as i16);
        let mut out = [0.0f32; 4];
        // SAFETY: `out` is 16 writable bytes; the store has no alignment requirement.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm_cvtph_ps(h)) };
        out
    }

    /// Needs F16C as well as AVX2 (`has_avx2` checks both).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0.0f32;
        for (w, x) in w.iter().zip(x) {
            let sumi = dot(nibbles(&w.qs), load_i8(&x.qs), 0);
            let [wd, wm, xd, xs] = f16x4(w.d, w.m, x.d, x.s);
            sum += (wd * xd) * sumi as f32 + wm * xs;
        }
        sum
    }
}

/// `n` elements of Q4_1 blocks with random quants (xorshift from `seed`) and scale `d`, min
/// `m`: synthetic weights of real shapes for benchmarks (`ballast make-model`, `bench-gpu`).
pub fn random_q4_1(n: usize, d: f32, m: f32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = vec![0u8; n / 32 * 20];
    let (d, m) = (half::f16::from_f32(d).to_le_bytes(), half::f16::from_f32(m).to_le_bytes());
    for block in bytes.chunks_exact_mut(20) {
        block[..2].copy_from_slice(&d);
        block[2..4].copy_from_slice(&m);
        for chunk in block[4..].chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_util::Rng;
    use bytemuck::Zeroable;

    /// Blocks of raw random bytes (any nibble, any i8 including −128) with finite scales;
    /// `extreme` pins every nibble to 15 and every activation to −128, the case where
    /// `maddubs` would saturate if a product pair could leave i16.
    fn raw_blocks(rng: &mut Rng, n: usize, extreme: bool) -> (Vec<BlockQ4_0>, Vec<BlockQ4_1>, Vec<BlockQ8_0>, Vec<BlockQ8_1>) {
        let mut byte = || if extreme { 0xFF } else { rng.next_u64() as u8 };
        let qs4: Vec<[u8; QK / 2]> = (0..n).map(|_| std::array::from_fn(|_| byte())).collect();
        let mut act = || if extreme { -128 } else { rng.next_u64() as i8 };
        let qs8: Vec<[i8; QK]> = (0..n).map(|_| std::array::from_fn(|_| act())).collect();
        let d = |i: usize| f16::from_f32(0.01 * (i % 7) as f32 - 0.03);
        let w0 = (0..n).map(|i| BlockQ4_0 { d: d(i), qs: qs4[i] }).collect();
        let w1 = (0..n).map(|i| BlockQ4_1 { d: d(i), m: d(i + 3), qs: qs4[i] }).collect();
        let x0 = (0..n).map(|i| BlockQ8_0 { d: d(i + 1), qs: qs8[i] }).collect();
        let x1 = (0..n).map(|i| BlockQ8_1 { d: d(i + 1), s: d(i + 2), qs: qs8[i] }).collect();
        (w0, w1, x0, x1)
    }

    #[test]
    fn avx2_copies_equal_the_portable_twins_on_raw_and_extreme_blocks() {
        let mut rng = Rng::new(17);
        for extreme in [false, true] {
            for n in [0, 1, 2, 3, 7, 18, 33] {
                let (w0, w1, x0, x1) = raw_blocks(&mut rng, n, extreme);
                let (fast, plain) = (vec_dot_q4_0_q8_0(&w0, &x0), vec_dot_q4_0_q8_0_portable(&w0, &x0));
                assert_eq!(fast.to_bits(), plain.to_bits(), "Q4_0 n={n} extreme={extreme}");
                let (fast, plain) = (vec_dot_q4_1_q8_1(&w1, &x1), vec_dot_q4_1_q8_1_portable(&w1, &x1));
                assert_eq!(fast.to_bits(), plain.to_bits(), "Q4_1 n={n} extreme={extreme}");
            }
        }
    }

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
