//! The batched, paged forward pass computes each sequence exactly as if it ran alone: the
//! same tokens and bit-identical logits whether a prompt runs alone or beside 15 others,
//! prefilled at once or in small chunks, decoded token by token or re-run as one prefill.

mod common;

use ballast::backend::cpu::Precision;
use ballast::generate::GenRequest;
use ballast::kv::KvDtype;
use ballast::sampler::SamplingParams;
use common::*;

const NEW_TOKENS: usize = 12;

fn golden_prompts() -> Vec<Vec<u32>> {
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    golden["cases"].as_array().unwrap().iter().map(|c| ids(&c["prompt_ids"])).collect()
}

fn request(prompt: &[u32], seed: u64) -> GenRequest {
    // Half greedy, half seeded sampling: both must be reproducible.
    let params = if seed.is_multiple_of(2) {
        SamplingParams::greedy()
    } else {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: Some(seed), ..Default::default() }
    };
    GenRequest { prompt: prompt.to_vec(), params, max_tokens: NEW_TOKENS, stop_ids: vec![] }
}

#[test]
fn a_sequence_computes_the_same_alone_or_in_a_batch_of_sixteen() {
    let prompts = golden_prompts();
    let loaded = load_model();
    let mut runner = runner(loaded, Precision::Int16, KvDtype::F16, 16 * 700, 256);
    let requests: Vec<GenRequest> = prompts.iter().enumerate().map(|(i, p)| request(p, i as u64)).collect();
    let mut batched_logits = vec![Vec::new(); requests.len()];
    let batched = runner.generate(&requests, |i, _, l| batched_logits[i].extend_from_slice(l)).unwrap();
    for (i, r) in requests.iter().enumerate() {
        let mut alone_logits = Vec::new();
        let alone = runner.generate(std::slice::from_ref(r), |_, _, l| alone_logits.extend_from_slice(l)).unwrap();
        assert_eq!(alone[0], batched[i], "prompt {i}: tokens differ");
        assert!(alone_logits == batched_logits[i], "prompt {i}: logits differ");
    }
}

#[test]
fn decoding_token_by_token_equals_one_prefill_of_the_same_tokens() {
    let prompt = &golden_prompts()[4];
    let loaded = load_model();
    let vocab = loaded.config.vocab_size;
    // Chunks of 7 tokens: the prompt is prefilled across several steps and blocks.
    let mut runner = runner(loaded, Precision::Int16, KvDtype::F16, 512, 7);
    let mut decode_logits = Vec::new();
    let out = runner.generate(&[request(prompt, 0)], |_, _, l| decode_logits.extend_from_slice(l)).unwrap();
    let mut all = prompt.clone();
    all.extend_from_slice(&out[0].tokens[..NEW_TOKENS - 1]);
    let prefill_logits = runner.prompt_logits(&all, prompt.len() - 1).unwrap();
    assert_eq!(prefill_logits.len(), NEW_TOKENS * vocab);
    assert!(prefill_logits == decode_logits, "prefill and decode logits differ");
}

#[test]
fn the_reference_path_is_batch_invariant_too() {
    let prompts = golden_prompts();
    let loaded = load_model();
    let mut runner = runner(loaded, Precision::Reference, KvDtype::F32, 4 * 700, 64);
    let requests: Vec<GenRequest> = prompts[..4].iter().map(|p| request(p, 0)).collect();
    let batched = runner.generate(&requests, |_, _, _| {}).unwrap();
    for (r, b) in requests.iter().zip(&batched) {
        assert_eq!(&runner.generate(std::slice::from_ref(r), |_, _, _| {}).unwrap()[0], b);
    }
}
