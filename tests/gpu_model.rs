//! Whole models on the GPU backend: the transformers fixtures against their reference logits
//! and greedy continuations, SmolLM2's and Gemma 3's greedy continuations against the
//! float32 goldens, and batch invariance. The kernels run in the CUDA emulation, or on a GPU with
//! `BALLAST_TEST_DEVICE=cuda` (`scripts/gpu-check`). Needs `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use ballast::backend::GpuOptions;
use ballast::backend::gpu::GpuBackend;
use ballast::backend::gpu::any::AnyDevice;
use ballast::engine::Engine;
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions, LoadedModel};
use ballast::request::Request;
use ballast::teacher::{TeacherForced, TeacherOptions};
use common::*;

/// Deterministic: the batch-invariance test needs it, and the emulation runs the GEMV far
/// faster than the tensor-core GEMM (which tests/gpu_ops.rs checks op by op).
fn gpu_backend() -> GpuBackend<AnyDevice> {
    GpuBackend::with_options(AnyDevice::for_tests(), GpuOptions { deterministic: true, ..GpuOptions::default() })
}

fn gpu_teacher(loaded: LoadedModel, num_tokens: usize, max_batch_tokens: usize) -> TeacherForced<GpuBackend<AnyDevice>> {
    let options = TeacherOptions { max_batch_tokens, block_size: 16, num_blocks: num_tokens.div_ceil(16) + 1, kv_dtype: KvDtype::F16 };
    TeacherForced::new(gpu_backend(), loaded.config, loaded.weights, options).unwrap()
}

fn gpu_engine(loaded: LoadedModel, max_batch_tokens: usize, kv_mib: usize) -> Engine {
    engine_on(gpu_backend(), loaded, KvDtype::F16, max_batch_tokens, kv_mib)
}
#[test]
fn the_transformers_fixtures_match_their_reference_on_the_gpu_backend() {
    for name in ["tiny-llama", "tiny-llama3-rope-sharded", "tiny-qwen2"] {
        let dir = data_dir().join("fixtures").join(name);
        let mut teacher = gpu_teacher(load_dir(&dir, LoadOptions::default()), 256, 64);
        let engine = gpu_engine(load_dir(&dir, LoadOptions::default()), 64, 8);
        let expected = read_json(&dir.join("expected.json"));
        for (i, case) in expected["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let logits = teacher.prompt_logits(&prompt, 0).unwrap();
            let want = expected_logits(&dir, i);
            let max_diff = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let err = max_diff / want.iter().map(|y| y.abs()).fold(0.0, f32::max);
            // bf16 weights, f32 activations, an f16 KV cache.
            assert!(err <= 2e-3, "{name} case {i}: relative error {err}");
            let out = run_together(&engine, vec![greedy_request(&prompt, 16)]).remove(0);
            assert_eq!(out.ids, ids(&case["greedy_16"]), "{name} case {i}: greedy continuation");
        }
    }
}

#[test]
fn smollm2_greedy_continuations_on_the_gpu_backend_match_the_goldens() {
    const TOKENS: usize = 16;
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    // The emulation runs SmolLM2 at about a token a second: its two shortest prompts there,
    // all sixteen on a GPU.
    let backend = gpu_backend();
    let emulated = backend.device().is_emulated();
    let engine = engine_on(backend, load_model(), KvDtype::F16, 512, 256);
    let mut cases = golden["cases"].as_array().unwrap().clone();
    if emulated {
        cases.sort_by_key(|c| c["prompt_ids"].as_array().unwrap().len());
        cases.truncate(2);
    }
    let requests: Vec<Request> = cases.iter().map(|c| greedy_request(&ids(&c["prompt_ids"]), TOKENS)).collect();
    let started = std::time::Instant::now();
    let outputs = run_together(&engine, requests);
    eprintln!("{} prompts x {TOKENS} tokens in {:?} on {}", cases.len(), started.elapsed(), engine.backend_name());
    for (case, out) in cases.iter().zip(&outputs) {
        let reference = ids(&case["greedy"]["ids"]);
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        let n = agreement(&out.ids, &reference[..TOKENS.min(reference.len())], eos);
        assert!(n >= TOKENS.min(reference.len()), "{}: {:?} vs {:?}", case["id"], out.ids, &reference[..TOKENS]);
    }
}

#[test]
fn gemma_greedy_continuations_on_the_gpu_backend_agree_with_the_goldens_as_on_the_cpu() {
    let id = "gemma3-270m";
    let golden = read_json(&data_dir().join("goldens").join(id).join("generation.json"));
    let loaded = model::load(&real_model_path(id), LoadOptions::default(), &mut |_, _| {}).unwrap();
    // The emulation runs the 262k-entry output matrix slowly: the shortest prompt and four
    // tokens there (the sliding window is checked op by op in tests/gpu_ops.rs); every
    // prompt, the 668-token one past the window included, and 48 tokens on a GPU.
    let backend = gpu_backend();
    let emulated = backend.device().is_emulated();
    let engine = engine_on(backend, loaded, KvDtype::F16, 512, 64);
    let mut cases = golden["cases"].as_array().unwrap().clone();
    let tokens = if emulated { 4 } else { golden["meta"]["n_new_tokens"].as_u64().unwrap() as usize };
    if emulated {
        cases.sort_by_key(|c| c["prompt_ids"].as_array().unwrap().len());
        cases.truncate(1);
    }
    let requests: Vec<Request> =
        cases.iter().map(|c| Request { ignore_eos: true, ..greedy_request(&ids(&c["prompt_ids"]), tokens) }).collect();
    let started = std::time::Instant::now();
    let outputs = run_together(&engine, requests);
    eprintln!("{} prompts x {tokens} tokens in {:?} on {}", cases.len(), started.elapsed(), engine.backend_name());
    let (mut ours, mut peer) = (0, 0);
    for (case, out) in cases.iter().zip(&outputs) {
        let reference = ids(&case["greedy"]["ids"]);
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        ours += agreement(&out.ids, &reference[..tokens], eos).min(tokens);
        peer += golden::llama_cpp_agreement(case, tokens).min(tokens);
    }
    assert!(ours >= peer, "{id} on {}: {ours} tokens agree, llama.cpp {peer}", engine.backend_name());
}

