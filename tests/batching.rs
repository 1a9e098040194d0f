//! The batched, paged forward pass computes each sequence exactly as if it ran alone: through
//! the engine, the same tokens and bit-identical log-probs (the top 20 and the chosen token's,
//! each normalised over the whole vocabulary) whether a prompt runs alone or beside 15 others,
//! prefilled at once or in small chunks; and decoding token by token equals one teacher-forced
//! prefill of the same tokens.

mod common;

use ballast::backend::cpu::Precision;
use ballast::kv::KvDtype;
use ballast::request::Request;
use ballast::sampler::{self, SamplingParams};
use common::*;

const NEW_TOKENS: usize = 12;

fn golden_prompts() -> Vec<Vec<u32>> {
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    golden["cases"].as_array().unwrap().iter().map(|c| ids(&c["prompt_ids"])).collect()
}

fn request(prompt: &[u32], seed: u64) -> Request {
    // Half greedy, half seeded sampling: both must be reproducible.
    let sampling = if seed.is_multiple_of(2) {
        SamplingParams::greedy()
    } else {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: Some(seed), ..Default::default() }
    };
    Request { sampling, logprobs: Some(20), ..greedy_request(prompt, NEW_TOKENS) }
}

#[test]
fn a_sequence_computes_the_same_alone_or_in_a_batch_of_sixteen() {
    let prompts = golden_prompts();
    let engine = cpu_engine(load_model(), Precision::Int16, KvDtype::F16, 256, 256);
    let requests: Vec<Request> = prompts.iter().enumerate().map(|(i, p)| request(p, i as u64)).collect();
    let batched = run_together(&engine, requests.clone());
    assert!(engine.metrics().steps < (16 * NEW_TOKENS) as u64, "the sixteen shared steps: {:?}", engine.metrics());
    for (i, r) in requests.into_iter().enumerate() {
        let alone = run_together(&engine, vec![r]).remove(0);
        assert_eq!(alone.ids, batched[i].ids, "prompt {i}: tokens differ");
        assert_eq!(alone.ids.len(), NEW_TOKENS);
        assert!(alone.logprobs == batched[i].logprobs, "prompt {i}: log-probs differ");
    }
}

#[test]
fn decoding_token_by_token_equals_one_prefill_of_the_same_tokens() {
    let prompt = &golden_prompts()[4];
    let loaded = load_model();
    let vocab = loaded.config.vocab_size;
    // Chunks of 7 tokens: the prompt is prefilled across several steps and blocks.
    let engine = cpu_engine(load_model(), Precision::Int16, KvDtype::F16, 7, 64);
    let out = run_together(&engine, vec![request(prompt, 0)]).remove(0);
    let mut all = prompt.clone();
    all.extend_from_slice(&out.ids[..NEW_TOKENS - 1]);
    let prefill_logits = teacher(loaded, Precision::Int16, KvDtype::F16, 512, 7).prompt_logits(&all, prompt.len() - 1).unwrap();
    assert_eq!(prefill_logits.len(), NEW_TOKENS * vocab);
    for (step, (row, decoded)) in prefill_logits.chunks(vocab).zip(&out.logprobs).enumerate() {
        let prefilled = sampler::logprobs(row, decoded.id, 20);
        assert!(prefilled == *decoded, "step {step}: prefill and decode differ: {prefilled:?} vs {decoded:?}");
    }
}

#[test]
fn the_reference_path_is_batch_invariant_too() {
    let prompts = golden_prompts();
    let engine = cpu_engine(load_model(), Precision::Reference, KvDtype::F32, 64, 160);
    let requests: Vec<Request> = prompts[..4].iter().map(|p| request(p, 0)).collect();
    let batched = run_together(&engine, requests.clone());
    for (r, b) in requests.into_iter().zip(&batched) {
        let alone = run_together(&engine, vec![r]).remove(0);
        assert_eq!((&alone.ids, &alone.logprobs), (&b.ids, &b.logprobs));
    }
}
