//! Routes and handlers. Each generation request goes: authenticate → read the body (bounded)
//! → parse → build a [`Request`] → tokenize → admission (tenant limits, overload ladder) →
//! submit → wait for the first event (so a request that fails its deadline is still a clean
//! 503) → stream SSE or collect JSON. Dropping the response (the client left) drops the
//! engine stream, which cancels the request.

use super::State;
use super::admission::{Decision, Signals};
use super::metrics::Finished;
use super::openai::{ApiError, ChatRequest, Common, CompletionRequest, PromptField, parse};
use crate::engine::{RequestStream, SubmitError};
use crate::request::{Event, FinishReason, Priority, Prompt, Request, Usage};
use crate::sampler::{SamplingParams, TokenLogprob};
use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found_error", "no such route")
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The tenant index of a request's API key.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<usize, ApiError> {
    let config = state.admission.lock().config().clone();
    if !config.requires_keys() {
        return Ok(0);
    }
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compared in constant time against every key (no early exit, no hash lookup on the
    // secret), and never logged.
    let found = key.and_then(|k| {
        let mut hit = None;
        for (candidate, &i) in &config.keys {
            if constant_time_eq(candidate.as_bytes(), k.as_bytes()) {
                hit = Some(i);
            }
        }
        hit
    });
    match found {
        Some(i) => Ok(i),
        None => Err(ApiError::new(401, "authentication_error", "missing or unknown API key (Authorization: Bearer KEY)")),
    }
}

/// Equality whose time depends only on the lengths (a key's length is not a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn read_body(state: &State, body: Body) -> Result<Bytes, ApiError> {
    let (limit, timeout) = {
        let a = state.admission.lock();
        (a.config().max_body_bytes, a.config().read_timeout)
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(408, "invalid_request_error", format!("the request body did not arrive within {} s", timeout.as_secs_f64()))),
        Ok(Err(_)) => Err(ApiError::new(413, "invalid_request_error", format!("the request body exceeds {limit} bytes"))),
        Ok(Ok(b)) => Ok(b),
    }
}

fn check_model(state: &State, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if *m != state.model_name => Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(404, "not_found_error", format!("model {m:?} is not served here (serving {:?})", state.model_name))
        }),
        _ => Ok(()),
    }
}

fn non_negative(v: Option<i64>, param: &str) -> Result<Option<usize>, ApiError> {
    match v {
        Some(x) if x < 0 => Err(ApiError::bad_request(param, format!("{param} must be ≥ 0, got {x}"))),
        Some(x) => Ok(Some(x as usize)),
        None => Ok(None),
    }
}

/// The request's class: body field, else the `x-priority` header, else normal; at most the
/// tenant's maximum.
fn priority(body: Option<&str>, headers: &HeaderMap, max: Priority) -> Result<Priority, ApiError> {
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

fn submit_error(e: SubmitError) -> ApiError {
    let param = match &e {
        SubmitError::EmptyPrompt | SubmitError::PromptTooLong { .. } | SubmitError::ExceedsKvCache { .. } | SubmitError::TokenOutOfRange { .. } => "prompt",
        SubmitError::ZeroMaxTokens => "max_tokens",
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

enum Kind {
    Completion { logprobs: Option<usize> },
    Chat { logprobs: Option<usize> },
}

/// Admission bookkeeping for one request: released (tenant usage, metrics) when dropped, also
/// when the client disconnects mid-response.
struct Admitted {
    state: Arc<State>,
    /// Choices; those without a recorded finish when this drops were cancelled.
    n: usize,
    tenant: String,
    priority: Priority,
    arrival: Instant,
    completion_tokens: usize,
    finished: Vec<Finished>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.state.admission.lock().finish(&self.tenant, self.completion_tokens);
        self.state.note_finish();
        for _ in self.finished.len()..self.n {
            let e2e = self.arrival.elapsed();
            let f = Finished { priority: self.priority, finish: "cancelled", completion_tokens: 0, ttft: None, queue: e2e, decode: Duration::ZERO, e2e };
            self.finished.push(f);
        }
        for f in self.finished.drain(..) {
            self.state.metrics.finished(f);
        }
    }
}

impl Admitted {
    fn record(&mut self, reason: &FinishReason, usage: &Usage, timings: &crate::request::Timings) {
        self.completion_tokens += usage.completion_tokens;
        if let Some(t) = timings.time_to_first_token {
            self.state.note_ttft(self.priority, t);
        }
        self.finished.push(Finished {
            priority: self.priority,
            finish: reason.name(),
            completion_tokens: usage.completion_tokens,
            ttft: timings.time_to_first_token,
            queue: timings.queued,
            decode: timings.decode,
            e2e: self.arrival.elapsed(),
        });
    }
}

async fn completions(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    contained(generate(state, headers, body, true)).await
}

async fn chat_completions(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    contained(generate(state, headers, body, false)).await
}

/// Runs a handler; a panic in it becomes a 500 for this request only.
async fn contained(f: impl std::future::Future<Output = Result<Response, ApiError>>) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            tracing::error!("a request handler panicked (contained)");
            ApiError::new(500, "server_error", "internal error").into_response()
        }
    }
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
    "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stream_options", "stop",
    "stop_token_ids", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos",
    "skip_special_tokens", "priority",
];

