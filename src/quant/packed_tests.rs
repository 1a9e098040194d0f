//! The packed layout and kernels of every format: packing keeps every value, and every
//! implementation (portable, AVX2, AVX-512) with any token grouping gives the portable twin's
//! bits, which equal the exact dot product up to f32 rounding.

use super::test_util::{Rng, random_block_bytes};
use super::tests::{dequantized_act, quantized, quantized_act};
use super::*;

/// Every file format has a packed layout.
const PACKED_TYPES: [GgmlType; 10] = GgmlType::FILE_QUANTS;

/// `rows` rows of `units` blocks, row-major: even rows from the quantizer, odd rows random
/// block bytes.
fn random_rows<F: PackedFormat>(rng: &mut Rng, rows: usize, units: usize) -> Vec<F> {
    let n = units * F::DTYPE.block_size();
    let bytes: Vec<u8> = (0..rows)
        .flat_map(|r| if r % 2 == 0 { quantized(F::DTYPE, &rng.floats(n, 1.0)) } else { random_block_bytes(rng, F::DTYPE, units, 0.05) })
        .collect();
    bytemuck::pod_collect_to_vec(&bytes)
}

fn packed<F: PackedFormat>(w: &[F], rows: usize, units: usize) -> Vec<u8> {
    let mut out = vec![0xAB; packed_bytes::<F>(rows, units)];
    pack_into(w, rows, units, &mut out);
    out
}

