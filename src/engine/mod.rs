//! The engine: one OS thread that owns the model, the backend, the KV pool, the block manager
//! and the scheduler, and runs steps (schedule → plan → forward → sample → emit) for as long as
//! there is work. Callers talk to it in two steps: [`Engine::prepare`] checks and tokenizes a
//! [`Request`] once, on the caller's thread, into a [`ValidRequest`] (or a [`SubmitError`]
//! naming what is wrong); [`Engine::enqueue`] queues it and returns a [`RequestStream`] of
//! [`Event`]s ([`Engine::submit`] does both). Between the two a server decides admission on
//! the request's real token count. Dropping the stream cancels the request, and its blocks are
//! freed at the start of the engine's next step.
//!
//! Batch invariance: on the CPU backend every op computes a row with the same reduction order
//! whatever else is in the batch, and each sequence samples from its own seeded stream, so a
//! request's tokens (greedy or seeded) are the same alone or beside any other requests, and
//! whether its prefix came from the cache or was computed.

mod core;
mod stream;

pub use stream::{RequestId, RequestStream};

use crate::backend::{Backend, BackendError};
use crate::chat_template::{ChatTemplate, TemplateError};
use crate::kv::{CacheStats, KvDtype};
use crate::model::{Llama, LoadedModel, ModelInfo};
use crate::request::{Prompt, Request};
use crate::sampler::SamplingError;
use crate::tokenizer::{Tokenizer, TokenizerError};
use core::CoreParts;
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stream::EventSender;

/// Sizes and policies of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tokens computed per step at most (prompts longer than this are prefilled in chunks).
    pub max_num_batched_tokens: usize,
    /// Sequences running at once at most.
    pub max_num_seqs: usize,
    /// Tokens a step computes at most while some sequence is decoding: decodes go first and
    /// prompt chunks share the rest (at least a quarter), which bounds the inter-token gap a
    /// new prompt causes. Prompts of a class above every decoding one are exempt.
    /// `usize::MAX`: only `max_num_batched_tokens`.
    pub max_step_tokens_while_decoding: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for the KV pool; the number of blocks follows from the model's shape.
    pub kv_cache_bytes: usize,
    pub kv_dtype: KvDtype,
    pub prefix_caching: bool,
    /// Waiting this long raises a request one priority class, up to `high` (zero: never).
    pub aging: Duration,
    /// Largest `n` a request may ask for.
    pub max_n: usize,
    /// Largest `logprobs` (alternatives per token) a request may ask for.
    pub max_logprobs: usize,
    /// Fault injection for tests: a request whose prompt contains this token id panics while
    /// its tokens are sampled (the engine must contain it). `None` in production.
    pub fault_injection: Option<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_batched_tokens: 512,
            max_num_seqs: 64,
            max_step_tokens_while_decoding: 32,
            block_size: 16,
            kv_cache_bytes: 256 << 20,
            kv_dtype: KvDtype::F16,
            prefix_caching: true,
            aging: Duration::from_secs(30),
            max_n: 16,
            max_logprobs: 20,
            fault_injection: None,
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("could not start the engine thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a request was refused at submission (nothing was queued).
#[derive(thiserror::Error, Debug)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens; the model's context holds {max_context}")]
    PromptTooLong { tokens: usize, max_context: usize },
    #[error("the prompt has {tokens} tokens; the KV cache holds {capacity}")]
    ExceedsKvCache { tokens: usize, capacity: usize },
    #[error("token id {id} out of range (vocabulary of {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error(
        "max_tokens is too large: {max_tokens}. This model's maximum context length is {max_context} tokens and the \
         request has {prompt_tokens} prompt tokens ({max_tokens} > {max_context} - {prompt_tokens})"
    )]
    MaxTokensTooLarge { max_tokens: usize, prompt_tokens: usize, max_context: usize },
    #[error("n must be between 1 and {max}, got {n}")]
    InvalidN { n: usize, max: usize },
    #[error("logprobs must be at most {max}, got {logprobs}")]
    InvalidLogprobs { logprobs: usize, max: usize },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("the model has no tokenizer: give token ids")]
    NoTokenizer,
    #[error("stop strings need the model's tokenizer (use stop token ids)")]
    StopWithoutTokenizer,
    #[error("the model has no usable chat template")]
    NoChatTemplate,
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the engine has stopped")]
    EngineStopped,
}

/// Requests finished, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinishCounts {
    pub stop: u64,
    pub length: u64,
    pub cancelled: u64,
    pub deadline: u64,
    pub error: u64,
}

