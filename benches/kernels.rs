//! Dot-product kernels on one weight matrix (576 rows × 1536, SmolLM2's ffn_down shape),
//! one thread: the fast integer kernels (16- and 8-bit activations) beside their portable
//! twins and the f32 reference. Throughput is in bytes of weights read.

use ballast::quant::{self, ActBits, GgmlType};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const ROWS: usize = 576;
const COLS: usize = 1536;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// The benchmark matrix in `dtype`, rows back to back, and its row size in bytes.
fn weights(dtype: GgmlType) -> (Vec<u8>, usize) {
    let row_bytes = dtype.row_bytes(COLS as u64).unwrap() as usize;
    let mut w = vec![0u8; row_bytes * ROWS];
    for (r, dst) in w.chunks_mut(row_bytes).enumerate() {
        quant::quantize_row(dtype, &data(COLS, r as u32), dst).unwrap();
    }
    (w, row_bytes)
}

/// Eight different rows of 16-bit activations.
fn acts16() -> Vec<Vec<quant::BlockQ16x2>> {
    (0..8)
        .map(|k| {
            let mut a = vec![bytemuck::Zeroable::zeroed(); quant::q16_pairs(COLS / quant::QK)];
            quant::quantize_row_q16(&data(COLS, 7 + k), &mut a);
            a
        })
        .collect()
}

fn bench_type(c: &mut Criterion, dtype: GgmlType) {
    let (w, row_bytes) = weights(dtype);
    let x = data(COLS, 7);
    let mut group = c.benchmark_group(format!("matvec_{}", dtype.name()));
    group.throughput(Throughput::Bytes(w.len() as u64));
    let bits: &[ActBits] = if dtype.is_quantized() { &[ActBits::Sixteen, ActBits::Eight] } else { &[ActBits::Sixteen] };
    for &bits in bits {
        let act = quant::act_type(dtype, bits);
        let mut a = vec![0u8; act.row_bytes(COLS).unwrap()];
        quant::quantize_act(act, &x, &mut a).unwrap();
        group.bench_function(format!("{act:?}"), |b| {
            b.iter(|| {
                let mut s = 0.0;
                for row in w.chunks(row_bytes) {
                    s += quant::vec_dot(dtype, row, act, &a, COLS).unwrap();
                }
                black_box(s)
            })
        });
    }
    group.bench_function("reference_f32", |b| {
        b.iter(|| {
            let mut s = 0.0;
            for row in w.chunks(row_bytes) {
                s += quant::dot_f32(dtype, row, &x).unwrap();
            }
            black_box(s)
        })
    });
    group.finish();
}

/// The 16-bit kernels one weight row at a time against 1 and 8 activation rows, on every
/// implementation this CPU has (the portable twin first). Throughput in multiply-adds.
fn bench_q16<W: quant::Q16Weight>(c: &mut Criterion, dtype: GgmlType) {
    let (w, row_bytes) = weights(dtype);
    let acts = acts16();
    let rows: Vec<&[W]> = w.chunks(row_bytes).map(bytemuck::cast_slice).collect();
    let mut group = c.benchmark_group(format!("q16_{}", dtype.name()));
    for isa in quant::Isa::available() {
        group.throughput(Throughput::Elements((ROWS * COLS) as u64));
        group.bench_function(format!("{isa:?}_x1"), |b| {
            b.iter(|| rows.iter().map(|r| quant::vec_dot_q16_xn_on(isa, r, [&acts[0][..]])[0]).sum::<f32>())
        });
        group.throughput(Throughput::Elements((ROWS * COLS * 4) as u64));
        let four: [&[quant::BlockQ16x2]; 4] = std::array::from_fn(|k| &acts[k][..]);
        group.bench_function(format!("{isa:?}_x4"), |b| {
            b.iter(|| rows.iter().map(|r| quant::vec_dot_q16_xn_on(isa, r, four)[0]).sum::<f32>())
        });
        group.throughput(Throughput::Elements((ROWS * COLS * 8) as u64));
        let eight: [&[quant::BlockQ16x2]; 8] = std::array::from_fn(|k| &acts[k][..]);
        group.bench_function(format!("{isa:?}_x8"), |b| {
            b.iter(|| rows.iter().map(|r| quant::vec_dot_q16_xn_on(isa, r, eight)[0]).sum::<f32>())
        });
    }
    group.finish();
}

