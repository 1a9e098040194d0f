//! Llama-family and Gemma 3 models: configuration, weights, loading from GGUF or HF checkpoints, and the
//! forward pass.

mod config;
mod load_gguf;
mod load_hf;

pub(crate) use load_hf::config_from_json;
pub mod llama;
pub mod weights;

pub use config::{Activation, Features, Llama3Scaling, ModelConfig, RopeConfig, RopeStyle, SlidingWindow};
pub use llama::Llama;
pub use weights::{ExtraNorms, HostMatrix, HostWeights, LayerWeights, ModelWeights};

use crate::format::gguf::GgufError;
use crate::quant::GgmlType;
use crate::tokenizer::{Tokenizer, TokenizerError};
use std::path::{Path, PathBuf};

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a GGUF file or an HF model directory (with config.json)", .0.display())]
    UnknownFormat(PathBuf),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{}: invalid safetensors: {reason}", path.display())]
    Safetensors { path: PathBuf, reason: String },
    #[error("{}: invalid JSON: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error("unsupported architecture `{0}` (ballast runs llama, mistral, qwen2 and gemma3 models)")]
    UnsupportedArch(String),
    #[error("tensor `{tensor}` has type {dtype}, which ballast does not support here")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("missing metadata `{0}`")]
    MissingKey(String),
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// What a user chose about how weights are loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Quantize float matrices on load (HF checkpoints): `Q8_0` or `Q4_1`.
    pub quantize: Option<GgmlType>,
    /// Keep a GGUF file memory-mapped (pages shared with the page cache and other processes)
    /// instead of reading it into memory backed by huge pages (the default: faster decode,
    /// see `GgufFile::open_resident`).
    pub map_file: bool,
}

/// Facts about a model beyond its shape.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

/// A model read from disk: configuration, host weights (mostly zero-copy views of the mapped
/// files) and, when the files have one, its tokenizer.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: HostWeights,
    pub tokenizer: Option<Tokenizer>,
    pub info: ModelInfo,
}

/// Loading progress: bytes of weights processed so far, and in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Loads a GGUF file or an HF checkpoint directory.
pub fn load(path: &Path, options: LoadOptions, progress: Progress) -> Result<LoadedModel, ModelError> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let loaded = if meta.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(ModelError::UnknownFormat(path.to_path_buf()));
        }
        load_hf::load(path, options, progress)?
    } else {
        if options.quantize.is_some() {
            return Err(ModelError::Invalid("--quantize applies to HF checkpoints; GGUF files are already quantized".into()));
        }
        load_gguf::load(path, options.map_file, progress)?
    };
    loaded.config.validate().map_err(ModelError::Invalid)?;
    loaded.weights.check_shapes(&loaded.config).map_err(ModelError::Invalid)?;
    Ok(loaded)
}
