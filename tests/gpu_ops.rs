//! The GPU backend's every op against the CPU backend's plain reference path, on random inputs
//! of awkward shapes: partial blocks and warps, GQA ratios 1 to 8, scattered block tables,
//! contexts of 1 to 4096 keys, batches of 1 to 64 tokens. The kernels run in the CUDA
//! emulation (`kernels/emu/`), or on a GPU with `BALLAST_TEST_DEVICE=cuda`
//! (`scripts/gpu-check`). Needs `--features cuda` (the README's test command has it).
#![cfg(feature = "cuda")]

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::backend::gpu::GpuBackend;
use ballast::backend::gpu::any::AnyDevice;
use ballast::backend::{AttentionShape, Backend, GpuOptions, RopeShape};
use ballast::format::bytes::TensorBytes;
use ballast::kv::{KvDtype, KvLayout};
use ballast::model::RopeStyle;
use ballast::model::weights::HostMatrix;
use ballast::plan::{BatchPlan, LogitsFor};
use ballast::quant::GgmlType;

mod common;

use common::Rng;

type Gpu = GpuBackend<AnyDevice>;

fn backends() -> (CpuBackend, Gpu) {
    (CpuBackend::new(1, Precision::Reference).unwrap(), deterministic())
}

/// One kernel per op at every batch size: the f32 GEMV even for 16+ tokens.
fn deterministic() -> Gpu {
    GpuBackend::with_options(AnyDevice::for_tests(), GpuOptions { deterministic: true, ..GpuOptions::default() })
}

fn cpu_tensor(cpu: &CpuBackend, rows: usize, data: &[f32]) -> ballast::backend::cpu::CpuTensor {
    let cols = data.len() / rows;
    let mut t = cpu.alloc(rows, cols).unwrap();
    t.set_rows("test", rows).unwrap();
    t.as_mut_slice().copy_from_slice(data);
    t
}

fn gpu_tensor(gpu: &Gpu, rows: usize, data: &[f32]) -> <Gpu as Backend>::Tensor {
    gpu.upload_tensor(rows, data).unwrap()
}

fn read_gpu(gpu: &Gpu, t: &<Gpu as Backend>::Tensor) -> Vec<f32> {
    let mut v = Vec::new();
    gpu.read(t, &mut v).unwrap();
    v
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: element {i}: got {g}, want {w} (scale {scale})");
    }
}

/// A `rows x cols` matrix: even rows quantized from random floats, odd rows of a quantized
/// format random block bytes (every bit of every field exercised).
fn quantized(dtype: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> HostMatrix {
    let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        let row = &mut bytes[r * row_bytes..(r + 1) * row_bytes];
        if r % 2 == 1 && dtype.is_quantized() {
            row.copy_from_slice(&ballast::quant::random_blocks(dtype, cols, 1.0, rng.next_u64()));
        } else {
            ballast::quant::quantize_row(dtype, &rng.floats(cols, 1.0), row).unwrap();
        }
    }
    HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(bytes)).unwrap()
}

/// Every weight format: the quantized file formats, then the float ones.
fn every_format() -> impl Iterator<Item = GgmlType> {
    GgmlType::FILE_QUANTS.into_iter().chain([GgmlType::F32, GgmlType::F16, GgmlType::BF16])
}

/// Whether `dtype`'s blocks are 256-element super-blocks (the k-quants).
fn super_blocks(dtype: GgmlType) -> bool {
    dtype.block_size() == 256
}

#[test]
fn matmul_matches_the_cpu_for_every_weight_format() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(0x9e3779b97f4a7c15);
    let quant_shapes = [(1, 32, 1), (5, 96, 3), (37, 160, 8), (130, 64, 9), (7, 1056, 17), (3, 256, 64)];
    let float_shapes = [(1, 17, 1), (9, 64, 5), (33, 100, 8), (4, 160, 11)];
    let k_shapes = [(3, 256, 4), (2, 512, 9), (17, 768, 3), (40, 256, 8)];
    for dtype in every_format() {
        let shapes: &[(usize, usize, usize)] = match dtype {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &float_shapes,
            d if super_blocks(d) => &k_shapes,
            _ => &quant_shapes,
        };
        for &(rows, cols, tokens) in shapes {
            let w = quantized(dtype, rows, cols, &mut rng);
            let x = rng.floats(tokens * cols, 1.0);
            let cw = cpu.upload_matrix(w.clone()).unwrap();
            let gw = gpu.upload_matrix(w).unwrap();
            let (cx, gx) = (cpu_tensor(&cpu, tokens, &x), gpu_tensor(&gpu, tokens, &x));
            let mut cout = cpu.alloc(tokens, rows).unwrap();
            let mut gout = gpu.alloc(tokens, rows).unwrap();
            cpu.matmul(&cx, &cw, &mut cout).unwrap();
            gpu.matmul(&gx, &gw, &mut gout).unwrap();
            assert_close(&format!("{dtype} {rows}x{cols}, {tokens} tokens"), &read_gpu(&gpu, &gout), cout.as_slice(), 1e-4);
        }
    }
}

