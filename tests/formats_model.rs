//! A whole model in every quantized file format: `ballast make-model --type T` writes a tiny
//! random Llama in that format; the default CPU path (packed weights, 16-bit activations)
//! and, with `--features cuda`, the GPU backend (emulated, or a GPU with
//! `BALLAST_TEST_DEVICE=cuda`; every format decoded natively) give the logits of the plain
//! reference path (dequantized weights, f32 activations) at every prompt position.

mod common;

use ballast::backend::cpu::Precision;
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions};
use ballast::quant::GgmlType;
use common::*;
use std::path::Path;
use std::process::Command;

fn make_model(dir: &Path, dtype: GgmlType) -> std::path::PathBuf {
    let path = dir.join(format!("tiny-{}.gguf", dtype.name()));
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["make-model", "--shape", "tiny", "--type", &dtype.name().to_lowercase(), "--seed", "5", "--out"])
        .arg(&path)
        .env("BALLAST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

fn load(path: &Path) -> model::LoadedModel {
    model::load(path, LoadOptions::default(), &mut |_, _| {}).unwrap()
}

/// Largest difference over the largest magnitude.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    diff / want.iter().map(|v| v.abs()).fold(0.0, f32::max)
}

#[test]
fn every_format_runs_a_whole_model_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let prompt: Vec<u32> = (0..21).map(|i| 300 + 31 * i).collect();
    for dtype in GgmlType::FILE_QUANTS {
        let path = make_model(dir.path(), dtype);
        let loaded = load(&path);
        let file_type = loaded.weights.layers[0].wq.dtype;
        assert_eq!(file_type, dtype, "the layers are {dtype}");
        let want = teacher(load(&path), Precision::Reference, KvDtype::F32, 256, 64).prompt_logits(&prompt, 0).unwrap();
        let got = teacher(loaded, Precision::Int16, KvDtype::F32, 256, 64).prompt_logits(&prompt, 0).unwrap();
        let err = relative_error(&got, &want);
        eprintln!("{dtype}: CPU int16 vs reference, relative error {err:.2e}");
        assert!(err < 5e-4, "{dtype}: relative error {err}");
        #[cfg(feature = "cuda")]
        {
            let mut gpu = gpu_teacher(load(&path));
            let err = relative_error(&gpu.prompt_logits(&prompt, 0).unwrap(), &want);
            eprintln!("{dtype}: GPU vs reference, relative error {err:.2e}");
            assert!(err < 1e-3, "{dtype} on the GPU: relative error {err}");
        }
    }
}

#[cfg(feature = "cuda")]
fn gpu_teacher(
    loaded: model::LoadedModel,
) -> ballast::teacher::TeacherForced<ballast::backend::gpu::GpuBackend<ballast::backend::gpu::any::AnyDevice>> {
    use ballast::backend::GpuOptions;
    use ballast::backend::gpu::{GpuBackend, any::AnyDevice};
    use ballast::teacher::{TeacherForced, TeacherOptions};
    let backend = GpuBackend::with_options(AnyDevice::for_tests(), GpuOptions { deterministic: true, ..GpuOptions::default() });
    let options = TeacherOptions { max_batch_tokens: 64, block_size: 16, num_blocks: 17, kv_dtype: KvDtype::F16 };
    TeacherForced::new(backend, loaded.config, loaded.weights, options).unwrap()
}
