//! Batch invariance of the grouped and packed kernels, and multi-matmuls against separate ones.

use super::*;
use crate::format::bytes::TensorBytes;
use crate::quant::test_util::Rng;

/// The grouped int16 matmul gives every output element bit-identical to the same row
/// computed alone, for awkward token counts (every packed kernel size: 1, 2, 3, 4, 5, 8, and
/// 6 or 7 through the one for 8) and both layouts of the row-major grouped types; the packed
/// layout also for 256-element k-quant blocks and Q5_0, and with 8-bit activations.
#[test]
fn grouped_tokens_match_each_token_alone() {
    let pool = ThreadPool::new(2, "test").unwrap();
    let mut rng = Rng::new(41);
    // 1600 columns: a group of 8 tokens' activations would not fit L1, so fours run.
    let types = [(GgmlType::Q4_1, 96), (GgmlType::Q8_0, 96), (GgmlType::Q4_1, 1600), (GgmlType::Q4_0, 1600)];
    let packed_only = [(GgmlType::Q4K, 512), (GgmlType::Q6K, 256), (GgmlType::Q5_0, 96)];
    for (dtype, cols) in types.into_iter().chain(packed_only) {
        let rows = 37;
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let mut data = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            quant::quantize_row(dtype, &rng.floats(cols, 1.0), &mut data[r * row_bytes..(r + 1) * row_bytes]).unwrap();
        }
        let row_major = HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).unwrap();
        let packed = row_major.clone().packed16();
        assert_eq!(packed.layout, Layout::Packed16);
        // 70 tokens cross a packed token tile.
        let layouts: &[&HostMatrix] = if q16_kernel(dtype).is_some() { &[&row_major, &packed] } else { &[&packed] };
        for n_tok in [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 17, 70] {
            let xs = rng.floats(n_tok * cols, 2.0);
            let x = CpuTensor::from_rows(&xs, cols);
            let mut out = CpuTensor::zeros(n_tok, rows).unwrap();
            matmul(&pool, Precision::Int8, &x, &packed, &mut out, &mut Vec::new()).unwrap();
            for t in 0..n_tok {
                let one = CpuTensor::from_rows(x.row(t), cols);
                let mut alone = CpuTensor::zeros(1, rows).unwrap();
                matmul(&pool, Precision::Int8, &one, &packed, &mut alone, &mut Vec::new()).unwrap();
                let bits = |t: &[f32]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(out.row(t)), bits(alone.row(0)), "{dtype} int8 token {t} of {n_tok}");
            }
            let xs = rng.floats(n_tok * cols, 2.0);
            let x = CpuTensor::from_rows(&xs, cols);
            let mut outs = Vec::new();
            for &w in layouts {
                let mut out = CpuTensor::zeros(n_tok, rows).unwrap();
                matmul(&pool, Precision::Int16, &x, w, &mut out, &mut Vec::new()).unwrap();
                for t in 0..n_tok {
                    let one = CpuTensor::from_rows(x.row(t), cols);
                    let mut alone = CpuTensor::zeros(1, rows).unwrap();
                    matmul(&pool, Precision::Int16, &one, w, &mut alone, &mut Vec::new()).unwrap();
                    let (a, b): (Vec<u32>, Vec<u32>) =
                        (out.row(t).iter().map(|v| v.to_bits()).collect(), alone.row(0).iter().map(|v| v.to_bits()).collect());
                    assert_eq!(a, b, "{dtype} {:?} token {t} of {n_tok}", w.layout);
                }
                outs.push(out);
            }
            // Both layouts compute the same products, rounded in a different order.
            for (a, b) in outs[0].as_slice().iter().zip(outs.last().unwrap().as_slice()) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{dtype}: row-major {a} vs packed {b}");
            }
        }
    }
}

/// Several weights over one input (one quantization per activation format, one job)
/// give exactly what separate matmuls give, with mixed weight types and every precision.
#[test]
fn multi_matmul_equals_separate_matmuls() {
    let pool = ThreadPool::new(2, "test").unwrap();
    let mut rng = Rng::new(43);
    let cols = 256;
    let weights: Vec<HostMatrix> =
        [(GgmlType::Q4_1, 40), (GgmlType::Q8_0, 17), (GgmlType::Q4K, 9), (GgmlType::F16, 5), (GgmlType::Q4_0, 33)]
            .into_iter()
            .map(|(dtype, rows)| {
                let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
                let mut data = vec![0u8; rows * row_bytes];
                for r in 0..rows {
                    quant::quantize_row(dtype, &rng.floats(cols, 1.0), &mut data[r * row_bytes..(r + 1) * row_bytes]).unwrap();
                }
                HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).unwrap()
            })
            .collect();
    // Int16 also with the Q4_1 and Q4_0 matrices packed (beside row-major Q8_0 and others).
    let mut mixed: Vec<HostMatrix> = weights.clone();
    mixed[0] = mixed[0].clone().packed16();
    mixed[4] = mixed[4].clone().packed16();
    for (precision, weights) in [
        (Precision::Int16, &weights),
        (Precision::Int16, &mixed),
        (Precision::Int8, &weights),
        (Precision::Int8, &mixed),
        (Precision::Reference, &weights),
        (Precision::Reference, &mixed),
    ] {
        for n_tok in [1, 6, 13] {
            let x = CpuTensor::from_rows(&rng.floats(n_tok * cols, 2.0), cols);
            let mut outs: Vec<CpuTensor> = weights.iter().map(|w| CpuTensor::zeros(n_tok, w.rows).unwrap()).collect();
            let ws: Vec<&HostMatrix> = weights.iter().collect();
            let mut refs: Vec<&mut CpuTensor> = outs.iter_mut().collect();
            matmul_multi(&pool, precision, &x, &ws, &mut refs, &mut Vec::new()).unwrap();
            for (w, got) in weights.iter().zip(&outs) {
                let mut want = CpuTensor::zeros(n_tok, w.rows).unwrap();
                matmul(&pool, precision, &x, w, &mut want, &mut Vec::new()).unwrap();
                let bits = |t: &CpuTensor| t.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "{} {:?} {precision:?} {n_tok} tokens", w.dtype, w.layout);
            }
        }
    }
}
