//! The engine on the real model: batch invariance against the goldens, prefix reuse,
//! preemption and resumption, cancellation, deadlines, n > 1, logprobs, stop strings, the
//! async stream, shutdown.

mod common;

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::engine::{Engine, EngineConfig, SubmitError};
use ballast::request::{Choice, Event, FinishReason, Priority, Prompt, Request};
use ballast::sampler::SamplingParams;
use common::*;
use std::time::{Duration, Instant};

fn start(config: EngineConfig) -> Engine {
    let backend = CpuBackend::new(threads(), Precision::Int16).unwrap();
    Engine::start(backend, load_model(), config).unwrap()
}

fn default_engine() -> Engine {
    start(EngineConfig { kv_cache_bytes: 64 << 20, max_num_batched_tokens: 256, ..EngineConfig::default() })
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request { ignore_eos: true, ..Request::new(prompt).max_tokens(max_tokens) }
}

fn run_one(engine: &Engine, r: Request) -> Choice {
    engine.submit(r).unwrap().collect_output().remove(0)
}

fn golden_cases() -> Vec<serde_json::Value> {
    read_json(&data_dir().join("goldens/public/generation.json"))["cases"].as_array().unwrap().clone()
}

/// The 16 golden prompts, each alone and then all together with 16 other prompts (32 in one
/// batch, prefill chunks mixed with decodes): greedy and seeded outputs are bit-identical, and
/// the greedy ones agree with the float32 reference at least as well as llama.cpp does.
#[test]
fn outputs_are_batch_invariant_and_match_the_goldens() {
    let cases = golden_cases();
    let engine = default_engine();
    let tok = engine.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let fillers: Vec<Vec<u32>> = (0..16)
        .map(|i| tok.encode(&format!("Filler prompt number {i}: write about {}", "the sea ".repeat(i * 3 + 1)), true).unwrap())
        .collect();
    let seeded = |p: Vec<u32>, seed: u64| Request {
        sampling: SamplingParams { temperature: 0.9, top_p: 0.95, seed: Some(seed), ..Default::default() },
        ..greedy(p, 32)
    };

    let alone_greedy: Vec<Vec<u32>> = prompts.iter().map(|p| run_one(&engine, greedy(p.clone(), 48)).ids).collect();
    let alone_seeded: Vec<Vec<u32>> =
        prompts.iter().take(8).enumerate().map(|(i, p)| run_one(&engine, seeded(p.clone(), i as u64)).ids).collect();

    let mut streams = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        streams.push(engine.submit(greedy(p.clone(), 48)).unwrap());
        streams.push(engine.submit(greedy(fillers[i].clone(), 40)).unwrap());
    }
    let seeded_streams: Vec<_> =
        prompts.iter().take(8).enumerate().map(|(i, p)| engine.submit(seeded(p.clone(), i as u64)).unwrap()).collect();
    let batched: Vec<Vec<u32>> = streams.into_iter().map(|s| s.collect_output().remove(0).ids).collect();
    let batched_seeded: Vec<Vec<u32>> = seeded_streams.into_iter().map(|s| s.collect_output().remove(0).ids).collect();

    for (i, case) in cases.iter().enumerate() {
        assert_eq!(alone_greedy[i], batched[2 * i], "{}: greedy output changed in a batch", case["id"]);
    }
    assert_eq!(alone_seeded, batched_seeded, "seeded outputs changed in a batch");
    assert!(alone_seeded.iter().zip(&alone_greedy).any(|(s, g)| s[..] != g[..32]), "sampling took effect");

    let (mut ours, mut peer) = (0, 0);
    for (case, out) in cases.iter().zip(&alone_greedy) {
        let reference = ids(&case["greedy"]["ids"]);
        let n = out.iter().zip(&reference).take_while(|(a, b)| a == b).count();
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        ours += if eos.is_some_and(|e| n > e) { 48 } else { n };
        let l = &case["llama_cpp"];
        peer += if l["match_until_ref_eos"].as_bool() == Some(true) { 48 } else { l["first_divergence"].as_u64().unwrap_or(48) as usize };
    }
    eprintln!("agreement with the reference over {} prompts: ours {ours}, llama.cpp {peer}", cases.len());
    assert!(ours >= peer, "ours {ours} < llama.cpp {peer}");
    wait_for(&engine, "every block returned", |m| m.kv_blocks_used == 0 && m.running == 0);
}

