//! Building a tokenizer from GGUF `tokenizer.ggml.*` metadata.
//!
//! - `gpt2`: byte-level BPE over `tokens` and `merges`, pre-split by the regexes llama.cpp
//!   uses for the named `pre` (each regex splits the pieces of the previous one).
//! - `llama`: SentencePiece BPE over `tokens` and `scores`; merges are derived from the scores
//!   (a pair merges with the priority of the token it forms), unknown bytes fall back to
//!   `<0xNN>` tokens, spaces become `▁`.

use super::{SpecialTokens, Tokenizer, TokenizerError, lib_err};
use crate::format::gguf::GgufFile;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regexes, in order, for a `tokenizer.ggml.pre` name.
fn pre_regexes(pre: &str) -> Result<Vec<&'static str>, TokenizerError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => vec![GPT2_REGEX],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => vec![LLAMA3_REGEX],
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" => vec![QWEN2_REGEX],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2_REGEX]
        }
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

pub fn build(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let meta = |e: crate::format::gguf::GgufError| TokenizerError::Metadata(e.to_string());
    let model = file.get_str("tokenizer.ggml.model").map_err(meta)?.unwrap_or("gpt2").to_string();
    let tokens: Vec<&str> = file
        .get_str_array("tokenizer.ggml.tokens")
        .map_err(meta)?
        .ok_or_else(|| TokenizerError::Metadata("no tokenizer.ggml.tokens".into()))?;
    let types = file.get_i32_array("tokenizer.ggml.token_type").map_err(meta)?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(TokenizerError::Metadata(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let type_of = |i: usize| types.get(i).copied().unwrap_or(1);
    let mut inner = match model.as_str() {
        "gpt2" => {
            let merges = file.get_str_array("tokenizer.ggml.merges").map_err(meta)?.unwrap_or_default();
            let pre = file.get_str("tokenizer.ggml.pre").map_err(meta)?.unwrap_or("default");
            byte_level_bpe(&tokens, &merges, pre)?
        }
        "llama" => {
            let scores = file.get_f32_array("tokenizer.ggml.scores").map_err(meta)?.unwrap_or_default();
            let add_space_prefix = file.get_bool("tokenizer.ggml.add_space_prefix").map_err(meta)?.unwrap_or(true);
            sentencepiece_bpe(&tokens, &scores, &types, add_space_prefix)?
        }
        other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
    };
    // Control and user-defined tokens match as whole strings before the model sees the text.
    let added: Vec<AddedToken> = (0..tokens.len())
        .filter(|&i| matches!(type_of(i), TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|i| AddedToken::from(tokens[i].to_string(), type_of(i) == TYPE_CONTROL))
        .collect();
    inner.add_special_tokens(added).map_err(lib_err)?;
    let id_key = |key: &str| -> Result<Option<(u32, String)>, TokenizerError> {
        let id = file.get_u32(key).map_err(meta)?;
        Ok(id.and_then(|id| Some((id, tokens.get(id as usize)?.to_string()))))
    };
    let special = SpecialTokens {
        bos: id_key("tokenizer.ggml.bos_token_id")?,
        eos: id_key("tokenizer.ggml.eos_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token").map_err(meta)?.unwrap_or(model == "llama"),
    };
    let chat_template = file.get_str("tokenizer.chat_template").map_err(meta)?.map(str::to_string);
    let vocab_size = inner.get_vocab_size(true);
    Ok(Tokenizer { inner, special, chat_template, vocab_size })
}

fn vocab_map(tokens: &[&str]) -> tokenizers::models::bpe::Vocab {
    tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect()
}

fn byte_level_bpe(tokens: &[&str], merges: &[&str], pre: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = merges
        .iter()
        .map(|m| {
            // The separator is the first space after the first character (which may be one).
            let first = m.chars().next().map_or(0, char::len_utf8);
            match m[first..].find(' ') {
                Some(i) => Ok((m[..first + i].to_string(), m[first + i + 1..].to_string())),
                None => Err(TokenizerError::Metadata(format!("merge `{m}` has no space"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab_map(tokens), merges).build().map_err(lib_err)?;
    let mut splits: Vec<PreTokenizerWrapper> = Vec::new();
    for re in pre_regexes(pre)? {
        let split = tokenizers::pre_tokenizers::split::Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(lib_err)?;
        splits.push(split.into());
    }
    let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, false, false);
    splits.push(byte_level.into());
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(tokenizers::pre_tokenizers::sequence::Sequence::new(splits))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    Ok(tok)
}

fn sentencepiece_bpe(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Metadata(format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    let vocab = vocab_map(tokens);
    let normal = |i: usize| !matches!(types.get(i), Some(&(TYPE_CONTROL | TYPE_BYTE | TYPE_UNKNOWN)));
    // Every split of a vocabulary token into two vocabulary tokens is a merge, ranked by the
    // score of the token it forms (higher first), ties by the ids of the pieces.
    let mut merges: Vec<(f32, u32, u32, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate().filter(|(i, _)| normal(*i)) {
        for (cut, _) in t.char_indices().skip(1) {
            if let (Some(&a), Some(&b)) = (vocab.get(&t[..cut]), vocab.get(&t[cut..])) {
                merges.push((scores[i], a, b, cut));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges = merges.iter().map(|&(_, a, b, _)| (tokens[a as usize].to_string(), tokens[b as usize].to_string())).collect();
    let unk = types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| tokens[i].to_string());
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let mut tok = tokenizers::Tokenizer::new(builder.build().map_err(lib_err)?);
    use tokenizers::normalizers::{Prepend, Replace, Sequence};
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(lib_err)?.into());
    tok.with_normalizer(Some(Sequence::new(norms))).map_err(lib_err)?;
    use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as Decoders, strip::Strip};
    let mut decoders: Vec<DecoderWrapper> =
        vec![Replace::new("▁", " ").map_err(lib_err)?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(Decoders::new(decoders)));
    Ok(tok)
}
