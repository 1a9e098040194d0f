//! Building responses from engine events: OpenAI's JSON body or an SSE stream, and the
//! admission bookkeeping that follows a request to its end (or its client's departure).

use super::State;
use super::metrics::Finished;
use super::openai::ApiError;
use super::reuse::{Replay, Reuse};
use super::tool_calls;
use super::validate::Kind;
use crate::request::{Event, FinishReason, Priority, Usage};
use crate::sampler::TokenLogprob;
use crate::tools::{ToolCall, ToolFormat};

use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod sse;
pub(super) use sse::sse_response;

/// Admission bookkeeping for one request: released (tenant usage, metrics) when dropped, also
/// when the client disconnects mid-response.
pub(super) struct Admitted {
    pub(super) state: Arc<State>,
    /// Choices; those without a recorded finish when this drops were cancelled.
    pub(super) n: usize,
    pub(super) tenant: String,
    pub(super) priority: Priority,
    pub(super) arrival: Instant,
    pub(super) completion_tokens: usize,
    pub(super) finished: Vec<Finished>,
    /// Served from another request's computation: its tokens cost nothing, and it says
    /// nothing about the engine's speed (the ladder's drain rate and TTFTs leave it out).
    pub(super) reused: bool,
    /// For the request's log line.
    pub(super) log: RequestLog,
}

/// What the one log line of a finished request says beyond the finished choices.
#[derive(Default)]
pub(super) struct RequestLog {
    pub(super) request_id: String,
    /// The W3C trace id of the request's `traceparent` (empty: none).
    pub(super) trace_id: String,
    pub(super) model: String,
    pub(super) prompt_tokens: usize,
    pub(super) cached_tokens: usize,
    pub(super) degraded: Vec<&'static str>,
    pub(super) reuse: &'static str,
    last_token: Option<Instant>,
    /// Seconds between consecutive token events.
    gaps: Vec<f64>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.log_finished();
        let charged = if self.reused { 0 } else { self.completion_tokens };
        self.state.admission.lock().finish(&self.tenant, charged);
        if !self.reused {
            self.state.observed.finished();
        }
        for _ in self.finished.len()..self.n {
            let e2e = self.arrival.elapsed();
            let f = Finished {
                priority: self.priority,
                finish: "cancelled",
                completion_tokens: 0,
                ttft: None,
                queue: e2e,
                decode: Duration::ZERO,
                e2e,
            };
            self.finished.push(f);
        }
        for f in self.finished.drain(..) {
            self.state.metrics.finished(f);
        }
    }
}

impl Admitted {
    pub(super) fn new(
        state: &Arc<State>,
        n: usize,
        tenant: &str,
        priority: Priority,
        arrival: Instant,
        reused: bool,
        request_id: &str,
    ) -> Admitted {
        Admitted {
            state: state.clone(),
            n,
            tenant: tenant.to_string(),
            priority,
            arrival,
            completion_tokens: 0,
            finished: Vec::new(),
            reused,
            log: RequestLog { request_id: request_id.to_string(), reuse: if reused { "reused" } else { "miss" }, ..RequestLog::default() },
        }
    }

    /// A token event reached the client now.
    pub(super) fn token(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.log.last_token.replace(now) {
            self.log.gaps.push((now - last).as_secs_f64());
        }
    }

    /// The request's one structured log line (target `ballast::request`).
    fn log_finished(&mut self) {
        let l = &mut self.log;
        l.gaps.sort_by(f64::total_cmp);
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
        let first = self.finished.first();
        let finish: Vec<&str> = self.finished.iter().map(|f| f.finish).collect();
        let finish = if finish.len() < self.n { "cancelled".to_string() } else { finish.join(",") };
        tracing::info!(
            target: "ballast::request",
            id = %l.request_id,
            trace_id = %l.trace_id,
            tenant = %self.tenant,
            class = self.priority.name(),
            model = %l.model,
            prompt_tokens = l.prompt_tokens,
            cached_tokens = l.cached_tokens,
            output_tokens = self.completion_tokens,
            queue_ms = ms(first.map(|f| f.queue)),
            ttft_ms = ms(first.and_then(|f| f.ttft)),
            itl_p50_ms = ms(l.gaps.get(l.gaps.len() / 2).map(|&g| Duration::from_secs_f64(g))),
            itl_max_ms = ms(l.gaps.last().map(|&g| Duration::from_secs_f64(g))),
            e2e_ms = self.arrival.elapsed().as_secs_f64() * 1e3,
            finish = %finish,
            degraded = %l.degraded.join(","),
            reuse = l.reuse,
            "request finished"
        );
    }

