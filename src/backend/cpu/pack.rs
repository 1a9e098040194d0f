//! Packing a model's weights for the 16-bit kernels: every quantized matrix into one
//! anonymous region advised for transparent huge pages, matrices packed in parallel.
//!
//! Decode streams every weight once per token; in 4 KiB pages that is tens of thousands of
//! TLB misses a token (~15% of decode time here, see `GgufFile::open_resident`). Huge pages
//! need 2 MiB-aligned runs, which matrices of a few hundred KiB allocated one by one never
//! get, so the packed matrices share one region: sized first, filled, then frozen read-only
//! and shared by every matrix's view. The row-major originals are freed as they are replaced.

use crate::backend::{BackendError, Result};
use crate::format::bytes::TensorBytes;
use crate::model::weights::{HostMatrix, HostWeights};
use std::ops::Range;
use std::sync::Arc;

/// A matrix on its way: kept as it is, or to be packed into `range` of the region.
enum Pending {
    Keep(HostMatrix),
    Pack(HostMatrix, Range<usize>),
}

/// `w` with every matrix that has a packed layout packed (the others and the vectors as
/// they are).
pub fn pack_model(w: HostWeights, threads: usize) -> Result<HostWeights> {
    let mut total = 0usize;
    let mut jobs: Vec<(HostMatrix, Range<usize>)> = Vec::new();
    let w = w.try_map(
        |m| -> Result<Pending> {
            Ok(match m.packed16_len() {
                Some(n) => {
                    let range = total..total + n;
                    total = (total + n).next_multiple_of(64);
                    jobs.push((m.clone(), range.clone()));
                    Pending::Pack(m, range)
                }
                None => Pending::Keep(m),
            })
        },
        Ok,
    )?;
    let device = |e: std::io::Error| BackendError::Device(format!("cannot map memory for the packed weights: {e}"));
    let mut region = memmap2::MmapMut::map_anon(total.max(1)).map_err(device)?;
    // Advice only: without transparent huge pages the region works the same in 4 KiB pages.
    let _ = region.advise(memmap2::Advice::HugePage);
    pack_all(jobs, &mut region, threads);
    let region = Arc::new(region.make_read_only().map_err(device)?);
    w.try_map(
        |p| -> Result<HostMatrix> {
            Ok(match p {
                Pending::Keep(m) => m,
                Pending::Pack(m, range) => m.with_packed16(TensorBytes::from_mmap(region.clone(), range)),
            })
        },
        Ok,
    )
}

/// Packs every job into its (disjoint) range of `region`, `threads` at a time, largest first.
fn pack_all(mut jobs: Vec<(HostMatrix, Range<usize>)>, region: &mut [u8], threads: usize) {
    jobs.sort_by_key(|(_, range)| range.start);
    // Split the region into the jobs' slices (ranges are ascending and disjoint).
    let mut rest = region;
    let mut consumed = 0;
    let mut work: Vec<(usize, HostMatrix, &mut [u8])> = Vec::with_capacity(jobs.len());
    for (m, range) in jobs {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - consumed);
        let (slice, tail) = tail.split_at_mut(range.len());
        consumed = range.end;
        rest = tail;
        work.push((range.len(), m, slice));
    }
    work.sort_by_key(|(len, ..)| std::cmp::Reverse(*len));
    let queue = parking_lot::Mutex::new(work.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    // The lock is released before the packing (a `while let` would hold it).
                    let job = queue.lock().next();
                    let Some((_, m, out)) = job else { break };
                    m.pack16_into(out);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::{LayerWeights, Layout, ModelWeights};
    use crate::quant::test_util::Rng;
    use crate::quant::{self, GgmlType};

    fn matrix(rng: &mut Rng, dtype: GgmlType, rows: usize, cols: usize) -> HostMatrix {
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let mut data = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            quant::quantize_row(dtype, &rng.floats(cols, 1.0), &mut data[r * row_bytes..(r + 1) * row_bytes]).unwrap();
        }
        HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).unwrap()
    }

    /// Every quantized matrix comes back packed with the same rows (odd row counts padded),
    /// the others unchanged.
    #[test]
    fn packs_what_has_a_packed_layout_and_keeps_every_row() {
        let mut rng = Rng::new(51);
        let types = [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F16, GgmlType::Q4K, GgmlType::Q4_1, GgmlType::Q4_1];
        let m: Vec<HostMatrix> = types.iter().enumerate().map(|(i, &t)| matrix(&mut rng, t, 17 + 8 * i, 256)).collect();
        let layer = LayerWeights {
            attn_norm: vec![1.0; 4],
            wq: m[0].clone(),
            wk: m[1].clone(),
            wv: m[2].clone(),
            bq: None,
            bk: None,
            bv: None,
            wo: m[3].clone(),
            ffn_norm: vec![2.0; 4],
            w_gate: m[4].clone(),
            w_up: m[5].clone(),
            w_down: m[6].clone(),
            norms: Default::default(),
        };
        let embed = matrix(&mut rng, GgmlType::Q8_0, 33, 64);
        let w = ModelWeights { embed: embed.clone(), layers: vec![layer], final_norm: vec![3.0; 4], lm_head: None };
        let packed = pack_model(w, 3).unwrap();
        let l = &packed.layers[0];
        let pairs = [
            (&m[0], &l.wq),
            (&m[1], &l.wk),
            (&m[2], &l.wv),
            (&m[3], &l.wo),
            (&m[4], &l.w_gate),
            (&m[5], &l.w_up),
            (&m[6], &l.w_down),
            (&embed, &packed.embed),
        ];
        for (before, after) in pairs {
            let want = if before.packed16_len().is_some() { Layout::Packed16 } else { Layout::RowMajor };
            assert_eq!(after.layout, want, "{before:?}");
            let (mut a, mut b) = (vec![0.0; before.cols], vec![0.0; before.cols]);
            for r in 0..before.rows {
                before.dequantize_row(r, &mut a).unwrap();
                after.dequantize_row(r, &mut b).unwrap();
                assert_eq!(a, b, "{before:?} row {r}");
            }
        }
        assert_eq!(l.ffn_norm, vec![2.0; 4]);
    }
}
