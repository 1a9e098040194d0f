//! The arithmetic of attention's softmax over a chunk of keys, written to vectorise: an `exp`
//! for non-positive arguments, the chunk's scores one key per lane, their probabilities with
//! their sum, and the weighted sum of value vectors; and SiLU, which shares the exponential.
//! Each is compiled portable and for AVX2 (`multiversion!`) with the same operations in the
//! same order (no fused multiply-adds, sums in fixed lanes), so both copies give
//! bit-identical results.

use crate::quant::multiversion::multiversion;

/// `e^x` for `x ≤ 0` (softmax arguments are scores minus their maximum), within 2 ulp of
/// the exact value; `0` below `-87.3` (where `e^x` leaves the normal f32 range) and for -∞.
/// Cody–Waite range reduction `x = n ln2 + r` with `|r| ≤ ln2/2`, then a degree-6
/// polynomial for `e^r` (Cephes' coefficients), scaled by `2^n` through the exponent bits.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let xc = x.max(-87.3);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { e * scale }
}

multiversion! {
    /// `g = silu(g) · u` elementwise, `silu(g) = g / (1 + e^-g)`, with `e^-|g|` from
    /// [`exp_nonpositive`] so it vectorises: `g / (1 + e)` for `g ≥ 0`, `g e / (1 + e)` below.
    pub fn silu_mul_row / silu_mul_row_portable(g: &mut [f32], u: &[f32]) -> () {
        for (g, &u) in g.iter_mut().zip(u) {
            let x = *g;
            let e = exp_nonpositive(-x.abs());
            let num = if x >= 0.0 { x } else { x * e };
            *g = num / (1.0 + e) * u;
        }
    }
}

multiversion! {
    /// `g = gelu_tanh(g) * u`, elementwise: `x/2 · (1 + tanh(y))` is `x · sigmoid(2y)`, with
    /// `y = √(2/π)(x + 0.044715x³)`, and the sigmoid is computed as in `silu_mul_row`.
    pub fn gelu_tanh_mul_row / gelu_tanh_mul_row_portable(g: &mut [f32], u: &[f32]) -> () {
        // 2·√(2/π)
        const K: f32 = 1.595_769_2;
        for (g, &u) in g.iter_mut().zip(u) {
            let x = *g;
            let z = K * (x + 0.044715 * x * x * x);
            let e = exp_nonpositive(-z.abs());
            let sig = if z >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
            *g = x * sig * u;
        }
    }
}

/// Keys per lane group of [`scores_keys_in_lanes`].
const KEY_LANES: usize = 16;

multiversion! {
    /// `out[j] = (Σ_i q[i] · kt[i · w + j]) · scale` for a block of `w = out.len()` keys stored
    /// dimension-major (`kt` holds `q.len()` rows of `w` values): each key's dot product
    /// runs in its own lane, dimensions in order, so nothing is summed across lanes.
    pub fn scores_keys_in_lanes / scores_keys_in_lanes_portable(q: &[f32], kt: &[f32], scale: f32, out: &mut [f32]) -> () {
        let w = out.len();
        for j0 in (0..w).step_by(KEY_LANES) {
            let mut acc = [0f32; KEY_LANES];
            if let Some(n) = (j0 + KEY_LANES <= w).then_some(KEY_LANES) {
                for (i, &qi) in q.iter().enumerate() {
                    let row: &[f32; KEY_LANES] = kt[i * w + j0..][..n].try_into().expect("16 keys");
                    for j in 0..KEY_LANES {
                        acc[j] += qi * row[j];
                    }
                }
            } else {
                for (i, &qi) in q.iter().enumerate() {
                    for (a, &k) in acc.iter_mut().zip(&kt[i * w + j0..(i + 1) * w]) {
                        *a += qi * k;
                    }
                }
            }
            for (o, a) in out[j0..].iter_mut().zip(acc) {
                *o = a * scale;
            }
        }
    }
}