    pub(super) fn record(&mut self, reason: &FinishReason, usage: &Usage, timings: &crate::request::Timings) {
        self.completion_tokens += usage.completion_tokens;
        self.log.cached_tokens = self.log.cached_tokens.max(usage.cached_tokens);
        if let Some(t) = timings.time_to_first_token.filter(|_| !self.reused) {
            self.state.observed.first_token(self.priority, t);
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

pub(super) struct Ctx {
    pub(super) state: Arc<State>,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) kind: Kind,
    pub(super) prompt_tokens: usize,
    /// Served by the fallback model.
    pub(super) fallback: bool,
    pub(super) reuse: Reuse,
    /// Tool calls are read from the output.
    pub(super) tools: Option<ToolUse>,
}

/// How a reply's tool calls are read.
pub(super) struct ToolUse {
    pub(super) format: ToolFormat,
    /// Several calls per reply (otherwise the first is kept).
    pub(super) parallel: bool,
    /// The offered functions.
    pub(super) names: Vec<String>,
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
        self.state.served_model(self.fallback)
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
                let top: Vec<serde_json::Map<String, serde_json::Value>> =
                    lps.iter().map(|l| l.top.iter().map(|(id, lp)| (self.token_text(*id), serde_json::json!(lp))).collect()).collect();
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
        let mut usage = serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        });
        if self.reuse != Reuse::Miss {
            // Another request's computation: nothing was computed for this one.
            usage["reused"] = self.reuse.name().into();
        }
        usage
    }

    /// A chat reply's `message` and its finish reason: with tools, the calls the text holds go
    /// to `tool_calls` (the content is the rest, `null` if nothing) and a reply that stopped
    /// after calling finishes with `tool_calls`.
    fn message(&self, index: usize, text: &str, finish: Option<&'static str>) -> (serde_json::Value, Option<&'static str>) {
        let plain = serde_json::json!({"role": "assistant", "content": text});
        let Some(tools) = &self.tools else { return (plain, finish) };
        let (content, mut calls) = tools.format.parse(text, &tools.names);
        if !tools.parallel {
            calls.truncate(1);
        }
        if calls.is_empty() {
            return (plain, finish);
        }
        let calls: Vec<serde_json::Value> =
            calls.into_iter().enumerate().map(|(k, c)| tool_calls::call_json(&self.call(index, k, c), None)).collect();
        let content = if content.is_empty() { serde_json::Value::Null } else { content.into() };
        let finish = if finish == Some("stop") { Some("tool_calls") } else { finish };
        (serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls}), finish)
    }

    /// Call `k` of choice `index`, with its id.
    fn call(&self, index: usize, k: usize, c: ToolCall) -> ToolCall {
        ToolCall { id: tool_calls::call_id(&self.id, index, k), ..c }
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

pub(super) async fn json_response(
    ctx: Ctx,
    first: Option<Event>,
    mut events: Replay,
    admitted: &mut Admitted,
    n: usize,
    degraded: Vec<&'static str>,
) -> Result<Response, ApiError> {
    let mut acc: Vec<ChoiceAcc> = (0..n).map(|_| ChoiceAcc::default()).collect();
    let mut next = first;
    while let Some(event) = next {
        match event {
            Event::Token { index, text, logprobs, .. } => {
                admitted.token();
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
                let (message, finish) = ctx.message(i, &c.text, c.finish);
                serde_json::json!({"index": i, "message": message, "logprobs": ctx.logprobs_json(&c.lps), "finish_reason": finish})
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
