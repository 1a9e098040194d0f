//! Routes and handlers. Each generation request goes, one small function each:
//! [`authenticate`] (one configuration snapshot and the tenant in it, kept to the end) →
//! [`parse`] (the bounded body into a [`Request`]) → `Engine::prepare` (checked and tokenized
//! once) → [`admit`] (tenant limits, the overload ladder, the degraded treatment) → [`submit`]
//! (queued, then the first event, so a request that fails its deadline is still a clean 503)
//! → [`respond`] (SSE or JSON). Dropping the response (the client left) drops the engine
//! stream, which cancels the request.

use super::State;
use super::config::ServerConfig;
use super::openai::{ApiError, Common, parse as parse_json};
use super::response::{Admitted, Ctx, ToolUse, json_response, sse_response};
use super::reuse::{Key, Replay, Reuse};
use super::validate::{Kind, Unknown, name_fields, priority, request_from_body, submit_error};
use crate::admission::{Decision, RejectReason, Tenant};
use crate::engine::{Engine, ValidRequest};
use crate::request::{Event, FinishReason, Priority, Prompt, Request};
mod fleet;
mod request_id;
pub mod status;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
        .route("/status", get(status::page))
        .route("/status.json", get(status::data))
        // What the field's routers ask a worker (vllm-router, sglang-router, llm-d).
        .route("/get_load", get(fleet::get_load))
        .route("/server_info", get(fleet::server_info))
        .route("/get_server_info", get(fleet::server_info))
        .route("/model_info", get(fleet::server_info))
        .route("/get_model_info", get(fleet::server_info))
        .route("/kv_event_sources", get(fleet::kv_event_sources))
        .route("/v1/completions/render", post(fleet::render_completion))
        .route("/v1/chat/completions/render", post(fleet::render_chat))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), request_id::middleware))
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

/// Who sent a request: the configuration in force when it arrived and its tenant in it. A
/// request keeps this one snapshot to its end (a reload meanwhile changes nothing for it, and
/// admission refuses it if its tenant is gone or changed).
struct Caller {
    config: Arc<ServerConfig>,
    tenant: Tenant,
}

/// The caller of a request's API key (`Authorization: Bearer KEY`), compared in constant time
/// and never logged.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let config = state.config();
    let key = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let tenant = config.policy.authenticate(key).cloned();
    match tenant {
        Some(tenant) => Ok(Caller { config, tenant }),
        None => Err(ApiError::new(401, "authentication_error", "missing or unknown API key (Authorization: Bearer KEY)")),
    }
}

async fn read_body(config: &ServerConfig, body: Body) -> Result<Bytes, ApiError> {
    let (limit, timeout) = (config.max_body_bytes, config.read_timeout);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            Err(ApiError::new(408, "invalid_request_error", format!("the request body did not arrive within {} s", timeout.as_secs_f64())))
        }
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

/// A parsed generation request.
struct Parsed {
    request: Request,
    common: Common,
    kind: Kind,
    /// The field that set the length limit (`max_tokens` or `max_completion_tokens`).
    length_param: &'static str,
    priority: Priority,
    /// Unknown fields that were ignored (named in `x-ballast-ignored-fields`).
    ignored: Vec<String>,
    /// Set by the request-id middleware (sanitised, never empty).
    request_id: String,
    /// From a valid `traceparent` (empty: none).
    trace_id: String,
}

/// An admitted request, ready for an engine.
struct Ready<'a> {
    valid: ValidRequest,
    engine: &'a Engine,
    admitted: Admitted,
    /// What the degraded treatment changed (empty: none).
    degraded: Vec<&'static str>,
    fallback: bool,
}

