//! Text ↔ token ids, built on the `tokenizers` crate: from GGUF metadata (byte-level BPE
//! with the pre-tokenizer named by `tokenizer.ggml.pre`, or SentencePiece-style llama
//! vocabularies) or from an HF `tokenizer.json`.
//!
//! Special tokens written in the text (`<|im_start|>`) encode as their ids; a BOS token is
//! prepended only when the model asks for it (`tokenizer.ggml.add_bos_token`).

mod gguf;

use std::path::Path;

#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model `{0}` (ballast reads `gpt2` BPE and `llama` SentencePiece vocabularies)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer `{0}`")]
    UnsupportedPre(String),
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("{}: {reason}", path.display())]
    File { path: std::path::PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Library(String),
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
}

fn lib_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

/// Special-token facts the chat template and generation need.
#[derive(Clone, Debug, Default)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Prepend BOS when encoding a prompt.
    pub add_bos: bool,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
    /// `inner`'s vocabulary with its added tokens, counted once: the `tokenizers` crate
    /// counts it by looking up every added token (Gemma has thousands), and every decode
    /// checks its ids against it.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes.
    pub fn from_gguf(file: &crate::format::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        gguf::build(file)
    }

    /// `tokenizer.json` (+ `tokenizer_config.json` for special tokens and the chat template)
    /// of an HF checkpoint; `None` when the directory has no tokenizer.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Tokenizer>, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        let file_err = |path: &Path, reason: String| TokenizerError::File { path: path.to_path_buf(), reason };
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| file_err(&path, e.to_string()))?;
        let vocab_size = inner.get_vocab_size(true);
        let mut tok = Tokenizer { inner, special: SpecialTokens::default(), chat_template: None, vocab_size };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| file_err(&config_path, e.to_string()))?;
            let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&config_path, e.to_string()))?;
            tok.apply_hf_config(&config);
        }
        let template_path = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && template_path.is_file() {
            let text = std::fs::read_to_string(&template_path).map_err(|e| file_err(&template_path, e.to_string()))?;
            tok.chat_template = Some(text);
        }
        Ok(Some(tok))
    }

    fn apply_hf_config(&mut self, config: &serde_json::Value) {
        // Token fields are a string or an AddedToken object with `content`.
        let token = |key: &str| -> Option<(u32, String)> {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some((self.inner.token_to_id(s)?, s.to_string()))
        };
        self.special.bos = token("bos_token");
        self.special.eos = token("eos_token");
        self.special.add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        if let Some(t) = config.get("chat_template").and_then(|v| v.as_str()) {
            self.chat_template = Some(t.to_string());
        }
    }

    /// Encodes `text`; special tokens written in it become their ids. Adds BOS if the model
    /// wants it and `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(lib_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos
            && self.special.add_bos
            && let Some((bos, _)) = &self.special.bos
        {
            ids.push(*bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes `ids` to text; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let vocab = self.vocab_size() as u32;
        if let Some(&bad) = ids.iter().find(|&&id| id >= vocab) {
            return Err(TokenizerError::UnknownId(bad));
        }
        self.inner.decode(ids, skip_special).map_err(lib_err)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The `tokenizers` tokenizer underneath.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
