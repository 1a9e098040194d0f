//! Routes and handlers. Each generation request goes: authenticate → read the body (bounded)
//! → parse → build a [`Request`] → tokenize → admission (tenant limits, overload ladder) →
//! submit → wait for the first event (so a request that fails its deadline is still a clean
//! 503) → stream SSE or collect JSON. Dropping the response (the client left) drops the
//! engine stream, which cancels the request.

use super::State;
use super::admission::{Decision, Signals};
use super::openai::{ApiError, parse};
use super::response::{Admitted, Ctx, json_response, sse_response};
use super::validate::{Kind, priority, request_from_body, submit_error};
use crate::request::{Event, FinishReason, Priority, Prompt};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    let key = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
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
            return Err(ApiError {
                retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                ..ApiError::new(reason.status(), kind, message)
            });
        }
    };
    let mut admitted = Admitted {
        state: state.clone(),
        n: request.n,
        tenant: tenant.name.clone(),
        priority: class,
        arrival,
        completion_tokens: 0,
        finished: Vec::new(),
    };
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
                    503,
                    "overloaded_error",
                    format!("the request could not start within its {} priority deadline", class.name()),
                )
            },
            FinishReason::Error(e) => ApiError::new(500, "server_error", e.clone()),
            _ => ApiError::new(500, "server_error", "the request ended before producing anything"),
        });
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
    Ok(axum::Json(serde_json::json!({"tokens": tokens, "count": tokens.len(), "max_model_len": state.engine.max_context()}))
        .into_response())
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