/// Eight different rows of the packed kernels' activations.
fn acts_packed() -> Vec<Vec<quant::BlockQ16>> {
    (0..8)
        .map(|k| {
            let mut a = vec![bytemuck::Zeroable::zeroed(); COLS / quant::QK];
            quant::quantize_row_q16p(&data(COLS, 7 + k), &mut a);
            a
        })
        .collect()
}

/// The packed kernels (sixteen weight rows per call) against 1, 4 and 8 activation rows, on
/// every implementation this CPU has. Throughput in multiply-adds.
fn bench_packed<F: quant::PackedKernel>(c: &mut Criterion) {
    bench_packed_rows::<F>(c, ROWS, "");
}

/// [`bench_packed`] on `rows` rows (`suffix` in the group's name): with many, the weights
/// stream from memory as in a real model's step.
fn bench_packed_rows<F: quant::PackedKernel>(c: &mut Criterion, rows: usize, suffix: &str) {
    let dtype = F::DTYPE;
    let row_bytes = dtype.row_bytes(COLS as u64).unwrap() as usize;
    let mut w = vec![0u8; row_bytes * rows];
    for (r, dst) in w.chunks_mut(row_bytes).enumerate() {
        quant::quantize_row(dtype, &data(COLS, r as u32), dst).unwrap();
    }
    let units = COLS / dtype.block_size();
    let mut packed = vec![0u8; quant::packed_bytes::<F>(rows, units)];
    quant::pack_into::<F>(&bytemuck::pod_collect_to_vec(&w), rows, units, &mut packed);
    let acts = acts_packed();
    let groups: Vec<&[u8]> = packed.chunks(units * F::UNIT).collect();
    let mut group = c.benchmark_group(format!("packed_{}{suffix}", dtype.name()));
    for isa in quant::Isa::available() {
        group.throughput(Throughput::Elements((rows * COLS) as u64));
        group.bench_function(format!("{isa:?}_x1"), |b| {
            b.iter(|| {
                groups.iter().map(|g| quant::dot_packed_xn_on::<F, _, 1>(isa, g, units, [&acts[0][..]], &[[0.0; 16]])[0][0]).sum::<f32>()
            })
        });
        group.throughput(Throughput::Elements((rows * COLS * 4) as u64));
        let four: [&[quant::BlockQ16]; 4] = std::array::from_fn(|k| &acts[k][..]);
        group.bench_function(format!("{isa:?}_x4"), |b| {
            b.iter(|| groups.iter().map(|g| quant::dot_packed_xn_on::<F, _, 4>(isa, g, units, four, &[[0.0; 16]; 4])[0][0]).sum::<f32>())
        });
        group.throughput(Throughput::Elements((rows * COLS * 8) as u64));
        let eight: [&[quant::BlockQ16]; 8] = std::array::from_fn(|k| &acts[k][..]);
        group.bench_function(format!("{isa:?}_x8"), |b| {
            b.iter(|| groups.iter().map(|g| quant::dot_packed_xn_on::<F, _, 8>(isa, g, units, eight, &[[0.0; 16]; 8])[0][0]).sum::<f32>())
        });
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    use quant::*;
    bench_packed::<BlockQ4_1>(c);
    bench_packed::<BlockQ8_0>(c);
    bench_packed::<BlockQ4K>(c);
    bench_packed_rows::<BlockQ4K>(c, 8960, "_8960_rows");
    bench_packed::<BlockQ5_0>(c);
    bench_packed::<BlockQ6K>(c);
    bench_packed::<BlockQ5K>(c);
    bench_packed::<BlockQ3K>(c);
    bench_packed::<BlockQ2K>(c);
    bench_packed::<BlockQ4_0>(c);
    bench_packed::<BlockQ5_1>(c);
    bench_q16::<quant::BlockQ4_1>(c, GgmlType::Q4_1);
    bench_q16::<quant::BlockQ8_0>(c, GgmlType::Q8_0);
    for dtype in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16, GgmlType::BF16] {
        bench_type(c, dtype);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = kernels
}
criterion_main!(benches);
