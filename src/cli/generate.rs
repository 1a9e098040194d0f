//! `ballast generate`: one prompt (or chat message) streamed to stdout, or a JSONL file of
//! prompts run concurrently through the engine's batcher.

use super::load::ModelArgs;
use anyhow::{Context, bail};
use ballast::chat_template::ChatMessage;
use ballast::engine::{Engine, EngineConfig, RequestStream};
use ballast::request::{Choice, Event, Priority, Prompt, Request};
use ballast::sampler::SamplingParams;
use ballast::speculative::SpeculativeConfig;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "chat", "prompts_file"]))]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Raw text to continue (special tokens such as <|im_start|> are recognised).
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long, short = 'c')]
    chat: Option<String>,
    /// A system message to put before --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// A JSONL file, one request per line: {"prompt": "..."} or {"chat": "..." | [{"role",
    /// "content"}, ...]} plus any of max_tokens, temperature, top_p, top_k, min_p, seed, stop,
    /// stop_token_ids, ignore_eos, repetition_penalty, presence_penalty, frequency_penalty,
    /// logprobs, n, priority. All run concurrently; one JSON line per request is printed, in
    /// input order, each as --json prints it.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalize tokens already in the prompt or output (1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed for sampling (the same seed reproduces the same text).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (not printed); repeatable.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object {"prompt_ids", "output_ids", "text", "finish_reason", "usage"}
    /// instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Engine sizes (the defaults suit the embedded default model).
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Tokens computed per step at most (longer prompts are prefilled in chunks).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Tokens a step computes at most while some sequence is decoding: decodes first, prompt
    /// chunks share the rest (at least a quarter). Bounds the inter-token gap a new prompt
    /// causes; prompts of a class above every decoding one are exempt. 0 lifts the limit
    /// (only --max-batch-tokens).
    #[arg(long, default_value_t = 32)]
    decode_step_tokens: usize,
    /// Sequences running at once at most.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Memory for the KV cache on the CPU, in MiB (a GPU sizes its cache from
    /// --gpu-memory-fraction).
    #[arg(long, default_value_t = 256)]
    kv_cache_mib: usize,
    /// Turn the automatic prefix cache off.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Keep every KV block for a model's sliding-window layers too (the window then only
    /// masks). By default those layers keep just the blocks their window sees, so a long
    /// context costs them a constant amount (Gemma 3: about a fifth of full attention's KV
    /// at 8k tokens).
    #[arg(long)]
    full_window_kv: bool,
    /// Speculative decoding by prompt lookup: a decoding sequence drafts the tokens that
    /// followed the last earlier occurrence of its latest n-gram, and one step verifies them
    /// all. Output is unchanged; editing and summarising run faster.
    #[arg(long, conflicts_with = "draft_model")]
    ngram_draft: bool,
    /// Tokens drafted per step at most (with --ngram-draft or --draft-model).
    #[arg(long, default_value_t = 4)]
    num_speculative_tokens: usize,
    /// With --draft-model: its output matrix requantized at load to this type when that reads
    /// fewer bytes (`keep`: as in its file). A drafted token reads every draft weight, and a
    /// small model's output matrix is a large share of them (Qwen2.5-Coder-0.5B: a Q8_0
    /// matrix, 37% of its bytes; as Q4_0, 17% fewer bytes a drafted token, the same drafts
    /// accepted on code). The model verifies every draft, so only the acceptance rate can
    /// change, never the output.
    #[arg(long, default_value = "q4_0", value_parser = ["keep", "q4_0", "q5_0", "q8_0"], requires = "draft_model")]
    draft_head_type: String,
    /// Longest n-gram looked up (the longest that matches wins).
    #[arg(long, default_value_t = 4, requires = "ngram_draft")]
    ngram_max: usize,
    /// Shortest n-gram looked up.
    #[arg(long, default_value_t = 2, requires = "ngram_draft")]
    ngram_min: usize,
    /// Nobody drafts while more sequences than this decode (the rows would cost compute the
    /// batch needs). Default: 8 with --ngram-draft, 2 with --draft-model (on a 2-core CPU a
    /// draft model cost more than it gained from 4 streams on; a GPU has room for more).
    /// Drafts are also withheld from a sequence while one of its class or above waits.
    #[arg(long)]
    speculative_disable_by_batch_size: Option<usize>,
}

