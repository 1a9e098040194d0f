//! HF checkpoints: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; bf16/f16/f32 weights, kept as they are (zero-copy views of
//! the mapped shards) or quantized on load.
//!
//! HF stores Q/K rows in "half-split" rotary order, so HF models run with
//! [`RopeStyle::HalfSplit`] and their weights need no permutation.

use super::{
    HostMatrix, HostWeights, LayerWeights, Llama3Scaling, LoadOptions, LoadedModel, ModelConfig, ModelError, ModelInfo, Progress,
    RopeConfig, RopeStyle,
};
use crate::format::bytes::TensorBytes;
use crate::quant::{self, GgmlType};
use crate::tokenizer::Tokenizer;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod config;

pub fn load(dir: &Path, options: LoadOptions, progress: Progress) -> Result<LoadedModel, ModelError> {
    let hf = config::HfConfig::read(&dir.join("config.json"))?;
    let config = hf.to_model_config()?;
    let shards = Shards::open(dir)?;
    let weights = read_weights(&shards, &config, options, progress)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let mut eos_token_ids = hf.eos_token_ids();
    if let Some(generation) = config::GenerationConfig::read(dir)? {
        for id in generation.eos_token_ids() {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let info = ModelInfo {
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        path: dir.to_path_buf(),
        format: "safetensors",
        eos_token_ids,
        bos_token_id: hf.bos_token_id,
    };
    Ok(LoadedModel { config, weights, tokenizer, info })
}

/// A `config.json` as a validated model configuration (the fuzz targets' entry point).
pub(crate) fn config_from_json(bytes: &[u8]) -> Result<ModelConfig, ModelError> {
    let hf: config::HfConfig = serde_json::from_slice(bytes).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let config = hf.to_model_config()?;
    config.validate().map_err(ModelError::Invalid)?;
    Ok(config)
}

/// The mapped safetensors files of a checkpoint and where each tensor lives.
struct Shards {
    files: Vec<(PathBuf, Arc<Mmap>, usize, Metadata)>,
    /// tensor name → index into `files`
    index: HashMap<String, usize>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Shards, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index_path.is_file() {
            #[derive(Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let index: Index = read_json(&index_path)?;
            let mut files: Vec<String> = index.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut shards = Shards { files: Vec::new(), index: HashMap::new() };
        for name in names {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(ModelError::Invalid(format!("shard name `{name}` leaves the model directory")));
            }
            let path = dir.join(&name);
            let file = std::fs::File::open(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            // SAFETY: the map is read-only; like every mmap-based loader we rely on the file
            // not being truncated while the model is loaded.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.clone(), source })?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for tensor in meta.tensors().into_keys() {
                shards.index.insert(tensor, shards.files.len());
            }
            shards.files.push((path, Arc::new(map), 8 + header_len, meta));
        }
        Ok(shards)
    }

    fn get(&self, name: &str) -> Result<(&TensorInfo, TensorBytes, &Path), ModelError> {
        let missing = || ModelError::MissingTensor(name.to_string());
        let (path, map, data_start, meta) = &self.files[*self.index.get(name).ok_or_else(missing)?];
        let info = meta.info(name).ok_or_else(missing)?;
        let range = data_start + info.data_offsets.0..data_start + info.data_offsets.1;
        Ok((info, TensorBytes::from_mmap(map.clone(), range), path))
    }

    fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1.len() as u64).sum()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), reason: e.to_string() })
}

fn ggml_dtype(name: &str, dtype: Dtype) -> Result<GgmlType, ModelError> {
    match dtype {
        Dtype::F32 => Ok(GgmlType::F32),
        Dtype::F16 => Ok(GgmlType::F16),
        Dtype::BF16 => Ok(GgmlType::BF16),
        other => Err(ModelError::UnsupportedDtype { tensor: name.to_string(), dtype: format!("{other:?}") }),
    }
}

/// Reads a matrix; quantizes it to `target` when asked and its rows split into blocks.
fn matrix(shards: &Shards, name: &str, target: Option<GgmlType>) -> Result<HostMatrix, ModelError> {
    let (info, bytes, _) = shards.get(name)?;
    let dtype = ggml_dtype(name, info.dtype)?;
    let [rows, cols] = info.shape[..] else {
        return Err(ModelError::Invalid(format!("`{name}` has shape {:?}, expected 2 dims", info.shape)));
    };
    let invalid = |reason: String| ModelError::Invalid(format!("`{name}`: {reason}"));
    let source = HostMatrix::new(dtype, rows, cols, aligned(bytes)).map_err(invalid)?;
    // A k-quant on a width that is not whole super-blocks: llama.cpp's 32-element fallback.
    let target = target.map(|t| {
        let f = t.fallback_for_row(cols as u64);
        if f != t {
            tracing::info!("{name}: {cols} columns are not whole {t} blocks; quantized to {f}");
        }
        f
    });
    match target {
        Some(t) if t.row_bytes(cols as u64).is_some() => source.requantized(t, 1).map_err(invalid),
        Some(t) => {
            tracing::warn!("{name}: {cols} columns do not split into {t} blocks; kept as {dtype}");
            Ok(source)
        }
        None => Ok(source),
    }
}