async fn generate(state: Arc<State>, headers: HeaderMap, body: Body, completion: bool) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let caller = authenticate(&state, &headers)?;
    let parsed = parse(&state, &caller, &headers, body, completion, arrival).await?;
    let chat = !completion;
    let valid = state.engine.prepare(parsed.request.clone()).map_err(|e| name_fields(submit_error(e), parsed.length_param, chat))?;
    // How the reply's tool calls are read (decided by `prepare`).
    let tools = valid.tool_format().zip(parsed.request.tools.as_ref()).map(|(format, t)| ToolUse {
        format,
        parallel: t.parallel,
        names: t.functions.iter().map(|f| f.name.clone()).collect(),
    });
    let cache_ttl = caller.tenant.output_cache_ttl;
    let reuse = caller.config.output_reuse;
    if let Some(key) = Key::of(&state.model_name, &valid).filter(|_| reuse)
        && let Some((replay, how)) = state.reuse.reuse(key, parsed.priority, cache_ttl.is_some(), arrival)
    {
        let admitted = admit_reused(&state, &caller, &parsed, arrival, valid.request().n)?;
        state.metrics.reused(&caller.tenant.name, parsed.priority, how);
        let mut replay = replay;
        let first = StreamExt::next(&mut replay).await;
        let served = Served { events: replay, first, admitted, degraded: Vec::new(), fallback: false, reuse: how };
        return respond(&state, parsed, served, completion, tools).await;
    }
    let ready = admit(&state, &caller, &parsed, valid, arrival)?;
    state.metrics.reused(&caller.tenant.name, parsed.priority, Reuse::Miss);
    let shed_status = caller.config.policy.shed_status;
    let served = submit(&state, ready, parsed.priority, shed_status, cache_ttl.filter(|_| reuse), reuse, arrival).await?;
    respond(&state, parsed, served, completion, tools).await
}

/// The body, read within the caller's limits, as an engine request at the class it asks for
/// (at most its tenant's) with its tenant's cache namespace and its class's deadline.
async fn parse(
    state: &State,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    completion: bool,
    arrival: Instant,
) -> Result<Parsed, ApiError> {
    let bytes = read_body(&caller.config, body).await?;
    let unknown = if caller.config.strict_fields { Unknown::Reject } else { Unknown::Ignore };
    let body = request_from_body(&bytes, completion, unknown)?;
    let (mut request, common, kind, length_param, ignored) = (body.request, body.common, body.kind, body.length_param, body.ignored);
    if !ignored.is_empty() {
        state.metrics.ignored_fields(&ignored);
    }
    check_model(state, &common.model)?;
    let class = priority(common.priority.as_deref(), headers, caller.tenant.max_priority)?;
    request.priority = class;
    request.cache_salt = caller.tenant.cache_salt.clone();
    request.deadline = caller.config.policy.class(class).deadline.map(|d| arrival + d);
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let trace_id = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(request_id::trace_id).unwrap_or_default().to_string();
    Ok(Parsed { request, common, kind, length_param, priority: class, ignored, request_id, trace_id })
}

/// Tenant limits and the ladder; on admission, the degraded treatment if the ladder calls for
/// it: the fallback model when there is one (for text and chat prompts: token ids belong to
/// the main model's vocabulary), otherwise a capped request.
fn admit<'a>(
    state: &'a Arc<State>,
    caller: &Caller,
    parsed: &Parsed,
    mut valid: ValidRequest,
    arrival: Instant,
) -> Result<Ready<'a>, ApiError> {
    let class = parsed.priority;
    let tenant = &caller.tenant;
    let prompt_tokens = valid.prompt_ids().len();
    let signals = state.signals();
    let decision = state.admission.lock().admit(tenant, class, prompt_tokens, &signals, Instant::now());
    let degrade = match decision {
        Decision::Admit { degrade } => degrade,
        Decision::Reject { reason, retry_after, message } => return Err(refusal(state, caller, class, reason, retry_after, message)),
    };
    if degrade && valid.has_contract() {
        // Neither degraded treatment keeps a constrained or tool-calling request's contract (a
        // capped output may not close its JSON or its call; the fallback model has another
        // vocabulary and may write calls otherwise): shed instead.
        state.admission.lock().finish(&tenant.name, 0);
        let retry_after = signals.queue_wait(class).max(Duration::from_secs(1));
        let message =
            format!("the server is overloaded for {} priority, and a constrained or tool-calling request is not degraded", class.name());
        return Err(refusal(state, caller, class, RejectReason::Overload, retry_after, message));
    }
    // From here the guard releases the tenant's admission however the request ends.
    let mut admitted = Admitted::new(state, valid.request().n, &tenant.name, class, arrival, false, &parsed.request_id);
    let mut engine = &state.engine;
    let mut degraded = Vec::new();
    let mut fallback = false;
    if let Some((other, _)) = state.fallback.as_ref().filter(|_| degrade && !matches!(parsed.request.prompt, Prompt::Tokens(_))) {
        valid = other.prepare(valid.into_request()).map_err(submit_error)?;
        engine = other;
        fallback = true;
        degraded.push("fallback_model");
    } else if degrade {
        degraded = valid.degrade(caller.config.policy.degrade_max_tokens);
    }
    if degrade {
        tracing::info!(tenant = %tenant.name, priority = class.name(), "degraded: {}", degraded.join(","));
    }
    admitted.n = valid.request().n;
    state.metrics.admitted(class, prompt_tokens, !degraded.is_empty());
    Ok(Ready { valid, engine, admitted, degraded, fallback })
}

