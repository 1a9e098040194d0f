//! Request validation that needs no server state: OpenAI bodies into engine requests (types,
//! ranges, unknown fields), the class a request asks for, and engine refusals as API errors.

use super::openai::{ApiError, ChatRequest, Common, CompletionRequest, PromptField, parse};
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
    let (raw, param) = match body {
        Some(p) => (Some(p.to_string()), "priority"),
        None => (headers.get("x-priority").and_then(|v| v.to_str().ok()).map(str::to_string), "x-priority"),
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
        ..Request::new(prompt)
    })
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
        SubmitError::EngineStopped => return ApiError { retry_after: Some(5), ..ApiError::new(503, "server_error", e.to_string()) },
    };
    ApiError::bad_request(param, e.to_string())
}

/// An engine refusal of the length limit names the field the client actually sent.
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

/// Fields the endpoints accept beyond their own; anything else is a 400 naming it.
const ACCEPTED_EXTRA: &[&str] = &["user"];

/// Rejects unknown top-level fields (typos must not pass silently).
fn check_fields(body: &[u8], known: &[&str]) -> Result<(), ApiError> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(()); // the typed parse reports it
    };
    match map.keys().find(|k| !known.contains(&k.as_str()) && !ACCEPTED_EXTRA.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(k, format!("unknown or unsupported field `{k}`"))),
        None => Ok(()),
    }
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
];

/// A completions (`completion`) or chat body as an engine request: every check that needs no
/// server state (types, ranges, unknown fields). Public for the fuzz targets.
/// Also returns the field that set the length limit (for errors about it).
pub(super) fn request_from_body(bytes: &[u8], completion: bool) -> Result<(Request, Common, Kind, &'static str), ApiError> {
    // The shared fields first, alone: serde cannot name a field inside a flattened struct.
    parse::<Common>(bytes)?;
    let own: &[&str] =
        if completion { &["prompt", "logprobs", "echo"] } else { &["messages", "logprobs", "top_logprobs", "max_completion_tokens"] };
    check_fields(bytes, &[COMMON_FIELDS, own].concat())?;
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
        let logprobs = non_negative(r.logprobs, "logprobs")?;
        // OpenAI's default for completions is 16 tokens (chat runs to the end of the turn).
        let req = base_request(&r.common, prompt, Some(r.common.max_tokens.unwrap_or(16)))?;
        (Request { logprobs, ..req }, r.common, Kind::Completion { logprobs }, "max_tokens")
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
        (Request { logprobs, ..req }, r.common, Kind::Chat { logprobs }, length_param)
    };
    if common.stream_options.is_some() && !common.stream {
        return Err(ApiError::bad_request("stream_options", "stream_options is only allowed when stream is true"));
    }
    Ok((request, common, kind, length_param))
}

/// [`request_from_body`] for the fuzz targets: never panics, whatever the bytes.
pub fn validate_body(bytes: &[u8], completion: bool) -> Result<Request, ApiError> {
    request_from_body(bytes, completion).map(|r| r.0)
}
