//! Speculative decoding by prompt lookup on the real default model: output is the same token
//! for token with and without it (greedy and seeded), sampled tokens after a verified draft
//! follow the model's own distribution, drafts are withheld under load, and rolled-back rows
//! leak no block under preemption and cancellation.

mod common;

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig};
use ballast::kv::KvDtype;
use ballast::request::{Choice, Priority, Request};
use ballast::sampler::SamplingParams;
use ballast::speculative::{SpecCounts, SpeculativeConfig};
use common::*;

fn start(speculative: Option<SpeculativeConfig>, kv_mib: usize) -> Engine {
    let backend = CpuBackend::new(threads(), Precision::Int16).unwrap();
    let config = EngineConfig { kv_cache_bytes: kv_mib << 20, max_num_batched_tokens: 256, speculative, ..EngineConfig::default() };
    Engine::start(backend, load_model(), config).unwrap()
}

fn ngram(k: usize) -> Option<SpeculativeConfig> {
    Some(SpeculativeConfig { num_speculative_tokens: k, disable_by_batch_size: 64, ..SpeculativeConfig::default() })
}

fn total(engine: &Engine) -> SpecCounts {
    engine.metrics().speculative.into_iter().sum()
}

/// Prompts whose continuations repeat what they hold (drafts get accepted), and the golden
/// prompts (drafts mostly do not).
fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let tok = engine.tokenizer().unwrap();
    let mut out: Vec<Vec<u32>> = [
        "Copy the list exactly.\nList: apples, pears, plums, cherries, grapes, lemons.\nCopy: apples, pears,",
        "fn add(a: u32, b: u32) -> u32 { a + b }\nfn sub(a: u32, b: u32) -> u32 { a - b }\nfn mul(a: u32, b: u32) -> u32 {",
        "The cat sat on the mat. The cat sat on the mat. The cat",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    ]
    .iter()
    .map(|t| tok.encode(t, true).unwrap())
    .collect();
    let cases = read_json(&data_dir().join("goldens/public/generation.json"));
    out.extend(cases["cases"].as_array().unwrap().iter().take(8).map(|c| ids(&c["prompt_ids"])));
    out
}

fn outputs(engine: &Engine, requests: &[Request], together: bool) -> Vec<Choice> {
    if together {
        run_together(engine, requests.to_vec())
    } else {
        requests.iter().map(|r| engine.submit(r.clone()).unwrap().collect_output().remove(0)).collect()
    }
}

/// Greedy, seeded (with penalties) and log-prob requests, alone and together: the same tokens
/// and log-probs with prompt lookup as without, and some drafts were accepted.
#[test]
fn output_is_unchanged_token_for_token() {
    let off = start(None, 64);
    let on = start(ngram(4), 64);
    let prompts = prompts(&off);
    let mut requests: Vec<Request> = prompts.iter().map(|p| greedy_request(p, 40)).collect();
    for (i, p) in prompts.iter().enumerate().take(6) {
        let sampling = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            frequency_penalty: if i % 2 == 0 { 0.3 } else { 0.0 },
            seed: Some(i as u64),
            ..Default::default()
        };
        requests.push(Request { sampling, ..greedy_request(p, 40) });
    }
    requests.push(Request { logprobs: Some(3), ..greedy_request(&prompts[0], 24) });
    let reference = outputs(&off, &requests, false);
    for together in [false, true] {
        let before = total(&on);
        let got = outputs(&on, &requests, together);
        for (i, (a, b)) in reference.iter().zip(&got).enumerate() {
            assert_eq!(a.ids, b.ids, "request {i} (together: {together}) changed with speculation");
            assert_eq!(a.logprobs, b.logprobs, "request {i}: log-probs changed");
            assert_eq!(a.text, b.text);
        }
        let counts = total(&on);
        let (drafted, accepted) = (counts.drafted - before.drafted, counts.accepted - before.accepted);
        eprintln!("together {together}: {accepted} of {drafted} drafted tokens accepted");
        assert!(accepted > 20 && accepted < drafted, "drafts accepted and rejected: {counts:?}");
    }
    wait_for(&on, "every block returned", |m| m.kv_blocks_used == 0 && m.running == 0);
}