/// Admission of a request served by reuse: no ladder, no token charge (see
/// [`crate::admission::Admission::admit_reused`]).
fn admit_reused(state: &Arc<State>, caller: &Caller, parsed: &Parsed, arrival: Instant, n: usize) -> Result<Admitted, ApiError> {
    let class = parsed.priority;
    match state.admission.lock().admit_reused(&caller.tenant, Instant::now()) {
        Decision::Admit { .. } => {}
        Decision::Reject { reason, retry_after, message } => return Err(refusal(state, caller, class, reason, retry_after, message)),
    }
    state.metrics.admitted(class, 0, false);
    Ok(Admitted::new(state, n, &caller.tenant.name, class, arrival, true, &parsed.request_id))
}

/// The answer to a refused request.
fn refusal(state: &State, caller: &Caller, class: Priority, reason: RejectReason, retry_after: Duration, message: String) -> ApiError {
    state.metrics.rejected(class, reason);
    tracing::info!(tenant = %caller.tenant.name, priority = class.name(), reason = reason.name(), "refused: {message}");
    let kind = match reason {
        RejectReason::TenantConcurrency | RejectReason::TenantRequests | RejectReason::TenantTokens => "rate_limit_error",
        RejectReason::Overload | RejectReason::Draining | RejectReason::Reloaded => "overloaded_error",
    };
    let retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
    let status = caller.config.policy.status(reason);
    ApiError { retry_after, ..ApiError::new(status, kind, message) }
}

/// A request on its way to the client: its events and how it is served.
struct Served {
    events: Replay,
    first: Option<Event>,
    admitted: Admitted,
    degraded: Vec<&'static str>,
    fallback: bool,
    reuse: Reuse,
}

/// Queues the request and waits for its first event, which decides between a response and an
/// error (a missed deadline: shed, with the shedding status; an engine failure).
/// The request becomes the computation identical ones attach to (when deterministic).
async fn submit(
    state: &State,
    ready: Ready<'_>,
    class: Priority,
    shed_status: u16,
    cache_ttl: Option<Duration>,
    reuse: bool,
    arrival: Instant,
) -> Result<Served, ApiError> {
    let Ready { valid, engine, mut admitted, degraded, fallback } = ready;
    let n = valid.request().n;
    let key = Key::of(state.served_model(fallback), &valid).filter(|_| reuse);
    let stream = engine.enqueue(valid).map_err(submit_error)?;
    let mut events = state.reuse.lead(key, stream, class, cache_ttl, arrival);
    let first = StreamExt::next(&mut events).await;
    if let Some(Event::Finish { reason, usage, timings, .. }) = &first
        && usage.completion_tokens == 0
        && n == 1
    {
        admitted.record(reason, usage, timings);
        let retry = state.signals().queue_wait(class).as_secs_f64().ceil().max(1.0) as u64;
        return Err(match reason {
            FinishReason::Deadline => ApiError {
                retry_after: Some(retry),
                ..ApiError::new(
                    shed_status,
                    "overloaded_error",
                    format!("the request could not start within its {} priority deadline", class.name()),
                )
            },
            FinishReason::Error(e) => ApiError::new(500, "server_error", e.clone()),
            _ => ApiError::new(500, "server_error", "the request ended before producing anything"),
        });
    }
    Ok(Served { events, first, admitted, degraded, fallback, reuse: Reuse::Miss })
}

