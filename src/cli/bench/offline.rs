//! `ballast bench --offline`: the engine in-process on the CPU backend. Prompt tokens/s (all
//! prompts prefilled together, one output token each) and output tokens/s (decode, from when
//! every stream has its first token), with the kernels that ran.

use super::{BenchArgs, Rng, Workload};
use anyhow::Context;
use ballast::engine::{Engine, EngineConfig};
use ballast::request::{Event, Request};
use ballast::speculative::{SpecCounts, SpeculativeConfig};
use std::time::Instant;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    use ballast::backend::cpu::CpuBackend;
    anyhow::ensure!(
        args.concurrency > 0 && args.prompt_tokens > 0 && args.max_tokens > 1,
        "--concurrency, --prompt-tokens must be ≥ 1 and --max-tokens ≥ 2"
    );
    let path = ballast::fetch::resolve(args.model.as_deref().map(std::path::Path::new))?;
    let loaded = ballast::model::load(&path, ballast::model::LoadOptions::default(), &mut |_, _| {})
        .with_context(|| format!("loading {}", path.display()))?;
    let vocab = loaded.config.vocab_size as u64;
    let step_bytes = loaded.weights.step_bytes();
    let threads = args.threads.unwrap_or_else(CpuBackend::default_threads);
    let precision = crate::cli::load::parse_precision(&args.precision);
    let cpu = || Ok(CpuBackend::new(threads, precision)?);
    // Every prompt prefilled at full chunk size even once some decode (no step-size limit
    // while decoding), so all streams start together and the decode phase runs all of them.
    let config = EngineConfig {
        max_num_seqs: args.concurrency,
        prefix_caching: false,
        max_step_tokens_while_decoding: usize::MAX,
        ..EngineConfig::default()
    };
    let start_speculative = |speculative| -> anyhow::Result<ballast::engine::Engine> {
        let loaded = ballast::model::load(&path, ballast::model::LoadOptions::default(), &mut |_, _| {})?;
        let draft = match &args.draft_model {
            Some(d) => {
                let d = ballast::fetch::resolve(Some(std::path::Path::new(d)))?;
                Some(ballast::model::load(&d, ballast::model::LoadOptions::default(), &mut |_, _| {}).context("loading the draft model")?)
            }
            None => None,
        };
        let config = EngineConfig { speculative, ..config.clone() };
        crate::cli::load::start_engine_with_draft(args.device, Default::default(), cpu, loaded, draft, config)
    };
    let engine = crate::cli::load::start_engine_on(args.device, Default::default(), cpu, loaded, config.clone())?;
    let mut rng = Rng::new(args.seed);
    // Random ids (past the first 1000, which hold special and byte tokens): no prefix sharing.
    let prompts: Vec<Vec<u32>> =
        (0..args.concurrency).map(|_| (0..args.prompt_tokens).map(|_| (1000 + rng.next_u64() % (vocab - 1000)) as u32).collect()).collect();
    let request = |p: &Vec<u32>, max_tokens: usize| Request { ignore_eos: true, ..Request::new(p.clone()).max_tokens(max_tokens) };

    // Prompt processing: every prompt at once, one output token each.
    let start = Instant::now();
    let streams: Vec<_> = prompts.iter().map(|p| engine.submit(request(p, 1))).collect::<Result<_, _>>()?;
    for s in streams {
        s.collect_output();
    }
    let prompt_secs = start.elapsed().as_secs_f64();
    let prompt_rate = (args.concurrency * args.prompt_tokens) as f64 / prompt_secs;

    // Decode: fresh prompts (no cache hits), timed from when every stream has its first token.
    let prompts: Vec<Vec<u32>> = match args.workload {
        Workload::Random => prompts.iter().map(|p| p.iter().map(|&t| (t + 1) % vocab as u32).collect()).collect(),
        Workload::Echo => echo_prompts(&engine, args.concurrency, args.prompt_tokens)?,
        Workload::Code => code_prompts(&engine, args.concurrency)?,
    };
    let ignore_eos = args.workload != Workload::Code;
    let (mut output_rate, outputs) = decode(&engine, &prompts, args.max_tokens, ignore_eos)?;
    let backend = engine.backend_name().to_string();
    let speculating = args.ngram_draft || args.draft_model.is_some();
    // Without speculation the engine goes before the report's probe; with it, it stays for
    // the alternating decode phases.
    let engine = if speculating {
        Some(engine)
    } else {
        drop(engine);
        None
    };
    eprintln!(
        "offline on {backend}, concurrency {}: prompt {} tokens × {} → {prompt_rate:.1} tok/s; output {} tokens each → {output_rate:.1} tok/s",
        args.concurrency, args.prompt_tokens, args.concurrency, args.max_tokens
    );
    let speculative = if let Some(engine) = engine {
        let spec = SpeculativeConfig {
            num_speculative_tokens: args.num_speculative_tokens,
            disable_by_batch_size: args.speculative_disable_by_batch_size.unwrap_or(if args.draft_model.is_some() { 2 } else { 8 }),
            draft_head: ballast::quant::GgmlType::from_name(&args.draft_head_type),
            ..SpeculativeConfig::default()
        };
        let spec_engine = start_speculative(Some(spec))?;
        let (mut rate, spec_outputs) = decode(&spec_engine, &prompts, args.max_tokens, ignore_eos)?;
        let counts: SpecCounts = spec_engine.metrics().speculative.into_iter().sum();
        // Greedy output is the same with speculation (checked here too, on this workload).
        let mut same = spec_outputs == outputs;
        for _ in 1..args.spec_repeat {
            let (r, o) = decode(&engine, &prompts, args.max_tokens, ignore_eos)?;
            output_rate = output_rate.max(r);
            same &= o == outputs;
            let (r, o) = decode(&spec_engine, &prompts, args.max_tokens, ignore_eos)?;
            rate = rate.max(r);
            same &= o == outputs;
        }
        if args.spec_repeat > 1 {
            eprintln!("best of {} alternating decode phases each: output {output_rate:.1} tok/s without speculation", args.spec_repeat);
        }
        drop((engine, spec_engine));
        let drafter = match &args.draft_model {
            Some(d) => format!("--draft-model {d}"),
            None => "--ngram-draft".into(),
        };
        eprintln!(
            "with {drafter} (K = {}): output {rate:.1} tok/s, {:.2}× without; {} of {} drafted tokens accepted ({:.0}%), {} drafts withheld; outputs identical: {same}",
            spec.num_speculative_tokens,
            rate / output_rate,
            counts.accepted,
            counts.drafted,
            100.0 * counts.acceptance_rate(),
            counts.withheld
        );
        anyhow::ensure!(same, "speculative decoding changed the greedy output");
        serde_json::json!({
            "speculative_output_tokens_per_s": rate, "speculative_speedup": rate / output_rate, "drafted_tokens": counts.drafted,
            "accepted_tokens": counts.accepted, "acceptance_rate": counts.acceptance_rate(), "withheld_drafts": counts.withheld,
        })
    } else {
        serde_json::json!({})
    };
    // The roofline: a decode step reads every weight once for all its streams (on the CPU:
    // the probe measures host memory).
    let roofline = if backend.starts_with("cpu") {
        let weight_rate = step_bytes as f64 * output_rate / args.concurrency as f64;
        let bandwidth = ballast::backend::cpu::read_bandwidth(threads, 1 << 30, 5).context("measuring the read bandwidth")?;
        eprintln!(
            "decode reads {:.3} GB of weights a step: {:.1} GB/s, {:.0}% of the {:.1} GB/s {threads} threads read here (streaming probe, this run)",
            step_bytes as f64 / 1e9,
            weight_rate / 1e9,
            100.0 * weight_rate / bandwidth,
            bandwidth / 1e9
        );
        serde_json::json!({
            "weight_read_bytes_per_s": weight_rate, "read_bandwidth_bytes_per_s": bandwidth, "roofline_fraction": weight_rate / bandwidth,
        })
    } else {
        serde_json::json!({})
    };
    if args.json {
        let mut v = serde_json::json!({
            "concurrency": args.concurrency, "backend": backend, "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
            "prompt_tokens_per_s": prompt_rate, "output_tokens_per_s": output_rate, "weight_bytes_per_step": step_bytes,
        });
        for extra in [&roofline, &speculative] {
            if let (Some(v), Some(r)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(r.clone());
            }
        }
        println!("{v}");
    }
    Ok(())
}