/// A completions (`completion`) or chat body as an engine request: every check that needs no
/// server state (types, ranges, unknown fields). Public for the fuzz targets.
fn request_from_body(bytes: &[u8], completion: bool) -> Result<(Request, Common, Kind), ApiError> {
    // The shared fields first, alone: serde cannot name a field inside a flattened struct.
    parse::<Common>(bytes)?;
    let own: &[&str] = if completion { &["prompt", "logprobs", "echo"] } else { &["messages", "logprobs", "top_logprobs", "max_completion_tokens"] };
    check_fields(bytes, &[COMMON_FIELDS, own].concat())?;
    let (request, common, kind) = if completion {
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
        (Request { logprobs, ..req }, r.common, Kind::Completion { logprobs })
    } else {
        let r: ChatRequest = parse(bytes)?;
        if r.messages.is_empty() {
            return Err(ApiError::bad_request("messages", "messages is empty"));
        }
        let messages = r.messages.into_iter().enumerate().map(|(i, m)| m.into_message(i)).collect::<Result<Vec<_>, _>>()?;
        let top = non_negative(r.top_logprobs, "top_logprobs")?;
        let logprobs = r.logprobs.then_some(top.unwrap_or(0));
        let req = base_request(&r.common, Prompt::Chat(messages), r.max_completion_tokens.or(r.common.max_tokens))?;
        (Request { logprobs, ..req }, r.common, Kind::Chat { logprobs })
    };
    Ok((request, common, kind))
}

/// [`request_from_body`] for the fuzz targets: never panics, whatever the bytes.
pub fn validate_body(bytes: &[u8], completion: bool) -> Result<Request, ApiError> {
    request_from_body(bytes, completion).map(|r| r.0)
}