/// The response: an SSE stream or one JSON body, saying how it was served.
async fn respond(
    state: &Arc<State>,
    parsed: Parsed,
    served: Served,
    completion: bool,
    tools: Option<ToolUse>,
) -> Result<Response, ApiError> {
    let Served { events, first, mut admitted, degraded, fallback, reuse } = served;
    let n = admitted.n;
    let logprobs = if degraded.contains(&"logprobs") { None } else { parsed.request.logprobs };
    let kind = match parsed.kind {
        Kind::Completion { .. } => Kind::Completion { logprobs },
        Kind::Chat { .. } => Kind::Chat { logprobs },
    };
    let include_usage = parsed.common.stream_options.is_some_and(|o| o.include_usage);
    admitted.log.model = state.served_model(fallback).to_string();
    admitted.log.prompt_tokens = events.prompt_tokens();
    admitted.log.trace_id = parsed.trace_id.clone();
    admitted.log.degraded = degraded.clone();
    admitted.log.reuse = reuse.name();
    let ctx = Ctx {
        state: state.clone(),
        id: format!("{}-{}", if completion { "cmpl" } else { "chatcmpl" }, parsed.request_id),
        created: now_unix(),
        kind,
        prompt_tokens: events.prompt_tokens(),
        fallback,
        reuse,
        tools,
    };
    let mut resp = if parsed.common.stream {
        sse_response(ctx, first, events, admitted, n, include_usage, degraded.clone())
    } else {
        json_response(ctx, first, events, &mut admitted, n, degraded.clone()).await?
    };
    if !degraded.is_empty() {
        resp.headers_mut().insert("x-ballast-degraded", HeaderValue::from_str(&degraded.join(",")).expect("ascii"));
    }
    resp.headers_mut().insert("x-ballast-priority", HeaderValue::from_static(parsed.priority.name()));
    resp.headers_mut().insert("x-ballast-reuse", HeaderValue::from_static(reuse.name()));
    if !parsed.ignored.is_empty() {
        // Names as header-safe tokens (a field name can be any JSON string).
        let names: Vec<String> = parsed.ignored.iter().take(16).map(|k| header_token(k)).collect();
        resp.headers_mut().insert("x-ballast-ignored-fields", HeaderValue::from_str(&names.join(",")).expect("token characters"));
    }
    Ok(resp)
}

/// `name` with every character outside `[A-Za-z0-9_.-]` as `_`, at most 64 of them.
pub(super) fn header_token(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).collect()
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
    messages: Option<Vec<serde_json::Value>>,
}

async fn tokenize(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let bytes = read_body(&caller.config, body).await?;
    let b: TokenizeBody = parse_json(&bytes)?;
    check_model(&state, &b.model)?;
    let prompt = match (b.prompt, b.messages) {
        (Some(p), None) => Prompt::Text(p),
        (None, Some(m)) => Prompt::Chat(super::openai::messages(&m)?),
        _ => return Err(ApiError::bad_request("prompt", "give exactly one of prompt or messages")),
    };
    let tokens = state.engine.tokenize(&prompt).map_err(submit_error)?;
    Ok(axum::Json(serde_json::json!({"tokens": tokens, "count": tokens.len(), "max_model_len": state.engine.max_context()}))
        .into_response())
}

#[derive(serde::Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

async fn detokenize(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let bytes = read_body(&caller.config, body).await?;
    let b: DetokenizeBody = parse_json(&bytes)?;
    check_model(&state, &b.model)?;
    let tok = state.engine.tokenizer().ok_or_else(|| ApiError::new(400, "invalid_request_error", "the model has no tokenizer"))?;
    let text = tok.decode(&b.tokens, false).map_err(|e| ApiError::bad_request("tokens", e.to_string()))?;
    Ok(axum::Json(serde_json::json!({"prompt": text})).into_response())
}

async fn health() -> &'static str {
    "ok\n"
}

/// Readiness means "can take work": the model is loaded, the engine runs, the server is not
/// draining. Shedding load never makes a replica unready (a pool that drops its busiest
/// replica moves its load onto the others, which then drop out too); it says so in
/// `shedding` instead.
async fn ready(Extract(state): Extract<Arc<State>>) -> Response {
    let (draining, shedding) = {
        let a = state.admission.lock();
        (a.is_draining(), a.level(Priority::Normal) == crate::admission::Level::Shed)
    };
    let reason = if draining {
        Some("draining")
    } else if !state.engine.is_running() {
        Some("engine_stopped")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, axum::Json(serde_json::json!({"ready": true, "shedding": shedding}))).into_response(),
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
    let mut text = state.metrics.render(&state.model_name, &e, state.engine.config().block_size, &signals, levels, &state.config().policy);
    super::metrics::targets(&mut text, &state.model_name, &state.config().policy, state.started_unix);
    let (entries, bytes, evictions) = state.reuse.cache_stats();
    super::metrics::output_cache(&mut text, &state.model_name, entries, bytes, evictions, state.reuse.in_flight());
    if let Some(p) = &state.kv_events {
        super::metrics::kv_events(&mut text, &state.model_name, p.published(), p.dropped());
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
