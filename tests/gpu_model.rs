//! Whole models on the GPU backend: the transformers fixtures against their reference logits
//! and greedy continuations, SmolLM2's greedy continuations against the float32 goldens, and
//! batch invariance. The kernels run in the CUDA emulation, or on a GPU with
//! `BALLAST_TEST_DEVICE=cuda` (`scripts/gpu-check`). Needs `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use ballast::backend::gpu::GpuBackend;
use ballast::backend::gpu::any::AnyDevice;
use ballast::backend::{Backend, GpuOptions};
use ballast::generate::{GenRequest, Runner, RunnerOptions};
use ballast::kv::KvDtype;
use ballast::model::{LoadOptions, LoadedModel};
use ballast::sampler::SamplingParams;
use common::*;

fn gpu_runner(loaded: LoadedModel, num_tokens: usize, max_batch_tokens: usize) -> Runner<GpuBackend<AnyDevice>> {
    // Deterministic: the batch-invariance test needs it, and the emulation runs the GEMV
    // far faster than the tensor-core GEMM (which tests/gpu_ops.rs checks op by op).
    let options = GpuOptions { deterministic: true, ..GpuOptions::default() };
    let backend = GpuBackend::with_options(AnyDevice::for_tests(), options);
    let options = RunnerOptions { max_batch_tokens, block_size: 16, num_blocks: num_tokens.div_ceil(16) + 1, kv_dtype: KvDtype::F16 };
    Runner::new(backend, loaded.config, loaded.weights, options).unwrap()
}

fn greedy(prompt: &[u32], n: usize) -> GenRequest {
    GenRequest { prompt: prompt.to_vec(), params: SamplingParams::greedy(), max_tokens: n, stop_ids: vec![] }
}
#[test]
fn the_transformers_fixtures_match_their_reference_on_the_gpu_backend() {
    for name in ["tiny-llama", "tiny-llama3-rope-sharded", "tiny-qwen2"] {
        let dir = data_dir().join("fixtures").join(name);
        let mut runner = gpu_runner(load_dir(&dir, LoadOptions::default()), 256, 64);
        let expected = read_json(&dir.join("expected.json"));
        for (i, case) in expected["cases"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["prompt_ids"]);
            let logits = runner.prompt_logits(&prompt, 0).unwrap();
            let want = expected_logits(&dir, i);
            let max_diff = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let err = max_diff / want.iter().map(|y| y.abs()).fold(0.0, f32::max);
            // bf16 weights, f32 activations, an f16 KV cache.
            assert!(err <= 2e-3, "{name} case {i}: relative error {err}");
            let out = runner.generate(&[greedy(&prompt, 16)], |_, _, _| {}).unwrap();
            assert_eq!(out[0].tokens, ids(&case["greedy_16"]), "{name} case {i}: greedy continuation");
        }
    }
}

#[test]
fn smollm2_greedy_continuations_on_the_gpu_backend_match_the_goldens() {
    const TOKENS: usize = 16;
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    // The emulation runs SmolLM2 at about a token a second: its two shortest prompts there,
    // all sixteen on a GPU.
    let mut runner = gpu_runner(load_model(), 16 * 800, 512);
    let mut cases = golden["cases"].as_array().unwrap().clone();
    if runner.backend().device().is_emulated() {
        cases.sort_by_key(|c| c["prompt_ids"].as_array().unwrap().len());
        cases.truncate(2);
    }
    let requests: Vec<GenRequest> = cases.iter().map(|c| greedy(&ids(&c["prompt_ids"]), TOKENS)).collect();
    let started = std::time::Instant::now();
    let outputs = runner.generate(&requests, |_, _, _| {}).unwrap();
    eprintln!("{} prompts x {TOKENS} tokens in {:?} on {}", cases.len(), started.elapsed(), runner.backend().name());
    for (case, out) in cases.iter().zip(&outputs) {
        let reference = ids(&case["greedy"]["ids"]);
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        let n = agreement(&out.tokens, &reference[..TOKENS.min(reference.len())], eos);
        assert!(n >= TOKENS.min(reference.len()), "{}: {:?} vs {:?}", case["id"], out.tokens, &reference[..TOKENS]);
    }
}

#[test]
fn a_sequence_computes_the_same_alone_or_in_a_batch_on_the_gpu_backend() {
    // Batch invariance holds by construction (no kernel mixes tokens); this checks it, bit
    // for bit, with prompts of different lengths and some long enough for split attention.
    let dir = data_dir().join("fixtures").join("tiny-llama");
    let mut runner = gpu_runner(load_dir(&dir, LoadOptions::default()), 16 * 200, 64);
    let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| (0..3 + 40 * i).map(|t| (t * 7 + i) % 500 + 3).collect()).collect();
    let requests: Vec<GenRequest> = prompts.iter().map(|p| greedy(p, 8)).collect();
    let mut batched_logits = vec![Vec::new(); requests.len()];
    let batched = runner.generate(&requests, |i, _, l| batched_logits[i].extend_from_slice(l)).unwrap();
    for (i, r) in requests.iter().enumerate() {
        let mut alone_logits = Vec::new();
        let alone = runner.generate(std::slice::from_ref(r), |_, _, l| alone_logits.extend_from_slice(l)).unwrap();
        assert_eq!(alone[0].tokens, batched[i].tokens, "prompt {i}: tokens differ");
        assert!(alone_logits == batched_logits[i], "prompt {i}: logits differ");
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