async fn generate(state: Arc<State>, headers: HeaderMap, body: Body, completion: bool) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let tenant_index = authenticate(&state, &headers)?;
    let bytes = read_body(&state, body).await?;
    let (mut request, common, kind) = request_from_body(&bytes, completion)?;
    check_model(&state, &common.model)?;
    let config = state.admission.lock().config().clone();
    let tenant = config.tenants.get(tenant_index).cloned().ok_or_else(|| ApiError::new(401, "authentication_error", "unknown API key"))?;
    let class = priority(common.priority.as_deref(), &headers, tenant.max_priority)?;
    request.priority = class;
    request.cache_salt = tenant.cache_salt.clone();
    request.deadline = config.classes[class.rank() as usize].deadline.map(|d| arrival + d);
    let prompt_ids = state.engine.tokenize(&request.prompt).map_err(submit_error)?;
    let original_prompt = std::mem::replace(&mut request.prompt, Prompt::Tokens(prompt_ids.clone()));

    let signals = state.signals();
    let decision = state.admission.lock().admit(tenant_index, class, prompt_ids.len(), &signals, Instant::now());
    let degrade = match decision {
        Decision::Admit { degrade } => degrade,
        Decision::Reject { reason, retry_after, message } => {
            state.metrics.rejected(class, reason);
            tracing::info!(tenant = %tenant.name, priority = class.name(), reason = reason.name(), "refused: {message}");
            let kind = if reason.status() == 429 { "rate_limit_error" } else { "overloaded_error" };
            return Err(ApiError { retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64), ..ApiError::new(reason.status(), kind, message) });
        }
    };
    let mut admitted = Admitted { state: state.clone(), n: request.n, tenant: tenant.name.clone(), priority: class, arrival, completion_tokens: 0, finished: Vec::new() };
    let mut degraded = Vec::new();
    // Degrading routes to the fallback model when there is one (for text and chat prompts:
    // token ids belong to the main model's vocabulary); otherwise it caps the request.
    let to_fallback = degrade && state.fallback.is_some() && !matches!(original_prompt, Prompt::Tokens(_));
    if to_fallback {
        request.prompt = original_prompt;
        degraded.push("fallback_model");
        tracing::info!(tenant = %tenant.name, priority = class.name(), "degraded: routed to the fallback model");
    } else if degrade {
        let cap = config.degrade_max_tokens;
        if request.max_tokens.is_none_or(|m| m > cap) {
            request.max_tokens = Some(cap);
            degraded.push("max_tokens");
        }
        if request.n > 1 {
            request.n = 1;
            degraded.push("n");
        }
        if request.logprobs.take().is_some() {
            degraded.push("logprobs");
        }
        tracing::info!(tenant = %tenant.name, priority = class.name(), "degraded: {}", degraded.join(","));
    }
    admitted.n = request.n;
    state.metrics.admitted(class, prompt_ids.len(), !degraded.is_empty());
    let (n, stream) = (request.n, common.stream);
    let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
    let kind = match kind {
        Kind::Completion { .. } => Kind::Completion { logprobs: request.logprobs },
        Kind::Chat { .. } => Kind::Chat { logprobs: request.logprobs },
    };
    let engine = match (&state.fallback, to_fallback) {
        (Some((fallback, _)), true) => fallback,
        _ => &state.engine,
    };
    let mut events = engine.submit(request).map_err(submit_error)?;
    let prompt_tokens = events.prompt_ids().len();
    // The first event decides between a response and an error (deadline, engine failure).
    let first = StreamExt::next(&mut events).await;
    if let Some(Event::Finish { reason, usage, timings, .. }) = &first {
        if usage.completion_tokens == 0 && n == 1 {
            admitted.record(reason, usage, timings);
            let retry = state.signals().queue_wait(class).as_secs_f64().ceil().max(1.0) as u64;
            return Err(match reason {
                FinishReason::Deadline => ApiError {
                    retry_after: Some(retry),
                    ..ApiError::new(503, "overloaded_error", format!("the request could not start within its {} priority deadline", class.name()))
                },
                FinishReason::Error(e) => ApiError::new(500, "server_error", e.clone()),
                _ => ApiError::new(500, "server_error", "the request ended before producing anything"),
            });
        }
    }
    let ctx = Ctx {
        state: state.clone(),
        id: format!("{}-{}", if completion { "cmpl" } else { "chatcmpl" }, events.id()),
        created: now_unix(),
        kind,
        prompt_tokens,
        fallback: to_fallback,
    };
    let mut resp = if stream {
        sse_response(ctx, first, events, admitted, n, include_usage, degraded.clone())
    } else {
        json_response(ctx, first, events, &mut admitted, n, degraded.clone()).await?
    };
    if !degraded.is_empty() {
        resp.headers_mut().insert("x-ballast-degraded", HeaderValue::from_str(&degraded.join(",")).expect("ascii"));
    }
    resp.headers_mut().insert("x-ballast-priority", HeaderValue::from_static(class.name()));
    Ok(resp)
}

struct Ctx {
    state: Arc<State>,
    id: String,
    created: u64,
    kind: Kind,
    prompt_tokens: usize,
    /// Served by the fallback model.
    fallback: bool,
}

impl Ctx {
    fn engine(&self) -> &crate::engine::Engine {
        match &self.state.fallback {
            Some((e, _)) if self.fallback => e,
            _ => &self.state.engine,
        }
    }

