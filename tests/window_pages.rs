//! Sliding-window layers that keep only their window's KV pages (`EngineConfig::window_pages`,
//! `kv::WindowGroups`), on the default model given Gemma 3's layer pattern (two local layers
//! to one global, a 40-key window, so short prompts cross it): outputs bit-identical to the
//! same model keeping every block (the window only a mask), batched, chunked, forked, drafted,
//! preempted and resumed from the prefix cache; nothing leaked; and the longest sequence a
//! budget holds is much longer.

mod common;

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig, SubmitError};
use ballast::model::{LoadedModel, SlidingWindow};
use ballast::request::{Choice, Request};
use ballast::sampler::SamplingParams;
use ballast::speculative::SpeculativeConfig;
use common::*;

const WINDOW: usize = 40;

fn windowed_model() -> LoadedModel {
    let mut m = load_model();
    let theta = m.config.rope.theta;
    m.config.features.sliding_window = Some(SlidingWindow { size: WINDOW, pattern: 3, local_rope_theta: theta / 4.0 });
    m
}

fn start(window_pages: bool, kv_mib: usize, speculative: Option<SpeculativeConfig>) -> Engine {
    let config = EngineConfig {
        kv_cache_bytes: kv_mib << 20,
        // Prompts prefill in chunks of 48: each chunk's first rows see the window before it.
        max_num_batched_tokens: 48,
        max_step_tokens_while_decoding: usize::MAX,
        window_pages,
        speculative,
        ..EngineConfig::default()
    };
    Engine::start(CpuBackend::new(threads(), Precision::Int16).unwrap(), windowed_model(), config).unwrap()
}

/// Prompts of 30 to 200 tokens, some sharing a 100-token prefix, and repetitive enough for
/// prompt-lookup drafts to be accepted now and then.
fn prompts() -> Vec<Vec<u32>> {
    let mut rng = ballast::testing::Rng::new(7);
    let shared: Vec<u32> = (0..100).map(|_| 200 + rng.below(3000) as u32).collect();
    let mut out = Vec::new();
    for (i, len) in [30, 120, 200, 75, 160, 140].into_iter().enumerate() {
        let mut p = if i % 2 == 1 { shared.clone() } else { Vec::new() };
        while p.len() < len {
            let phrase: Vec<u32> = (0..6).map(|_| 200 + rng.below(3000) as u32).collect();
            p.extend(phrase.iter().chain(&phrase));
        }
        p.truncate(len);
        out.push(p);
    }
    out
}

fn requests() -> Vec<Request> {
    prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let r = Request { ignore_eos: true, logprobs: Some(2), ..Request::new(p).max_tokens(70) };
            // One sampled request with two choices: its table is forked.
            if i == 3 {
                Request { n: 2, ..r.sampling(SamplingParams { temperature: 0.8, seed: Some(11), ..SamplingParams::default() }) }
            } else {
                r
            }
        })
        .collect()
}

/// Every choice of every request, submitted together.
fn run_all(engine: &Engine, requests: Vec<Request>) -> Vec<Vec<Choice>> {
    let streams: Vec<_> = requests.into_iter().map(|r| engine.submit(r).unwrap()).collect();
    streams.into_iter().map(|s| s.collect_output()).collect()
}

fn ids(choices: &[Vec<Choice>]) -> Vec<Vec<Vec<u32>>> {
    choices.iter().map(|c| c.iter().map(|c| c.ids.clone()).collect()).collect()
}

#[test]
fn window_pages_change_no_output_and_leak_nothing() {
    // The reference: every layer keeps every block, each request alone.
    let full = start(false, 64, None);
    let reference: Vec<Vec<Choice>> = requests().into_iter().map(|r| full.submit(r).unwrap().collect_output()).collect();
    drop(full);

    let paged = start(true, 64, None);
    let together = run_all(&paged, requests());
    assert_eq!(ids(&together), ids(&reference), "batched with window pages");
    for (a, b) in together.iter().flatten().zip(reference.iter().flatten()) {
        assert_eq!(a.logprobs, b.logprobs, "log-probs bit for bit");
    }
    // Again: the shared prefixes and whole prompts now hit the cache, local pages included.
    let hits_before = paged.metrics().prefix_cache.hit_tokens;
    let again = run_all(&paged, requests());
    assert_eq!(ids(&again), ids(&reference), "resumed from the prefix cache");
    assert!(paged.metrics().prefix_cache.hit_tokens > hits_before + 500, "the second run hit the cache");
    wait_for(&paged, "every page returned", |m| m.kv_blocks_used == 0);
    drop(paged);

    // Prompt-lookup drafts roll back rejected rows in every table.
    let spec = SpeculativeConfig { num_speculative_tokens: 4, disable_by_batch_size: 64, ..SpeculativeConfig::default() };
    let drafted = start(true, 64, Some(spec));
    assert_eq!(ids(&run_all(&drafted, requests())), ids(&reference), "with n-gram drafts");
    assert!(drafted.metrics().speculative.iter().map(|c| c.accepted).sum::<u64>() > 0, "some drafts were accepted");
    wait_for(&drafted, "every page returned", |m| m.kv_blocks_used == 0);
    drop(drafted);

    // A pool of 4 MiB holds about a third of what they need at once: preemption and
    // recomputation (or a cache hit) of the preempted, the same outputs.
    let tight = start(true, 4, None);
    let squeezed = run_all(&tight, requests());
    assert_eq!(ids(&squeezed), ids(&reference), "preempted and resumed");
    assert!(tight.metrics().preemptions > 0, "the small pool preempted");
    wait_for(&tight, "every page returned", |m| m.kv_blocks_used == 0);
}

/// The longest sequence a budget holds: the local layers (two thirds of them) keep a bounded
/// number of pages, so it is more than twice full attention's, and a prompt of that length
/// runs where full attention refuses it.
#[test]
fn a_budget_holds_much_longer_sequences() {
    let (full, paged) = (start(false, 8, None), start(true, 8, None));
    let (a, b) = (full.kv_capacity(), paged.kv_capacity());
    assert!(b > 2 * a, "{b} tokens with window pages, {a} without");
    let prompt: Vec<u32> = (0..(a + 100) as u32).map(|i| 200 + i % 3000).collect();
    let request = || Request { ignore_eos: true, ..Request::new(prompt.clone()).max_tokens(8) };
    assert!(matches!(full.submit(request()), Err(SubmitError::ExceedsKvCache { .. })));
    let out = paged.submit(request()).unwrap().collect_output();
    assert_eq!(out[0].ids.len(), 8);
}
