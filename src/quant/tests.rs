//! Cross-type tests: every type's quantize → dequantize error, the fast dot products against
//! the reference on awkward lengths, the SIMD copies against their portable twins, and
//! errors instead of panics on bad buffers.

use super::test_util::Rng;
use super::*;

const WEIGHT_TYPES: [GgmlType; 8] =
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];

pub(super) fn quantized(dtype: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; dtype.row_bytes(x.len() as u64).unwrap() as usize];
    quantize_row(dtype, x, &mut out).unwrap();
    out
}

/// Largest round-trip error relative to the row's max magnitude that each type allows.
fn round_trip_tolerance(dtype: GgmlType) -> f32 {
    match dtype {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 8e-3,
        GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8K => 1.0 / 127.0,
        GgmlType::Q6K => 1.5 / 31.0,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 1.0 / 7.0,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 1.0 / 15.0,
        GgmlType::Q4K => 2.5 / 15.0,
        GgmlType::Q5K => 2.5 / 31.0,
        // Absmax to -4 on a grid of -4..3: the other sign reaches only 3/4 of it.
        GgmlType::Q3K => 0.26,
        GgmlType::Q2K => 0.4,
    }
}

#[test]
fn every_type_round_trips_within_its_resolution() {
    let mut rng = Rng::new(11);
    for dtype in GgmlType::ALL {
        for num_blocks in [1, 2, 5] {
            let n = dtype.block_size().max(QK_K) * num_blocks;
            let x = rng.floats(n, 3.0);
            let mut back = vec![0.0; n];
            dequantize_row(dtype, &quantized(dtype, &x), &mut back).unwrap();
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= round_trip_tolerance(dtype) * max + 1e-6, "{dtype}: error {err} of {max}");
        }
    }
}

pub(super) fn quantized_act(act: ActType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; act.row_bytes(x.len()).unwrap()];
    quantize_act(act, x, &mut out).unwrap();
    out
}

/// The fast path differs from the reference by the activations' rounding: at most half a
/// step (max|x| / 254 for 8 bits, / 65534 for 16) per element, so
/// |Σ w (x - x̂)| ≤ Σ|w| · max|x| / steps, plus f32 rounding of the sums.
#[test]
fn fast_dot_products_match_the_reference_on_awkward_lengths() {
    let mut rng = Rng::new(5);
    for (bits, steps) in [(ActBits::Eight, 254.0), (ActBits::Sixteen, 65534.0)] {
        for dtype in WEIGHT_TYPES {
            for num_blocks in [1, 2, 3, 7, 33] {
                let n = dtype.block_size().max(QK) * num_blocks;
                let w_bytes = quantized(dtype, &rng.floats(n, 1.0));
                let x = rng.floats(n, 4.0);
                let reference = dot_f32(dtype, &w_bytes, &x).unwrap();
                let act = act_type(dtype, bits);
                let fast = vec_dot(dtype, &w_bytes, act, &quantized_act(act, &x), n).unwrap();
                let mut w = vec![0.0; n];
                dequantize_row(dtype, &w_bytes, &mut w).unwrap();
                let abs_w: f32 = w.iter().map(|v| v.abs()).sum();
                let x_max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let rounding = if dtype.is_quantized() { abs_w * x_max / steps * 1.05 } else { 0.0 };
                let bound = rounding + 1e-5 * abs_w * x_max;
                assert!((fast - reference).abs() <= bound, "{dtype} {bits:?} n={n}: fast {fast} vs reference {reference} (bound {bound})");
            }
        }
    }
}

#[test]
fn sixteen_bit_activations_are_far_closer_than_eight() {
    let mut rng = Rng::new(21);
    let (mut err8, mut err16) = (0.0f64, 0.0f64);
    for _ in 0..50 {
        let n = 576;
        let w_bytes = quantized(GgmlType::Q4_1, &rng.floats(n, 1.0));
        let x = rng.floats(n, 4.0);
        let reference = dot_f32(GgmlType::Q4_1, &w_bytes, &x).unwrap() as f64;
        for (bits, err) in [(ActBits::Eight, &mut err8), (ActBits::Sixteen, &mut err16)] {
            let act = act_type(GgmlType::Q4_1, bits);
            let fast = vec_dot(GgmlType::Q4_1, &w_bytes, act, &quantized_act(act, &x), n).unwrap() as f64;
            *err += (fast - reference).abs();
        }
    }
    assert!(err16 * 50.0 < err8, "16-bit error {err16} vs 8-bit {err8}");
}