    /// The `model` field of the response: the model that answered.
    fn model(&self) -> &str {
        match &self.state.fallback {
            Some((_, name)) if self.fallback => name,
            _ => &self.state.model_name,
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.engine().tokenizer().and_then(|t| t.decode(&[id], false).ok()).unwrap_or_default()
    }

    /// OpenAI's logprobs object for a run of tokens (`None` if none were asked for).
    fn logprobs_json(&self, lps: &[TokenLogprob]) -> serde_json::Value {
        match self.kind {
            Kind::Completion { logprobs: None } | Kind::Chat { logprobs: None } => serde_json::Value::Null,
            Kind::Completion { .. } => {
                let tokens: Vec<String> = lps.iter().map(|l| self.token_text(l.id)).collect();
                let top: Vec<serde_json::Map<String, serde_json::Value>> = lps
                    .iter()
                    .map(|l| l.top.iter().map(|(id, lp)| (self.token_text(*id), serde_json::json!(lp))).collect())
                    .collect();
                serde_json::json!({
                    "tokens": tokens,
                    "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                })
            }
            Kind::Chat { .. } => {
                let entry = |id: u32, lp: f32| {
                    let t = self.token_text(id);
                    serde_json::json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
                };
                let content: Vec<serde_json::Value> = lps
                    .iter()
                    .map(|l| {
                        let mut e = entry(l.id, l.logprob);
                        e["top_logprobs"] = l.top.iter().map(|(id, lp)| entry(*id, *lp)).collect();
                        e
                    })
                    .collect();
                serde_json::json!({ "content": content })
            }
        }
    }

    fn usage_json(&self, completion: usize, cached: usize) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn is_chat(&self) -> bool {
        matches!(self.kind, Kind::Chat { .. })
    }

    /// One streamed chunk.
    fn chunk(&self, index: usize, text: Option<&str>, lps: &[TokenLogprob], finish: Option<&str>, first: bool) -> serde_json::Value {
        if self.is_chat() {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            serde_json::json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model(),
                "choices": [{"index": index, "delta": delta, "logprobs": self.logprobs_json(lps), "finish_reason": finish}],
            })
        } else {
            serde_json::json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model(),
                "choices": [{"index": index, "text": text.unwrap_or(""), "logprobs": self.logprobs_json(lps), "finish_reason": finish}],
            })
        }
    }
}

fn finish_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // Reported as OpenAI clients expect; the metrics keep the real reason.
        FinishReason::Cancelled | FinishReason::Deadline | FinishReason::Error(_) => "abort",
    }
}

#[derive(Default)]
struct ChoiceAcc {
    text: String,
    lps: Vec<TokenLogprob>,
    finish: Option<&'static str>,
    completion: usize,
    cached: usize,
}

async fn json_response(
    ctx: Ctx,
    first: Option<Event>,
    mut events: RequestStream,
    admitted: &mut Admitted,
    n: usize,
    degraded: Vec<&'static str>,
) -> Result<Response, ApiError> {
    let mut acc: Vec<ChoiceAcc> = (0..n).map(|_| ChoiceAcc::default()).collect();
    let mut next = first;
    while let Some(event) = next {
        match event {
            Event::Token { index, text, logprobs, .. } => {
                acc[index].text += &text;
                acc[index].lps.extend(logprobs);
            }
            Event::Finish { index, reason, usage, timings } => {
                admitted.record(&reason, &usage, &timings);
                if let FinishReason::Error(e) = &reason {
                    return Err(ApiError::new(500, "server_error", e.clone()));
                }
                acc[index].finish = Some(finish_name(&reason));
                acc[index].completion = usage.completion_tokens;
                acc[index].cached = usage.cached_tokens;
            }
        }
        next = StreamExt::next(&mut events).await;
    }
    let completion: usize = acc.iter().map(|c| c.completion).sum();
    let cached = acc.first().map_or(0, |c| c.cached);
    let choices: Vec<serde_json::Value> = acc
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if ctx.is_chat() {
                serde_json::json!({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": ctx.logprobs_json(&c.lps), "finish_reason": c.finish})
            } else {
                serde_json::json!({"index": i, "text": c.text, "logprobs": ctx.logprobs_json(&c.lps), "finish_reason": c.finish})
            }
        })
        .collect();
    let mut body = serde_json::json!({
        "id": ctx.id,
        "object": if ctx.is_chat() { "chat.completion" } else { "text_completion" },
        "created": ctx.created,
        "model": ctx.model(),
        "choices": choices,
        "usage": ctx.usage_json(completion, cached),
    });
    if !degraded.is_empty() {
        body["degraded"] = degraded.into();
    }
    Ok(axum::Json(body).into_response())
}

