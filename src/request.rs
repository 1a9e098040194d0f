//! What a caller asks the [`crate::engine::Engine`] for, and what it gets back.

use crate::chat_template::ChatMessage;
use crate::sampler::{SamplingParams, TokenLogprob};
use std::time::{Duration, Instant};

/// Scheduling class, highest first: `critical > high > normal > low`. Within a class requests
/// run in arrival order; a waiting request of a higher class preempts running work of a lower
/// one when KV blocks or sequence slots run out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low = 0,
    #[default]
    Normal = 1,
    High = 2,
    Critical = 3,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical];

    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("unknown priority {s:?} (critical, high, normal or low)"))
    }
}

/// The input of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Raw text; special tokens written in it are recognised, BOS is added if the model wants it.
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
    /// A conversation rendered with the model's chat template (with the generation prompt).
    Chat(Vec<ChatMessage>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Prompt {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Prompt {
        Prompt::Text(s)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Prompt {
        Prompt::Tokens(ids)
    }
}

/// One generation request. [`Request::new`] gives greedy decoding to the end of the context or
/// the first end-of-sequence token.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Tokens to generate at most per choice (`None`: up to the model's context).
    pub max_tokens: Option<usize>,
    /// Strings that end a choice; matched across token boundaries and never emitted.
    pub stop: Vec<String>,
    /// Token ids that end a choice (besides the model's end-of-sequence ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Report each token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Independent choices generated from one prompt (its KV blocks are shared).
    pub n: usize,
    pub priority: Priority,
    /// If the first token cannot be produced by then, the request fails early
    /// ([`FinishReason::Deadline`]) instead of using compute.
    pub deadline: Option<Instant>,
    /// Prefix-cache namespace: requests with different salts never share cached blocks.
    pub cache_salt: Option<String>,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
    /// What the output must match (a JSON schema, any JSON object, a regex, a grammar);
    /// checked when the request is prepared.
    pub constraint: Option<crate::constraint::Constraint>,
    /// Functions the model may call (chat prompts of a model whose template knows tools);
    /// see [`crate::tools`].
    pub tools: Option<crate::tools::Tools>,
}

impl Request {
    pub fn new(prompt: impl Into<Prompt>) -> Request {
        Request {
            prompt: prompt.into(),
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            n: 1,
            priority: Priority::Normal,
            deadline: None,
            cache_salt: None,
            skip_special_tokens: true,
            constraint: None,
            tools: None,
        }
    }

    pub fn max_tokens(mut self, n: usize) -> Request {
        self.max_tokens = Some(n);
        self
    }

    pub fn sampling(mut self, sampling: SamplingParams) -> Request {
        self.sampling = sampling;
        self
    }

    pub fn priority(mut self, priority: Priority) -> Request {
        self.priority = priority;
        self
    }
}

/// Why a choice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens`, the model's context, or (for a single sequence that outgrew it) the KV
    /// cache.
    Length,
    /// The caller dropped or cancelled its stream.
    Cancelled,
    /// The deadline could no longer be met.
    Deadline,
    /// The engine failed while running this request.
    Error(String),
}

impl FinishReason {
    /// The OpenAI-style name (`stop`, `length`, `cancelled`, `deadline`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Deadline => "deadline",
            FinishReason::Error(_) => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Generated tokens of this choice (including a final stop token).
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Submission to the first step that computed any of the request.
    pub queued: Duration,
    /// Submission to the first generated token.
    pub time_to_first_token: Option<Duration>,
    /// First token to finish.
    pub decode: Duration,
    /// Times this choice was preempted (and resumed).
    pub preemptions: u32,
}

/// What a [`crate::engine::RequestStream`] yields. Token events of different choices (n > 1)
/// interleave; each choice ends with exactly one `Finish`, and the stream ends after the last.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token {
        /// The choice (0..n).
        index: usize,
        /// Tokens generated since the previous event of this choice (a final stop token
        /// included, as vLLM does; its text never is).
        ids: Vec<u32>,
        /// Text they completed (may be empty: a character or stop string still pending).
        text: String,
        /// One entry per id when logprobs were requested.
        logprobs: Vec<TokenLogprob>,
    },
    Finish {
        index: usize,
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
}

/// One choice gathered from a stream ([`crate::engine::RequestStream::collect_output`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Choice {
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
    pub timings: Timings,
}
