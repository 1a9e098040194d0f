//! Offline throughput of the engine on the default model: 64 prompts generated one at a time
//! (each submitted after the previous finished) versus all submitted at once, greedy, a fixed
//! number of tokens each. Prints generated tokens per second for both and their ratio.
//!
//! `cargo bench --bench offline` runs the full measurement; under `cargo test` (no `--bench`
//! argument) it runs a 4-prompt smoke version so the harness stays tested.

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig};
use ballast::model::{self, LoadOptions};
use ballast::request::Request;
use std::time::Instant;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (num_prompts, max_tokens) = if full { (64, 64) } else { (4, 4) };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let manifest = ballast::fetch::Manifest::builtin();
    let path = ballast::fetch::ensure(manifest.default_model(), &dir).expect("the default model");
    let threads = CpuBackend::default_threads();
    let backend = CpuBackend::new(threads, Precision::Int16).unwrap();
    let loaded = model::load(&path, LoadOptions::default(), &mut |_, _| {}).unwrap();
    let config = EngineConfig { max_num_seqs: 64, prefix_caching: false, ..EngineConfig::default() };
    let engine = Engine::start(backend, loaded, config).unwrap();
    let tok = engine.tokenizer().unwrap();
    let topics =
        ["the ocean", "a city at night", "mountains", "an old library", "the first snow", "a train journey", "a garden", "the stars"];
    let prompts: Vec<Vec<u32>> = (0..num_prompts)
        .map(|i| {
            let text = format!(
                "<|im_start|>user\nWrite a short paragraph about {} (variation {i}).<|im_end|>\n<|im_start|>assistant\n",
                topics[i % topics.len()]
            );
            tok.encode(&text, true).unwrap()
        })
        .collect();
    let request = |p: &Vec<u32>| Request { ignore_eos: true, ..Request::new(p.clone()).max_tokens(max_tokens) };

    let start = Instant::now();
    let mut sequential = 0;
    for p in &prompts {
        sequential += engine.submit(request(p)).unwrap().collect_output()[0].ids.len();
    }
    let seq_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let streams: Vec<_> = prompts.iter().map(|p| engine.submit(request(p)).unwrap()).collect();
    let batched: usize = streams.into_iter().map(|s| s.collect_output()[0].ids.len()).sum();
    let batch_secs = start.elapsed().as_secs_f64();

    assert_eq!(sequential, num_prompts * max_tokens);
    assert_eq!(batched, sequential);
    let (a, b) = (sequential as f64 / seq_secs, batched as f64 / batch_secs);
    println!(
        "offline: {num_prompts} prompts x {max_tokens} tokens, {threads} threads: one at a time {a:.1} tok/s ({seq_secs:.2} s), \
         batched {b:.1} tok/s ({batch_secs:.2} s), ratio {:.2}x",
        b / a
    );
}