/// Chi-square of `observed` counts of `n` draws against the softmax of `logits` at
/// `temperature`, over the tokens expected at least 5 times and the rest together; and the
/// number of bins.
fn chi_square(observed: &std::collections::HashMap<u32, usize>, n: usize, logits: &[f32], temperature: f32) -> (f64, usize) {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let weight = |l: f32| (((l - max) / temperature) as f64).exp();
    let z: f64 = logits.iter().map(|&l| weight(l)).sum();
    let (mut chi2, mut bins) = (0.0, 0);
    let (mut rest_expected, mut rest_observed) = (n as f64, n);
    for (id, &l) in logits.iter().enumerate() {
        let e = weight(l) / z * n as f64;
        if e >= 5.0 {
            let o = *observed.get(&(id as u32)).unwrap_or(&0);
            chi2 += (o as f64 - e).powi(2) / e;
            rest_expected -= e;
            rest_observed -= o;
            bins += 1;
        }
    }
    if rest_expected >= 5.0 {
        chi2 += (rest_observed as f64 - rest_expected).powi(2) / rest_expected;
        bins += 1;
    } else {
        assert!(rest_observed <= 5, "{rest_observed} draws of tokens the model makes unlikely");
    }
    (chi2, bins)
}

/// Where drafts are verified, sampled tokens still follow the model's distribution: 720
/// seeded three-token continuations of a repeated phrase (the second and third tokens come
/// from steps with prompt-lookup drafts), against the exact softmax of the teacher-forced
/// logits at the most common contexts (chi-square, p = 0.001).
#[test]
fn sampled_tokens_with_drafts_follow_the_model() {
    let engine = start(ngram(3), 64);
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode("one two three four one two three four one two three four one", true).unwrap();
    let temperature = 0.6;
    let mut draws = Vec::new();
    let mut seed = 0;
    // Waves no larger than the sequence budget: with nothing waiting, every choice may draft.
    while draws.len() < 720 {
        let wave: Vec<Request> = (0..48)
            .map(|_| {
                seed += 1;
                let sampling = SamplingParams { temperature, seed: Some(seed), ..Default::default() };
                Request { sampling, ..greedy_request(&prompt, 3) }
            })
            .collect();
        draws.extend(run_together(&engine, wave).into_iter().map(|c| c.ids));
    }
    let counts = total(&engine);
    assert!(counts.drafted > 0 && counts.accepted > 0 && counts.accepted < counts.drafted, "{counts:?}");
    let mut t = teacher(load_model(), Precision::Int16, KvDtype::F16, prompt.len() + 3, 256);
    // The token after the most common first token, and after the most common first two.
    for depth in [1, 2] {
        let mut prefixes = std::collections::HashMap::new();
        for d in &draws {
            *prefixes.entry(&d[..depth]).or_insert(0usize) += 1;
        }
        let (&prefix, &n) = prefixes.iter().max_by_key(|(_, n)| **n).unwrap();
        assert!(n >= 150, "the continuations vary too much for the test: {prefixes:?}");
        let mut observed = std::collections::HashMap::new();
        for d in draws.iter().filter(|d| &d[..depth] == prefix) {
            *observed.entry(d[depth]).or_insert(0usize) += 1;
        }
        let context: Vec<u32> = prompt.iter().chain(prefix).copied().collect();
        let logits = t.prompt_logits(&context, context.len() - 1).unwrap();
        let (chi2, bins) = chi_square(&observed, n, &logits, temperature);
        eprintln!("token {depth}: {n} draws after {prefix:?}: chi-square {chi2:.1} over {bins} bins; {observed:?}");
        assert!(bins >= 2, "a distribution with one likely token tests nothing: {observed:?}");
        // The 0.999 quantile of chi-square with up to 10 degrees of freedom is below 29.6.
        assert!(bins <= 11 && chi2 < 29.6, "sampled tokens do not follow the model: chi-square {chi2:.1} over {bins} bins");
    }
}