impl EngineArgs {
    pub fn config(&self, model: &ModelArgs) -> EngineConfig {
        EngineConfig {
            max_num_batched_tokens: self.max_batch_tokens,
            max_num_seqs: self.max_num_seqs,
            max_step_tokens_while_decoding: if self.decode_step_tokens == 0 { usize::MAX } else { self.decode_step_tokens },
            kv_cache_bytes: self.kv_cache_mib << 20,
            kv_dtype: model.kv_dtype(),
            prefix_caching: !self.no_prefix_caching,
            window_pages: !self.full_window_kv,
            speculative: (self.ngram_draft || model.draft_model.is_some()).then_some(SpeculativeConfig {
                num_speculative_tokens: self.num_speculative_tokens,
                ngram_max: self.ngram_max,
                ngram_min: self.ngram_min,
                disable_by_batch_size: self.speculative_disable_by_batch_size.unwrap_or(if model.draft_model.is_some() { 2 } else { 8 }),
                draft_head: ballast::quant::GgmlType::from_name(&self.draft_head_type),
            }),
            // A test hook (tests/reliability.rs): prompts holding this token id panic in sampling.
            fault_injection: std::env::var("BALLAST_FAULT_INJECTION").ok().and_then(|v| v.parse().ok()),
            ..EngineConfig::default()
        }
    }
}

/// One line of a prompts file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    chat: Option<ChatField>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    stop_token_ids: Vec<u32>,
    #[serde(default)]
    ignore_eos: bool,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logprobs: Option<usize>,
    n: Option<usize>,
    priority: Option<Priority>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum ChatField {
    User(String),
    Messages(Vec<ChatMessage>),
}

impl GenerateArgs {
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }

    fn request(&self, prompt: Prompt) -> Request {
        Request {
            sampling: self.sampling(),
            max_tokens: Some(self.max_tokens),
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..Request::new(prompt)
        }
    }

    /// A line of the prompts file as a request (command-line values are the defaults).
    fn line_request(&self, line: PromptLine) -> anyhow::Result<Request> {
        let prompt = match (line.prompt, line.chat) {
            (Some(p), None) => Prompt::Text(p),
            (None, Some(ChatField::User(u))) => Prompt::Chat(vec![ChatMessage::new("user", &u)]),
            (None, Some(ChatField::Messages(m))) => Prompt::Chat(m),
            _ => bail!("each line needs exactly one of \"prompt\" or \"chat\""),
        };
        let d = self.sampling();
        let sampling = SamplingParams {
            temperature: line.temperature.unwrap_or(d.temperature),
            top_k: line.top_k.unwrap_or(d.top_k),
            top_p: line.top_p.unwrap_or(d.top_p),
            min_p: line.min_p.unwrap_or(d.min_p),
            repetition_penalty: line.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: line.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: line.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: line.seed.or(d.seed),
        };
        let stop = if line.stop.is_empty() { self.stop.clone() } else { line.stop };
        Ok(Request {
            sampling,
            max_tokens: Some(line.max_tokens.unwrap_or(self.max_tokens)),
            stop,
            stop_token_ids: line.stop_token_ids,
            ignore_eos: line.ignore_eos || self.ignore_eos,
            logprobs: line.logprobs,
            n: line.n.unwrap_or(1),
            priority: line.priority.unwrap_or_default(),
            ..Request::new(prompt)
        })
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    args.sampling().validate()?;
    let lines = match &args.prompts_file {
        Some(path) => Some(read_prompts(&args, path)?),
        None => None,
    };
    let loaded = args.model.load()?;
    let engine = args.model.start_engine(loaded, args.engine.config(&args.model))?;
    match lines {
        Some(requests) => run_file(&engine, requests),
        None => run_one(&args, &engine),
    }
}

fn read_prompts(args: &GenerateArgs, path: &PathBuf) -> anyhow::Result<Vec<Request>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut requests = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: PromptLine =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: not a valid request", path.display(), i + 1))?;
        let request = args.line_request(parsed).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        request.sampling.validate().with_context(|| format!("{}:{}", path.display(), i + 1))?;
        requests.push(request);
    }
    Ok(requests)
}

