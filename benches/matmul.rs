//! One model-sized matmul through the CPU backend with every thread, as a step of the engine
//! runs it: a packed weight matrix (`--shape ROWSxCOLS`, default 1536x8960, Qwen2.5-1.5B's
//! ffn_down, in Q4_K) against 1, 16 and 128 tokens (`--tokens 1,5,8`: others). Prints G multiply-adds/s and the weight
//! bytes read per second (once per call), best of `--repeat` calls, and what share that is of
//! the machine's peak for the kernels' instruction (`vpdpwssd`, 32 multiply-adds, measured in
//! the same run by a loop of independent ones on every thread; AVX-512 VNNI machines only). The calls cycle through
//! copies of the matrix (256 MB in all), so that the weights stream from memory as they do in
//! a model's step, not from the last-level cache.
//!
//! `cargo bench --bench matmul -- [--type q4_k] [--shape 1536x8960] [--tokens 1,16,128] [--repeat 20]`; under
//! `cargo test` (no `--bench` argument) a two-call smoke run keeps the harness tested.

use ballast::backend::Backend;
use ballast::backend::cpu::{CpuBackend, CpuTensor, Precision};
use ballast::format::bytes::TensorBytes;
use ballast::model::weights::HostMatrix;
use ballast::quant::{self, GgmlType};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let dtype = match arg("--type").as_deref().unwrap_or("q4_k") {
        "q4_k" => GgmlType::Q4K,
        "q6_k" => GgmlType::Q6K,
        "q5_0" => GgmlType::Q5_0,
        "q8_0" => GgmlType::Q8_0,
        "q4_1" => GgmlType::Q4_1,
        other => panic!("unknown --type {other}"),
    };
    let shape = arg("--shape").unwrap_or_else(|| "1536x8960".into());
    let (rows, cols) = shape.split_once('x').map(|(r, c)| (r.parse().unwrap(), c.parse().unwrap())).expect("--shape ROWSxCOLS");
    let full = std::env::args().any(|a| a == "--bench");
    let repeat: usize = arg("--repeat").map(|r| r.parse().unwrap()).unwrap_or(if full { 20 } else { 2 });
    let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
    let mut data = vec![0u8; rows * row_bytes];
    for (r, row) in data.chunks_exact_mut(row_bytes).enumerate() {
        let x: Vec<f32> = (0..cols).map(|i| ((i * 31 + r * 17) % 101) as f32 / 50.0 - 1.0).collect();
        quant::quantize_row(dtype, &x, row).unwrap();
    }
    let threads = arg("--threads").map(|t| t.parse().unwrap()).unwrap_or_else(CpuBackend::default_threads);
    let backend = CpuBackend::new(threads, Precision::Int16).unwrap();
    let copies = if full { (256 << 20) / data.len() + 1 } else { 2 };
    let ws: Vec<_> = (0..copies)
        .map(|_| backend.upload_matrix(HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data.clone())).unwrap()).unwrap())
        .collect();
    println!("{dtype} {rows}x{cols} ({:.1} MB), {}", (rows * row_bytes) as f64 / 1e6, backend.name());
    // A second of back-to-back AVX-512 on both runs (the first one warms the clock up).
    let iters = if full { 1_000_000_000 } else { 1_000_000 };
    let peak = vpdpwssd_peak(threads, iters).zip(vpdpwssd_peak(threads, iters)).map(|(a, b)| a.max(b));
    if let Some(peak) = peak {
        println!("peak: {peak:.1} G multiply-adds/s ({threads} threads of back-to-back vpdpwssd)");
    }
    let tokens_list: Vec<usize> = match arg("--tokens") {
        Some(list) => list.split(',').map(|t| t.parse().expect("--tokens N,N,...")).collect(),
        None => vec![1, 16, 128],
    };
    for tokens in tokens_list {
        let x: Vec<f32> = (0..tokens * cols).map(|i| ((i * 7) % 53) as f32 / 26.0 - 1.0).collect();
        let x = CpuTensor::from_rows(&x, cols);
        let mut out = backend.alloc(tokens, rows).unwrap();
        let mut best = f64::INFINITY;
        for i in 0..repeat {
            let start = Instant::now();
            backend.matmul(&x, &ws[i % copies], &mut out).unwrap();
            best = best.min(start.elapsed().as_secs_f64());
        }
        let macs = (rows * cols * tokens) as f64;
        // (The smoke run's probe is too short to be a peak.)
        let share = peak.filter(|_| full).map(|p| format!("  {:3.0}% of peak", macs / best / 1e9 / p * 100.0)).unwrap_or_default();
        println!(
            "{tokens:>4} tokens: {:8.3} ms  {:6.1} G multiply-adds/s  {:6.1} GB/s of weights{share}",
            best * 1e3,
            macs / best / 1e9,
            (rows * row_bytes) as f64 / best / 1e9
        );
    }
}

/// G multiply-adds/s of `threads` threads each running `iters` independent `vpdpwssd`
/// (eight accumulators, register operands), or `None` without AVX-512 VNNI. Short runs
/// read low: the clock takes a while to settle under AVX-512 (10^8 instructions a thread
/// gave 75% of what 10^9 did on the Xeon VM).
fn vpdpwssd_peak(threads: usize, iters: u64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512vnni") {
            return None;
        }
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: AVX-512 VNNI is present (checked above); the loop touches only the
                // registers it names.
                s.spawn(|| unsafe {
                    std::arch::asm!(
                        "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2", "vpxord zmm3, zmm3, zmm3",
                        "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5", "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7",
                        "vpxord zmm8, zmm8, zmm8", "vpxord zmm9, zmm9, zmm9",
                        "2:",
                        "vpdpwssd zmm0, zmm8, zmm9", "vpdpwssd zmm1, zmm8, zmm9", "vpdpwssd zmm2, zmm8, zmm9", "vpdpwssd zmm3, zmm8, zmm9",
                        "vpdpwssd zmm4, zmm8, zmm9", "vpdpwssd zmm5, zmm8, zmm9", "vpdpwssd zmm6, zmm8, zmm9", "vpdpwssd zmm7, zmm8, zmm9",
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters.div_ceil(8) => _,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                        options(nostack)
                    )
                });
            }
        });
        let instructions = (threads as u64 * iters.div_ceil(8) * 8) as f64;
        Some(instructions * 32.0 / start.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, iters);
        None
    }
}
