//! Shared test helpers: the real model (fetched if absent), goldens, fixtures.
#![allow(dead_code)]

pub mod server;

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::generate::{Runner, RunnerOptions};
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions, LoadedModel};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `../shared` beside the checkout, or `$BALLAST_SHARED_DIR` (test binaries carried to
/// another machine, `scripts/gpu-check --prebuilt`).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("BALLAST_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
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

pub fn load_model() -> LoadedModel {
    model::load(&model_path(), LoadOptions::default(), &mut |_, _| {}).expect("load the default model")
}

pub fn load_dir(dir: &Path, options: LoadOptions) -> LoadedModel {
    model::load(dir, options, &mut |_, _| {}).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

pub fn threads() -> usize {
    CpuBackend::default_threads()
}

/// A runner over `loaded` with room for `num_tokens` tokens in its KV pool.
pub fn runner(
    loaded: LoadedModel,
    precision: Precision,
    kv_dtype: KvDtype,
    num_tokens: usize,
    max_batch_tokens: usize,
) -> Runner<CpuBackend> {
    let backend = CpuBackend::new(threads(), precision).unwrap();
    let options = RunnerOptions { max_batch_tokens, block_size: 16, num_blocks: num_tokens.div_ceil(16) + 1, kv_dtype };
    Runner::new(backend, loaded.config, loaded.weights, options).unwrap()
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