/// A second request sharing a long prefix computes under 10% of its prompt, and its output is
/// the same as without the cache.
#[test]
fn a_shared_prefix_is_computed_once() {
    let engine = default_engine();
    let tok = engine.tokenizer().unwrap();
    let system = "You are a meticulous assistant. ".repeat(60);
    let a = tok.encode(&format!("{system}Question: what is 2+2?"), true).unwrap();
    let b = tok.encode(&format!("{system}Question: name a red fruit."), true).unwrap();
    assert!(b.len() > 300, "a long prompt: {}", b.len());

    let first = run_one(&engine, greedy(a, 4));
    assert_eq!(first.usage.cached_tokens, 0);
    // Metrics are published at the end of each step: wait for the one that finished it.
    wait_for(&engine, "the first request's step", |m| m.finished.length == 1);
    let before = engine.metrics().tokens_computed;
    let second = run_one(&engine, greedy(b.clone(), 8));
    wait_for(&engine, "the second request's step", |m| m.finished.length == 2);
    let computed = engine.metrics().tokens_computed - before - 7; // 7 decode steps after the prompt
    eprintln!("prompt {} tokens: {} cached, {computed} computed", b.len(), second.usage.cached_tokens);
    assert!((computed as f64) < 0.1 * b.len() as f64, "computed {computed} of {} prompt tokens", b.len());
    assert_eq!(second.usage.cached_tokens as u64 + computed, b.len() as u64);

    let uncached = engine_without_cache();
    assert_eq!(run_one(&uncached, greedy(b, 8)).ids, second.ids, "cached K/V give the same tokens");
    assert!(engine.metrics().prefix_cache_hit_rate() > 0.4);
}

fn engine_without_cache() -> Engine {
    start(EngineConfig { kv_cache_bytes: 64 << 20, prefix_caching: false, ..EngineConfig::default() })
}

/// Low-priority work fills the sequence slots; a critical request preempts it and finishes
/// first; the preempted requests resume (from prompt + output, their prefix cached) and still
/// produce exactly what they produce undisturbed.
#[test]
fn critical_requests_preempt_and_preempted_work_resumes_exactly() {
    let engine = start(EngineConfig { kv_cache_bytes: 64 << 20, max_num_seqs: 3, ..EngineConfig::default() });
    let tok = engine.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> =
        (0..3).map(|i| tok.encode(&format!("Story {i}: once upon a time, in a land far away,"), true).unwrap()).collect();
    let undisturbed: Vec<Vec<u32>> = prompts.iter().map(|p| run_one(&engine, greedy(p.clone(), 60)).ids).collect();

    let low: Vec<_> = prompts.iter().map(|p| engine.submit(greedy(p.clone(), 60).priority(Priority::Low)).unwrap()).collect();
    wait_for(&engine, "the low requests to run", |m| m.running == 3 && m.tokens_generated > 3 * 60 + 9);
    let critical =
        engine.submit(greedy(tok.encode("Urgent: the capital of France is", true).unwrap(), 8).priority(Priority::Critical)).unwrap();
    let critical = critical.collect_output().remove(0);
    assert_eq!(critical.finish, Some(FinishReason::Length));
    let low: Vec<Choice> = low.into_iter().map(|s| s.collect_output().remove(0)).collect();
    wait_for(&engine, "every block returned", |m| m.kv_blocks_used == 0 && m.running == 0);
    let m = engine.metrics();
    assert!(m.preemptions >= 1, "{m:?}");
    assert!(low.iter().any(|c| c.timings.preemptions > 0));
    for (c, expected) in low.iter().zip(&undisturbed) {
        assert_eq!(&c.ids, expected, "a preempted request resumed with different tokens");
    }
}