#[test]
fn simd_kernels_are_bit_identical_to_their_portable_twins() {
    let mut rng = Rng::new(9);
    for num_blocks in [1, 2, 3, 5, 18, 47, 48] {
        let n32 = QK * num_blocks;
        let x = rng.floats(n32, 2.0);
        let q8_0 = quantized(GgmlType::Q8_0, &x);
        let q8_1 = quantized(GgmlType::Q8_1, &x);
        let w4_0 = quantized(GgmlType::Q4_0, &rng.floats(n32, 1.0));
        let w4_1 = quantized(GgmlType::Q4_1, &rng.floats(n32, 1.0));
        let w8_0 = quantized(GgmlType::Q8_0, &rng.floats(n32, 1.0));
        let c = |b: &[u8]| bytemuck::cast_slice::<u8, BlockQ8_0>(b).to_vec();
        let (a8, w8) = (c(&q8_0), c(&w8_0));
        let a81: Vec<BlockQ8_1> = bytemuck::cast_slice(&q8_1).to_vec();
        let w40: Vec<BlockQ4_0> = bytemuck::cast_slice(&w4_0).to_vec();
        let w41: Vec<BlockQ4_1> = bytemuck::cast_slice(&w4_1).to_vec();
        assert_eq!(vec_dot_q8_0_q8_0(&w8, &a8).to_bits(), q8::vec_dot_q8_0_q8_0_portable(&w8, &a8).to_bits());
        assert_eq!(vec_dot_q4_0_q8_0(&w40, &a8).to_bits(), q4::vec_dot_q4_0_q8_0_portable(&w40, &a8).to_bits());
        assert_eq!(vec_dot_q4_1_q8_1(&w41, &a81).to_bits(), q4::vec_dot_q4_1_q8_1_portable(&w41, &a81).to_bits());

        let a16: Vec<BlockQ16x2> = bytemuck::pod_collect_to_vec(&quantized_act(ActType::Q16, &x));
        let rows: Vec<Vec<BlockQ16x2>> =
            (0..8).map(|k| bytemuck::pod_collect_to_vec(&quantized_act(ActType::Q16, &rng.floats(n32, 1.0 + k as f32)))).collect();
        q16_kernels_agree(&w8, &a16, &rows);
        q16_kernels_agree(&w40, &a16, &rows);
        q16_kernels_agree(&w41, &a16, &rows);

        let nk = QK_K * num_blocks.div_ceil(8);
        let xk = rng.floats(nk, 2.0);
        let ak: Vec<BlockQ8K> = bytemuck::pod_collect_to_vec(&quantized(GgmlType::Q8K, &xk));
        let w4k: Vec<BlockQ4K> = bytemuck::pod_collect_to_vec(&quantized(GgmlType::Q4K, &rng.floats(nk, 1.0)));
        let w6k: Vec<BlockQ6K> = bytemuck::pod_collect_to_vec(&quantized(GgmlType::Q6K, &rng.floats(nk, 1.0)));
        assert_eq!(vec_dot_q4k_q8k(&w4k, &ak).to_bits(), kquants::vec_dot_q4k_q8k_portable(&w4k, &ak).to_bits());
        assert_eq!(vec_dot_q6k_q8k(&w6k, &ak).to_bits(), kquants::vec_dot_q6k_q8k_portable(&w6k, &ak).to_bits());
        let a16k: Vec<BlockQ16K> = bytemuck::pod_collect_to_vec(&quantized_act(ActType::Q16K, &xk));
        assert_eq!(vec_dot_q4k_q16k(&w4k, &a16k).to_bits(), q16k::vec_dot_q4k_q16k_portable(&w4k, &a16k).to_bits());
        assert_eq!(vec_dot_q6k_q16k(&w6k, &a16k).to_bits(), q16k::vec_dot_q6k_q16k_portable(&w6k, &a16k).to_bits());
    }
}