/// Decodes `max_tokens` (greedy) for every prompt at once: the output tokens/s from the
/// moment every stream has its first token, and each stream's tokens.
fn decode(engine: &Engine, prompts: &[Vec<u32>], max_tokens: usize, ignore_eos: bool) -> anyhow::Result<(f64, Vec<Vec<u32>>)> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(Request { ignore_eos, ..Request::new(p.clone()).max_tokens(max_tokens) }))
        .collect::<Result<_, _>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let (mut times, mut tokens) = (Vec::new(), Vec::new());
                for e in s {
                    if let Event::Token { ids, .. } = e {
                        let now = Instant::now();
                        times.extend(ids.iter().map(|_| now));
                        tokens.extend(ids);
                    }
                }
                (times, tokens)
            })
        })
        .collect();
    let (mut per_stream, mut outputs) = (Vec::new(), Vec::new());
    for h in handles {
        let (times, tokens) = h.join().map_err(|_| anyhow::anyhow!("a stream reader panicked"))?;
        anyhow::ensure!(!times.is_empty(), "a stream produced no token");
        per_stream.push(times);
        outputs.push(tokens);
    }
    // The decode window: from the moment every stream has its first token to the last token;
    // only tokens inside it count.
    let decode_start = per_stream.iter().map(|t| t[0]).max().expect("at least one stream");
    let decode_end = per_stream.iter().filter_map(|t| t.last().copied()).max().expect("at least one stream");
    let decode_tokens = per_stream.iter().flatten().filter(|&&t| t > decode_start).count();
    Ok((decode_tokens as f64 / (decode_end - decode_start).as_secs_f64().max(1e-9), outputs))
}