#[test]
fn dropping_a_stream_cancels_and_frees_its_blocks() {
    let engine = default_engine();
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode(&"A very long story about everything. ".repeat(30), true).unwrap();
    // Mid-decode.
    let mut s = engine.submit(greedy(prompt.clone(), 2000)).unwrap();
    let first = s.next().unwrap();
    assert!(matches!(first, Event::Token { .. }));
    wait_for(&engine, "blocks in use", |m| m.kv_blocks_used > 0);
    drop(s);
    wait_for(&engine, "the cancelled blocks", |m| m.kv_blocks_used == 0 && m.finished.cancelled == 1);
    // Mid-prefill: a long prompt with a small chunk budget, dropped at once.
    let small = start(EngineConfig { kv_cache_bytes: 64 << 20, max_num_batched_tokens: 16, ..EngineConfig::default() });
    let s = small.submit(greedy(prompt, 10)).unwrap();
    wait_for(&small, "the prefill to start", |m| m.tokens_computed > 0);
    s.cancel();
    wait_for(&small, "the cancelled blocks", |m| m.kv_blocks_used == 0 && m.finished.cancelled == 1 && m.running == 0);
    assert_eq!(small.metrics().tokens_generated, 0, "cancelled before its first token");
}

#[test]
fn deadlines_that_cannot_be_met_fail_fast() {
    let engine = default_engine();
    let r = Request { deadline: Some(Instant::now()), ..greedy(vec![1, 2, 3], 5) };
    let c = run_one(&engine, r);
    assert_eq!(c.finish, Some(FinishReason::Deadline));
    assert!(c.ids.is_empty());
    let ok = Request { deadline: Some(Instant::now() + Duration::from_secs(60)), ..greedy(vec![1, 2, 3], 5) };
    assert_eq!(run_one(&engine, ok).ids.len(), 5);
    wait_for(&engine, "the finish counts", |m| m.finished.deadline == 1 && m.finished.length == 1);
}

