//! `ballast bench URL`: a load generator for any OpenAI-compatible server (ballast, vLLM,
//! llama-server). Streaming `/v1/completions` requests from a fixed, seeded prompt set, at a
//! fixed concurrency (closed loop) or arrival rate (open loop), optionally mixing priority
//! classes; reports throughput and TTFT / inter-token latency p50 and p99 per class, and what
//! was refused (status, Retry-After).
//!
//! Plain HTTP/1.1 over TCP (no TLS): what a load generator next to the server needs.

mod http;
mod offline;

use http::{Target, get, parse_url, post_stream};

use anyhow::{Context, bail};
use ballast::testing::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Random,
    Echo,
    Code,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080 (not with --offline).
    #[arg(required_unless_present = "offline")]
    url: Option<String>,
    /// Measure the engine in-process instead of a server: prompt tokens/s (all prompts
    /// prefilled together, one output token each) and output tokens/s (decode after every
    /// stream's first token; prompts are not held back by --decode-step-tokens here, so all
    /// streams decode together), with --concurrency streams. `--model` is then a model path or
    /// manifest name.
    #[arg(long, conflicts_with_all = ["rate", "class_mix", "api_key"])]
    offline: bool,
    /// With --offline: tokens per prompt.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Arrival rate in requests per second (open loop, Poisson); overrides --concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// Requests to send.
    #[arg(long, default_value_t = 32)]
    num_requests: usize,
    /// Words per prompt (about one token each).
    #[arg(long, default_value_t = 128)]
    prompt_words: usize,
    /// Tokens to generate per request (with ignore_eos).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Draw each request's prompt from this many distinct prompts, by a Zipf law of exponent
    /// --zipf (rank k has weight 1/k^s): repeated identical requests, as in a retry storm or
    /// popular queries (default: every prompt distinct).
    #[arg(long, conflicts_with = "offline")]
    distinct_prompts: Option<usize>,
    /// The Zipf exponent of --distinct-prompts.
    #[arg(long, default_value_t = 1.0, requires = "distinct_prompts")]
    zipf: f64,
    /// Priority classes and weights, e.g. `high=1,low=3` (sent as the `priority` field).
    #[arg(long)]
    class_mix: Option<String>,
    /// The `model` field (default: the first model of /v1/models); with --offline, the model
    /// file or directory, or a model name from models/manifest.json (default: the default
    /// model).
    #[arg(long)]
    model: Option<String>,
    /// With --offline: CPU worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// With --offline: CPU arithmetic for quantized weights, as for `serve`.
    #[arg(long, default_value = "int16", value_parser = ["int16", "int8", "reference"], requires = "offline")]
    precision: String,
    /// With --offline: also run the decode phase with speculative decoding by prompt lookup
    /// (a second engine, same prompts, same threads) and report both rates, the speedup and
    /// the acceptance rate.
    #[arg(long, requires = "offline")]
    ngram_draft: bool,
    /// With --offline: as --ngram-draft, but a draft model (path or manifest name) drafts.
    #[arg(long, requires = "offline", conflicts_with = "ngram_draft")]
    draft_model: Option<String>,
    /// With --ngram-draft or --draft-model: decode phases per engine, alternating between
    /// the two (both stay loaded); the best rate of each counts, so a noisy machine's slow
    /// moments weigh on neither side alone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    spec_repeat: u64,
    /// With --draft-model: its output matrix's type, as for `serve`.
    #[arg(long, default_value = "q4_0", value_parser = ["keep", "q4_0", "q5_0", "q8_0"], requires = "draft_model")]
    draft_head_type: String,
    /// With --ngram-draft or --draft-model: tokens drafted per step at most.
    #[arg(long, default_value_t = 4)]
    num_speculative_tokens: usize,
    /// With --ngram-draft or --draft-model: nobody drafts while more sequences than this
    /// decode (default as for `serve`: 8 with --ngram-draft, 2 with --draft-model).
    #[arg(long)]
    speculative_disable_by_batch_size: Option<usize>,
    /// With --offline: what the prompts hold. `random`: random token ids; `echo`: a slice of
    /// Rust source followed by the start of a verbatim copy of it (the editing workload
    /// prompt lookup is for); `code`: a chat asking for a small program (through the model's
    /// template; --prompt-tokens is ignored, and a stream may end at its end-of-sequence).
    #[arg(long, default_value = "random", requires = "offline")]
    workload: Workload,
    /// With --offline: where the model runs (auto, cpu, cuda, cuda:N), as for `serve`.
    #[arg(long, default_value = "auto")]
    device: ballast::backend::DeviceRequest,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Seed of the prompt set and class draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object with everything on stdout.
    #[arg(long)]
    json: bool,
}