/// A snapshot of the engine's state, published after every step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Waiting sequences per class, indexed by [`crate::request::Priority::rank`].
    pub waiting: [usize; 4],
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub prefix_cache: CacheStats,
    pub preemptions: u64,
    /// Preemptions by the preempted sequence's class.
    pub preemptions_by_class: [u64; 4],
    pub requests_submitted: u64,
    /// Choices finished, by reason.
    pub finished: FinishCounts,
    /// Tokens run through the model (prompt and decode).
    pub tokens_computed: u64,
    pub tokens_generated: u64,
    pub steps: u64,
}

impl Metrics {
    /// Fraction of looked-up prompt tokens found in the prefix cache.
    pub fn prefix_cache_hit_rate(&self) -> f64 {
        let q = self.prefix_cache.queried_tokens;
        if q == 0 { 0.0 } else { self.prefix_cache.hit_tokens as f64 / q as f64 }
    }
}

pub(crate) enum Command {
    Submit(Box<Queued>),
    Cancel(RequestId),
    /// Fail what is in flight and stop (the engine handle was dropped).
    Shutdown,
}

/// A request the engine has checked and tokenized ([`Engine::prepare`]); nothing about it can
/// be refused any more except by a stopped engine.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    /// As given: its prompt is the original (text, chat or ids), so a request routed to
    /// another engine (a fallback model) is prepared again from it.
    request: Request,
    prompt: Vec<u32>,
    /// Tokens to generate at most: the request's own, or what the context leaves.
    max_tokens: usize,
    /// Token ids that end a choice: the request's and (unless `ignore_eos`) the model's EOS.
    stop_ids: Vec<u32>,
}

impl ValidRequest {
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn into_request(self) -> Request {
        self.request
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The degraded treatment ([`crate::admission::degrade`]); returns what it changed.
    pub fn degrade(&mut self, max_tokens_cap: usize) -> Vec<&'static str> {
        let changed = crate::admission::degrade(&mut self.request, max_tokens_cap);
        self.max_tokens = self.max_tokens.min(max_tokens_cap);
        changed
    }
}

/// A valid request on its way to the engine thread.
pub(crate) struct Queued {
    id: RequestId,
    prompt: Vec<u32>,
    request: Request,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    arrival: Instant,
    sender: EventSender,
}

struct Shared {
    metrics: Mutex<Metrics>,
    next_request: AtomicU64,
}

/// What submission checks against.
struct Limits {
    max_context: usize,
    kv_capacity: usize,
    vocab_size: usize,
    eos: Vec<u32>,
}

/// A running engine; see the module doc. Dropping it stops the thread after failing whatever
/// is still in flight.
pub struct Engine {
    commands: Option<Sender<Command>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<Arc<ChatTemplate>>,
    limits: Limits,
    info: ModelInfo,
    config: EngineConfig,
    backend: String,
}

