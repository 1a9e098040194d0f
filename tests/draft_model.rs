//! Speculative decoding with a draft model: a model drafting for itself is right every time
//! (its cache, kept in the target's block tables, is exact through prefix hits, preemption
//! and cancellation); the real Qwen2.5-Coder pair leaves greedy output unchanged and accepts
//! most drafts on code; a draft model with another tokenizer is refused.

mod common;

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig, EngineError};
use ballast::model::{self, LoadOptions, LoadedModel};
use ballast::quant::GgmlType;
use ballast::request::{Priority, Prompt, Request};
use ballast::sampler::SamplingParams;
use ballast::speculative::{SpecCounts, SpeculativeConfig, lighten_draft_head};
use common::*;

fn start(target: LoadedModel, draft: Option<LoadedModel>, kv_mib: usize) -> Result<Engine, EngineError> {
    start_with_head(target, draft, kv_mib, None)
}

fn start_with_head(
    target: LoadedModel,
    draft: Option<LoadedModel>,
    kv_mib: usize,
    draft_head: Option<GgmlType>,
) -> Result<Engine, EngineError> {
    let backend = CpuBackend::new(threads(), Precision::Int16).unwrap();
    let speculative = draft.as_ref().map(|_| SpeculativeConfig { num_speculative_tokens: 4, draft_head, ..SpeculativeConfig::default() });
    let config = EngineConfig { kv_cache_bytes: kv_mib << 20, max_num_batched_tokens: 256, speculative, ..EngineConfig::default() };
    Engine::start_with_draft(backend, target, draft, config)
}

fn real(id: &str) -> LoadedModel {
    model::load(&real_model_path(id), LoadOptions::default(), &mut |_, _| {}).unwrap()
}

fn total(counts: &[SpecCounts]) -> SpecCounts {
    counts.iter().copied().sum()
}

/// The default model as its own draft, in a KV pool small enough to preempt: every greedy
/// draft is accepted (the draft's K/V, computed in other chunks and rows, are the target's
/// bit for bit), prompts sharing a prefix included; sampled requests beside them reject
/// some; every output equals the one without speculation; no block is left.
#[test]
fn a_model_drafting_for_itself_is_always_right() {
    let off = start(load_model(), None, 64).unwrap();
    // 4 MiB for both pools: about 90 tokens in all.
    let on = start(load_model(), Some(load_model()), 4).unwrap();
    let tok = off.tokenizer().unwrap();
    let shared = "You are a careful assistant who answers in full sentences. ".repeat(4);
    let texts = ["Tell me about the sea.", "List three fruits.", "What is a prime number?", "Describe a cat.", "Why is the sky blue?"];
    let mut requests = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let prompt = tok.encode(&format!("{shared}{t}"), true).unwrap();
        requests.push(Request { priority: if i % 2 == 0 { Priority::Low } else { Priority::Normal }, ..greedy_request(&prompt, 40) });
        let sampling = SamplingParams { temperature: 0.9, seed: Some(i as u64), ..Default::default() };
        requests.push(Request { priority: Priority::High, sampling, ..greedy_request(&prompt, 24) });
    }
    let reference: Vec<Vec<u32>> = run_together(&off, requests.clone()).into_iter().map(|c| c.ids).collect();
    // Twice: the second time the shared prefix comes from the cache.
    for round in 0..2 {
        let mut streams: Vec<_> = requests.iter().map(|r| Some(on.submit(r.clone()).unwrap())).collect();
        // One greedy request cancelled after a few tokens.
        let mut cancelled = streams[2].take().unwrap();
        let _ = (cancelled.next(), cancelled.next());
        drop(cancelled);
        for (i, s) in streams.into_iter().enumerate() {
            let Some(s) = s else { continue };
            let out = s.collect_output().remove(0);
            // Out of KV memory a choice may end early, never with other tokens.
            assert_eq!(out.ids[..], reference[i][..out.ids.len()], "round {round}, request {i}");
        }
    }
    let m = on.metrics();
    let greedy = total(&[m.speculative[Priority::Low.rank() as usize], m.speculative[Priority::Normal.rank() as usize]]);
    let sampled = m.speculative[Priority::High.rank() as usize];
    eprintln!("greedy {greedy:?}, sampled {sampled:?}, preemptions {}", m.preemptions);
    assert!(greedy.drafted > 100, "{greedy:?}");
    assert_eq!(greedy.accepted, greedy.drafted, "a model's greedy drafts for itself are all right");
    assert!(sampled.accepted < sampled.drafted, "sampled tokens differ from greedy drafts sometimes: {sampled:?}");
    assert!(m.preemptions > 0, "the pool was small enough to preempt");
    assert!(m.prefix_cache.hit_tokens > 0, "the shared prefix came from the cache");
    wait_for(&on, "every block returned", |m| m.kv_blocks_used == 0 && m.running == 0);
}

