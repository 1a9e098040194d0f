//! Options shared by the commands that run a model, and loading it with a progress bar.

use anyhow::{Context, bail};
use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::backend::{self, Backend, BackendError, DeviceRequest, GpuOptions, WithBackend};
use ballast::engine::{Engine, EngineConfig, EngineError};
use ballast::fetch::{self, Manifest};
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions, LoadedModel};
use ballast::quant::GgmlType;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, an HF checkpoint directory, or the name of a model in
    /// models/manifest.json (fetched if absent; `ballast fetch --help` lists them). Default:
    /// the manifest's default model.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Quantize an HF checkpoint's float weights on load (embedding and output to q8_0; a
    /// k-quant falls back to a 32-element format, as llama.cpp does, on widths that are not
    /// multiples of 256).
    #[arg(long, value_parser = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])]
    pub quantize: Option<String>,
    /// CPU worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPU arithmetic for quantized weights: `int16` (activations as 16-bit integers,
    /// integer dot products with the weights repacked for the fastest kernels: as accurate as
    /// f32 activations on the goldens), `int8` (8-bit activations, the precision llama.cpp
    /// computes at: prompts ~1.35× faster with AVX-512 VNNI, greedy output closer to
    /// llama.cpp's than to the reference's) or `reference` (f32 activations against
    /// dequantized weights).
    #[arg(long, default_value = "int16", value_parser = ["int16", "int8", "reference"])]
    pub precision: String,
    /// Map the GGUF file instead of reading it into memory: shares pages with the page cache
    /// and other processes, but the weights sit in 4 KiB pages (decode ~15% slower here than
    /// with transparent huge pages). With integer precision (the default) quantized
    /// matrices are repacked into the process's own huge pages anyway; the mapping then
    /// serves loading and the float ones.
    #[arg(long)]
    pub mmap: bool,
    /// Element type of the KV cache (the GPU keeps f16).
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub kv_dtype: String,
    /// Where the model runs: `auto` (the first GPU when this build has CUDA and the machine
    /// a driver and a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Share of the GPU's memory to use; the KV cache takes what the weights leave of it
    /// (--kv-cache-mib sizes the CPU's).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_fraction: f64,
    /// Batch-invariant results: a request's output does not depend on what else is batched
    /// with it. The CPU always is; on a GPU this keeps every batch size on the f32 GEMV
    /// kernel instead of the tensor-core GEMM (f16 activations) for 16 tokens or more.
    #[arg(long)]
    pub deterministic: bool,
    /// Speculative decoding with a draft model: a smaller model of the same tokenizer
    /// (checked at load) proposes --num-speculative-tokens tokens a step, greedily, and the
    /// model verifies them all in one pass; output is unchanged. A path or a manifest name,
    /// e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b. Its KV cache has as many blocks as the
    /// model's, and the two share --kv-cache-mib (or the GPU's memory).
    #[arg(long, conflicts_with = "quantize")]
    pub draft_model: Option<PathBuf>,
}

/// Starts an engine on whichever backend `open` picks.
struct StartEngine {
    loaded: LoadedModel,
    draft: Option<LoadedModel>,
    config: EngineConfig,
}

/// Starts an engine for `loaded` on `device` (`cpu` builds the CPU backend if that is it).
pub fn start_engine_on(
    device: DeviceRequest,
    gpu: GpuOptions,
    cpu: impl FnOnce() -> anyhow::Result<CpuBackend>,
    loaded: LoadedModel,
    config: EngineConfig,
) -> anyhow::Result<Engine> {
    start_engine_with_draft(device, gpu, cpu, loaded, None, config)
}

/// [`start_engine_on`] with a draft model for speculative decoding.
pub fn start_engine_with_draft(
    device: DeviceRequest,
    gpu: GpuOptions,
    cpu: impl FnOnce() -> anyhow::Result<CpuBackend>,
    loaded: LoadedModel,
    draft: Option<LoadedModel>,
    config: EngineConfig,
) -> anyhow::Result<Engine> {
    let cpu = || cpu().map_err(|e| BackendError::Device(format!("{e:#}")));
    Ok(backend::open(device, gpu, cpu, StartEngine { loaded, draft, config })??)
}

impl WithBackend for StartEngine {
    type Output = Result<Engine, EngineError>;

    fn run<B: Backend + 'static>(self, backend: B) -> Self::Output {
        tracing::info!("backend: {}", backend.name());
        Engine::start_with_draft(backend, self.loaded, self.draft, self.config)
    }
}

impl ModelArgs {
    pub fn kv_dtype(&self) -> KvDtype {
        if self.kv_dtype == "f32" { KvDtype::F32 } else { KvDtype::F16 }
    }

    /// Starts the engine on `--device`.
    pub fn start_engine(&self, loaded: LoadedModel, config: EngineConfig) -> anyhow::Result<Engine> {
        let gpu = GpuOptions { memory_fraction: self.gpu_memory_fraction, deterministic: self.deterministic };
        let draft = match &self.draft_model {
            Some(path) => Some(ModelArgs { model: Some(path.clone()), ..self.clone() }.load().context("loading the draft model")?),
            None => None,
        };
        start_engine_with_draft(self.device, gpu, || self.cpu_backend(), loaded, draft, config)
    }

    pub fn cpu_backend(&self) -> anyhow::Result<CpuBackend> {
        let precision = parse_precision(&self.precision);
        let threads = self.threads.unwrap_or_else(CpuBackend::default_threads);
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        Ok(CpuBackend::new(threads, precision)?)
    }

    fn path(&self) -> anyhow::Result<PathBuf> {
        let what = match &self.model {
            Some(p) => p.display().to_string(),
            None => format!("the default model {}", Manifest::builtin().default),
        };
        fetch::resolve(self.model.as_deref())
            .with_context(|| format!("finding {what} (models directory {})", fetch::models_dir().display()))
    }

    /// Loads the model, showing a progress bar on a terminal.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let path = self.path()?;
        let quantize = self.quantize.as_deref().and_then(GgmlType::from_name);
        let bar = ProgressBar::new(0)
            .with_style(ProgressStyle::with_template("loading {msg} {bar:30} {bytes}/{total_bytes}").expect("static template is valid"));
        bar.set_message(path.display().to_string());
        let start = Instant::now();
        let loaded = model::load(&path, LoadOptions { quantize, map_file: self.mmap }, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        let loaded = loaded.with_context(|| format!("loading {}", path.display()))?;
        let c = &loaded.config;
        let local = (0..c.num_layers).filter(|&i| c.layer_window(i).is_some()).count();
        let window = match c.features.sliding_window.as_ref() {
            Some(w) if local > 0 => format!(" ({local} with a {}-key sliding window)", w.size),
            _ => String::new(),
        };
        tracing::info!(
            "loaded {} ({}, {} layers{window}, hidden {}, vocab {}) in {:.0} ms",
            loaded.info.name,
            c.arch,
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            start.elapsed().as_secs_f64() * 1e3
        );
        Ok(loaded)
    }
}

/// `--precision`'s value (clap has checked it is one of these).
pub fn parse_precision(name: &str) -> Precision {
    match name {
        "reference" => Precision::Reference,
        "int8" => Precision::Int8,
        _ => Precision::Int16,
    }
}