/// Our own Rust source, for the echo workload.
const SOURCES: [&str; 4] = [
    include_str!("../../scheduler.rs"),
    include_str!("../../kv/block_manager.rs"),
    include_str!("../../sampler.rs"),
    include_str!("../../plan.rs"),
];

/// `n` prompts of about `prompt_tokens` tokens: a slice of Rust source, then the start of a
/// verbatim copy of it (each prompt a different slice).
fn echo_prompts(engine: &Engine, n: usize, prompt_tokens: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let tok = engine.tokenizer().context("the echo workload needs the model's tokenizer")?;
    let lines: Vec<&str> = SOURCES.iter().flat_map(|s| s.lines()).filter(|l| !l.trim().is_empty()).collect();
    (0..n)
        .map(|i| {
            let mut part = String::new();
            let mut line = i * 97 % lines.len();
            // The source takes about two thirds of the prompt, so the copy has room to go on.
            while tok.encode(&part, false)?.len() < prompt_tokens * 2 / 3 {
                part += lines[line];
                part.push('\n');
                line = (line + 1) % lines.len();
            }
            let head: String = part.lines().take(2).map(|l| format!("{l}\n")).collect();
            let text = format!("// A file of the project:\n{part}\n// The same file again, copied verbatim:\n{head}");
            Ok(tok.encode(&text, true)?)
        })
        .collect()
}

/// `n` chats asking for a small program each, rendered with the model's template.
fn code_prompts(engine: &Engine, n: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    const TASKS: [&str; 8] = [
        "Write a Python function that returns the n-th Fibonacci number iteratively.",
        "Write a Rust function that reverses the words of a sentence.",
        "Write a Python class for a stack with push, pop and peek.",
        "Write a JavaScript function that debounces another function.",
        "Write a C function that counts the set bits of an unsigned integer.",
        "Write a Python function that merges two sorted lists.",
        "Write a Go function that checks whether a string is a palindrome.",
        "Write a SQL query that finds the second highest salary in a table employees(name, salary).",
    ];
    (0..n)
        .map(|i| {
            let chat = vec![ballast::chat_template::ChatMessage::new("user", TASKS[i % TASKS.len()])];
            Ok(engine.prepare(Request::new(ballast::request::Prompt::Chat(chat)))?.prompt_ids().to_vec())
        })
        .collect()
}