const WORDS: &[&str] = &[
    "the", "river", "mountain", "quiet", "light", "city", "over", "under", "song", "window", "garden", "old", "new", "story", "morning",
    "evening", "stone", "bridge", "road", "cloud", "winter", "summer", "house", "friend", "letter", "blue", "green", "small", "great",
    "across", "before", "after", "always", "never", "water", "fire", "forest", "market", "harbor", "voice",
];

#[derive(Debug, Default, Clone)]
struct Sample {
    class: String,
    status: u16,
    retry_after: Option<String>,
    ttft: Option<f64>,
    gaps: Vec<f64>,
    e2e: f64,
    tokens: usize,
    error: Option<String>,
}

async fn one(t: Arc<Target>, body: String, class: String, api_key: Option<String>) -> Sample {
    let start = Instant::now();
    let mut s = Sample { class, ..Sample::default() };
    let mut last: Option<Instant> = None;
    let mut ttft = None;
    let mut gaps = Vec::new();
    let mut tokens = 0;
    let result = post_stream(&t, "/v1/completions", &body, api_key.as_deref(), |data| {
        if data == "[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { return };
        if let Some(u) = v.get("usage").and_then(|u| u["completion_tokens"].as_u64()) {
            tokens = u as usize;
        }
        let has_text = v["choices"].as_array().is_some_and(|c| c.iter().any(|c| c["text"].as_str().is_some_and(|t| !t.is_empty())));
        if has_text {
            let now = Instant::now();
            match last {
                None => ttft = Some((now - start).as_secs_f64()),
                Some(prev) => gaps.push((now - prev).as_secs_f64()),
            }
            last = Some(now);
        }
    })
    .await;
    s.e2e = start.elapsed().as_secs_f64();
    match result {
        Ok((status, retry, text)) => {
            s.status = status;
            s.retry_after = retry;
            if status != 200 {
                s.error = Some(text.chars().take(200).collect());
            }
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s.ttft = ttft;
    s.gaps = gaps;
    s.tokens = tokens;
    s
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.offline {
        return offline::run(&args);
    }
    let target = Arc::new(parse_url(args.url.as_deref().context("a server URL (or --offline)")?)?);
    let mix: Vec<(String, f64)> = match &args.class_mix {
        None => vec![(String::new(), 1.0)],
        Some(m) => m
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').context("--class-mix takes class=weight pairs")?;
                let w: f64 = v.parse().context("a class weight must be a number")?;
                anyhow::ensure!(w > 0.0, "class weights must be positive");
                Ok((k.trim().to_string(), w))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if args.num_requests == 0 || args.concurrency == 0 || args.distinct_prompts == Some(0) {
        bail!("--num-requests, --concurrency and --distinct-prompts must be at least 1");
    }
    if !(args.zipf.is_finite() && args.zipf >= 0.0) {
        bail!("--zipf must be a number ≥ 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let model = match &args.model {
            Some(m) => m.clone(),
            None => {
                let (status, _, body) = get(&target, "/v1/models").await?;
                anyhow::ensure!(status == 200, "GET /v1/models answered {status}");
                let v: serde_json::Value = serde_json::from_str(&body)?;
                v["data"][0]["id"].as_str().context("no model in /v1/models")?.to_string()
            }
        };
        let mut rng = Rng::new(args.seed);
        let total: f64 = mix.iter().map(|m| m.1).sum();
        // With --distinct-prompts: the pool, and the cumulative Zipf weights of its ranks.
        let pool: Vec<String> = (0..args.distinct_prompts.unwrap_or(0))
            .map(|k| {
                let words: Vec<&str> = (0..args.prompt_words).map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]).collect();
                format!("Prompt {k}: {}", words.join(" "))
            })
            .collect();
        let cumulative: Vec<f64> = pool
            .iter()
            .enumerate()
            .scan(0.0, |sum, (k, _)| {
                *sum += 1.0 / ((k + 1) as f64).powf(args.zipf);
                Some(*sum)
            })
            .collect();
        let requests: Vec<(String, String)> = (0..args.num_requests)
            .map(|i| {
                let mut x = rng.unit() * total;
                let class = mix
                    .iter()
                    .find(|(_, w)| {
                        x -= w;
                        x < 0.0
                    })
                    .unwrap_or(&mix[0])
                    .0
                    .clone();
                let prompt = match cumulative.last() {
                    Some(&sum) => {
                        let x = rng.unit() * sum;
                        pool[cumulative.partition_point(|&c| c <= x).min(pool.len() - 1)].clone()
                    }
                    None => {
                        let words: Vec<&str> =
                            (0..args.prompt_words).map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]).collect();
                        format!("Request {i}: {}", words.join(" "))
                    }
                };
                let mut body = serde_json::json!({
                    "model": model, "prompt": prompt, "max_tokens": args.max_tokens,
                    "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
                });
                if !class.is_empty() {
                    body["priority"] = class.clone().into();
                }
                (body.to_string(), class)
            })
            .collect();
        let start = Instant::now();
        let mut handles = Vec::new();
        if let Some(rate) = args.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
            let mut at = 0.0;
            for (body, class) in requests {
                at += -rng.unit().max(1e-12).ln() / rate;
                let wait = Duration::from_secs_f64(at).saturating_sub(start.elapsed());
                tokio::time::sleep(wait).await;
                let (target, key) = (target.clone(), args.api_key.clone());
                handles.push(tokio::spawn(async move { vec![one(target, body, class, key).await] }));
            }
        } else {
            let queue = Arc::new(parking_lot::Mutex::new(requests.into_iter()));
            for _ in 0..args.concurrency.min(args.num_requests) {
                let (queue, target, key) = (queue.clone(), target.clone(), args.api_key.clone());
                handles.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().next();
                        let Some((body, class)) = next else { break };
                        done.push(one(target.clone(), body, class, key.clone()).await);
                    }
                    done
                }));
            }
        }
        let mut samples = Vec::new();
        for h in handles {
            samples.extend(h.await?);
        }
        let secs = start.elapsed().as_secs_f64();
        report(&samples, secs, &args);
        Ok(())
    })
}