/// A draft whose output matrix is requantized to Q4_0 (`SpeculativeConfig::draft_head`):
/// the matrix is Q4_0 and within Q4_0's resolution of the file's, the embedding lookups keep
/// the file's Q8_0, a type no lighter is left alone, and greedy output is unchanged.
#[test]
fn a_lighter_draft_head_changes_no_token() {
    let mut draft = load_model();
    assert_eq!((draft.weights.embed.dtype, draft.weights.lm_head.is_none()), (GgmlType::Q8_0, true), "SmolLM2 ties a Q8_0 embedding");
    let saved = lighten_draft_head(&mut draft.weights, GgmlType::Q4_0, 3).unwrap();
    let (embed, head) = (&draft.weights.embed, draft.weights.lm_head.as_ref().unwrap());
    assert_eq!(saved, (embed.row_bytes() - head.row_bytes()) * embed.rows);
    assert_eq!((embed.dtype, head.dtype), (GgmlType::Q8_0, GgmlType::Q4_0));
    let (mut a, mut b) = (vec![0.0; embed.cols], vec![0.0; embed.cols]);
    for r in [0, 1234, embed.rows - 1] {
        embed.dequantize_row(r, &mut a).unwrap();
        head.dequantize_row(r, &mut b).unwrap();
        let amax = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= amax / 7.0), "row {r}");
    }
    assert_eq!(lighten_draft_head(&mut draft.weights, GgmlType::Q5_0, 1).unwrap(), 0, "Q5_0 is heavier than Q4_0");

    let off = start(load_model(), None, 64).unwrap();
    let on = start_with_head(load_model(), Some(load_model()), 64, Some(GgmlType::Q4_0)).unwrap();
    let tok = off.tokenizer().unwrap();
    let requests: Vec<Request> = ["Tell me about the sea.", "List three fruits and their colours."]
        .iter()
        .map(|t| greedy_request(&tok.encode(t, true).unwrap(), 48))
        .collect();
    let reference: Vec<Vec<u32>> = run_together(&off, requests.clone()).into_iter().map(|c| c.ids).collect();
    let got: Vec<Vec<u32>> = run_together(&on, requests).into_iter().map(|c| c.ids).collect();
    assert_eq!(got, reference, "a lighter draft head changed the output");
    let counts = total(&on.metrics().speculative);
    eprintln!("{} of {} drafted tokens accepted", counts.accepted, counts.drafted);
    assert!(counts.drafted > 20, "{counts:?}");
}

/// Qwen2.5-Coder-1.5B with the 0.5B drafting (its Q8_0 output matrix as Q4_0, as `serve`
/// does by default), on the golden prompts and a code request: greedy output token for
/// token as the 1.5B alone, with most drafts accepted.
#[test]
fn the_qwen_pair_changes_no_token_and_accepts_most_drafts() {
    let off = start(real("qwen2.5-coder-1.5b"), None, 64).unwrap();
    let on = start_with_head(real("qwen2.5-coder-1.5b"), Some(real("qwen2.5-coder-0.5b")), 64, Some(GgmlType::Q4_0)).unwrap();
    let cases = read_json(&data_dir().join("goldens/qwen2.5-coder-1.5b/generation.json"));
    let mut requests: Vec<Request> =
        cases["cases"].as_array().unwrap().iter().take(3).map(|c| greedy_request(&ids(&c["prompt_ids"]), 24)).collect();
    let chat = vec![ballast::chat_template::ChatMessage::new("user", "Write a Python function that merges two sorted lists.")];
    requests.push(Request { max_tokens: Some(48), ..Request::new(Prompt::Chat(chat)) });
    let reference: Vec<Vec<u32>> = run_together(&off, requests.clone()).into_iter().map(|c| c.ids).collect();
    let got: Vec<Vec<u32>> = run_together(&on, requests).into_iter().map(|c| c.ids).collect();
    assert_eq!(got, reference, "the draft model changed the output");
    let counts = total(&on.metrics().speculative);
    eprintln!("{} of {} drafted tokens accepted", counts.accepted, counts.drafted);
    assert!(counts.drafted > 20 && counts.acceptance_rate() > 0.5, "{counts:?}");
}

#[test]
fn a_draft_model_with_another_tokenizer_is_refused() {
    let err = start(load_model(), Some(real("qwen2.5-coder-0.5b")), 16).err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("tokenizer") && text.contains("must match"), "{text}");
    // A draft model without speculative decoding on is a configuration error too.
    let backend = CpuBackend::new(threads(), Precision::Int16).unwrap();
    let err = Engine::start_with_draft(backend, load_model(), Some(load_model()), EngineConfig::default()).err().expect("refused");
    assert!(err.to_string().contains("speculative"), "{err}");
}