#[test]
fn n_choices_logprobs_and_stop_strings() {
    let engine = default_engine();
    // n = 3, seeded: three different, reproducible choices sharing one prefill.
    let r = Request {
        n: 3,
        sampling: SamplingParams { temperature: 1.0, seed: Some(5), ..Default::default() },
        ..greedy(engine.tokenize(&Prompt::from("My favourite animal is")).unwrap(), 16)
    };
    let a = engine.submit(r.clone()).unwrap().collect_output();
    let b = engine.submit(r).unwrap().collect_output();
    assert_eq!(a.len(), 3);
    let key = |v: &[Choice]| v.iter().map(|c| (c.ids.clone(), c.text.clone(), c.finish.clone())).collect::<Vec<_>>();
    assert_eq!(key(&a), key(&b), "the same seed reproduces every choice");
    assert!(a[0].ids != a[1].ids || a[1].ids != a[2].ids, "choices differ");
    assert!(a.iter().all(|c| c.ids.len() == 16 && c.usage.completion_tokens == 16));

    // Greedy logprobs: the chosen token is the most likely, probabilities are sane.
    let r = Request { logprobs: Some(3), ..greedy(engine.tokenize(&Prompt::from("1, 2, 3, 4,")).unwrap(), 6) };
    let c = run_one(&engine, r);
    assert_eq!(c.logprobs.len(), 6);
    for (lp, &id) in c.logprobs.iter().zip(&c.ids) {
        assert_eq!(lp.id, id);
        assert_eq!(lp.top[0].0, id);
        assert_eq!(lp.top.len(), 3);
        assert!(lp.logprob <= 0.0 && lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    // A stop string spanning tokens ends the choice and is not emitted.
    let full = run_one(&engine, greedy(engine.tokenize(&Prompt::from("1, 2, 3, 4,")).unwrap(), 12));
    assert!(full.text.contains(" 6, 7"), "{:?}", full.text);
    let r = Request { stop: vec!["6, 7".into()], ..greedy(engine.tokenize(&Prompt::from("1, 2, 3, 4,")).unwrap(), 12) };
    let c = run_one(&engine, r);
    assert_eq!(c.finish, Some(FinishReason::Stop));
    assert_eq!(c.text, full.text[..full.text.find("6, 7").unwrap()]);

    // EOS ends a chat reply (not ignored).
    let chat = Prompt::Chat(vec![ballast::chat_template::ChatMessage::new("user", "Say hi.")]);
    let c = run_one(&engine, Request::new(chat).max_tokens(200));
    assert_eq!(c.finish, Some(FinishReason::Stop));
    assert!(!c.text.contains("<|im_end|>"));
}

#[test]
fn bad_requests_are_refused_at_submission() {
    let engine = default_engine();
    let err = |r: Request| engine.submit(r).err().expect("refused");
    assert!(matches!(err(Request::new(Vec::<u32>::new())), SubmitError::EmptyPrompt));
    assert!(matches!(err(Request::new(vec![1u32; 9000])), SubmitError::PromptTooLong { .. }));
    assert!(matches!(err(Request::new(vec![99_999u32])), SubmitError::TokenOutOfRange { .. }));
    assert!(matches!(err(Request { n: 0, ..Request::new("x") }), SubmitError::InvalidN { .. }));
    assert!(matches!(err(Request::new("x").max_tokens(0)), SubmitError::ZeroMaxTokens));
    let bad = SamplingParams { top_p: 2.0, ..Default::default() };
    assert!(matches!(err(Request::new("x").sampling(bad)), SubmitError::Sampling(_)));
    let tiny = start(EngineConfig { kv_cache_bytes: 2 << 20, ..EngineConfig::default() });
    assert!(matches!(tiny.submit(Request::new(vec![1u32; 2000])).err(), Some(SubmitError::ExceedsKvCache { .. })));
    // The engine is still serving.
    assert_eq!(run_one(&engine, greedy(vec![1, 2], 3)).ids.len(), 3);
}

/// The stream as a `futures_core::Stream`, polled by a minimal executor.
#[test]
fn the_stream_is_async_too() {
    use futures_core::Stream;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let engine = default_engine();
    let blocking = run_one(&engine, greedy(vec![1, 504, 3575], 10));
    let mut stream = engine.submit(greedy(vec![1, 504, 3575], 10)).unwrap();
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let (mut ids, mut pending) = (Vec::new(), 0);
    loop {
        match Pin::new(&mut stream).poll_next(&mut cx) {
            Poll::Ready(Some(Event::Token { ids: t, .. })) => ids.extend(t),
            Poll::Ready(Some(Event::Finish { .. })) => {}
            Poll::Ready(None) => break,
            Poll::Pending => {
                pending += 1;
                std::thread::park_timeout(Duration::from_secs(1));
            }
        }
    }
    assert_eq!(ids, blocking.ids);
    assert!(pending > 0, "the stream waited for the engine at least once");
}

#[test]
fn dropping_the_engine_ends_open_streams() {
    let engine = default_engine();
    let stream = engine.submit(greedy(vec![1, 2, 3], 5000)).unwrap();
    drop(engine);
    let c = stream.collect_output().remove(0);
    assert!(matches!(c.finish, Some(FinishReason::Error(_))), "{:?}", c.finish);
}

/// Streamed text deltas, joined, are exactly the decoded output — also where characters span
/// several byte-level tokens (CJK, emoji) — and no delta ever carries a broken character.
#[test]
fn streamed_text_never_splits_a_character() {
    let engine = default_engine();
    let tok = engine.tokenizer().unwrap();
    for prompt in [
        "<|im_start|>user\n用中文介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
        "Emoji story: 🐱🐶🦊🐻 then",
        "Ünïcödé façade — naïve café:",
    ] {
        let ids = tok.encode(prompt, true).unwrap();
        let mut text = String::new();
        let mut out_ids = Vec::new();
        for event in engine.submit(greedy(ids, 40)).unwrap() {
            if let Event::Token { ids, text: delta, .. } = event {
                assert!(!delta.contains('\u{FFFD}'), "a broken character in {delta:?}");
                text += &delta;
                out_ids.extend(ids);
            }
        }
        assert_eq!(text, tok.decode(&out_ids, true).unwrap(), "{prompt}");
        assert!(!text.is_ascii() || prompt.starts_with("Ü"), "the test exercised multi-byte text: {text:?}");
    }
}

/// A choice that ends outside the token path (here: alone, it outgrows a tiny KV pool) still
/// releases the text it held back (a possible stop string, a partial character).
#[test]
fn held_back_text_is_released_when_a_choice_ends_early() {
    let probe = start(EngineConfig { kv_cache_bytes: 1 << 20, ..EngineConfig::default() });
    let bytes_per_token = (1usize << 20) / probe.kv_capacity();
    drop(probe);
    let engine = start(EngineConfig { kv_cache_bytes: bytes_per_token * 64 + 1, ..EngineConfig::default() });
    let capacity = engine.kv_capacity();
    assert!(capacity <= 96, "a tiny pool: {capacity}");
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode("Once upon a time there was", true).unwrap();
    // Every printable character followed by \u{1} is a stop string: the last character is always held back.
    let stop: Vec<String> = (0x20u8..0x7f).map(|c| format!("{}\u{1}", c as char)).collect();
    let c = run_one(&engine, Request { stop, ..greedy(prompt.clone(), 1000) });
    assert_eq!(c.finish, Some(FinishReason::Length));
    assert_eq!(c.ids.len(), capacity + 1 - prompt.len(), "it filled the pool (the last token needs no KV)");
    assert_eq!(c.text, tok.decode(&c.ids, true).unwrap());
    // n larger than the sequence budget is refused up front instead of waiting forever.
    let small = start(EngineConfig { kv_cache_bytes: 16 << 20, max_num_seqs: 2, ..EngineConfig::default() });
    let r = Request { n: 3, ..greedy(vec![1, 2, 3], 4) };
    assert!(matches!(small.submit(r).err(), Some(SubmitError::InvalidN { max: 2, .. })));
}

/// `prepare` checks once: a `max_tokens` that cannot fit beside the prompt is an error saying
/// the limit (never clamped); without one the request may use the rest of the context; the
/// prepared request runs as is.
#[test]
fn prepare_refuses_a_length_that_cannot_fit_and_fills_in_the_rest_of_the_context() {
    let engine = default_engine();
    let ctx = engine.max_context();
    let prompt = vec![1u32, 2, 3, 4, 5];
    let room = ctx - prompt.len();
    let valid = engine.prepare(Request::new(prompt.clone())).unwrap();
    assert_eq!((valid.prompt_ids(), valid.max_tokens()), (&prompt[..], room));
    assert_eq!(engine.prepare(Request::new(prompt.clone()).max_tokens(room)).unwrap().max_tokens(), room);
    match engine.prepare(Request::new(prompt.clone()).max_tokens(room + 1)) {
        Err(e @ SubmitError::MaxTokensTooLarge { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("maximum context length is {ctx} tokens")) && text.contains("5 prompt tokens"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let mut valid = engine.prepare(Request { n: 2, ..greedy(prompt.clone(), 50) }).unwrap();
    assert_eq!(valid.degrade(3), ["max_tokens", "n"]);
    let out = engine.enqueue(valid).unwrap().collect_output();
    assert_eq!((out.len(), out[0].ids.len()), (1, 3), "the degraded request ran with one choice of 3 tokens");
}