fn report(samples: &[Sample], secs: f64, args: &BenchArgs) {
    let mut by_class: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_class.entry(if s.class.is_empty() { "all".into() } else { s.class.clone() }).or_default().push(s);
    }
    let mut classes = serde_json::Map::new();
    let load = match args.rate {
        Some(r) => format!("rate {r}/s"),
        None => format!("concurrency {}", args.concurrency),
    };
    let prompts = match args.distinct_prompts {
        Some(n) => format!(" (drawn from {n} by Zipf {})", args.zipf),
        None => String::new(),
    };
    eprintln!(
        "{} requests, {load}, {} prompt words{prompts}, {} max tokens, {secs:.1} s",
        samples.len(),
        args.prompt_words,
        args.max_tokens
    );
    for (class, v) in &by_class {
        let ok: Vec<&&Sample> = v.iter().filter(|s| s.status == 200 && s.error.is_none()).collect();
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for s in v.iter().filter(|s| s.status != 200 || s.error.is_some()) {
            *statuses.entry(if s.status == 0 { "connection".into() } else { s.status.to_string() }).or_default() += 1;
        }
        let with_retry = v.iter().filter(|s| s.status != 200 && s.retry_after.is_some()).count();
        let tokens: usize = ok.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft).collect();
        let mut itl: Vec<f64> = ok.iter().flat_map(|s| s.gaps.iter().copied()).collect();
        let mut e2e: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
        let line = serde_json::json!({
            "requests": v.len(), "ok": ok.len(), "refused_or_failed": statuses, "refusals_with_retry_after": with_retry,
            "output_tokens_per_s": tokens as f64 / secs,
            "ttft_p50_s": pct(&mut ttft, 0.5), "ttft_p99_s": pct(&mut ttft, 0.99),
            "itl_p50_s": pct(&mut itl, 0.5), "itl_p99_s": pct(&mut itl, 0.99),
            "e2e_p50_s": pct(&mut e2e, 0.5), "e2e_p99_s": pct(&mut e2e, 0.99),
        });
        eprintln!(
            "  {class:<9} ok {:>4}/{:<4} refused {} (Retry-After on {with_retry})  {:>7.1} tok/s  TTFT p50 {:>6.0} ms p99 {:>6.0} ms  ITL p50 {:>5.1} ms p99 {:>5.1} ms",
            ok.len(),
            v.len(),
            if statuses.is_empty() {
                "none".to_string()
            } else {
                statuses.iter().map(|(k, n)| format!("{n}×{k}")).collect::<Vec<_>>().join(" ")
            },
            tokens as f64 / secs,
            1e3 * pct(&mut ttft, 0.5),
            1e3 * pct(&mut ttft, 0.99),
            1e3 * pct(&mut itl, 0.5),
            1e3 * pct(&mut itl, 0.99),
        );
        classes.insert(class.clone(), line);
    }
    if args.json {
        let total_tokens: usize = samples.iter().filter(|s| s.status == 200).map(|s| s.tokens).sum();
        println!("{}", serde_json::json!({"seconds": secs, "output_tokens_per_s": total_tokens as f64 / secs, "classes": classes}));
    }
}