/// Float data must sit at an address aligned for its element type; copy it if it does not.
fn aligned(bytes: TensorBytes) -> TensorBytes {
    if (bytes.as_ptr() as usize).is_multiple_of(4) { bytes } else { TensorBytes::from_vec(bytes.to_vec()) }
}

fn vector(shards: &Shards, name: &str) -> Result<Vec<f32>, ModelError> {
    let (info, bytes, _) = shards.get(name)?;
    let dtype = ggml_dtype(name, info.dtype)?;
    let n: usize = info.shape.iter().product();
    if info.shape.len() != 1 {
        return Err(ModelError::Invalid(format!("`{name}` has shape {:?}, expected 1 dim", info.shape)));
    }
    let mut out = vec![0.0; n];
    quant::dequantize_row(dtype, &aligned(bytes), &mut out).map_err(|e| ModelError::Invalid(format!("`{name}`: {e}")))?;
    Ok(out)
}

fn read_weights(shards: &Shards, c: &ModelConfig, options: LoadOptions, progress: Progress) -> Result<HostWeights, ModelError> {
    let target = options.quantize;
    if let Some(t) = target
        && !GgmlType::FILE_QUANTS.contains(&t)
    {
        return Err(ModelError::Invalid(format!("cannot quantize on load to {t}")));
    }
    // Embedding and output stay at 8 bits when the layers go to 4 (as llama.cpp's files do).
    let embed_target = target.map(|_| GgmlType::Q8_0);
    let total = shards.total_bytes();
    let per_layer = total / (c.num_layers as u64 + 1);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}.");
        let mat = |n: &str| matrix(shards, &format!("{p}{n}.weight"), target);
        let vec = |n: &str| vector(shards, &format!("{p}{n}"));
        let bias = |n: &str| if c.qkv_bias { vec(n).map(Some) } else { Ok(None) };
        layers.push(LayerWeights {
            attn_norm: vec("input_layernorm.weight")?,
            wq: mat("self_attn.q_proj")?,
            wk: mat("self_attn.k_proj")?,
            wv: mat("self_attn.v_proj")?,
            bq: bias("self_attn.q_proj.bias")?,
            bk: bias("self_attn.k_proj.bias")?,
            bv: bias("self_attn.v_proj.bias")?,
            wo: mat("self_attn.o_proj")?,
            ffn_norm: vec("post_attention_layernorm.weight")?,
            w_gate: mat("mlp.gate_proj")?,
            w_up: mat("mlp.up_proj")?,
            w_down: mat("mlp.down_proj")?,
            norms: Default::default(),
        });
        progress(per_layer * (i as u64 + 1), total);
    }
    let embed = matrix(shards, "model.embed_tokens.weight", embed_target)?;
    let final_norm = vector(shards, "model.norm.weight")?;
    let lm_head = match c.tie_word_embeddings {
        true => None,
        false => Some(matrix(shards, "lm_head.weight", embed_target)?),
    };
    progress(total, total);
    Ok(HostWeights { embed, layers, final_norm, lm_head })
}

impl config::HfConfig {
    fn to_model_config(&self) -> Result<ModelConfig, ModelError> {
        let arch = self.architecture();
        let (qkv_bias, tie_default) = match arch.as_str() {
            "llama" | "mistral" => (self.attention_bias.unwrap_or(false), false),
            "qwen2" => (true, false),
            gemma if gemma.starts_with("gemma") => {
                return Err(ModelError::Invalid(format!("`{gemma}` runs from GGUF files; HF checkpoints of it are not supported yet")));
            }
            other => return Err(ModelError::UnsupportedArch(other.to_string())),
        };
        let num_heads = self.num_attention_heads;
        let head_dim = self.head_dim.unwrap_or(self.hidden_size.checked_div(num_heads).unwrap_or(0));
        let rope = self.rope_params();
        let llama3_scaling = match rope.kind() {
            "default" => None,
            "llama3" => Some(Llama3Scaling {
                factor: rope.factor.unwrap_or(1.0),
                low_freq_factor: rope.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: rope.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: rope.original_max_position_embeddings.unwrap_or(8192.0),
            }),
            other => return Err(ModelError::Invalid(format!("rope type `{other}` is not supported"))),
        };
        let partial = self.partial_rotary_factor.unwrap_or(1.0);
        Ok(ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_eps: self.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope: RopeConfig {
                theta: rope.rope_theta.or(self.rope_theta).unwrap_or(10000.0),
                style: RopeStyle::HalfSplit,
                num_rotary_dims: (head_dim as f64 * partial) as usize,
                llama3_scaling,
                freq_factors: None,
            },
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            qkv_bias,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(tie_default),
            features: Default::default(),
        })
    }
}
