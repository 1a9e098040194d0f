//! Float element types (F32, F16, BF16): conversions and dot products with f32 vectors.
//!
//! Dot products accumulate in `LANES` independent f32 lanes (element `i` goes to lane
//! `i % LANES`), then add the lanes in a fixed order: the result depends only on the inputs,
//! and the lanes vectorise without reassociating anything.

use super::multiversion::multiversion;
use half::{bf16, f16};

pub const LANES: usize = 16;

#[inline(always)]
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    let mut s = [0.0f32; 4];
    for (i, x) in acc.iter().enumerate() {
        s[i % 4] += x;
    }
    (s[0] + s[1]) + (s[2] + s[3])
}

#[inline(always)]
fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// f16 → f32 without calling out of the kernel (exact; handles subnormals, inf and NaN).
#[inline(always)]
pub fn f16_to_f32(x: f16) -> f32 {
    let h = x.to_bits() as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let mant = h & 0x3FF;
    let bits = if exp == 0x1F {
        sign | 0x7F80_0000 | (mant << 13)
    } else if exp != 0 {
        sign | ((exp + 112) << 23) | (mant << 13)
    } else {
        // Zero or subnormal: mant * 2^-24, exact in f32.
        let v = mant as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -v } else { v };
    };
    f32::from_bits(bits)
}

/// `Σ widen(a[i]) * b[i]` in `LANES` lanes: the body of every float dot product.
#[inline(always)]
fn dot_lanes<T: Copy>(a: &[T], b: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += widen(x[l]) * y[l];
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += widen(*x) * y;
    }
    sum_lanes(&acc)
}

multiversion! {
    /// `Σ a[i] * b[i]` over the common length.
    pub fn dot_f32_f32 / dot_f32_f32_portable(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes(a, b, |x| x)
    }
}

/// f16 → f32 for a slice (exact), with F16C's 8-wide conversion where the CPU has it.
pub fn widen_f16(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::multiversion::has_avx2() {
        // SAFETY: `has_avx2` includes F16C.
        return unsafe { widen_f16c(src, dst) };
    }
    f16_to_f32_slice(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut s8 = src.chunks_exact(8);
    let mut d8 = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s8).zip(&mut d8) {
        // SAFETY: 8 f16 (16 bytes) in, 8 f32 (32 bytes) out; unaligned.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i))) };
    }
    f16_to_f32_slice(s8.remainder(), d8.into_remainder());
}

multiversion! {
    /// `Σ a[i] * b[i]` for f16 weights and f32 activations.
    pub fn dot_f16_f32 / dot_f16_f32_portable(a: &[f16], b: &[f32]) -> f32 {
        dot_lanes(a, b, f16_to_f32)
    }
}

multiversion! {
    /// `Σ a[i] * b[i]` for bf16 weights and f32 activations.
    pub fn dot_bf16_f32 / dot_bf16_f32_portable(a: &[bf16], b: &[f32]) -> f32 {
        dot_lanes(a, b, bf16_to_f32)
    }
}

pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(*s);
    }
}

pub fn bf16_to_f32_slice(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(*s);
    }
}

pub fn f32_to_f16_slice(src: &[f32], dst: &mut [f16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [bf16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(*s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_util::Rng;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (ours, theirs) = (f16_to_f32(h), h.to_f32());
            assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()), "{bits:#x}");
        }
    }

    #[test]
    fn dots_match_plain_sums_and_their_portable_twins() {
        let mut rng = Rng::new(3);
        for n in [0, 1, 2, 15, 16, 17, 33, 100, 576, 1537] {
            let a = rng.floats(n, 2.0);
            let b = rng.floats(n, 2.0);
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-5 * (1.0 + a.iter().zip(&b).map(|(x, y)| (x * y).abs() as f64).sum::<f64>());
            let d = dot_f32_f32(&a, &b);
            assert!((d as f64 - plain).abs() <= tol, "f32 n={n}: {d} vs {plain}");
            assert_eq!(d.to_bits(), dot_f32_f32_portable(&a, &b).to_bits());

            let ah: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            let plain_h: f64 = ah.iter().zip(&b).map(|(x, y)| x.to_f64() * *y as f64).sum();
            let d = dot_f16_f32(&ah, &b);
            assert!((d as f64 - plain_h).abs() <= tol, "f16 n={n}");
            assert_eq!(d.to_bits(), dot_f16_f32_portable(&ah, &b).to_bits());

            let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
            let plain_b: f64 = ab.iter().zip(&b).map(|(x, y)| x.to_f64() * *y as f64).sum();
            let d = dot_bf16_f32(&ab, &b);
            assert!((d as f64 - plain_b).abs() <= tol, "bf16 n={n}");
            assert_eq!(d.to_bits(), dot_bf16_f32_portable(&ab, &b).to_bits());
        }
    }
}
