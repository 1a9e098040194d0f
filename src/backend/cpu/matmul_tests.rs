//! The matmul as the engine calls it: token counts that take every kernel size.

use super::{CpuBackend, CpuTensor, Precision};
use crate::backend::Backend;
use crate::format::bytes::TensorBytes;
use crate::model::weights::HostMatrix;
use crate::quant::GgmlType;
use crate::quant::test_util::{Rng, random_block_bytes};

/// For 1 to 19 tokens at once (eights, then one pass of what is left, in every size), every
/// token's output row is bit for bit the row it gets alone: batch invariance through the
/// token grouping, on packed formats with 32- and 256-element blocks and an odd row count.
#[test]
fn every_token_count_gives_each_token_its_result_alone() {
    let backend = CpuBackend::new(2, Precision::Int16).unwrap();
    let mut rng = Rng::new(83);
    for (dtype, cols) in [(GgmlType::Q4K, 512), (GgmlType::Q6K, 256), (GgmlType::Q5_0, 96), (GgmlType::Q8_0, 160)] {
        let rows = 37;
        let blocks = rows * cols / dtype.block_size();
        let data = random_block_bytes(&mut rng, dtype, blocks, 0.05);
        let w = backend.upload_matrix(HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).unwrap()).unwrap();
        let x: Vec<f32> = (0..19 * cols).map(|_| rng.float(1.0)).collect();
        let alone: Vec<Vec<f32>> = x
            .chunks_exact(cols)
            .map(|x| {
                let mut out = backend.alloc(1, rows).unwrap();
                backend.matmul(&CpuTensor::from_rows(x, cols), &w, &mut out).unwrap();
                out.as_slice().to_vec()
            })
            .collect();
        for n in 2..=19 {
            let mut out = backend.alloc(n, rows).unwrap();
            backend.matmul(&CpuTensor::from_rows(&x[..n * cols], cols), &w, &mut out).unwrap();
            for (t, alone) in alone[..n].iter().enumerate() {
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(out.row(t)), bits(alone), "{dtype}: token {t} of {n}");
            }
        }
    }
}