fn json_line(prompt_ids: &[u32], choices: &[Choice]) -> serde_json::Value {
    let one = |c: &Choice| {
        let mut v = serde_json::json!({
            "output_ids": c.ids,
            "text": c.text,
            "finish_reason": c.finish.as_ref().map(|f| f.name()),
            "usage": {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "cached_tokens": c.usage.cached_tokens,
            },
        });
        if let Some(ballast::request::FinishReason::Error(e)) = &c.finish {
            v["error"] = e.clone().into();
        }
        if !c.logprobs.is_empty() {
            v["logprobs"] = c.logprobs.iter().map(|l| serde_json::json!({"id": l.id, "logprob": l.logprob, "top": l.top})).collect();
        }
        v
    };
    let mut v = choices.first().map(one).unwrap_or_else(|| serde_json::json!({}));
    v["prompt_ids"] = prompt_ids.into();
    if choices.len() > 1 {
        v["choices"] = choices.iter().map(one).collect();
    }
    v
}

fn run_file(engine: &Engine, requests: Vec<Request>) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pending: Vec<(Vec<u32>, RequestStream)> = Vec::with_capacity(requests.len());
    for (i, r) in requests.into_iter().enumerate() {
        let stream = engine.submit(r).with_context(|| format!("request {}", i + 1))?;
        pending.push((stream.prompt_ids().to_vec(), stream));
    }
    let mut stdout = std::io::stdout().lock();
    let mut generated = 0;
    for (ids, stream) in pending {
        let choices = stream.collect_output();
        generated += choices.iter().map(|c| c.ids.len()).sum::<usize>();
        writeln!(stdout, "{}", json_line(&ids, &choices))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let m = engine.metrics();
    tracing::info!(
        "{generated} tokens in {secs:.2} s ({:.1} tok/s); prefix cache hit rate {:.0}%, {} preemptions",
        generated as f64 / secs,
        100.0 * m.prefix_cache_hit_rate(),
        m.preemptions
    );
    Ok(())
}

fn run_one(args: &GenerateArgs, engine: &Engine) -> anyhow::Result<()> {
    let prompt = match (&args.prompt, &args.chat) {
        (Some(p), _) => Prompt::Text(p.clone()),
        (None, Some(c)) => {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(ChatMessage::new("system", s));
            }
            messages.push(ChatMessage::new("user", c));
            Prompt::Chat(messages)
        }
        (None, None) => unreachable!("clap requires an input"),
    };
    let start = Instant::now();
    let stream = engine.submit(args.request(prompt))?;
    let prompt_ids = stream.prompt_ids().to_vec();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let choices = stream.collect_output();
        writeln!(stdout, "{}", json_line(&prompt_ids, &choices))?;
        return fail_on_error(&choices[0]);
    }
    let mut choice = Choice::default();
    for event in stream {
        match event {
            Event::Token { ids, text, .. } => {
                choice.ids.extend(ids);
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
            }
            Event::Finish { reason, usage, timings, .. } => {
                choice.finish = Some(reason);
                choice.usage = usage;
                choice.timings = timings;
            }
        }
    }
    writeln!(stdout)?;
    report_speed(&choice, start);
    fail_on_error(&choice)
}

fn fail_on_error(choice: &Choice) -> anyhow::Result<()> {
    match &choice.finish {
        Some(ballast::request::FinishReason::Error(e)) => bail!("generation failed: {e}"),
        _ => Ok(()),
    }
}

fn report_speed(choice: &Choice, start: Instant) {
    let Some(ttft) = choice.timings.time_to_first_token else { return };
    let prefill = ttft.as_secs_f64();
    let n = choice.usage.completion_tokens;
    let decode = choice.timings.decode.as_secs_f64();
    let decode_rate = if n > 1 && decode > 0.0 { (n - 1) as f64 / decode } else { 0.0 };
    tracing::info!(
        "prompt {} tokens in {:.0} ms ({:.1} tok/s); generated {n} tokens ({decode_rate:.1} tok/s); total {:.2} s",
        choice.usage.prompt_tokens,
        prefill * 1e3,
        choice.usage.prompt_tokens as f64 / prefill,
        start.elapsed().as_secs_f64()
    );
}
