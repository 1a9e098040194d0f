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
mod kv_pool;
mod prepare;
mod stream;

pub use prepare::{SubmitError, ValidRequest};

pub use stream::{RequestId, RequestStream};

use crate::backend::{Backend, BackendError};
use crate::chat_template::ChatTemplate;
use crate::kv::{CacheStats, KvDtype};
use crate::model::{Llama, LoadedModel, ModelInfo};
use crate::request::Request;
use crate::tokenizer::Tokenizer;
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
    /// A model with sliding-window layers (Gemma 3) keeps, for those layers, only the KV
    /// blocks their window can see (`kv::WindowGroups`); off: every layer keeps every block
    /// and the window is only a mask. Not with a draft model.
    pub window_pages: bool,
    /// Waiting this long raises a request one priority class, up to `high` (zero: never).
    pub aging: Duration,
    /// Largest `n` a request may ask for.
    pub max_n: usize,
    /// Largest `logprobs` (alternatives per token) a request may ask for.
    pub max_logprobs: usize,
    /// Fault injection for tests: a request whose prompt contains this token id panics while
    /// its tokens are sampled (the engine must contain it). `None` in production.
    pub fault_injection: Option<u32>,
    /// Where the prefix cache reports blocks cached and evicted (KV-cache events for
    /// routers); `None`: not recorded.
    pub kv_events: Option<crate::kv::KvEventSink>,
    /// Speculative decoding (prompt lookup); `None`: off. See [`crate::speculative`].
    pub speculative: Option<crate::speculative::SpeculativeConfig>,
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
            window_pages: true,
            aging: Duration::from_secs(30),
            max_n: 16,
            max_logprobs: 20,
            fault_injection: None,
            kv_events: None,
            speculative: None,
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
    /// Requests the engine thread has taken in, by the class they were submitted at.
    pub accepted_by_class: [u64; 4],
    /// Choices finished, by reason.
    pub finished: FinishCounts,
    /// Tokens run through the model (prompt, decode and drafted rows).
    pub tokens_computed: u64,
    pub tokens_generated: u64,
    pub steps: u64,
    /// Speculative decoding by class ([`crate::request::Priority::rank`]).
    pub speculative: [crate::speculative::SpecCounts; 4],
}

impl Metrics {
    /// Prompt tokens run through the model: every row computed but those that produced a
    /// generated token or verified a draft the model did not choose.
    pub fn prompt_tokens_computed(&self) -> u64 {
        let rejected: u64 = self.speculative.iter().map(|c| c.drafted - c.accepted).sum();
        self.tokens_computed.saturating_sub(self.tokens_generated + rejected)
    }

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

/// A valid request on its way to the engine thread.
pub(crate) struct Queued {
    id: RequestId,
    prompt: Vec<u32>,
    request: Request,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    arrival: Instant,
    sender: EventSender,
    matcher: Option<Box<llguidance::Matcher>>,
}

struct Shared {
    metrics: Mutex<Metrics>,
    next_request: AtomicU64,
    /// Requests handed to the engine thread, by class (see [`Engine::metrics`]).
    enqueued: [AtomicU64; 4],
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
    /// Built on the first constrained request ([`crate::constraint::Grammars`]).
    grammars: std::sync::OnceLock<Result<crate::constraint::Grammars, crate::constraint::ConstraintError>>,
    commands: Option<Sender<Command>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<Arc<ChatTemplate>>,
    /// How the chat template has the model write tool calls (`None`: it offers no tools).
    tool_format: Option<crate::tools::ToolFormat>,
    limits: Limits,
    info: ModelInfo,
    config: EngineConfig,
    backend: String,
}

impl Engine {
    /// Builds the model on `backend` and starts the engine thread.
    pub fn start<B: Backend + 'static>(backend: B, model: LoadedModel, config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::start_with_draft(backend, model, None, config)
    }

