//! GGUF files (llama.cpp's format; architectures llama, mistral, qwen2, gemma3): metadata →
//! [`ModelConfig`], tensors → zero-copy [`HostMatrix`] views of the file's bytes (in memory,
//! or mapped with `map_file`).

use super::{
    Activation, ExtraNorms, Features, HostMatrix, HostWeights, LayerWeights, LoadedModel, ModelConfig, ModelError, ModelInfo, Progress,
    RopeConfig, RopeStyle, SlidingWindow,
};
use crate::format::gguf::{GgufFile, TensorInfo};
use crate::tokenizer::Tokenizer;
use std::path::Path;

pub fn load(path: &Path, map_file: bool, progress: Progress) -> Result<LoadedModel, ModelError> {
    let file = if map_file { GgufFile::open(path)? } else { GgufFile::open_resident(path)? };
    let arch = file.get_str("general.architecture")?.ok_or_else(|| missing("general.architecture"))?;
    let style = match arch {
        "llama" | "mistral" => RopeStyle::Interleaved,
        "qwen2" | "gemma3" => RopeStyle::HalfSplit,
        other => return Err(ModelError::UnsupportedArch(other.to_string())),
    };
    let config = read_config(&file, arch, style)?;
    let weights = read_weights(&file, &config, progress)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let mut eos_token_ids: Vec<u32> = file.get_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = file.get_u32("tokenizer.ggml.eot_token_id")?
        && !eos_token_ids.contains(&eot)
    {
        eos_token_ids.push(eot);
    }
    // Gemma files name only `<eos>`, but a Gemma turn ends with `<end_of_turn>` (llama.cpp
    // and transformers stop there too).
    if arch == "gemma3"
        && let Some(eot) = tokenizer.token_to_id("<end_of_turn>")
        && !eos_token_ids.contains(&eot)
    {
        eos_token_ids.push(eot);
    }
    let name = file.get_str("general.name")?.unwrap_or(arch).to_string();
    let info = ModelInfo {
        name,
        path: path.to_path_buf(),
        format: "gguf",
        eos_token_ids,
        bos_token_id: file.get_u32("tokenizer.ggml.bos_token_id")?,
    };
    Ok(LoadedModel { config, weights, tokenizer: Some(tokenizer), info })
}

fn missing(key: &str) -> ModelError {
    ModelError::MissingKey(key.to_string())
}

fn read_config(file: &GgufFile, arch: &str, style: RopeStyle) -> Result<ModelConfig, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| -> Result<usize, ModelError> { Ok(file.get_u64(&key(k))?.ok_or_else(|| missing(&key(k)))? as usize) };
    let hidden_size = req("embedding_length")?;
    let num_heads = req("attention.head_count")?;
    let num_kv_heads = file.get_u64(&key("attention.head_count_kv"))?.map_or(num_heads, |v| v as usize);
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(v) => v as usize,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    let embed = file.tensor("token_embd.weight").ok_or_else(|| missing_tensor("token_embd.weight"))?;
    let vocab_size = match file.get_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => embed.num_rows() as usize,
    };
    let theta = file.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0) as f64;
    // Linear scaling divides positions by a factor: the same as dividing every frequency.
    let linear_factor = match file.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => None,
        Some("linear") => file.get_f32(&key("rope.scaling.factor"))?,
        Some(other) => {
            return Err(ModelError::Invalid(format!("rope scaling `{other}` is not supported")));
        }
    };
    let num_rotary_dims = file.get_u64(&key("rope.dimension_count"))?.map_or(head_dim, |v| v as usize);
    let mut freq_factors = match file.tensor("rope_freqs.weight") {
        Some(t) => Some(read_vector(file, t)?),
        None => None,
    };
    if let Some(factor) = linear_factor {
        let f = freq_factors.get_or_insert_with(|| vec![1.0; num_rotary_dims / 2]);
        f.iter_mut().for_each(|x| *x *= factor);
    }
    let features = match arch {
        "gemma3" => gemma3_features(file, hidden_size, num_heads, head_dim)?,
        _ => Features::default(),
    };
    Ok(ModelConfig {
        arch: arch.to_string(),
        vocab_size,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_layers: req("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope: RopeConfig { theta, style, num_rotary_dims, llama3_scaling: None, freq_factors },
        max_position_embeddings: file.get_u64(&key("context_length"))?.unwrap_or(2048) as usize,
        qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        features,
    })
}

