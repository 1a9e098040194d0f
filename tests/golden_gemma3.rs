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

use ballast::format::gguf::{GgufFile, GgufWriter, MetaValue};
use ballast::model::{self, LoadOptions};
use ballast::tokenizer::Tokenizer;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The real file rewritten: metadata through `meta` (`None` drops a key), `extra` keys added,
/// tensor `drop` left out.
fn rewritten(dir: &Path, meta: impl Fn(&str, &MetaValue) -> Option<MetaValue>, extra: &[(&str, MetaValue)], drop: &str) -> PathBuf {
    let file = GgufFile::open(&real_model_path(ID)).unwrap();
    let mut w = GgufWriter::new(3);
    for (k, v) in file.metadata() {
        if let Some(v) = meta(k, v) {
            w = w.metadata(k.clone(), v);
        }
    }
    for (k, v) in extra {
        w = w.metadata(*k, v.clone());
    }
    for t in file.tensors().iter().filter(|t| t.name != drop) {
        w = w.tensor(t.name.clone(), &t.dims, t.dtype, file.tensor_data(t));
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.join(format!("edited-{}.gguf", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&path, w.to_bytes()).unwrap();
    path
}

/// A Gemma file that says something we do not run, or lacks a part, stops at load with an
/// error naming it — never a model that runs and computes something else.
#[test]
fn a_gemma_file_we_cannot_run_is_refused_at_load_naming_what() {
    let dir = tempfile::tempdir().unwrap();
    let keep = |_: &str, v: &MetaValue| Some(v.clone());
    let pattern_as_array = MetaValue::Array((0..18).map(|i| MetaValue::Bool(i % 2 == 0)).collect());
    let refused = |path: PathBuf, needle: &str| {
        let err = model::load(&path, LoadOptions::default(), &mut |_, _| {}).err().unwrap_or_else(|| panic!("{needle}: loaded"));
        assert!(err.to_string().contains(needle), "expected `{needle}` in: {err}");
        std::fs::remove_file(path).unwrap();
    };
    refused(rewritten(dir.path(), keep, &[], "blk.3.post_ffw_norm.weight"), "missing tensor `blk.3.post_ffw_norm.weight`");
    refused(rewritten(dir.path(), keep, &[], "blk.0.attn_q_norm.weight"), "missing tensor `blk.0.attn_q_norm.weight`");
    refused(rewritten(dir.path(), keep, &[("gemma3.attention.sliding_window_pattern", pattern_as_array)], ""), "sliding window pattern");
    refused(rewritten(dir.path(), keep, &[("gemma3.attn_logit_softcapping", MetaValue::F32(50.0))], ""), "attention logit soft-capping");
    refused(
        rewritten(dir.path(), |k, v| (k != "gemma3.attention.sliding_window").then(|| v.clone()), &[], ""),
        "missing metadata `gemma3.attention.sliding_window`",
    );
    // The untouched file, rewritten the same way, loads: the edits are what fail.
    let same = rewritten(dir.path(), keep, &[("gemma3.attention.sliding_window_pattern", MetaValue::U32(6))], "");
    let loaded = model::load(&same, LoadOptions::default(), &mut |_, _| {}).unwrap();
    let c = &loaded.config;
    assert_eq!((c.layer_window(0), c.layer_window(4), c.layer_window(5), c.layer_window(17)), (Some(512), Some(512), None, None));
    assert_eq!(loaded.info.eos_token_ids, vec![1, 106], "<eos> and <end_of_turn>");
}

/// A base model has no chat template: `--chat` says so; a plain prompt generates.
#[test]
fn chat_without_a_template_is_a_clear_error_and_completions_work() {
    let model = real_model_path(ID);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["generate", "--model", model.to_str().unwrap(), "--max-tokens", "4"])
            .args(args)
            .env("BALLAST_LOG", "warn")
            .output()
            .unwrap()
    };
    let chat = run(&["--chat", "hello"]);
    let err = String::from_utf8_lossy(&chat.stderr);
    assert!(!chat.status.success() && err.contains("error:") && err.contains("chat template") && !err.contains("panicked"), "{err}");
    let plain = run(&["--prompt", "The river"]);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert!(!String::from_utf8_lossy(&plain.stdout).trim().is_empty());
}