#[test]
fn tensor_core_matmul_matches_the_cpu_within_f16_rounding() {
    // 16 tokens or more go to matmul_mma unless deterministic: every weight format, partial
    // 64-row and 64-token tiles, several K blocks.
    let cpu = CpuBackend::new(1, Precision::Reference).unwrap();
    let gpu = GpuBackend::new(AnyDevice::for_tests());
    let mut rng = Rng::new(0x51ab);
    for dtype in every_format() {
        for &(rows, cols, tokens, magnitude) in &[(64, 32usize, 16, 1.0), (37, 96, 17, 1.0), (130, 64, 70, 1.0), (8, 160, 64, 3e5)] {
            // k-quants: the same shapes, columns in whole super-blocks.
            let cols = if super_blocks(dtype) { cols.next_multiple_of(256) } else { cols };
            let w = quantized(dtype, rows, cols, &mut rng);
            // 3e5 is past f16's range: the per-token power-of-two scale must bring it back.
            let x: Vec<f32> = rng.floats(tokens * cols, 1.0).iter().map(|v| v * magnitude).collect();
            let (cw, gw) = (cpu.upload_matrix(w.clone()).unwrap(), gpu.upload_matrix(w).unwrap());
            let mut cout = cpu.alloc(tokens, rows).unwrap();
            let mut gout = gpu.alloc(tokens, rows).unwrap();
            cpu.matmul(&cpu_tensor(&cpu, tokens, &x), &cw, &mut cout).unwrap();
            gpu.matmul(&gpu_tensor(&gpu, tokens, &x), &gw, &mut gout).unwrap();
            // Activations and dequantized weights in f16: ~1e-3 of the output's scale.
            assert_close(&format!("mma {dtype} {rows}x{cols}, {tokens} tokens"), &read_gpu(&gpu, &gout), cout.as_slice(), 4e-3);
        }
    }
}

