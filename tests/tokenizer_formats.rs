//! Tokenizers from every source the loader accepts: the HF `tokenizer.json` export of the
//! SmolLM2 tokenizer (must agree with the one built from the GGUF), and a SentencePiece-style
//! llama vocabulary built into a GGUF here (merges from scores, byte fallback, `▁` spaces).

mod common;

use ballast::chat_template::{ChatMessage, ChatTemplate};
use ballast::format::gguf::{GgufFile, GgufWriter, MetaValue};
use ballast::tokenizer::Tokenizer;
use common::*;

#[test]
fn hf_tokenizer_json_matches_the_goldens_and_the_gguf_tokenizer() {
    let dir = data_dir().join("goldens/smollm2-tokenizer");
    let hf = Tokenizer::from_hf_dir(&dir).unwrap().expect("the directory has tokenizer.json");
    let gguf = Tokenizer::from_gguf(&GgufFile::open(&model_path()).unwrap()).unwrap();
    let golden = read_json(&data_dir().join("goldens/public/tokenization.json"));
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(hf.encode(text, true).unwrap(), expected, "{text:?}");
        assert_eq!(gguf.encode(text, true).unwrap(), expected, "{text:?}");
    }
    assert_eq!(hf.special().eos.as_ref().map(|e| e.0), Some(2));
    assert_eq!(hf.special().bos.as_ref().map(|b| b.1.as_str()), Some("<|im_start|>"));
    let (a, b) = (hf.chat_template().unwrap(), gguf.chat_template().unwrap());
    let messages = [ChatMessage::new("user", "Hi there")];
    let render = |t: &str, tok: &Tokenizer| ChatTemplate::new(t).unwrap().render(&messages, true, tok.special()).unwrap();
    assert_eq!(render(a, &hf), render(b, &gguf));
}

#[test]
fn hf_directory_without_a_tokenizer_has_none() {
    let dir = data_dir().join("fixtures/tiny-llama");
    assert!(Tokenizer::from_hf_dir(&dir).unwrap().is_none());
}

/// A tiny SentencePiece vocabulary: control tokens, 256 byte tokens, then pieces whose
/// scores order the merges (longer pieces score higher, so they form last... and win).
fn spm_gguf() -> GgufFile {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "llo", "▁he", "▁hello", "▁w", "or", "▁wor", "ld", "▁world"];
    for p in pieces {
        tokens.push(p.to_string());
        types.push(1);
    }
    let scores: Vec<MetaValue> =
        tokens.iter().enumerate().map(|(i, t)| MetaValue::F32(if i < 259 { 0.0 } else { -(20.0 - t.chars().count() as f32) })).collect();
    let bytes = GgufWriter::new(3)
        .metadata("tokenizer.ggml.model", MetaValue::Str("llama".into()))
        .metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens.into_iter().map(MetaValue::Str).collect()))
        .metadata("tokenizer.ggml.scores", MetaValue::Array(scores))
        .metadata("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()))
        .metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .to_bytes();
    GgufFile::from_bytes(bytes).unwrap()
}

#[test]
fn sentencepiece_vocabularies_merge_by_score_and_fall_back_to_bytes() {
    let tok = Tokenizer::from_gguf(&spm_gguf()).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(tok.encode("hello world", false).unwrap(), vec![id("▁hello"), id("▁world")]);
    // BOS is added by default for llama vocabularies.
    assert_eq!(tok.encode("hello", true).unwrap(), vec![1, id("▁hello")]);
    // 'é' is not in the vocabulary: its UTF-8 bytes become byte tokens.
    let ids = tok.encode("hé", false).unwrap();
    assert_eq!(ids, vec![id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hé");
    assert_eq!(tok.decode(&tok.encode("hello world", false).unwrap(), false).unwrap(), "hello world");
    // Control tokens written in text are recognised.
    assert_eq!(tok.encode("</s>", false).unwrap(), vec![2]);
}

#[test]
fn unknown_tokenizer_models_and_pre_tokenizers_are_errors() {
    let base = |model: &str, pre: &str| {
        let bytes = GgufWriter::new(3)
            .metadata("tokenizer.ggml.model", MetaValue::Str(model.into()))
            .metadata("tokenizer.ggml.pre", MetaValue::Str(pre.into()))
            .metadata("tokenizer.ggml.tokens", MetaValue::Array(vec![MetaValue::Str("a".into())]))
            .metadata("tokenizer.ggml.merges", MetaValue::Array(vec![]))
            .to_bytes();
        Tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap())
    };
    assert!(base("bert", "default").unwrap_err().to_string().contains("bert"));
    assert!(base("gpt2", "made-up").unwrap_err().to_string().contains("made-up"));
    assert!(base("gpt2", "llama3").is_ok());
    assert!(base("gpt2", "qwen2").is_ok());
}
