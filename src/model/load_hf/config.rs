//! The parts of HF `config.json` and `generation_config.json` a Llama-family model needs.

use super::read_json;
use crate::model::ModelError;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize, Debug)]
pub struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    /// Before transformers 5 the theta sat at the top level...
    pub rope_theta: Option<f64>,
    /// ...and scaling in `rope_scaling`; since, both live in `rope_parameters`.
    rope_scaling: Option<RopeParams>,
    rope_parameters: Option<RopeParams>,
    pub partial_rotary_factor: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct RopeParams {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

impl RopeParams {
    pub fn kind(&self) -> &str {
        self.rope_type.as_deref().or(self.legacy_type.as_deref()).unwrap_or("default")
    }
}

/// `eos_token_id` is an int or a list of ints.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

impl HfConfig {
    pub fn read(path: &Path) -> Result<HfConfig, ModelError> {
        read_json(path)
    }

    /// `llama`, `qwen2`, ... from `model_type`, else from the architecture class name.
    pub fn architecture(&self) -> String {
        if let Some(t) = &self.model_type {
            return t.clone();
        }
        match self.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") => "llama".into(),
            Some("MistralForCausalLM") => "mistral".into(),
            Some("Qwen2ForCausalLM") => "qwen2".into(),
            Some(other) => other.into(),
            None => "unknown".into(),
        }
    }

    pub fn rope_params(&self) -> RopeParams {
        self.rope_parameters.clone().or_else(|| self.rope_scaling.clone()).unwrap_or_default()
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }
}

#[derive(Deserialize, Debug)]
pub struct GenerationConfig {
    eos_token_id: Option<TokenIds>,
}

impl GenerationConfig {
    pub fn read(dir: &Path) -> Result<Option<GenerationConfig>, ModelError> {
        let path = dir.join("generation_config.json");
        if path.is_file() { read_json(&path).map(Some) } else { Ok(None) }
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }
}
