//! Gemma-3-270M (`gemma3-270m` in the manifest, fetched by name if absent): its tokenizer,
//! a real 262k-entry SentencePiece vocabulary (`llama` model with scores, byte fallback, no
//! space prefix, BOS added), built from the GGUF metadata, against the references made from
//! the same file (`tests/data/goldens/gemma3-270m/`, provenance in `tests/data/README.md`):
//! every tricky string's ids (special tokens written in it parsed) and its decoding, and
//! every golden prompt's ids with BOS; then the model (sliding-window layers, q/k norms,
//! post-norms, GELU) through the engine: greedy agreement with the reference at least
//! llama.cpp's on the same file (one prompt of 668 tokens, past the 512-key window), step-0
//! log-probs close to the reference's, and every prompt bit-identical alone and batched.

mod common;

use ballast::format::gguf::GgufFile;
use ballast::tokenizer::Tokenizer;
use common::*;

const ID: &str = "gemma3-270m";

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(&real_model_path(ID)).unwrap();
    Tokenizer::from_gguf(&file).unwrap()
}

fn golden(file: &str) -> serde_json::Value {
    read_json(&data_dir().join("goldens").join(ID).join(file))
}

#[test]
fn gemma_tokenizer_matches_every_golden_string_and_prompt() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 262_144);
    let special = tok.special();
    assert_eq!((special.bos.as_ref().map(|b| b.0), special.eos.as_ref().map(|e| e.0), special.add_bos), (Some(2), Some(1), true));
    let strings = golden("tokenization.json");
    let cases = strings["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), expected, "encoding {text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), case["decoded"].as_str().unwrap(), "decoding {text:?}");
    }
    let generation = golden("generation.json");
    let cases = generation["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt, true).unwrap(), ids(&case["prompt_ids"]), "prompt of {}", case["id"]);
    }
}

#[test]
fn gemma_matches_its_goldens_and_is_batch_invariant() {
    let engine = golden::engine(ID);
    let batched = golden::check_generation(ID, &engine, 0.05);
    let cases = golden("generation.json")["cases"].as_array().unwrap().clone();
    assert!(cases.iter().any(|c| ids(&c["prompt_ids"]).len() > 512), "a prompt longer than the window");
    for (case, together) in cases.iter().zip(&batched) {
        let alone = engine.submit(golden::greedy(ids(&case["prompt_ids"]), together.ids.len())).unwrap().collect_output().remove(0);
        assert_eq!(alone.ids, together.ids, "{}: tokens changed in a batch", case["id"]);
        assert_eq!(alone.logprobs, together.logprobs, "{}: log-probs changed in a batch", case["id"]);
    }
}