/// Every 16-bit implementation this CPU has, with 1, 4 and 8 rows at once, gives each row
/// the portable twin's result bit for bit.
fn q16_kernels_agree<W: Q16Weight + std::fmt::Debug>(w: &[W], one: &[BlockQ16x2], rows: &[Vec<BlockQ16x2>]) {
    let name = std::any::type_name::<W>();
    let want = |x: &[BlockQ16x2]| vec_dot_q16_portable(w, x).to_bits();
    let four: [&[BlockQ16x2]; 4] = std::array::from_fn(|k| &rows[k][..]);
    let eight: [&[BlockQ16x2]; 8] = std::array::from_fn(|k| &rows[k][..]);
    // Three rows back to back (the row, reversed, the row) for the many-rows kernel.
    let reversed: Vec<W> = w.iter().rev().copied().collect();
    let three: Vec<W> = [w, &reversed[..], w].concat();
    for isa in Isa::available() {
        assert_eq!(vec_dot_q16_xn_on(isa, w, [one])[0].to_bits(), want(one), "{name} {isa:?} x1, {} blocks", w.len());
        let mut out = [0f32; 3];
        vec_dot_q16_rows_on(isa, &three, w.len(), one, &mut out);
        let rows_want = [want(one), vec_dot_q16_portable(&reversed, one).to_bits(), want(one)];
        assert_eq!(out.map(f32::to_bits), rows_want, "{name} {isa:?} rows, {} blocks", w.len());
        let got4 = vec_dot_q16_xn_on(isa, w, four);
        let got8 = vec_dot_q16_xn_on(isa, w, eight);
        for k in 0..8 {
            assert_eq!(got8[k].to_bits(), want(eight[k]), "{name} {isa:?} x8 row {k}, {} blocks", w.len());
            if k < 4 {
                assert_eq!(got4[k].to_bits(), want(four[k]), "{name} {isa:?} x4 row {k}, {} blocks", w.len());
            }
        }
    }
}

#[test]
fn bad_buffers_are_errors() {
    let x = [0.0f32; 33];
    let mut out = vec![0u8; 64];
    assert_eq!(quantize_row(GgmlType::Q4_1, &x, &mut out), Err(QuantError::RowLength { dtype: GgmlType::Q4_1, len: 33 }));
    let mut y = [0.0f32; 32];
    let err = dequantize_row(GgmlType::Q8_0, &[0u8; 30], &mut y).unwrap_err();
    assert_eq!(err, QuantError::BufferSize { dtype: GgmlType::Q8_0, expected: 34, found: 30 });
    // An odd start address cannot hold f16 fields.
    let buf = [0u8; 41];
    assert_eq!(dequantize_row(GgmlType::Q4_1, &buf[1..41], &mut [0.0; 64]), Err(QuantError::Misaligned { dtype: GgmlType::Q4_1 }));
    assert!(vec_dot(GgmlType::Q8K, &[0u8; 292], ActType::Q8K, &[0u8; 292], 256).is_err());
    assert!(vec_dot(GgmlType::Q4_1, &[0u8; 20], ActType::Q8_0, &[0u8; 34], 32).is_err(), "wrong pairing");
    assert!(quantize_act(ActType::Q16, &[0.0; 31], &mut [0u8; 256]).is_err());
    assert!(quantize_act(ActType::Q16, &[0.0; 32], &mut [0u8; 128]).is_err(), "a lone block still takes a whole pair");
    assert!(dot_f32(GgmlType::Q4_0, &[0u8; 18], &[0.0; 31]).is_err());
}

/// The activations a quantized row stands for (`q * d`).
pub(super) fn dequantized_act(act: ActType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    match act {
        ActType::F32 => out.copy_from_slice(bytemuck::cast_slice(bytes)),
        ActType::Q8_0 => dequantize_row(GgmlType::Q8_0, bytes, &mut out).unwrap(),
        ActType::Q8_1 => dequantize_row(GgmlType::Q8_1, bytes, &mut out).unwrap(),
        ActType::Q8K => dequantize_row(GgmlType::Q8K, bytes, &mut out).unwrap(),
        ActType::Q16 => dequantize_row_q16(bytemuck::cast_slice(bytes), &mut out),
        ActType::Q16K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ16K>(bytes).iter().zip(out.chunks_mut(QK_K)) {
                y.iter_mut().zip(&b.qs).for_each(|(o, &q)| *o = q as f32 * b.d);
            }
        }
        ActType::Q16P => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ16>(bytes).iter().zip(out.chunks_mut(QK)) {
                y.iter_mut().zip(&b.qs).for_each(|(o, &q)| *o = q as f32 * b.d);
            }
        }
        ActType::Q8P => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ8P>(bytes).iter().zip(out.chunks_mut(QK)) {
                y.iter_mut().enumerate().for_each(|(e, o)| *o = b.q(e) as f32 * b.d);
            }
        }
    }
    out
}

