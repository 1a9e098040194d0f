//! `ballast generate`: one prompt (or chat message) through the model, streamed to stdout.

use super::load::ModelArgs;
use anyhow::{Context, bail};
use ballast::chat_template::{ChatMessage, ChatTemplate};
use ballast::detok::Detokenizer;
use ballast::generate::{GenRequest, Runner, RunnerOptions};
use ballast::sampler::SamplingParams;
use std::io::Write;
use std::time::Instant;

const BLOCK_SIZE: usize = 16;
const MAX_BATCH_TOKENS: usize = 512;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "chat"]))]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Raw text to continue (special tokens such as <|im_start|> are recognised).
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long, short = 'c')]
    chat: Option<String>,
    /// A system message to put before --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
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
    /// Seed for sampling (the same seed reproduces the same text).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object {"prompt_ids", "output_ids", "text"} instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    params.validate()?;
    let loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer.as_ref().context("the model has no tokenizer; give token ids instead")?;
    let text = match (&args.prompt, &args.chat) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => {
            let source = tokenizer.chat_template().context("the model has no chat template; use --prompt")?;
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(ChatMessage::new("system", s));
            }
            messages.push(ChatMessage::new("user", c));
            ChatTemplate::new(source)?.render(&messages, true, tokenizer.special())?
        }
        (None, None) => unreachable!("clap requires --prompt or --chat"),
    };
    let prompt = tokenizer.encode(&text, true)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let max_context = loaded.config.max_position_embeddings;
    if prompt.len() >= max_context {
        bail!("the prompt has {} tokens; the model's context holds {max_context}", prompt.len());
    }
    let total = (prompt.len() + args.max_tokens).min(max_context);
    let options = RunnerOptions {
        max_batch_tokens: MAX_BATCH_TOKENS,
        block_size: BLOCK_SIZE,
        num_blocks: total.div_ceil(BLOCK_SIZE),
        kv_dtype: args.model.kv_dtype(),
    };
    let stop_ids = if args.ignore_eos { Vec::new() } else { loaded.info.eos_token_ids.clone() };
    let tokenizer = loaded.tokenizer.expect("checked above");
    let backend = args.model.backend()?;
    tracing::info!("backend: {}", ballast::backend::Backend::name(&backend));
    let mut runner = Runner::new(backend, loaded.config, loaded.weights, options)?;
    let request = GenRequest { prompt: prompt.clone(), params, max_tokens: args.max_tokens, stop_ids };

    let mut detok = Detokenizer::new(false);
    let mut stdout = std::io::stdout().lock();
    let mut stream_err = None;
    let start = Instant::now();
    let mut first_token_at = None;
    let outputs = runner.generate(std::slice::from_ref(&request), |_, token, _| {
        first_token_at.get_or_insert_with(Instant::now);
        match detok.push(&tokenizer, token) {
            Ok(delta) if !args.json => {
                let _ = stdout.write_all(delta.as_bytes()).and_then(|_| stdout.flush());
            }
            Ok(_) => {}
            Err(e) => stream_err = Some(e),
        }
    })?;
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    let output = &outputs[0];
    if args.json {
        let text = tokenizer.decode(&output.tokens, false)?;
        let obj = serde_json::json!({"prompt_ids": prompt, "output_ids": output.tokens, "text": text});
        writeln!(stdout, "{obj}")?;
    } else {
        write!(stdout, "{}", detok.flush(&tokenizer)?)?;
        writeln!(stdout)?;
    }
    report_speed(prompt.len(), output.tokens.len(), start, first_token_at);
    Ok(())
}

fn report_speed(num_prompt: usize, num_output: usize, start: Instant, first: Option<Instant>) {
    let Some(first) = first else { return };
    let prefill = (first - start).as_secs_f64();
    let decode = first.elapsed().as_secs_f64();
    let decode_rate = if num_output > 1 { (num_output - 1) as f64 / decode } else { 0.0 };
    tracing::info!(
        "prompt {num_prompt} tokens in {:.0} ms ({:.1} tok/s); generated {num_output} tokens ({decode_rate:.1} tok/s)",
        prefill * 1e3,
        num_prompt as f64 / prefill,
    );
}
