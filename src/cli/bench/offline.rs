//! `ballast bench --offline`: the engine in-process on the CPU backend. Prompt tokens/s (all
//! prompts prefilled together, one output token each) and output tokens/s (decode, from when
//! every stream has its first token), with the kernels that ran.

use super::{BenchArgs, Rng};
use anyhow::Context;
use std::time::Instant;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    use ballast::backend::cpu::{CpuBackend, Precision};
    use ballast::engine::EngineConfig;
    use ballast::request::Request;
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
    let cpu = || Ok(CpuBackend::new(threads, Precision::Int16)?);
    // Every prompt prefilled at full chunk size even once some decode (no step-size limit
    // while decoding), so all streams start together and the decode phase runs all of them.
    let config = EngineConfig {
        max_num_seqs: args.concurrency,
        prefix_caching: false,
        max_step_tokens_while_decoding: usize::MAX,
        ..EngineConfig::default()
    };
    let engine = crate::cli::load::start_engine_on(args.device, Default::default(), cpu, loaded, config)?;
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
    let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| p.iter().map(|&t| (t + 1) % vocab as u32).collect()).collect();
    let streams: Vec<_> = prompts.iter().map(|p| engine.submit(request(p, args.max_tokens))).collect::<Result<_, _>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let mut times = Vec::new();
                for e in s {
                    if let ballast::request::Event::Token { ids, .. } = e {
                        let now = Instant::now();
                        times.extend(ids.iter().map(|_| now));
                    }
                }
                times
            })
        })
        .collect();
    let mut per_stream = Vec::new();
    for h in handles {
        let times = h.join().map_err(|_| anyhow::anyhow!("a stream reader panicked"))?;
        anyhow::ensure!(!times.is_empty(), "a stream produced no token");
        per_stream.push(times);
    }
    // The decode window: from the moment every stream has its first token to the last token;
    // only tokens inside it count.
    let decode_start = per_stream.iter().map(|t| t[0]).max().expect("at least one stream");
    let decode_end = per_stream.iter().filter_map(|t| t.last().copied()).max().expect("at least one stream");
    let decode_tokens = per_stream.iter().flatten().filter(|&&t| t > decode_start).count();
    let output_rate = decode_tokens as f64 / (decode_end - decode_start).as_secs_f64().max(1e-9);
    let backend = engine.backend_name().to_string();
    eprintln!(
        "offline on {backend}, concurrency {}: prompt {} tokens × {} → {prompt_rate:.1} tok/s; output {} tokens each → {output_rate:.1} tok/s",
        args.concurrency, args.prompt_tokens, args.concurrency, args.max_tokens
    );
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
        if let (Some(v), Some(r)) = (v.as_object_mut(), roofline.as_object()) {
            v.extend(r.clone());
        }
        println!("{v}");
    }
    Ok(())
}
