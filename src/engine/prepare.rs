//! Submission: a [`Request`] is checked and tokenized once into a [`ValidRequest`]
//! ([`Engine::prepare`]), which only a stopped engine can refuse ([`Engine::enqueue`]).

use super::stream;
use super::{Command, Engine, Queued, RequestStream};
use crate::chat_template::TemplateError;
use crate::request::{Prompt, Request};
use crate::sampler::SamplingError;
use crate::tokenizer::TokenizerError;
use crate::tools::{ToolChoice, ToolFormat};
use std::sync::atomic::Ordering;
use std::time::Instant;

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
    /// The request's `constraint` cannot be compiled (invalid, unsupported, too large).
    #[error(transparent)]
    Constraint(#[from] crate::constraint::ConstraintError),
    /// The request's tools cannot be offered (no chat prompt, a template without tools, an
    /// invalid schema).
    #[error("{0}")]
    Tools(String),
    /// The request's `tool_choice` asks for something its tools cannot give.
    #[error("{0}")]
    ToolChoice(String),
}

/// A compiled constraint (cloned per choice).
pub struct Compiled(pub(super) Box<llguidance::Matcher>);

impl Clone for Compiled {
    fn clone(&self) -> Self {
        Compiled(Box::new(self.0.deep_clone()))
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
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
    /// The request's constraint (or its required tool call), compiled for this engine's
    /// vocabulary.
    matcher: Option<Compiled>,
    /// How to read tool calls in the output (tools offered, with a choice other than `none`).
    tool_format: Option<crate::tools::ToolFormat>,
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

    /// The format of the tool calls to look for in the output (`None`: no tools offered).
    pub fn tool_format(&self) -> Option<crate::tools::ToolFormat> {
        self.tool_format
    }

    /// The output has a contract that degrading would break: a constraint, or tool calls (a
    /// capped output may cut a call short; a fallback model may write calls otherwise).
    pub fn has_contract(&self) -> bool {
        self.matcher.is_some() || self.tool_format.is_some()
    }

    /// The degraded treatment ([`crate::admission::degrade`]); returns what it changed.
    pub fn degrade(&mut self, max_tokens_cap: usize) -> Vec<&'static str> {
        let changed = crate::admission::degrade(&mut self.request, max_tokens_cap);
        self.max_tokens = self.max_tokens.min(max_tokens_cap);
        changed
    }
}

impl Engine {
    /// The token ids a prompt becomes (as [`Self::submit`] would tokenize it).
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, SubmitError> {
        self.tokenize_with_tools(prompt, None)
    }

    /// [`Self::tokenize`] with the tools a chat template is given.
    fn tokenize_with_tools(&self, prompt: &Prompt, tools: Option<&[serde_json::Value]>) -> Result<Vec<u32>, SubmitError> {
        let ids = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => self.tokenizer.as_ref().ok_or(SubmitError::NoTokenizer)?.encode(text, true)?,
            Prompt::Chat(messages) => {
                let tok = self.tokenizer.as_ref().ok_or(SubmitError::NoTokenizer)?;
                let template = self.template.as_ref().ok_or(SubmitError::NoChatTemplate)?;
                let text = template.render_with_tools(messages, tools, true, tok.special())?;
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
        let (tool_format, tool_matcher) = self.tools(&request)?;
        let template_tools = request.tools.as_ref().and_then(|t| t.template_values());
        let prompt = self.tokenize_with_tools(&request.prompt, template_tools.as_deref())?;
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
        let matcher = match &request.constraint {
            None => tool_matcher.map(|m| Compiled(Box::new(m))),
            Some(c) => Some(Compiled(Box::new(self.grammars()?.compile(c)?))),
        };
        Ok(ValidRequest { request, prompt, max_tokens, stop_ids, matcher, tool_format })
    }

    /// The request's tools checked: the format to read calls in (when a call may come), and
    /// the matcher of a required or named call. Every function's schema is compiled, also
    /// when the model may answer without a call, so a bad one is an error now.
    fn tools(&self, request: &Request) -> Result<(Option<ToolFormat>, Option<llguidance::Matcher>), SubmitError> {
        let Some(tools) = request.tools.as_ref() else { return Ok((None, None)) };
        let forced = matches!(tools.choice, ToolChoice::Required | ToolChoice::Function(_));
        if tools.functions.is_empty() {
            return match forced {
                true => Err(SubmitError::ToolChoice("tool_choice asks for a tool call, and no tools are given".into())),
                false => Ok((None, None)),
            };
        }
        if let ToolChoice::Function(name) = &tools.choice
            && !tools.functions.iter().any(|f| &f.name == name)
        {
            return Err(SubmitError::ToolChoice(format!("tool_choice names the function {name:?}, which is not among the tools")));
        }
        if let Some(dup) = tools.functions.iter().enumerate().find(|(i, f)| tools.functions[..*i].iter().any(|g| g.name == f.name)) {
            return Err(SubmitError::Tools(format!("two tools are named {:?}", dup.1.name)));
        }
        if !matches!(request.prompt, Prompt::Chat(_)) {
            return Err(SubmitError::Tools("tools need a chat prompt (messages)".into()));
        }
        let format =
            self.tool_format.ok_or_else(|| SubmitError::Tools("this model's chat template does not offer tools to the model".into()))?;
        if forced && request.constraint.is_some() {
            return Err(SubmitError::ToolChoice("a required tool call cannot also follow response_format".into()));
        }
        let grammars = self.grammars()?;
        // Each function's schema alone first, so an error names it.
        for f in &tools.functions {
            let schema = crate::constraint::Constraint::JsonSchema(f.arguments_schema());
            grammars.compile(&schema).map_err(|e| SubmitError::Tools(format!("the parameters of tool {:?}: {e}", f.name)))?;
        }
        let matcher = match forced {
            true => Some(grammars.compile(&format.constraint(tools)).map_err(|e| SubmitError::Tools(e.to_string()))?),
            false => None,
        };
        let format = (tools.choice != ToolChoice::None).then_some(format);
        Ok((format, matcher))
    }

    /// The constraint compiler of this engine's vocabulary (built on first use).
    fn grammars(&self) -> Result<&crate::constraint::Grammars, crate::constraint::ConstraintError> {
        let built = self.grammars.get_or_init(|| {
            let tokenizer = self.tokenizer.as_deref().ok_or(crate::constraint::ConstraintError::NoTokenizer)?;
            crate::constraint::Grammars::new(tokenizer, self.limits.vocab_size, &self.limits.eos)
        });
        built.as_ref().map_err(Clone::clone)
    }

    /// Queues a prepared request. The only error left is a stopped engine.
    pub fn enqueue(&self, valid: ValidRequest) -> Result<RequestStream, SubmitError> {
        let commands = self.commands.as_ref().ok_or(SubmitError::EngineStopped)?;
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let ValidRequest { request, prompt, max_tokens, stop_ids, matcher, .. } = valid;
        let (sender, stream) = stream::channel(id, commands.clone(), prompt.clone());
        let class = request.priority.rank() as usize;
        let queued = Queued { id, prompt, request, max_tokens, stop_ids, arrival: Instant::now(), sender, matcher: matcher.map(|m| m.0) };
        self.shared.enqueued[class].fetch_add(1, Ordering::AcqRel);
        if commands.send(Command::Submit(Box::new(queued))).is_err() {
            self.shared.enqueued[class].fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::EngineStopped);
        }
        Ok(stream)
    }

    /// [`Self::prepare`] then [`Self::enqueue`]. Errors mean nothing was queued.
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        self.enqueue(self.prepare(request)?)
    }
}