/// More sequences decoding than `disable_by_batch_size`: nobody drafts, and the withheld
/// drafts are counted by class.
#[test]
fn drafts_are_withheld_from_a_crowded_batch() {
    let spec = SpeculativeConfig { disable_by_batch_size: 1, ..SpeculativeConfig::default() };
    let engine = start(Some(spec), 64);
    let p = prompts(&engine);
    let requests = vec![
        Request { priority: Priority::Low, ..greedy_request(&p[2], 24) },
        Request { priority: Priority::Low, ..greedy_request(&p[2], 24) },
    ];
    run_together(&engine, requests);
    let m = engine.metrics();
    let low = m.speculative[Priority::Low.rank() as usize];
    assert!(low.withheld >= 20, "{low:?}");
    assert!(low.drafted <= 12, "drafts only when one sequence decodes alone: {low:?}");
    // Alone, it drafts.
    run_together(&engine, vec![Request { priority: Priority::Low, ..greedy_request(&p[2], 24) }]);
    assert!(engine.metrics().speculative[Priority::Low.rank() as usize].accepted > low.accepted);
}

/// A KV pool too small for everything: sequences with drafts are preempted and resumed, some
/// are cancelled mid-stream; every block comes back and the finished outputs are unchanged.
#[test]
fn rolled_back_drafts_leak_no_block_under_preemption_and_cancellation() {
    let off = start(None, 64);
    // 2 MiB of F16 KV for this model: a few hundred tokens in all.
    let on = start(ngram(4), 2);
    let prompts = prompts(&on);
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request { priority: if i % 3 == 0 { Priority::High } else { Priority::Low }, ..greedy_request(p, 48) })
        .collect();
    let reference: Vec<Vec<u32>> = requests.iter().map(|r| off.submit(r.clone()).unwrap().collect_output().remove(0).ids).collect();
    let mut kept = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let mut stream = on.submit(r.clone()).unwrap();
        if i % 4 == 1 {
            // Cancelled after its first few tokens.
            let _ = stream.next();
            let _ = stream.next();
            drop(stream);
        } else {
            kept.push((i, stream));
        }
    }
    let mut full = 0;
    for (i, s) in kept {
        let out = s.collect_output().remove(0);
        // Out of KV memory it may end early (as `length`), never with other tokens.
        assert_eq!(out.ids[..], reference[i][..out.ids.len()], "request {i}");
        full += (out.ids.len() == reference[i].len()) as usize;
    }
    assert!(full >= 4, "{full} requests ran to their length");
    let m = on.metrics();
    assert!(m.preemptions > 0, "the pool was small enough to preempt: {m:?}");
    assert!(total(&on).accepted > 0);
    wait_for(&on, "every block returned", |m| m.kv_blocks_used == 0 && m.running == 0);
}

/// `serve --ngram-draft`: an echo completion over HTTP drafts and accepts, and `/metrics`
/// says so by class (the default priority of an open server is `normal`).
#[test]
fn the_server_reports_drafts_in_its_metrics() {
    use common::server::*;
    let server = Server::start(&["--ngram-draft", "--num-speculative-tokens", "3"]);
    let body = completion("The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat", 32);
    let (status, _, text) = http(&server.addr, "POST", "/v1/completions", &[], &body);
    assert_eq!(status, 200, "{text}");
    let accepted = "ballast_spec_decode_accepted_tokens_total{";
    wait_until("the drafts to be counted", || metric(&server.addr, "vllm:spec_decode_num_accepted_tokens_total") > 0.0);
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], "");
    let normal = metrics.lines().find(|l| l.starts_with(accepted) && l.contains(r#"priority="normal""#)).expect("a normal-class series");
    assert!(normal.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{normal}");
    let rate =
        metrics.lines().find(|l| l.starts_with("ballast_spec_decode_acceptance_rate") && l.contains(r#"priority="normal""#)).unwrap();
    let rate: f64 = rate.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rate > 0.0 && rate <= 1.0, "{rate}");
}