/// Gemma 3: GELU FFN, √d embedding scale, q/k and post norms (their weights are stored with
/// Gemma's `1 +` already added, so they are plain RMSNorm weights here), and five local
/// layers with a sliding window and their own rope base to each global one — what
/// llama.cpp assumes where the file says nothing (pattern 6, local base 10000).
fn gemma3_features(file: &GgufFile, hidden: usize, num_heads: usize, head_dim: usize) -> Result<Features, ModelError> {
    let key = |k: &str| format!("gemma3.{k}");
    let unsupported = |what: String| Err(ModelError::Invalid(format!("gemma3: {what} is not supported")));
    if let Some(cap) = file.get_f32(&key("attn_logit_softcapping"))? {
        return unsupported(format!("attention logit soft-capping ({cap})"));
    }
    if let Some(v) = file.get_u64(&key("attention.value_length"))?
        && v as usize != head_dim
    {
        return unsupported(format!("a value head of {v} dims with keys of {head_dim}"));
    }
    let size = file.get_u64(&key("attention.sliding_window"))?.ok_or_else(|| missing(&key("attention.sliding_window")))? as usize;
    let pattern = match file.get(&key("attention.sliding_window_pattern")) {
        None => 6,
        Some(_) => match file.get_u64(&key("attention.sliding_window_pattern")) {
            Ok(Some(p)) if p >= 1 => p as usize,
            _ => return unsupported("a sliding window pattern other than one global layer every N".into()),
        },
    };
    let local_rope_theta = file.get_f32(&key("rope.freq_base_swa"))?.map_or(10000.0, f64::from);
    let num_layers = file.get_u64(&key("block_count"))?.unwrap_or(0);
    // Gemma 3 27B scales queries by 1/√(hidden / heads) (its query_pre_attn_scalar), the
    // others by 1/√head_dim.
    let attention_scale = match num_layers {
        62 if num_heads > 0 => Some(1.0 / ((hidden / num_heads) as f32).sqrt()),
        _ => None,
    };
    Ok(Features {
        activation: Activation::GeluTanh,
        embed_scale: Some((hidden as f32).sqrt()),
        qk_norm: true,
        post_norms: true,
        attention_scale,
        final_logit_softcap: file.get_f32(&key("final_logit_softcapping"))?,
        sliding_window: Some(SlidingWindow { size, pattern, local_rope_theta }),
    })
}

fn missing_tensor(name: &str) -> ModelError {
    ModelError::MissingTensor(name.to_string())
}

fn read_vector(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
    let n = t.num_elements() as usize;
    let mut out = vec![0.0; n];
    crate::quant::dequantize_row(t.dtype, file.tensor_data(t), &mut out)
        .map_err(|e| ModelError::UnsupportedDtype { tensor: format!("{} ({e})", t.name), dtype: t.dtype.to_string() })?;
    Ok(out)
}

fn read_matrix(file: &GgufFile, t: &TensorInfo) -> Result<HostMatrix, ModelError> {
    if t.dims.len() != 2 {
        return Err(ModelError::Invalid(format!("`{}` has {} dims, expected 2", t.name, t.dims.len())));
    }
    if matches!(t.dtype, crate::quant::GgmlType::Q8_1 | crate::quant::GgmlType::Q8K) {
        return Err(ModelError::UnsupportedDtype { tensor: t.name.clone(), dtype: t.dtype.to_string() });
    }
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    HostMatrix::new(t.dtype, rows, cols, file.tensor_bytes(t)).map_err(|reason| ModelError::Invalid(format!("`{}`: {reason}", t.name)))
}

fn read_weights(file: &GgufFile, c: &ModelConfig, progress: Progress) -> Result<HostWeights, ModelError> {
    let total: u64 = file.tensors().iter().map(|t| t.num_bytes as u64).sum();
    let mut done = 0u64;
    let mut get = |name: &str| -> Result<&TensorInfo, ModelError> {
        let t = file.tensor(name).ok_or_else(|| missing_tensor(name))?;
        prefault(file.tensor_data(t));
        done += t.num_bytes as u64;
        progress(done, total);
        Ok(t)
    };
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let mut mat = |n: &str| read_matrix(file, get(&format!("blk.{i}.{n}.weight"))?);
        let (wq, wk, wv, wo) = (mat("attn_q")?, mat("attn_k")?, mat("attn_v")?, mat("attn_output")?);
        let (w_gate, w_up, w_down) = (mat("ffn_gate")?, mat("ffn_up")?, mat("ffn_down")?);
        let mut vec = |n: &str| read_vector(file, get(&format!("blk.{i}.{n}"))?);
        let (attn_norm, ffn_norm) = (vec("attn_norm.weight")?, vec("ffn_norm.weight")?);
        let (bq, bk, bv) =
            if c.qkv_bias { (Some(vec("attn_q.bias")?), Some(vec("attn_k.bias")?), Some(vec("attn_v.bias")?)) } else { (None, None, None) };
        let f = &c.features;
        let mut opt = |n: &str, wanted: bool| if wanted { vec(n).map(Some) } else { Ok(None) };
        let norms = ExtraNorms {
            q: opt("attn_q_norm.weight", f.qk_norm)?,
            k: opt("attn_k_norm.weight", f.qk_norm)?,
            post_attn: opt("post_attention_norm.weight", f.post_norms)?,
            post_ffn: opt("post_ffw_norm.weight", f.post_norms)?,
        };
        layers.push(LayerWeights { attn_norm, wq, wk, wv, bq, bk, bv, wo, ffn_norm, w_gate, w_up, w_down, norms });
    }
    let embed = read_matrix(file, get("token_embd.weight")?)?;
    let final_norm = read_vector(file, get("output_norm.weight")?)?;
    let lm_head = match c.tie_word_embeddings {
        true => None,
        false => Some(read_matrix(file, get("output.weight")?)?),
    };
    Ok(HostWeights { embed, layers, final_norm, lm_head })
}

/// Touches every page of `data` so the first forward pass does not stall on disk reads (and
/// the load progress bar means something on a cold cache).
fn prefault(data: &[u8]) {
    let mut sum = 0u8;
    for chunk in data.chunks(4096) {
        sum = sum.wrapping_add(chunk[0]);
    }
    std::hint::black_box(sum);
}