/// Given the same (already rounded) activations, a fast kernel and the reference differ
/// only by f32 rounding of their sums — so this catches a wrong scale, nibble or lane that
/// the activation-rounding bound above could hide. (Q8_1 also stores `s = d Σq` as f16:
/// its `m s` term carries up to 2^-11 relative error.)
#[test]
fn fast_kernels_equal_the_reference_on_the_same_activations() {
    let mut rng = Rng::new(17);
    for bits in [ActBits::Eight, ActBits::Sixteen] {
        for dtype in WEIGHT_TYPES.into_iter().filter(|t| t.is_quantized()) {
            for num_blocks in [1, 3, 9] {
                let n = dtype.block_size().max(QK) * num_blocks;
                let w_bytes = quantized(dtype, &rng.floats(n, 1.0));
                let act = act_type(dtype, bits);
                let a = quantized_act(act, &rng.floats(n, 4.0));
                let x_hat = dequantized_act(act, &a, n);
                let fast = vec_dot(dtype, &w_bytes, act, &a, n).unwrap();
                let reference = dot_f32(dtype, &w_bytes, &x_hat).unwrap();
                let mut w = vec![0.0; n];
                dequantize_row(dtype, &w_bytes, &mut w).unwrap();
                let scale: f32 = w.iter().zip(&x_hat).map(|(a, b)| (a * b).abs()).sum();
                let s_rounding = if act == ActType::Q8_1 { w.iter().map(|v| v.abs()).sum::<f32>() * 4.0 * 2e-3 } else { 0.0 };
                let bound = 2e-6 * scale + s_rounding + 1e-6;
                assert!((fast - reference).abs() <= bound, "{dtype} {bits:?} n={n}: {fast} vs {reference} (bound {bound})");
            }
        }
    }
}

/// The vector 16-bit quantizer stores exactly the portable one's bytes: random rows of
/// 1 to 49 blocks, an all-zero block, and halves that tie (`x / d` = k + ½ exactly, which
/// round away from zero).
#[test]
fn q16_quantizer_matches_its_portable_twin() {
    let mut rng = Rng::new(31);
    let mut rows: Vec<Vec<f32>> = [1, 2, 3, 18, 48, 49].iter().map(|&b| rng.floats(b * QK, 3.0)).collect();
    let mut ties = vec![0.0f32; 3 * QK];
    ties[0] = 32767.0; // d = 1: the others are their own quotients
    for (i, v) in ties[1..QK].iter_mut().enumerate() {
        *v = (i as f32 - 15.0) + 0.5;
    }
    ties[QK + 3] = -0.5; // a block with one value: d = 0.5/32767, quotient exactly -32767
    rows.push(ties);
    // Blocks so small that `1/d` overflows f32 (the casts then saturate), beside a normal one.
    let mut tiny = vec![0.0f32; 2 * QK_K];
    for (i, v) in tiny[..QK_K + QK].iter_mut().enumerate() {
        *v = [1e-35, -1e-35, 0.0, 3e-36][i % 4];
    }
    tiny[QK_K + QK..].copy_from_slice(&rng.floats(QK_K - QK, 1.0));
    rows.push(tiny);
    for x in rows {
        let pairs = q16_pairs(x.len() / QK);
        let mut fast = vec![bytemuck::Zeroable::zeroed(); pairs];
        let mut plain = vec![bytemuck::Zeroable::zeroed(); pairs];
        quantize_row_q16(&x, &mut fast);
        quantize_row_q16_portable(&x, &mut plain);
        assert_eq!(bytemuck::cast_slice::<_, u8>(&fast), bytemuck::cast_slice::<_, u8>(&plain), "{} elements", x.len());
        // The block quantizer the packed and k-quant activations use, in blocks of 32 and
        // of 256 where the row has them, and over the whole row; at 16 bits and at 8 (the
        // ties block then rounds other quotients).
        for len in [QK, QK_K, x.len()] {
            for qmax in [super::q16::Q16_MAX, 127.0] {
                for x in x.chunks_exact(len) {
                    let (mut fast, mut plain) = (vec![0i16; len], vec![1i16; len]);
                    let d = super::q16::quantize16(x, &mut fast, qmax);
                    let d_plain = super::q16::quantize16_portable(x, &mut plain, qmax);
                    assert_eq!((d.to_bits(), &fast), (d_plain.to_bits(), &plain), "blocks of {len}, max {qmax}");
                }
            }
        }
    }
}