multiversion! {
    /// `s[j] = e^(s[j] - max)` for every score; returns `Σ s[j]` (eight lanes, fixed order).
    pub fn exp_and_sum / exp_and_sum_portable(s: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0f32; 8];
        for chunk in s.chunks_mut(8) {
            for (v, l) in chunk.iter_mut().zip(lanes.iter_mut()) {
                *v = exp_nonpositive(*v - max);
                *l += *v;
            }
        }
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    }
}

multiversion! {
    /// `acc = acc * keep + Σ_j p[j] v[j]`, where `v` holds `p.len()` rows of `acc.len()`
    /// values; rows are added in order.
    pub fn scale_and_accumulate / scale_and_accumulate_portable(acc: &mut [f32], keep: f32, p: &[f32], v: &[f32]) -> () {
        let d = acc.len();
        for a in acc.iter_mut() {
            *a *= keep;
        }
        for (&pj, vj) in p.iter().zip(v.chunks_exact(d)) {
            for (a, &x) in acc.iter_mut().zip(vj) {
                *a += pj * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_for_softmax_arguments() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), (x as f64).exp() as f32);
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            x -= 0.000_7;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn simd_copies_match_their_portable_twins() {
        let mut rng = crate::quant::test_util::Rng::new(5);
        for n in [1, 7, 8, 13, 64] {
            let s: Vec<f32> = rng.floats(n, 20.0);
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let (mut a, mut b) = (s.clone(), s.clone());
            assert_eq!(exp_and_sum(&mut a, max).to_bits(), exp_and_sum_portable(&mut b, max).to_bits());
            assert_eq!(a, b);
            let v = rng.floats(n * 24, 1.0);
            let (mut x, mut y) = (rng.floats(24, 1.0), vec![0.0; 24]);
            y.copy_from_slice(&x);
            scale_and_accumulate(&mut x, 0.25, &a, &v);
            scale_and_accumulate_portable(&mut y, 0.25, &b, &v);
            assert_eq!(x, y);
            let (mut g1, up) = (rng.floats(n * 7, 30.0), rng.floats(n * 7, 2.0));
            let mut g2 = g1.clone();
            let want: Vec<f64> = g1.iter().zip(&up).map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64).collect();
            silu_mul_row(&mut g1, &up);
            silu_mul_row_portable(&mut g2, &up);
            assert_eq!(g1, g2);
            for ((&got, &want), &u) in g1.iter().zip(&want).zip(&up) {
                assert!((got as f64 - want).abs() <= 1e-6 * (want.abs() + u.abs() as f64 * 1e-3), "silu: {got} vs {want}");
            }
            // GELU (tanh form) against the tanh formula in f64, on inputs out to ±8.
            let (mut g1, up) = (rng.floats(n * 7, 8.0), rng.floats(n * 7, 2.0));
            let mut g2 = g1.clone();
            let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            let want: Vec<f64> = g1.iter().zip(&up).map(|(&g, &u)| gelu(g as f64) * u as f64).collect();
            gelu_tanh_mul_row(&mut g1, &up);
            gelu_tanh_mul_row_portable(&mut g2, &up);
            assert_eq!(g1, g2);
            for ((&got, &want), &u) in g1.iter().zip(&want).zip(&up) {
                assert!((got as f64 - want).abs() <= 1e-6 * (want.abs() + u.abs() as f64 * 1e-2), "gelu: {got} vs {want}");
            }
            // Keys in lanes: blocks of 16 keys and awkward widths, head size 24.
            let q = rng.floats(24, 1.0);
            let kt = rng.floats(24 * (n + 16), 1.0);
            let w = n + 16;
            let (mut fast, mut plain) = (vec![0.0; w], vec![0.0; w]);
            scores_keys_in_lanes(&q, &kt, 0.5, &mut fast);
            scores_keys_in_lanes_portable(&q, &kt, 0.5, &mut plain);
            assert_eq!(fast, plain, "{w} keys");
            for (j, &got) in fast.iter().enumerate() {
                let exact: f64 = (0..24).map(|i| q[i] as f64 * kt[i * w + j] as f64).sum::<f64>() * 0.5;
                assert!((got as f64 - exact).abs() < 1e-5, "key {j} of {w}: {got} vs {exact}");
            }
        }
    }
}
