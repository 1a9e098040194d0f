//! `ballast bench-gpu`: each kernel's achieved bandwidth (or arithmetic rate) against what the
//! same device measures for a plain device-to-device copy, at Llama-3-8B shapes.
//!
//! Timing is host wall time around `reps` launches and a synchronize, after one warm-up.
//! On the emulated device the shapes shrink 64-fold: that run only checks the code path.

use super::any::AnyDevice;
use super::{Device, GpuBackend};
use crate::backend::{AttentionShape, Backend, Result};
use crate::format::bytes::TensorBytes;
use crate::kv::{KvDtype, KvLayout};
use crate::model::weights::HostMatrix;
use crate::plan::{BatchPlan, LogitsFor};
use crate::quant::GgmlType;
use std::time::Instant;

/// One measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelResult {
    pub name: String,
    pub seconds_per_call: f64,
    /// Bytes the kernel must move per call (reads + writes).
    pub bytes: f64,
    pub gb_per_s: f64,
    /// Achieved bandwidth / the copy's.
    pub of_copy: f64,
    pub gflop_per_s: f64,
}

fn time(device: &AnyDevice, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

/// A random Q4_1 matrix (scales that keep values near ±0.05).
fn random_q4_1(rows: usize, cols: usize, seed: u64) -> HostMatrix {
    let bytes = crate::quant::random_q4_1(rows * cols, 0.006, -0.045, seed);
    HostMatrix::new(GgmlType::Q4_1, rows, cols, TensorBytes::from_vec(bytes)).expect("whole blocks")
}

/// Runs every benchmark on `device` (`emulated`, `cuda`, `cuda:N`).
pub fn run(device: &str) -> Result<(String, Vec<KernelResult>)> {
    let gpu = GpuBackend::new(AnyDevice::open(device)?);
    let dev = gpu.device();
    let small = dev.is_emulated();
    let shrink = if small { 64 } else { 1 };
    let reps = if small { 1 } else { 20 };
    let mut results = Vec::new();
    let mut push = |name: String, secs: f64, bytes: f64, flops: f64, copy: f64| {
        let gbs = bytes / secs / 1e9;
        results.push(KernelResult {
            name,
            seconds_per_call: secs,
            bytes,
            gb_per_s: gbs,
            of_copy: gbs / copy,
            gflop_per_s: flops / secs / 1e9,
        });
        gbs
    };

    // The roofline: a device-to-device copy of 1 GiB (read + write).
    let n = (1usize << 30) / shrink;
    let (a, b) = (dev.alloc(n)?, dev.alloc(n)?);
    let secs = time(dev, reps, || dev.copy(&b, &a, n))?;
    let copy = (2 * n) as f64 / secs / 1e9;
    push("device-to-device copy".into(), secs, (2 * n) as f64, 0.0, copy);
    drop((a, b));

    // Quantized matmul at Llama-3-8B's MLP shapes, one token (GEMV) and 64.
    let (hidden, ffn) = (4096 / shrink.min(16), 14336 / shrink.min(16));
    for (rows, cols) in [(ffn, hidden), (hidden, ffn)] {
        let w = gpu.upload_matrix(random_q4_1(rows, cols, 7))?;
        for tokens in [1usize, 8, 64] {
            let x = gpu.upload_tensor(tokens, &vec![0.01; tokens * cols])?;
            let mut out = gpu.alloc(tokens, rows)?;
            let secs = time(dev, reps, || gpu.matmul(&x, &w, &mut out))?;
            let bytes = (rows * cols / 32 * 20 + 4 * tokens * (rows + cols)) as f64;
            let flops = 2.0 * (rows * cols * tokens) as f64;
            let kernel = if tokens >= super::ops::MMA_MIN_TOKENS { "tensor cores" } else { "GEMV" };
            push(format!("matmul Q4_1 {rows}x{cols}, {tokens} tokens ({kernel})"), secs, bytes, flops, copy);
        }
    }

    // The other formats of real files (Q4_K_M and friends) at the MLP's down projection: the
    // GEMV of decode and the tensor cores of prefill. Bytes are the file's (the device layout
    // is within a few percent of them).
    for dtype in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q8_0] {
        let (rows, cols) = (hidden, ffn.next_multiple_of(256)); // whole super-blocks when shrunk
        let data = crate::quant::random_blocks(dtype, rows * cols, 0.05, 11);
        let w = gpu.upload_matrix(HostMatrix::new(dtype, rows, cols, TensorBytes::from_vec(data)).expect("whole blocks"))?;
        for tokens in [1usize, 64] {
            let x = gpu.upload_tensor(tokens, &vec![0.01; tokens * cols])?;
            let mut out = gpu.alloc(tokens, rows)?;
            let secs = time(dev, reps, || gpu.matmul(&x, &w, &mut out))?;
            let weight_bytes = rows as u64 * dtype.row_bytes(cols as u64).expect("whole blocks");
            let bytes = (weight_bytes as usize + 4 * tokens * (rows + cols)) as f64;
            let flops = 2.0 * (rows * cols * tokens) as f64;
            let kernel = if tokens >= super::ops::MMA_MIN_TOKENS { "tensor cores" } else { "GEMV" };
            push(format!("matmul {dtype} {rows}x{cols}, {tokens} tokens ({kernel})"), secs, bytes, flops, copy);
        }
    }

    // Decode attention: 64 sequences × 2048 keys, 32 query heads over 8 KV heads of 128.
    let (seqs, context) = (64 / shrink.min(8), 2048 / shrink.min(16));
    let (heads, kv_heads, head_dim, block_size) = (32, 8, 128, 16);
    let blocks_per_seq = context.div_ceil(block_size);
    let layout =
        KvLayout { num_layers: 1, num_blocks: seqs * blocks_per_seq, block_size, num_kv_heads: kv_heads, head_dim, dtype: KvDtype::F16 };
    let pool = gpu.alloc_kv(&layout)?;
    let mut plan = BatchPlan::new(block_size, layout.num_blocks);
    for s in 0..seqs {
        let table: Vec<u32> = (0..blocks_per_seq).map(|b| (s * blocks_per_seq + b) as u32).collect();
        plan.push_seq(&[1], context - 1, &table, LogitsFor::Last).map_err(|e| crate::backend::BackendError::Device(e.to_string()))?;
    }
    let step = gpu.prepare(&plan)?;
    let q = gpu.upload_tensor(seqs, &vec![0.1; seqs * heads * head_dim])?;
    let mut out = gpu.alloc(seqs, heads * head_dim)?;
    let shape = AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim, scale: 0.088, window: None };
    let secs = time(dev, reps, || gpu.attention(&step, 0, &q, &pool, shape, &mut out))?;
    let bytes = (seqs * context * kv_heads * head_dim * 2 * 2) as f64;
    let flops = 4.0 * (seqs * context * heads * head_dim) as f64;
    push(format!("decode attention {seqs} seqs x {context} keys, {heads}/{kv_heads} heads of {head_dim}"), secs, bytes, flops, copy);
    Ok((gpu.name(), results))
}