impl Engine {
    /// Builds the model on `backend` and starts the engine thread.
    pub fn start<B: Backend + 'static>(backend: B, model: LoadedModel, config: EngineConfig) -> Result<Engine, EngineError> {
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0 {
            return Err(EngineError::Config("block size, token budget and sequence budget must be positive".into()));
        }
        let LoadedModel { config: model_config, weights, tokenizer, info } = model;
        let backend_name = backend.name();
        let llama = Llama::new(&backend, model_config, weights, config.max_num_batched_tokens)?;
        let probe = llama.kv_layout(1, config.block_size, config.kv_dtype);
        // A GPU sizes the pool from its free memory (--gpu-memory-fraction); the CPU from the
        // configured budget.
        let kv_bytes = backend.kv_memory_budget()?.unwrap_or(config.kv_cache_bytes);
        let num_blocks = probe.blocks_for_budget(kv_bytes);
        if num_blocks == 0 {
            return Err(EngineError::Config(format!(
                "a KV budget of {} bytes holds no block of {} bytes",
                kv_bytes,
                probe.bytes_per_block()
            )));
        }
        let layout = llama.kv_layout(num_blocks, config.block_size, config.kv_dtype);
        let kv = backend.alloc_kv(&layout)?;
        let template = tokenizer.as_ref().and_then(|t| t.chat_template()).and_then(|src| match ChatTemplate::new(src) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!("the model's chat template does not compile: {e}");
                None
            }
        });
        let tokenizer = tokenizer.map(Arc::new);
        let mut eos = info.eos_token_ids.clone();
        if let Some((id, _)) = tokenizer.as_ref().and_then(|t| t.special().eos.clone())
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        let limits = Limits {
            max_context: llama.config().max_position_embeddings,
            kv_capacity: num_blocks * config.block_size,
            vocab_size: llama.config().vocab_size,
            eos,
        };
        let shared = Arc::new(Shared {
            metrics: Mutex::new(Metrics { kv_blocks_total: num_blocks, ..Metrics::default() }),
            next_request: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let core_parts = CoreParts {
            backend,
            model: llama,
            kv,
            num_blocks,
            config: config.clone(),
            tokenizer: tokenizer.clone(),
            commands: rx,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new().name("ballast-engine".into()).spawn(move || core_parts.run())?;
        tracing::debug!("engine started: {num_blocks} KV blocks of {} tokens", config.block_size);
        Ok(Engine { commands: Some(tx), shared, thread: Some(thread), tokenizer, template, limits, info, config, backend: backend_name })
    }

    /// The backend the model runs on, in words.
    pub fn backend_name(&self) -> &str {
        &self.backend
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_deref()
    }

    /// Tokens the KV pool holds.
    pub fn kv_capacity(&self) -> usize {
        self.limits.kv_capacity
    }

    pub fn max_context(&self) -> usize {
        self.limits.max_context
    }

    /// Stops the engine thread without waiting: what is in flight finishes with an error and
    /// later submissions are refused. (Dropping the engine does the same and waits.)
    pub fn shutdown(&self) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(Command::Shutdown);
        }
    }

    /// Whether the engine thread is alive and taking requests.
    pub fn is_running(&self) -> bool {
        self.commands.is_some() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The latest metrics snapshot.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.lock().clone()
    }

    /// The token ids a prompt becomes (as [`Self::submit`] would tokenize it).
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, SubmitError> {
        let ids = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => self.tokenizer.as_ref().ok_or(SubmitError::NoTokenizer)?.encode(text, true)?,
            Prompt::Chat(messages) => {
                let tok = self.tokenizer.as_ref().ok_or(SubmitError::NoTokenizer)?;
                let template = self.template.as_ref().ok_or(SubmitError::NoChatTemplate)?;
                let text = template.render(messages, true, tok.special())?;
                tok.encode(&text, true)?
            }
        };
        // Also for text: a tokenizer may know more ids than the model has embeddings.
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.limits.vocab_size) {
            return Err(SubmitError::TokenOutOfRange { id, vocab_size: self.limits.vocab_size });
        }
        Ok(ids)
    }

    /// Checks and tokenizes `request` once: sampling parameters, `n`, `logprobs`, stop
    /// strings, the prompt (non-empty, in the vocabulary, within the context and the KV pool)
    /// and `max_tokens` (a given one must fit the context beside the prompt: an error, never a
    /// silent clamp; without one, the request may use the rest of the context).
    pub fn prepare(&self, request: Request) -> Result<ValidRequest, SubmitError> {
        request.sampling.validate()?;
        let max_n = self.config.max_n.min(self.config.max_num_seqs);
        if request.n == 0 || request.n > max_n {
            return Err(SubmitError::InvalidN { n: request.n, max: max_n });
        }
        if !request.stop.is_empty() && self.tokenizer.is_none() {
            return Err(SubmitError::StopWithoutTokenizer);
        }
        if let Some(k) = request.logprobs.filter(|&k| k > self.config.max_logprobs) {
            return Err(SubmitError::InvalidLogprobs { logprobs: k, max: self.config.max_logprobs });
        }
        if request.max_tokens == Some(0) {
            return Err(SubmitError::ZeroMaxTokens);
        }
        let prompt = self.tokenize(&request.prompt)?;
        let tokens = prompt.len();
        if tokens == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        let max_context = self.limits.max_context;
        if tokens >= max_context {
            return Err(SubmitError::PromptTooLong { tokens, max_context });
        }
        if tokens >= self.limits.kv_capacity {
            return Err(SubmitError::ExceedsKvCache { tokens, capacity: self.limits.kv_capacity });
        }
        let room = max_context - tokens;
        let max_tokens = match request.max_tokens {
            None => room,
            Some(m) if m > room => return Err(SubmitError::MaxTokensTooLarge { max_tokens: m, prompt_tokens: tokens, max_context }),
            Some(m) => m,
        };
        let mut stop_ids = request.stop_token_ids.clone();
        if !request.ignore_eos {
            stop_ids.extend(&self.limits.eos);
        }
        Ok(ValidRequest { request, prompt, max_tokens, stop_ids })
    }

    /// Queues a prepared request. The only error left is a stopped engine.
    pub fn enqueue(&self, valid: ValidRequest) -> Result<RequestStream, SubmitError> {
        let commands = self.commands.as_ref().ok_or(SubmitError::EngineStopped)?;
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let ValidRequest { request, prompt, max_tokens, stop_ids } = valid;
        let (sender, stream) = stream::channel(id, commands.clone(), prompt.clone());
        let queued = Queued { id, prompt, request, max_tokens, stop_ids, arrival: Instant::now(), sender };
        commands.send(Command::Submit(Box::new(queued))).map_err(|_| SubmitError::EngineStopped)?;
        Ok(stream)
    }

    /// [`Self::prepare`] then [`Self::enqueue`]. Errors mean nothing was queued.
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        self.enqueue(self.prepare(request)?)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(tx) = self.commands.take() {
            let _ = tx.send(Command::Shutdown);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