/// Packing keeps every row: dequantizing packed row `r` gives exactly the row-major row's
/// values, including in a padded last group; every byte is written.
#[test]
fn packed_rows_dequantize_like_row_major() {
    fn check<F: PackedFormat>() {
        let mut rng = Rng::new(23);
        for (rows, units) in [(1, 1), (16, 3), (37, 5), (33, 2)] {
            let w = random_rows::<F>(&mut rng, rows, units);
            let p = packed(&w, rows, units);
            let mut clean = vec![0u8; p.len()];
            pack_into(&w, rows, units, &mut clean);
            assert_eq!(clean, p, "{} {rows}x{units}: bytes left unwritten", F::DTYPE);
            let n = units * F::DTYPE.block_size();
            let (mut want, mut got) = (vec![0.0; n], vec![1.0; n]);
            for r in 0..rows {
                dequantize_row(F::DTYPE, bytemuck::cast_slice(&w[r * units..(r + 1) * units]), &mut want).unwrap();
                dequantize_packed_row::<F>(&p, units, r, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{} {rows}x{units} row {r}", F::DTYPE);
            }
        }
    }
    for dtype in PACKED_TYPES {
        with_packed_format!(dtype, F => check::<F>(), _ => unreachable!());
    }
}

/// The last `N` of `acts` through the `N`-token kernel, so that each size meets other
/// activations.
fn last_n<F: PackedKernel, A: ActKernel, const N: usize>(isa: Isa, group: &[u8], units: usize, acts: &[Vec<A>]) -> Vec<[f32; PACK]> {
    let xs = std::array::from_fn(|k| &acts[acts.len() - N + k][..]);
    dot_packed_xn_on::<F, A, N>(isa, group, units, xs, &[[0.0; PACK]; N]).to_vec()
}

/// Every packed implementation, with 1, 2, 3, 4, 5 and 8 tokens at once (every kernel the
/// matmul runs), gives each row the portable
/// twin's result bit for bit; a row's result does not depend on the other rows of its group
/// (packed alone, it gives the same bits); and the portable twin equals the f64 dot product
/// of the dequantized weights and activations up to f32 rounding. For 16-bit activations
/// and for 8-bit ones (`vpdpbusd`, with its offset for signed Q8_0 quants).
#[test]
fn packed_kernels_agree_with_the_portable_twin_and_the_reference() {
    for dtype in PACKED_TYPES {
        with_packed_format!(dtype, F => {
            check_kernels::<F, BlockQ16>(ActType::Q16P);
            check_kernels::<F, BlockQ8P>(ActType::Q8P);
        }, _ => unreachable!());
    }
}

fn check_kernels<F: PackedKernel, A: ActKernel>(act: ActType) {
    {
        let dtype = F::DTYPE;
        let mut rng = Rng::new(29);
        let unit_sizes: &[usize] = if F::BLOCKS == 1 { &[1, 2, 3, 5, 18, 47] } else { &[1, 2, 3, 7] };
        for &units in unit_sizes {
            let (rows, n) = (37, units * dtype.block_size());
            let w = random_rows::<F>(&mut rng, rows, units);
            let p = packed(&w, rows, units);
            let acts: Vec<Vec<A>> =
                (0..8).map(|k| bytemuck::pod_collect_to_vec(&quantized_act(act, &rng.floats(n, 1.0 + k as f32)))).collect();
            let x: Vec<Vec<f32>> = acts.iter().map(|a| dequantized_act(act, bytemuck::cast_slice(a), n)).collect();
            let group_bytes = units * F::UNIT;
            for (g, group) in p.chunks_exact(group_bytes).enumerate() {
                let want: Vec<[f32; PACK]> = acts.iter().map(|a| dot_packed_portable::<F, A>(group, units, a, [0.0; PACK])).collect();
                for isa in Isa::available() {
                    let zero = [[0.0; PACK]; 8];
                    let one = dot_packed_xn_on::<F, A, 1>(isa, group, units, [&acts[0]], &[zero[0]]);
                    let fewer = [
                        last_n::<F, A, 2>(isa, group, units, &acts),
                        last_n::<F, A, 3>(isa, group, units, &acts),
                        last_n::<F, A, 4>(isa, group, units, &acts),
                        last_n::<F, A, 5>(isa, group, units, &acts),
                    ];
                    let eight = dot_packed_xn_on::<F, A, 8>(isa, group, units, std::array::from_fn(|k| &acts[k][..]), &zero);
                    // The row in two pieces, the second continuing from the first: the same bits.
                    if units > 1 {
                        let split = units / 2;
                        let xs: [&[A]; 8] = std::array::from_fn(|k| &acts[k][..split * F::BLOCKS]);
                        let first = dot_packed_xn_on::<F, A, 8>(isa, &group[..split * F::UNIT], split, xs, &zero);
                        let xs: [&[A]; 8] = std::array::from_fn(|k| &acts[k][split * F::BLOCKS..]);
                        let both = dot_packed_xn_on::<F, A, 8>(isa, &group[split * F::UNIT..], units - split, xs, &first);
                        for k in 0..8 {
                            assert_eq!(both[k].map(f32::to_bits), want[k].map(f32::to_bits), "{dtype} {isa:?} split token {k}");
                        }
                    }
                    let bits = |v: &[f32; PACK]| v.map(f32::to_bits);
                    assert_eq!(bits(&one[0]), bits(&want[0]), "{dtype} {act:?} {isa:?} x1, {units} units, group {g}");
                    for k in 0..8 {
                        assert_eq!(bits(&eight[k]), bits(&want[k]), "{dtype} {act:?} {isa:?} x8 token {k}, {units} units");
                    }
                    for got in &fewer {
                        let (n, first) = (got.len(), 8 - got.len());
                        for (k, got) in got.iter().enumerate() {
                            assert_eq!(bits(got), bits(&want[first + k]), "{dtype} {act:?} {isa:?} x{n} token {k}, {units} units");
                        }
                    }
                }
                let mut wr = vec![0.0; n];
                for r in (0..PACK).filter(|r| g * PACK + r < rows) {
                    let row = g * PACK + r;
                    dequantize_packed_row::<F>(&p, units, row, &mut wr);
                    for (k, x) in x.iter().enumerate() {
                        let exact: f64 = wr.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let scale: f64 = wr.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        let got = want[k][r] as f64;
                        assert!((got - exact).abs() <= 4e-6 * scale + 1e-6, "{dtype} row {row} token {k}: {got} vs {exact}");
                    }
                }
            }
            // The last row, packed alone with fifteen padding rows, gives the same bits.
            let alone = packed(&w[(rows - 1) * units..], 1, units);
            let last = dot_packed_portable::<F, A>(&alone, units, &acts[3], [0.0; PACK])[0];
            let group = &p[(rows - 1) / PACK * group_bytes..][..group_bytes];
            let in_group = dot_packed_portable::<F, A>(group, units, &acts[3], [0.0; PACK])[(rows - 1) % PACK];
            assert_eq!(last.to_bits(), in_group.to_bits());
        }
    }
}

/// 8-bit activations: element order, sums and range, also for blocks whose `1/d` overflows
/// (the kernels' AVX2 sign trick needs `|q| ≤ 127`).
#[test]
fn q8p_activations_hold_their_block() {
    let mut rng = Rng::new(41);
    let mut x = rng.floats(4 * QK, 2.0);
    for (i, v) in x[QK..2 * QK].iter_mut().enumerate() {
        *v = [1e-35, -1e-35, 0.0, 3e-36][i % 4];
    }
    x[2 * QK..3 * QK].fill(0.0);
    let mut blocks = vec![bytemuck::Zeroable::zeroed(); 4];
    quantize_row_q8p(&x, &mut blocks);
    for (b, x) in blocks.iter().zip(x.chunks_exact(QK)) {
        let q: Vec<i32> = (0..QK).map(|e| b.q(e)).collect();
        assert!(q.iter().all(|q| q.abs() <= 127));
        assert_eq!(b.qsum, q.iter().sum::<i32>());
        assert_eq!(b.sum, b.qsum as f32 * b.d);
        assert_eq!(b.half[1], q[16..].iter().sum::<i32>() as f32 * b.d);
        if b.d > 1e-30 {
            for (e, &v) in x.iter().enumerate() {
                assert!((q[e] as f32 * b.d - v).abs() <= 0.5 * b.d * 1.0001, "element {e}");
            }
        }
    }
    assert_eq!(blocks[2].d, 0.0);
    assert_eq!((packed::q8p_index(1), packed::q8p_index(2), packed::q8p_index(7)), (2, 1, 7));
}

/// Packing takes about the row-major bytes: the same for the 32-element formats and Q2_K and
/// Q6_K, a few percent more where k-quant scales spread to a byte each.
#[test]
fn packed_matrices_cost_about_their_row_major_bytes() {
    for dtype in PACKED_TYPES {
        let (rows, units) = (64, 4);
        let row_major = rows * units * dtype.type_size();
        let packed = with_packed_format!(dtype, F => packed_bytes::<F>(rows, units), _ => unreachable!());
        let ratio = packed as f64 / row_major as f64;
        assert!((1.0..1.04).contains(&ratio), "{dtype}: packed {packed} vs row-major {row_major}");
    }
}
