//! The real models' golden checks, shared by the tests of each family: the engine as the
//! server runs it (default int16 path, f16 KV cache) against the float32 references in
//! `tests/data/goldens/<id>/`, with llama.cpp's agreement on the same file as the bar.

use super::*;
use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig};
use ballast::model::{self, LoadOptions};
use ballast::request::{Choice, Request};

pub fn golden(id: &str, file: &str) -> serde_json::Value {
    read_json(&data_dir().join("goldens").join(id).join(file))
}

pub fn engine(id: &str) -> Engine {
    engine_at(id, Precision::Int16)
}

/// [`engine`] with another CPU arithmetic.
pub fn engine_at(id: &str, precision: Precision) -> Engine {
    let loaded = model::load(&real_model_path(id), LoadOptions::default(), &mut |_, _| {}).unwrap();
    let backend = CpuBackend::new(threads(), precision).unwrap();
    let config = EngineConfig { kv_cache_bytes: 256 << 20, max_num_batched_tokens: 512, ..EngineConfig::default() };
    Engine::start(backend, loaded, config).unwrap()
}

/// Greedy, EOS ignored (the references never stop), with the top-5 log-probs of each step.
pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request { ignore_eos: true, logprobs: Some(5), ..Request::new(prompt).max_tokens(max_tokens) }
}

/// llama.cpp's agreement with the reference for a case, counted like ours.
pub fn llama_cpp_agreement(case: &serde_json::Value, n_new: usize) -> usize {
    let l = &case["llama_cpp"];
    if l["match_until_ref_eos"].as_bool() == Some(true) {
        return n_new;
    }
    l["first_divergence"].as_u64().map_or(n_new, |d| d as usize)
}

pub fn check_tokenizer(id: &str, engine: &Engine) {
    let tok = engine.tokenizer().unwrap();
    let strings = golden(id, "tokenization.json");
    for case in strings["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids"]), "{id}: encoding {text:?}");
    }
    for case in golden(id, "generation.json")["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt, false).unwrap(), ids(&case["prompt_ids"]), "{id}: prompt of {}", case["id"]);
    }
}

/// Runs every golden case batched together; asserts the agreement and the step-0 log-probs;
/// returns the outputs.
pub fn check_generation(id: &str, engine: &Engine, max_step0_logprob_diff: f32) -> Vec<Choice> {
    let run = run_generation(id, engine);
    assert!(run.ours >= run.peer, "{id}: ours {} < llama.cpp {} tokens in all", run.ours, run.peer);
    assert!(run.worst < max_step0_logprob_diff, "{id}: step-0 log-probs drift {} from the reference", run.worst);
    run.outputs
}

/// The golden cases' outputs, with the tokens agreeing with the reference (ours and
/// llama.cpp's, summed over the cases) and our worst step-0 top-5 log-prob difference.
pub struct GoldenRun {
    pub outputs: Vec<Choice>,
    pub ours: usize,
    pub peer: usize,
    pub worst: f32,
}

/// Runs every golden case batched together and asserts each step-0 top-1 is the reference's.
pub fn run_generation(id: &str, engine: &Engine) -> GoldenRun {
    let goldens = golden(id, "generation.json");
    let n_new = goldens["meta"]["n_new_tokens"].as_u64().unwrap() as usize;
    let cases = goldens["cases"].as_array().unwrap();
    let streams: Vec<_> = cases.iter().map(|c| engine.submit(greedy(ids(&c["prompt_ids"]), n_new)).unwrap()).collect();
    let outputs: Vec<Choice> = streams.into_iter().map(|s| s.collect_output().remove(0)).collect();
    let (mut ours_total, mut peer_total, mut worst) = (0, 0, 0.0f32);
    for (case, out) in cases.iter().zip(&outputs) {
        let reference = ids(&case["greedy"]["ids"]);
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        assert_eq!(out.ids.len(), n_new);
        let ours = agreement(&out.ids, &reference, eos).min(n_new);
        let peer = llama_cpp_agreement(case, n_new);
        // Step 0: our log-probs of the reference's top five against the reference's.
        let top5 = &case["top5"][0];
        let lse = top5["logsumexp"].as_f64().unwrap() as f32;
        let step0 = &out.logprobs[0];
        for (&t, &logit) in ids(&top5["ids"]).iter().zip(&floats(&top5["logits"])) {
            if let Some(&(_, ours_lp)) = step0.top.iter().find(|(tid, _)| *tid == t) {
                worst = worst.max((ours_lp - (logit - lse)).abs());
            }
        }
        assert_eq!(step0.top[0].0, ids(&top5["ids"])[0], "{id} {}: step-0 top-1", case["id"]);
        eprintln!("{id} {:<32} ours {ours:>2}  llama.cpp {peer:>2}", case["id"].as_str().unwrap());
        ours_total += ours;
        peer_total += peer;
    }
    let n = cases.len() as f64;
    eprintln!(
        "{id}: mean agreement over {n_new} tokens: ours {:.2}, llama.cpp {:.2}; worst step-0 top-5 log-prob difference {worst:.4}",
        ours_total as f64 / n,
        peer_total as f64 / n
    );
    GoldenRun { outputs, ours: ours_total, peer: peer_total, worst }
}