#[test]
fn a_sequence_computes_the_same_alone_or_in_a_batch_on_the_gpu_backend() {
    // Batch invariance holds by construction (no kernel mixes tokens); this checks it, bit
    // for bit, with prompts of different lengths and some long enough for split attention.
    let dir = data_dir().join("fixtures").join("tiny-llama");
    let engine = gpu_engine(load_dir(&dir, LoadOptions::default()), 64, 16);
    let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| (0..3 + 40 * i).map(|t| (t * 7 + i) % 500 + 3).collect()).collect();
    // Log-probs (the top 20, normalised over the whole vocabulary) compare the logits.
    let requests: Vec<Request> = prompts.iter().map(|p| Request { logprobs: Some(20), ..greedy_request(p, 8) }).collect();
    let batched = run_together(&engine, requests.clone());
    for (i, r) in requests.into_iter().enumerate() {
        let alone = run_together(&engine, vec![r]).remove(0);
        assert_eq!(alone.ids, batched[i].ids, "prompt {i}: tokens differ");
        assert!(alone.logprobs == batched[i].logprobs, "prompt {i}: log-probs differ");
    }
}

#[test]
fn the_engine_samples_greedy_rows_on_the_device_and_the_rest_on_the_host() {
    use ballast::engine::{Engine, EngineConfig};
    use ballast::request::Request;
    let dir = data_dir().join("fixtures").join("tiny-llama");
    let expected = read_json(&dir.join("expected.json"));
    let case = &expected["cases"][0];
    let prompt = ids(&case["prompt_ids"]);
    let options = GpuOptions { deterministic: true, ..GpuOptions::default() };
    let device = std::sync::Arc::new(AnyDevice::for_tests());
    let backend = GpuBackend::with_options(device.clone(), options);
    let config = EngineConfig { kv_cache_bytes: 8 << 20, ..EngineConfig::default() };
    let engine = Engine::start(backend, load_dir(&dir, LoadOptions::default()), config).unwrap();
    let greedy = |r: Request| Request { ignore_eos: true, ..r.max_tokens(16) };
    // Plain greedy: the device's argmax picks every token (only ids are copied back).
    let on_device = engine.submit(greedy(Request::new(prompt.clone()))).unwrap().collect_output().remove(0);
    assert_eq!(on_device.ids, ids(&case["greedy_16"]));
    let argmax_launches = device.launches("argmax");
    assert!(argmax_launches.is_none_or(|n| n == 16), "one device argmax per token: {argmax_launches:?}");
    // With logprobs the row's logits come to the host: the same tokens, plus logprobs.
    let on_host = engine.submit(Request { logprobs: Some(2), ..greedy(Request::new(prompt.clone())) }).unwrap().collect_output().remove(0);
    assert_eq!(on_host.ids, on_device.ids);
    assert_eq!(on_host.logprobs.len(), 16);
    assert_eq!(device.launches("argmax"), argmax_launches, "logprobs need the host's logits");
    // Beside a sampled request (host path for the whole step) greedy stays greedy.
    let mut sampled = greedy(Request::new(prompt.clone()));
    sampled.sampling.temperature = 0.9;
    sampled.sampling.seed = Some(3);
    let a = engine.submit(sampled).unwrap();
    let b = engine.submit(greedy(Request::new(prompt))).unwrap();
    assert_eq!(a.collect_output().remove(0).ids.len(), 16);
    assert_eq!(b.collect_output().remove(0).ids, on_device.ids);
}

/// Sliding-window pages on the GPU backend: tiny-llama given a 20-key window on its first
/// layer (one page group), prompts of 40 to 200 tokens prefilled in chunks of 32 and batched:
/// the same tokens as keeping every block (the local plan's holes, planned as block 0, are
/// never read by the attention kernel), and every page returned.
#[test]
fn window_pages_on_the_gpu_backend_change_no_output() {
    let dir = data_dir().join("fixtures").join("tiny-llama");
    let run = |window_pages: bool| {
        let mut loaded = load_dir(&dir, LoadOptions::default());
        let theta = loaded.config.rope.theta;
        loaded.config.features.sliding_window = Some(model::SlidingWindow { size: 20, pattern: 2, local_rope_theta: theta });
        let config = ballast::engine::EngineConfig {
            max_num_batched_tokens: 32,
            max_step_tokens_while_decoding: usize::MAX,
            kv_cache_bytes: 1 << 20,
            window_pages,
            ..ballast::engine::EngineConfig::default()
        };
        let engine = Engine::start(gpu_backend(), loaded, config).unwrap();
        let requests = [40u32, 120, 200, 75]
            .iter()
            .map(|&len| greedy_request(&(0..len).map(|i| (i * 7 + len) % 500 + 3).collect::<Vec<_>>(), 24))
            .collect();
        let out: Vec<Vec<u32>> = run_together(&engine, requests).into_iter().map(|c| c.ids).collect();
        wait_for(&engine, "every page returned", |m| m.kv_blocks_used == 0);
        out
    };
    let paged = run(true);
    assert!(paged.iter().all(|ids| ids.len() == 24));
    assert_eq!(paged, run(false));
}