    /// As [`Engine::start`], with a draft model for speculative decoding (`config.speculative`
    /// must be set; the draft model then drafts instead of prompt lookup). Its tokenizer must
    /// be the model's own; its KV pool has as many blocks as the model's, and the two share
    /// the KV budget (`kv_cache_bytes`, or a GPU's free memory).
    pub fn start_with_draft<B: Backend + 'static>(
        backend: B,
        model: LoadedModel,
        draft: Option<LoadedModel>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        if draft.is_some() && config.speculative.is_none() {
            return Err(EngineError::Config("a draft model needs speculative decoding on (EngineConfig::speculative)".into()));
        }
        if let Some(d) = &draft {
            crate::speculative::check_draft_model(&model, d).map_err(EngineError::Config)?;
        }
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0 {
            return Err(EngineError::Config("block size, token budget and sequence budget must be positive".into()));
        }
        if let Some(spec) = &config.speculative {
            spec.validate().map_err(EngineError::Config)?;
        }
        let LoadedModel { config: model_config, weights, tokenizer, info } = model;
        let backend_name = backend.name();
        let llama = Llama::new(&backend, model_config, weights, config.max_num_batched_tokens)?;
        let draft = match draft {
            Some(mut d) => {
                if let Some(head) = config.speculative.as_ref().and_then(|s| s.draft_head) {
                    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let saved = crate::speculative::lighten_draft_head(&mut d.weights, head, threads)
                        .map_err(|e| EngineError::Config(format!("the draft model's output matrix as {head}: {e}")))?;
                    if saved > 0 {
                        tracing::info!("draft model: output matrix as {head}, {:.0} MB less read a drafted token", saved as f64 / 1e6);
                    }
                }
                Some(Llama::new(&backend, d.config, d.weights, config.max_num_batched_tokens)?)
            }
            None => None,
        };
        let (window, num_blocks, kv, draft_kv) = kv_pool::allocate(&backend, &llama, draft.as_ref(), &config)?;
        let draft = draft.zip(draft_kv);
        let template = tokenizer.as_ref().and_then(|t| t.chat_template()).and_then(|src| match ChatTemplate::new(src) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!("the model's chat template does not compile: {e}");
                None
            }
        });
        let tool_format =
            template.as_ref().and(tokenizer.as_ref()).and_then(|t| t.chat_template()).and_then(crate::tools::ToolFormat::detect);
        let tokenizer = tokenizer.map(Arc::new);
        let mut eos = info.eos_token_ids.clone();
        if let Some((id, _)) = tokenizer.as_ref().and_then(|t| t.special().eos.clone())
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        let limits = Limits {
            max_context: llama.config().max_position_embeddings,
            kv_capacity: kv_pool::kv_capacity(num_blocks, window, &config),
            vocab_size: llama.config().vocab_size,
            eos,
        };
        let shared = Arc::new(Shared {
            metrics: Mutex::new(Metrics { kv_blocks_total: num_blocks, ..Metrics::default() }),
            next_request: AtomicU64::new(0),
            enqueued: Default::default(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let core_parts = CoreParts {
            window,
            backend,
            draft,
            model: llama,
            kv,
            num_blocks,
            config: config.clone(),
            tokenizer: tokenizer.clone(),
            commands: rx,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new().name("ballast-engine".into()).spawn(move || core_parts.run())?;
        Ok(Engine {
            grammars: Default::default(),
            commands: Some(tx),
            shared,
            thread: Some(thread),
            tokenizer,
            template,
            tool_format,
            limits,
            info,
            config,
            backend: backend_name,
        })
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

    /// How this model writes tool calls (from its chat template; `None`: it offers no tools).
    pub fn tool_format(&self) -> Option<crate::tools::ToolFormat> {
        self.tool_format
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
    /// The latest snapshot, with the requests already handed over but not yet taken in by
    /// the engine thread counted as waiting: a burst that arrives within one step is seen at
    /// once (by the overload ladder too), not a step later.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.shared.metrics.lock().clone();
        for (i, sent) in self.shared.enqueued.iter().enumerate() {
            m.waiting[i] += sent.load(Ordering::Acquire).saturating_sub(m.accepted_by_class[i]) as usize;
        }
        m
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
