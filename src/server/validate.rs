//! Request validation that needs no server state: OpenAI bodies into engine requests (types,
//! ranges, unknown fields), the class a request asks for, and engine refusals as API errors.

use super::openai::{ApiError, ChatRequest, Common, CompletionRequest, PromptField, parse};
use crate::constraint::Constraint;
use crate::engine::SubmitError;
use crate::request::{Priority, Prompt, Request};
use crate::sampler::SamplingParams;
use axum::http::HeaderMap;

fn non_negative(v: Option<i64>, param: &str) -> Result<Option<usize>, ApiError> {
    match v {
        Some(x) if x < 0 => Err(ApiError::bad_request(param, format!("{param} must be ≥ 0, got {x}"))),
        Some(x) => Ok(Some(x as usize)),
        None => Ok(None),
    }
}

/// The request's class: body field, else the `x-priority` header, else normal; at most the
/// tenant's maximum.
pub(super) fn priority(body: Option<&str>, headers: &HeaderMap, max: Priority) -> Result<Priority, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (raw, param) = match body {
        Some(p) => (Some(p.to_string()), "priority"),
        None => match header("x-priority") {
            Some(p) => (Some(p), "x-priority"),
            // The Kubernetes inference gateway names the request's InferenceObjective; objectives
            // named after our classes (deploy/k8s) choose the class, others leave the default.
            None => match header("x-gateway-inference-objective") {
                Some(o) if o.trim().to_ascii_lowercase().parse::<Priority>().is_ok() => (Some(o), "x-gateway-inference-objective"),
                _ => (None, "priority"),
            },
        },
    };
    let p = match raw {
        None => Priority::Normal,
        Some(s) => s.trim().to_ascii_lowercase().parse::<Priority>().map_err(|e| ApiError::bad_request(param, e))?,
    };
    if p > max {
        return Err(ApiError::bad_request(param, format!("priority {:?} is above this API key's maximum {:?}", p.name(), max.name())));
    }
    Ok(p)
}

/// The engine request for the fields both endpoints share.
fn base_request(c: &Common, prompt: Prompt, max_tokens: Option<i64>) -> Result<Request, ApiError> {
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(d.top_p),
        top_k: match c.top_k {
            None | Some(-1) => 0,
            Some(k) if k < 0 => return Err(ApiError::bad_request("top_k", "top_k must be ≥ 0 (or -1 for all)")),
            Some(k) => k as usize,
        },
        min_p: c.min_p.unwrap_or(d.min_p),
        repetition_penalty: c.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: c.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: c.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: c.seed,
    };
    let n = match c.n {
        None => 1,
        Some(n) if n < 1 => return Err(ApiError::bad_request("n", format!("n must be ≥ 1, got {n}"))),
        Some(n) => n as usize,
    };
    let max_tokens = match max_tokens {
        Some(0) => return Err(ApiError::bad_request("max_tokens", "max_tokens must be at least 1")),
        other => non_negative(other, "max_tokens")?,
    };
    let stop = c.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::bad_request("stop", "at most 16 stop strings"));
    }
    Ok(Request {
        sampling,
        max_tokens,
        stop,
        stop_token_ids: c.stop_token_ids.clone(),
        ignore_eos: c.ignore_eos,
        n,
        skip_special_tokens: c.skip_special_tokens.unwrap_or(true),
        constraint: response_format(c.response_format.as_ref())?,
        ..Request::new(prompt)
    })
}

/// OpenAI's `response_format`: `{"type": "text"}` (or none), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
fn response_format(v: Option<&serde_json::Value>) -> Result<Option<Constraint>, ApiError> {
    let bad = |why: &str| Err(ApiError::bad_request("response_format", why.to_string()));
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let spec = &v["json_schema"];
            if !spec.is_object() {
                return bad("response_format.json_schema must be an object with a `schema`");
            }
            if let Some(name) = spec.get("name")
                && !name
                    .as_str()
                    .is_some_and(|n| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            {
                return bad("response_format.json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$");
            }
            match spec.get("schema") {
                Some(schema) if schema.is_object() => Ok(Some(Constraint::JsonSchema(schema.clone()))),
                // No schema: any JSON value would do; an object is what clients mean.
                None => Ok(Some(Constraint::JsonObject)),
                Some(_) => bad("response_format.json_schema.schema must be a JSON Schema object"),
            }
        }
        Some(other) => bad(&format!("unknown response_format type {other:?} (text, json_object or json_schema)")),
        None => bad("response_format needs a `type`: text, json_object or json_schema"),
    }
}