#[test]
fn norms_elementwise_ops_and_gathers_match_the_cpu() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(77);
    for &(rows, cols) in &[(1, 1), (3, 64), (5, 576), (2, 1000), (17, 33)] {
        let (x, d, w) = (rng.floats(rows * cols, 1.0), rng.floats(rows * cols, 1.0), rng.floats(cols, 1.0));
        let (mut cx, mut gx) = (cpu_tensor(&cpu, rows, &x), gpu_tensor(&gpu, rows, &x));
        let (cd, gd) = (cpu_tensor(&cpu, rows, &d), gpu_tensor(&gpu, rows, &d));
        let (cw, gw) = (cpu.upload_vector(&w).unwrap(), gpu.upload_vector(&w).unwrap());
        let what = format!("{rows}x{cols}");
        let (mut cout, mut gout) = (cpu.alloc(rows, cols).unwrap(), gpu.alloc(rows, cols).unwrap());
        cpu.rms_norm(&cx, &cw, 1e-5, &mut cout).unwrap();
        gpu.rms_norm(&gx, &gw, 1e-5, &mut gout).unwrap();
        assert_close(&format!("rms_norm {what}"), &read_gpu(&gpu, &gout), cout.as_slice(), 1e-5);
        cpu.add_rms_norm(&mut cx, &cd, &cw, 1e-6, &mut cout).unwrap();
        gpu.add_rms_norm(&mut gx, &gd, &gw, 1e-6, &mut gout).unwrap();
        assert_close(&format!("add_rms_norm {what}"), &read_gpu(&gpu, &gout), cout.as_slice(), 1e-5);
        assert_close(&format!("add_rms_norm residual {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-6);
        cpu.add(&mut cx, &cd).unwrap();
        gpu.add(&mut gx, &gd).unwrap();
        assert_close(&format!("add {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-6);
        cpu.add_bias(&mut cx, &cw).unwrap();
        gpu.add_bias(&mut gx, &gw).unwrap();
        assert_close(&format!("add_bias {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-6);
        cpu.silu_mul(&mut cx, &cd).unwrap();
        gpu.silu_mul(&mut gx, &gd).unwrap();
        assert_close(&format!("silu_mul {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-5);
        cpu.scale(&mut cx, 3.5).unwrap();
        gpu.scale(&mut gx, 3.5).unwrap();
        assert_close(&format!("scale {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-6);
        cpu.gelu_tanh_mul(&mut cx, &cd).unwrap();
        gpu.gelu_tanh_mul(&mut gx, &gd).unwrap();
        assert_close(&format!("gelu_tanh_mul {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-5);
        cpu.softcap(&mut cx, 0.7).unwrap();
        gpu.softcap(&mut gx, 0.7).unwrap();
        assert_close(&format!("softcap {what}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-5);
        // Per-head norms: every divisor of the width as the head size.
        for head_dim in (1..=cols).filter(|h| cols % h == 0) {
            let hw = rng.floats(head_dim, 1.0);
            let (chw, ghw) = (cpu.upload_vector(&hw).unwrap(), gpu.upload_vector(&hw).unwrap());
            cpu.head_rms_norm(&mut cx, &chw, 1e-6, head_dim).unwrap();
            gpu.head_rms_norm(&mut gx, &ghw, 1e-6, head_dim).unwrap();
            assert_close(&format!("head_rms_norm {what} heads of {head_dim}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-5);
        }
        assert!(gpu.head_rms_norm(&mut gx, &gw, 1e-6, cols + 1).is_err() && cpu.head_rms_norm(&mut cx, &cw, 1e-6, cols + 1).is_err());
        // Shape errors are errors, not launches.
        let other = gpu_tensor(&gpu, 1, &w);
        assert!(gpu.add(&mut gx, &other).is_err() || rows == 1);
    }
}

#[test]
fn embedding_and_logit_rows_match_the_cpu_and_bad_ids_are_errors() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(5);
    for dtype in every_format() {
        let cols = if super_blocks(dtype) { 256 } else { 96 };
        let table = quantized(dtype, 50, cols, &mut rng);
        let (ct, gt) = (cpu.upload_matrix(table.clone()).unwrap(), gpu.upload_matrix(table).unwrap());
        let mut plan = BatchPlan::new(16, 8);
        let a: Vec<u32> = (0..7).map(|_| rng.below(50) as u32).collect();
        plan.push_seq(&a, 3, &[5, 2], LogitsFor::Last).unwrap();
        plan.push_seq(&[49, 0], 0, &[1], LogitsFor::All).unwrap();
        let (cs, gs) = (cpu.prepare(&plan).unwrap(), gpu.prepare(&plan).unwrap());
        let (mut ce, mut ge) = (cpu.alloc(9, cols).unwrap(), gpu.alloc(9, cols).unwrap());
        cpu.embedding(&cs, &ct, &mut ce).unwrap();
        gpu.embedding(&gs, &gt, &mut ge).unwrap();
        // The device decodes each element as the CPU dequantizes it: the same bits.
        assert_close(&format!("embedding {dtype}"), &read_gpu(&gpu, &ge), ce.as_slice(), 0.0);
        let (mut cl, mut gl) = (cpu.alloc(9, cols).unwrap(), gpu.alloc(9, cols).unwrap());
        cpu.gather_logits_rows(&cs, &ce, &mut cl).unwrap();
        gpu.gather_logits_rows(&gs, &ge, &mut gl).unwrap();
        assert_eq!(gl.rows(), 3);
        assert_close(&format!("logit rows {dtype}"), &read_gpu(&gpu, &gl), cl.as_slice(), 1e-6);
        let mut bad = BatchPlan::new(16, 8);
        bad.push_seq(&[3, 50], 0, &[0], LogitsFor::Last).unwrap();
        let step = gpu.prepare(&bad).unwrap();
        let err = gpu.embedding(&step, &gt, &mut ge).unwrap_err();
        assert!(err.to_string().contains("token id 50 out of range"), "{err}");
    }
}

#[test]
fn rope_matches_the_cpu_in_both_styles_and_with_partial_rotation() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(11);
    for &(heads, head_dim, rot, style) in &[
        (9, 64, 64, RopeStyle::HalfSplit),
        (4, 16, 16, RopeStyle::Interleaved),
        (3, 128, 64, RopeStyle::HalfSplit),
        (2, 32, 8, RopeStyle::Interleaved),
    ] {
        let mut plan = BatchPlan::new(16, 64);
        plan.push_seq(&[1, 2, 3, 4, 5], 0, &[0], LogitsFor::Last).unwrap();
        plan.push_seq(&[7], 999, &(0..63).collect::<Vec<u32>>(), LogitsFor::Last).unwrap();
        let n = plan.num_tokens();
        let x = rng.floats(n * heads * head_dim, 1.0);
        let inv: Vec<f32> = (0..rot / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / rot as f32)).collect();
        let (mut cx, mut gx) = (cpu_tensor(&cpu, n, &x), gpu_tensor(&gpu, n, &x));
        let (ci, gi) = (cpu.upload_vector(&inv).unwrap(), gpu.upload_vector(&inv).unwrap());
        let shape = RopeShape { num_heads: heads, head_dim, num_rotary_dims: rot, style };
        let step = gpu.prepare(&plan).unwrap();
        gpu.rope(&step, &mut gx, &gi, shape).unwrap();
        cpu.rope(&&plan, &mut cx, &ci, shape).unwrap();
        assert_close(&format!("rope {shape:?}"), &read_gpu(&gpu, &gx), cx.as_slice(), 1e-5);
    }
}

/// Sequences for one attention step: (tokens already cached, new tokens).
fn attention_case((num_heads, num_kv_heads, head_dim): (usize, usize, usize), seqs: &[(usize, usize)], seed: u64) {
    attention_case_capped((num_heads, num_kv_heads, head_dim), seqs, seed, None, None)
}

/// As `attention_case`, with split attention's partials capped at `cap` bytes per launch
/// and a sliding `window`.
fn attention_case_capped(
    (num_heads, num_kv_heads, head_dim): (usize, usize, usize),
    seqs: &[(usize, usize)],
    seed: u64,
    cap: Option<usize>,
    window: Option<usize>,
) {
    let (cpu, mut gpu) = backends();
    if let Some(cap) = cap {
        gpu.set_partials_cap(cap);
    }
    let mut rng = Rng::new(seed);
    let block_size = 16;
    let total: usize = seqs.iter().map(|&(c, n)| (c + n).div_ceil(block_size)).sum();
    let num_blocks = total + 3;
    let layout = KvLayout { num_layers: 2, num_blocks, block_size, num_kv_heads, head_dim, dtype: KvDtype::F16 };
    let (mut cpool, mut gpool) = (cpu.alloc_kv(&layout).unwrap(), gpu.alloc_kv(&layout).unwrap());
    // Blocks handed out in a scattered order: tables are not contiguous.
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let tables: Vec<Vec<u32>> =
        seqs.iter().map(|&(c, n)| (0..(c + n).div_ceil(block_size)).map(|_| free.pop().unwrap()).collect()).collect();
    let kv_dim = num_kv_heads * head_dim;
    let layer = 1;
    // Step 1 fills the cached prefixes; step 2 writes the new tokens and attends.
    for step_no in 0..2 {
        let mut plan = BatchPlan::new(block_size, num_blocks);
        for (&(cached, new), table) in seqs.iter().zip(&tables) {
            let (from, n) = if step_no == 0 { (0, cached) } else { (cached, new) };
            if n > 0 {
                let ids: Vec<u32> = vec![1; n];
                plan.push_seq(&ids, from, table, LogitsFor::Last).unwrap();
            }
        }
        let n = plan.num_tokens();
        if n == 0 {
            continue;
        }
        let (k, v) = (rng.floats(n * kv_dim, 1.0), rng.floats(n * kv_dim, 1.0));
        let gs = gpu.prepare(&plan).unwrap();
        let cs = cpu.prepare(&plan).unwrap();
        cpu.write_kv(&cs, layer, &cpu_tensor(&cpu, n, &k), &cpu_tensor(&cpu, n, &v), &mut cpool).unwrap();
        gpu.write_kv(&gs, layer, &gpu_tensor(&gpu, n, &k), &gpu_tensor(&gpu, n, &v), &mut gpool).unwrap();
        if step_no == 0 {
            continue;
        }
        let q = rng.floats(n * num_heads * head_dim, 1.0);
        let shape = AttentionShape { num_heads, num_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), window };
        let (mut co, mut go) = (cpu.alloc(n, num_heads * head_dim).unwrap(), gpu.alloc(n, num_heads * head_dim).unwrap());
        cpu.attention(&cs, layer, &cpu_tensor(&cpu, n, &q), &cpool, shape, &mut co).unwrap();
        gpu.attention(&gs, layer, &gpu_tensor(&gpu, n, &q), &gpool, shape, &mut go).unwrap();
        let what = format!("attention {num_heads}/{num_kv_heads} heads of {head_dim}, seqs {seqs:?}, window {window:?}");
        assert_close(&what, &read_gpu(&gpu, &go), co.as_slice(), 2e-5);
    }
}

#[test]
fn attention_matches_the_cpu_for_gqa_ratios_1_3_and_8() {
    // Prefill chunks over cached prefixes and decode rows in one batch; partial blocks.
    let seqs = [(0, 5), (17, 1), (3, 14), (40, 1), (0, 1)];
    attention_case((4, 4, 64), &seqs, 1);
    attention_case((9, 3, 64), &seqs, 2);
    attention_case((16, 2, 128), &seqs, 3);
    attention_case((6, 2, 16), &seqs, 4);
    attention_case((4, 1, 256), &[(30, 2), (0, 3)], 5);
    attention_case((10, 2, 40), &[(7, 9)], 6);
}

#[test]
fn attention_over_long_contexts_splits_and_combines() {
    // 4096 keys: eight splits of 512; 513 and 1500: two and three; beside a short one.
    attention_case((2, 1, 64), &[(4095, 1)], 7);
    attention_case((3, 3, 32), &[(512, 1), (600, 3), (1500, 1), (2, 1)], 8);
    // Partials for two tokens per launch group (3 heads x 3 splits x 34 floats each): six
    // tokens in three groups, split and unsplit tokens mixed.
    attention_case_capped((3, 3, 32), &[(1100, 3), (4, 2), (700, 1)], 9, Some(2 * 3 * 3 * 34 * 4), None);
}

#[test]
fn sliding_window_attention_matches_the_cpu() {
    // Windows inside one block, across blocks, and shorter than a split of a long context
    // (whole splits before the window see nothing); prefill rows whose windows start at
    // different keys; a window longer than every context.
    let seqs = [(0, 20), (40, 3), (700, 1), (1500, 2), (5, 1)];
    for (window, seed) in [(1, 11), (7, 12), (100, 13), (600, 14), (5000, 15)] {
        attention_case_capped((4, 1, 256), &seqs, seed, None, Some(window));
        attention_case_capped((6, 2, 32), &seqs, seed + 10, None, Some(window));
    }
}

#[test]
fn attention_over_a_batch_of_64_decode_rows() {
    let mut rng = Rng::new(9);
    let seqs: Vec<(usize, usize)> = (0..64).map(|_| (rng.below(60), 1)).collect();
    attention_case((9, 3, 64), &seqs, 10);
}

#[test]
fn copy_blocks_copies_every_layer_in_order() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(21);
    let layout = KvLayout { num_layers: 3, num_blocks: 6, block_size: 16, num_kv_heads: 2, head_dim: 32, dtype: KvDtype::F16 };
    let (mut cpool, mut gpool) = (cpu.alloc_kv(&layout).unwrap(), gpu.alloc_kv(&layout).unwrap());
    let mut plan = BatchPlan::new(16, 6);
    plan.push_seq(&[1; 40], 0, &[4, 0, 5], LogitsFor::Last).unwrap();
    let (cs, gs) = (cpu.prepare(&plan).unwrap(), gpu.prepare(&plan).unwrap());
    for layer in 0..3 {
        let (k, v) = (rng.floats(40 * 64, 1.0), rng.floats(40 * 64, 1.0));
        cpu.write_kv(&cs, layer, &cpu_tensor(&cpu, 40, &k), &cpu_tensor(&cpu, 40, &v), &mut cpool).unwrap();
        gpu.write_kv(&gs, layer, &gpu_tensor(&gpu, 40, &k), &gpu_tensor(&gpu, 40, &v), &mut gpool).unwrap();
    }
    // 5 -> 2, then 2 -> 3: the second pair sees the first's result.
    cpu.copy_blocks(&mut cpool, &[(5, 2), (2, 3)]).unwrap();
    gpu.copy_blocks(&mut gpool, &[(5, 2), (2, 3)]).unwrap();
    assert!(gpu.copy_blocks(&mut gpool, &[(0, 6)]).is_err());
    // Read the copies back through attention over a table of the copied blocks.
    let mut plan = BatchPlan::new(16, 6);
    plan.push_seq(&[1], 47, &[4, 0, 3], LogitsFor::Last).unwrap();
    let (cs, gs) = (cpu.prepare(&plan).unwrap(), gpu.prepare(&plan).unwrap());
    let shape = AttentionShape { num_heads: 4, num_kv_heads: 2, head_dim: 32, scale: 0.2, window: None };
    for layer in 0..3 {
        let (k, v) = (rng.floats(64, 1.0), rng.floats(64, 1.0));
        cpu.write_kv(&cs, layer, &cpu_tensor(&cpu, 1, &k), &cpu_tensor(&cpu, 1, &v), &mut cpool).unwrap();
        gpu.write_kv(&gs, layer, &gpu_tensor(&gpu, 1, &k), &gpu_tensor(&gpu, 1, &v), &mut gpool).unwrap();
        let q = rng.floats(128, 1.0);
        let (mut co, mut go) = (cpu.alloc(1, 128).unwrap(), gpu.alloc(1, 128).unwrap());
        cpu.attention(&cs, layer, &cpu_tensor(&cpu, 1, &q), &cpool, shape, &mut co).unwrap();
        gpu.attention(&gs, layer, &gpu_tensor(&gpu, 1, &q), &gpool, shape, &mut go).unwrap();
        assert_close(&format!("after copy, layer {layer}"), &read_gpu(&gpu, &go), co.as_slice(), 2e-5);
    }
}

#[test]
fn a_stale_step_is_an_error_not_a_wrong_answer() {
    let gpu = deterministic();
    let table = gpu.upload_matrix(quantized(GgmlType::F32, 4, 8, &mut Rng::new(3))).unwrap();
    let mut a = BatchPlan::new(16, 2);
    a.push_seq(&[1, 2], 0, &[0], LogitsFor::Last).unwrap();
    let mut b = BatchPlan::new(16, 2);
    b.push_seq(&[3], 0, &[1], LogitsFor::Last).unwrap();
    let old = gpu.prepare(&a).unwrap();
    let new = gpu.prepare(&b).unwrap();
    let mut out = gpu.alloc(2, 8).unwrap();
    let err = gpu.embedding(&old, &table, &mut out).unwrap_err();
    assert!(err.to_string().contains("used after"), "{err}");
    gpu.embedding(&new, &table, &mut out).unwrap();
}

#[test]
fn device_argmax_picks_the_first_largest_logit() {
    let gpu = deterministic();
    let mut rng = Rng::new(8);
    for cols in [1, 7, 255, 256, 257, 49152] {
        let mut x = rng.floats(3 * cols, 1.0);
        if cols > 1 {
            x[..cols].fill(f32::NAN); // all NaN: the last index, as on the host
        }
        if cols > 10 {
            // A tie: the lower index wins. A NaN never does.
            x[cols + 3] = 5.0;
            x[cols] = f32::NAN;
            x[cols + 9] = 5.0;
            x[2 * cols + 1] = f32::NAN;
        }
        let t = gpu.upload_tensor(3, &x).unwrap();
        let mut ids = Vec::new();
        let want: Vec<u32> = x.chunks(cols).map(ballast::sampler::argmax).collect();
        assert!(gpu.argmax(&t, &mut ids).unwrap());
        assert_eq!(ids, want, "{cols} columns");
    }
}

#[test]
fn fused_rope_and_kv_write_match_the_cpu_ops_one_by_one() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(31);
    let (heads, kv_heads, head_dim) = (9, 3, 64);
    let layout = KvLayout { num_layers: 2, num_blocks: 8, block_size: 16, num_kv_heads: kv_heads, head_dim, dtype: KvDtype::F16 };
    let (mut cpool, mut gpool) = (cpu.alloc_kv(&layout).unwrap(), gpu.alloc_kv(&layout).unwrap());
    let mut plan = BatchPlan::new(16, 8);
    plan.push_seq(&[1; 21], 0, &[6, 1], LogitsFor::Last).unwrap();
    plan.push_seq(&[1; 3], 0, &[3], LogitsFor::Last).unwrap();
    let n = plan.num_tokens();
    let (q, k, v) =
        (rng.floats(n * heads * head_dim, 1.0), rng.floats(n * kv_heads * head_dim, 1.0), rng.floats(n * kv_heads * head_dim, 1.0));
    let inv: Vec<f32> = (0..head_dim / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32)).collect();
    let rope = RopeShape { num_heads: heads, head_dim, num_rotary_dims: head_dim, style: RopeStyle::HalfSplit };
    let (cs, gs) = (cpu.prepare(&plan).unwrap(), gpu.prepare(&plan).unwrap());
    let (mut cq, mut ck, cv) = (cpu_tensor(&cpu, n, &q), cpu_tensor(&cpu, n, &k), cpu_tensor(&cpu, n, &v));
    let (mut gq, mut gk, gv) = (gpu_tensor(&gpu, n, &q), gpu_tensor(&gpu, n, &k), gpu_tensor(&gpu, n, &v));
    let (ci, gi) = (cpu.upload_vector(&inv).unwrap(), gpu.upload_vector(&inv).unwrap());
    cpu.rope_write_kv(&cs, 1, &mut cq, &mut ck, &cv, &ci, rope, kv_heads, &mut cpool).unwrap();
    gpu.rope_write_kv(&gs, 1, &mut gq, &mut gk, &gv, &gi, rope, kv_heads, &mut gpool).unwrap();
    assert_close("rotated q", &read_gpu(&gpu, &gq), cq.as_slice(), 1e-5);
    assert_close("rotated k", &read_gpu(&gpu, &gk), ck.as_slice(), 1e-5);
    // The cache holds the rotated k and v: attention reads them back.
    let shape = AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim, scale: 0.125, window: None };
    let (mut co, mut go) = (cpu.alloc(n, heads * head_dim).unwrap(), gpu.alloc(n, heads * head_dim).unwrap());
    cpu.attention(&cs, 1, &cq, &cpool, shape, &mut co).unwrap();
    gpu.attention(&gs, 1, &gq, &gpool, shape, &mut go).unwrap();
    assert_close("attention after the fused write", &read_gpu(&gpu, &go), co.as_slice(), 2e-5);
    // Mismatched shapes are an error, not a launch.
    assert!(gpu.rope_write_kv(&gs, 2, &mut gq, &mut gk, &gv, &gi, rope, kv_heads, &mut gpool).is_err());
}

#[test]
fn matmuls_sharing_an_input_in_one_launch_match_one_at_a_time() {
    let (cpu, gpu) = backends();
    let mut rng = Rng::new(41);
    let cols = 96;
    let ws = [
        quantized(GgmlType::Q4_1, 37, cols, &mut rng),
        quantized(GgmlType::Q8_0, 5, cols, &mut rng),
        quantized(GgmlType::F16, 130, cols, &mut rng),
    ];
    for (count, tokens) in [(3, 1), (2, 9), (3, 17)] {
        let x = rng.floats(tokens * cols, 1.0);
        let cws: Vec<_> = ws[..count].iter().map(|w| cpu.upload_matrix(w.clone()).unwrap()).collect();
        let gws: Vec<_> = ws[..count].iter().map(|w| gpu.upload_matrix(w.clone()).unwrap()).collect();
        let mut couts: Vec<_> = ws[..count].iter().map(|w| cpu.alloc(tokens, w.rows).unwrap()).collect();
        let mut gouts: Vec<_> = ws[..count].iter().map(|w| gpu.alloc(tokens, w.rows).unwrap()).collect();
        let (cx, gx) = (cpu_tensor(&cpu, tokens, &x), gpu_tensor(&gpu, tokens, &x));
        for (w, out) in cws.iter().zip(couts.iter_mut()) {
            cpu.matmul(&cx, w, out).unwrap();
        }
        let gw_refs: Vec<_> = gws.iter().collect();
        let mut gout_refs: Vec<_> = gouts.iter_mut().collect();
        gpu.matmul_multi(&gx, &gw_refs, &mut gout_refs).unwrap();
        for (i, (g, c)) in gouts.iter().zip(&couts).enumerate() {
            assert_close(&format!("matrix {i} of {count}, {tokens} tokens"), &read_gpu(&gpu, g), c.as_slice(), 1e-4);
        }
    }
}