fn sse_response(
    ctx: Ctx,
    first: Option<Event>,
    events: RequestStream,
    admitted: Admitted,
    n: usize,
    include_usage: bool,
    degraded: Vec<&'static str>,
) -> Response {
    struct S {
        ctx: Ctx,
        pending: Option<Event>,
        events: RequestStream,
        admitted: Admitted,
        started: Vec<bool>,
        completion: usize,
        cached: usize,
        include_usage: bool,
        degraded: Vec<&'static str>,
        done: bool,
    }
    let s = S { ctx, pending: first, events, admitted, started: vec![false; n], completion: 0, cached: 0, include_usage, degraded, done: false };
    let body = futures_util::stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        let event = match s.pending.take() {
            Some(e) => Some(e),
            None => StreamExt::next(&mut s.events).await,
        };
        let data = match event {
            Some(Event::Token { index, text, logprobs, .. }) => {
                let first = !std::mem::replace(&mut s.started[index], true);
                let mut c = s.ctx.chunk(index, Some(&text), &logprobs, None, first);
                if first && !s.degraded.is_empty() {
                    c["degraded"] = s.degraded.clone().into();
                }
                format!("data: {c}\n\n")
            }
            Some(Event::Finish { index, reason, usage, timings }) => {
                s.admitted.record(&reason, &usage, &timings);
                s.completion += usage.completion_tokens;
                s.cached = usage.cached_tokens;
                let first = !std::mem::replace(&mut s.started[index], true);
                let mut c = s.ctx.chunk(index, None, &[], Some(finish_name(&reason)), first);
                if let FinishReason::Error(e) = &reason {
                    c["error"] = serde_json::json!({"message": e, "type": "server_error"});
                }
                format!("data: {c}\n\n")
            }
            None => {
                s.done = true;
                let mut tail = String::new();
                if s.include_usage {
                    let mut c = s.ctx.chunk(0, None, &[], None, false);
                    c["choices"] = serde_json::json!([]);
                    c["usage"] = s.ctx.usage_json(s.completion, s.cached);
                    tail += &format!("data: {c}\n\n");
                }
                tail += "data: [DONE]\n\n";
                tail
            }
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(data)), s))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers")
}

async fn models(Extract(state): Extract<Arc<State>>) -> Response {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.started_unix,
            "owned_by": "ballast",
            "max_model_len": state.engine.max_context(),
        }],
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<super::openai::WireMessage>>,
}

async fn tokenize(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let bytes = read_body(&state, body).await?;
    let b: TokenizeBody = parse(&bytes)?;
    check_model(&state, &b.model)?;
    let prompt = match (b.prompt, b.messages) {
        (Some(p), None) => Prompt::Text(p),
        (None, Some(m)) => Prompt::Chat(m.into_iter().enumerate().map(|(i, m)| m.into_message(i)).collect::<Result<_, _>>()?),
        _ => return Err(ApiError::bad_request("prompt", "give exactly one of prompt or messages")),
    };
    let tokens = state.engine.tokenize(&prompt).map_err(submit_error)?;
    Ok(axum::Json(serde_json::json!({"tokens": tokens, "count": tokens.len(), "max_model_len": state.engine.max_context()})).into_response())
}

#[derive(serde::Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

async fn detokenize(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let bytes = read_body(&state, body).await?;
    let b: DetokenizeBody = parse(&bytes)?;
    check_model(&state, &b.model)?;
    let tok = state.engine.tokenizer().ok_or_else(|| ApiError::new(400, "invalid_request_error", "the model has no tokenizer"))?;
    let text = tok.decode(&b.tokens, false).map_err(|e| ApiError::bad_request("tokens", e.to_string()))?;
    Ok(axum::Json(serde_json::json!({"prompt": text})).into_response())
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(Extract(state): Extract<Arc<State>>) -> Response {
    let admission = state.admission.lock();
    let reason = if admission.is_draining() {
        Some("draining")
    } else if admission.level(Priority::Normal) == super::admission::Level::Shed {
        Some("saturated")
    } else {
        None
    };
    drop(admission);
    match reason {
        None => (StatusCode::OK, axum::Json(serde_json::json!({"ready": true}))).into_response(),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"ready": false, "reason": r}))).into_response(),
    }
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> Response {
    let signals = state.signals();
    let levels = {
        let mut a = state.admission.lock();
        a.update(&signals);
        Priority::ALL.map(|p| a.level(p))
    };
    let e = state.engine.metrics();
    let text = state.metrics.render(&state.model_name, &e, state.engine.config().block_size, &signals, levels);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

impl State {
    /// The ladder's inputs, now.
    pub fn signals(&self) -> Signals {
        let m = self.engine.metrics();
        let kv_usage = if m.kv_blocks_total == 0 { 0.0 } else { m.kv_blocks_used as f64 / m.kv_blocks_total as f64 };
        Signals { waiting: m.waiting, running: m.running, kv_usage, drain_rate: self.drain_rate(), ttft: self.recent_ttft() }
    }
}