pub(super) fn submit_error(e: SubmitError) -> ApiError {
    let param = match &e {
        SubmitError::EmptyPrompt
        | SubmitError::PromptTooLong { .. }
        | SubmitError::ExceedsKvCache { .. }
        | SubmitError::TokenOutOfRange { .. } => "prompt",
        SubmitError::ZeroMaxTokens | SubmitError::MaxTokensTooLarge { .. } => "max_tokens",
        SubmitError::InvalidN { .. } => "n",
        SubmitError::InvalidLogprobs { .. } => "logprobs",
        SubmitError::Sampling(s) => match s {
            crate::sampler::SamplingError::Temperature(_) => "temperature",
            crate::sampler::SamplingError::TopP(_) => "top_p",
            crate::sampler::SamplingError::MinP(_) => "min_p",
            crate::sampler::SamplingError::RepetitionPenalty(_) => "repetition_penalty",
            crate::sampler::SamplingError::Penalty { name, .. } => name,
        },
        SubmitError::NoTokenizer | SubmitError::NoChatTemplate | SubmitError::Template(_) => "messages",
        SubmitError::StopWithoutTokenizer => "stop",
        SubmitError::Tokenizer(_) => "prompt",
        SubmitError::Constraint(_) => "response_format",
        SubmitError::Tools(_) => "tools",
        SubmitError::ToolChoice(_) => "tool_choice",
        SubmitError::EngineStopped => return ApiError { retry_after: Some(5), ..ApiError::new(503, "server_error", e.to_string()) },
    };
    ApiError::bad_request(param, e.to_string())
}

/// An engine refusal names the field the client actually sent: the length limit's
/// (`max_tokens` or `max_completion_tokens`), and for chat `top_logprobs` (the engine's
/// `logprobs` is the number of alternatives).
pub(super) fn name_fields(mut e: ApiError, length_param: &str, chat: bool) -> ApiError {
    let rename = match e.param.as_deref() {
        Some("max_tokens") => length_param,
        Some("logprobs") if chat => "top_logprobs",
        _ => return e,
    };
    let old = e.param.replace(rename.to_string()).expect("matched");
    e.message = e.message.replacen(&old, rename, 1);
    e
}

pub(super) enum Kind {
    Completion { logprobs: Option<usize> },
    Chat { logprobs: Option<usize> },
}

/// Fields that routers (vllm-router, sglang-router) and SDKs add to the bodies they forward,
/// accepted when their value cannot change what this server computes; any other value is a
/// 400 saying it is not supported.
const NEUTRAL: &[(&str, Neutral)] = &[
    ("user", Neutral::Any),
    ("no_stop_trim", Neutral::FalseOrNull),
    ("return_hidden_states", Neutral::FalseOrNull),
    ("continue_final_message", Neutral::FalseOrNull),
    ("add_generation_prompt", Neutral::TrueOrNull),
    // Chat's `echo` (vLLM: prepend the last message); completions implement their own.
    ("echo", Neutral::FalseOrNull),
    // Reasoning output is split only by a reasoning parser; without one these change nothing.
    ("separate_reasoning", Neutral::Any),
    // Tools are a chat feature (known fields there); a completion accepts them only when they
    // ask for nothing. Legacy `functions` are not served (a 400, not silence).
    ("tools", Neutral::EmptyOrNull),
    ("functions", Neutral::EmptyOrNull),
    ("tool_choice", Neutral::NoneOrAuto),
    ("function_call", Neutral::NoneOrAuto),
    ("parallel_tool_calls", Neutral::Any),
    ("stream_reasoning", Neutral::Any),
    ("include_reasoning", Neutral::Any),
];

#[derive(Clone, Copy)]
enum Neutral {
    Any,
    FalseOrNull,
    TrueOrNull,
    /// `null` or `[]`.
    EmptyOrNull,
    /// `null`, `"none"` or `"auto"` (with no tools, auto is none).
    NoneOrAuto,
}

impl Neutral {
    fn accepts(self, v: &serde_json::Value) -> bool {
        match self {
            Neutral::Any => true,
            Neutral::FalseOrNull => matches!(v, serde_json::Value::Null | serde_json::Value::Bool(false)),
            Neutral::TrueOrNull => matches!(v, serde_json::Value::Null | serde_json::Value::Bool(true)),
            Neutral::EmptyOrNull => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
            Neutral::NoneOrAuto => v.is_null() || v.as_str().is_some_and(|s| s == "none" || s == "auto"),
        }
    }
}

/// What to do with a top-level field this endpoint does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// Ignore it, as vLLM does (the caller names it in a response header and counts it).
    Ignore,
    /// A 400 naming it (`strict_fields = true`: typos must not pass silently).
    Reject,
}

/// Checks the top-level fields: the router fields' values, then unknown ones per `unknown`.
/// Returns the unknown fields it ignored, sorted.
fn check_fields(body: &[u8], known: &[&str], unknown: Unknown) -> Result<Vec<String>, ApiError> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(Vec::new()); // the typed parse reports it
    };
    let mut ignored = Vec::new();
    // In name order, whatever order the client wrote them in (the first refused is stable).
    let mut fields: Vec<(&String, &serde_json::Value)> = map.iter().collect();
    fields.sort_by_key(|(k, _)| k.as_str());
    for (k, v) in fields {
        if known.contains(&k.as_str()) {
            continue;
        }
        match NEUTRAL.iter().find(|(name, _)| name == k) {
            Some((_, neutral)) if neutral.accepts(v) => {}
            Some(_) => return Err(ApiError::bad_request(k, format!("`{k}` = {v} is not supported by this server"))),
            None if unknown == Unknown::Reject => {
                return Err(ApiError::bad_request(k, format!("unknown or unsupported field `{k}`")));
            }
            None => ignored.push(k.clone()),
        }
    }
    ignored.sort();
    Ok(ignored)
}

const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "stop_token_ids",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "skip_special_tokens",
    "priority",
    "response_format",
];

/// A request body as the engine request it asks for.
pub(super) struct Body {
    pub(super) request: Request,
    pub(super) common: Common,
    pub(super) kind: Kind,
    /// The field that set the length limit (for errors about it).
    pub(super) length_param: &'static str,
    /// Unknown top-level fields that were ignored.
    pub(super) ignored: Vec<String>,
}

/// A completions (`completion`) or chat body as an engine request: every check that needs no
/// server state (types, ranges, fields).
pub(super) fn request_from_body(bytes: &[u8], completion: bool, unknown: Unknown) -> Result<Body, ApiError> {
    // The shared fields first, alone: serde cannot name a field inside a flattened struct.
    parse::<Common>(bytes)?;
    // Both endpoints take both length fields (sglang-router renames max_tokens).
    let own: &[&str] = if completion {
        &["prompt", "logprobs", "echo", "max_completion_tokens"]
    } else {
        &["messages", "logprobs", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls"]
    };
    let ignored = check_fields(bytes, &[COMMON_FIELDS, own].concat(), unknown)?;
    let (request, common, kind, length_param) = if completion {
        let r: CompletionRequest = parse(bytes)?;
        if r.echo {
            return Err(ApiError::bad_request("echo", "echo is not supported"));
        }
        let prompt = match r.prompt {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Ids(ids) => Prompt::Tokens(ids),
            PromptField::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptField::IdLists(mut v) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
            _ => return Err(ApiError::bad_request("prompt", "one prompt per request (send a list of one, or a string)")),
        };
        let logprobs = non_negative(r.logprobs.0, "logprobs")?;
        let length_param = if r.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        // OpenAI's default for completions is 16 tokens (chat runs to the end of the turn).
        let max_tokens = r.max_completion_tokens.or(r.common.max_tokens).unwrap_or(16);
        let req = base_request(&r.common, prompt, Some(max_tokens)).map_err(|e| name_fields(e, length_param, false))?;
        (Request { logprobs, ..req }, r.common, Kind::Completion { logprobs }, length_param)
    } else {
        let r: ChatRequest = parse(bytes)?;
        let messages = super::openai::messages(&r.messages)?;
        let top = non_negative(r.top_logprobs, "top_logprobs")?;
        if top.is_some() && !r.logprobs {
            return Err(ApiError::bad_request("top_logprobs", "top_logprobs needs logprobs set to true"));
        }
        let logprobs = r.logprobs.then_some(top.unwrap_or(0));
        let length_param = if r.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        let req = base_request(&r.common, Prompt::Chat(messages), r.max_completion_tokens.or(r.common.max_tokens))
            .map_err(|e| name_fields(e, length_param, true))?;
        let tools = super::tool_calls::tools(r.tools.as_ref(), r.tool_choice.as_ref(), r.parallel_tool_calls.as_ref())?;
        (Request { logprobs, tools, ..req }, r.common, Kind::Chat { logprobs }, length_param)
    };
    if common.stream_options.is_some() && !common.stream {
        return Err(ApiError::bad_request("stream_options", "stream_options is only allowed when stream is true"));
    }
    Ok(Body { request, common, kind, length_param, ignored })
}

/// [`request_from_body`] for the fuzz targets: never panics, whatever the bytes.
pub fn validate_body(bytes: &[u8], completion: bool) -> Result<Request, ApiError> {
    request_from_body(bytes, completion, Unknown::Reject).map(|r| r.request)
}
