//! A streamed response: OpenAI's SSE chunks from engine events, with tool calls read out of
//! each choice's text as it streams.

use super::{Admitted, Ctx, finish_name, tool_calls};
use crate::request::{Event, FinishReason};
use crate::sampler::TokenLogprob;
use crate::server::reuse::Replay;
use crate::tools::{CallParser, Piece};
use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::StreamExt;

/// One streamed response's state.
struct Sse {
    ctx: Ctx,
    pending: Option<Event>,
    events: Replay,
    admitted: Admitted,
    started: Vec<bool>,
    /// Per choice, with tools: the output's parser, the calls sent, and log-probabilities of
    /// text it still holds.
    parsers: Vec<Option<CallParser>>,
    calls_sent: Vec<usize>,
    held_lps: Vec<Vec<TokenLogprob>>,
    completion: usize,
    cached: usize,
    include_usage: bool,
    degraded: Vec<&'static str>,
    done: bool,
}

impl Sse {
    /// A content chunk (`text`: `None` for a chunk that carries only a finish reason).
    fn chunk(&mut self, index: usize, text: Option<&str>, lps: &[TokenLogprob], finish: Option<&str>) -> serde_json::Value {
        let first = !std::mem::replace(&mut self.started[index], true);
        let mut c = self.ctx.chunk(index, text, lps, finish, first);
        if first && !self.degraded.is_empty() {
            c["degraded"] = self.degraded.clone().into();
        }
        c
    }

    /// The chunks of what a choice's parser released.
    fn pieces(&mut self, index: usize, pieces: Vec<Piece>, out: &mut String) {
        let parallel = self.ctx.tools.as_ref().is_none_or(|t| t.parallel);
        for piece in pieces {
            let lps = std::mem::take(&mut self.held_lps[index]);
            let c = match piece {
                Piece::Text(t) => self.chunk(index, Some(&t), &lps, None),
                Piece::Call(call) => {
                    let k = self.calls_sent[index];
                    if k > 0 && !parallel {
                        continue;
                    }
                    self.calls_sent[index] += 1;
                    let call = tool_calls::call_json(&self.ctx.call(index, k, call), Some(k));
                    let mut c = self.chunk(index, None, &lps, None);
                    c["choices"][0]["delta"]["tool_calls"] = serde_json::json!([call]);
                    c
                }
            };
            *out += &format!("data: {c}\n\n");
        }
    }

    /// The SSE text of one event (empty: nothing to send yet).
    fn event(&mut self, event: Option<Event>) -> String {
        let mut out = String::new();
        match event {
            Some(Event::Token { index, text, logprobs, .. }) => {
                self.admitted.token();
                match self.parsers[index].as_mut() {
                    Some(parser) => {
                        let pieces = parser.push(&text);
                        self.held_lps[index].extend(logprobs);
                        self.pieces(index, pieces, &mut out);
                    }
                    None => {
                        let c = self.chunk(index, Some(&text), &logprobs, None);
                        out += &format!("data: {c}\n\n");
                    }
                }
            }
            Some(Event::Finish { index, reason, usage, timings }) => {
                self.admitted.record(&reason, &usage, &timings);
                self.completion += usage.completion_tokens;
                self.cached = usage.cached_tokens;
                if let Some(parser) = self.parsers[index].as_mut() {
                    let pieces = parser.finish();
                    self.pieces(index, pieces, &mut out);
                }
                let mut finish = finish_name(&reason);
                if finish == "stop" && self.calls_sent[index] > 0 {
                    finish = "tool_calls";
                }
                let lps = std::mem::take(&mut self.held_lps[index]);
                let mut c = self.chunk(index, None, &lps, Some(finish));
                if let FinishReason::Error(e) = &reason {
                    c["error"] = serde_json::json!({"message": e, "type": "server_error"});
                }
                out += &format!("data: {c}\n\n");
            }
            None => {
                self.done = true;
                if self.include_usage {
                    let mut c = self.ctx.chunk(0, None, &[], None, false);
                    c["choices"] = serde_json::json!([]);
                    c["usage"] = self.ctx.usage_json(self.completion, self.cached);
                    out += &format!("data: {c}\n\n");
                }
                out += "data: [DONE]\n\n";
            }
        }
        out
    }
}

pub(in crate::server) fn sse_response(
    ctx: Ctx,
    first: Option<Event>,
    events: Replay,
    admitted: Admitted,
    n: usize,
    include_usage: bool,
    degraded: Vec<&'static str>,
) -> Response {
    let parsers = (0..n).map(|_| ctx.tools.as_ref().filter(|_| ctx.is_chat()).map(|t| t.format.parser(&t.names))).collect();
    let s = Sse {
        ctx,
        pending: first,
        events,
        admitted,
        started: vec![false; n],
        parsers,
        calls_sent: vec![0; n],
        held_lps: vec![Vec::new(); n],
        completion: 0,
        cached: 0,
        include_usage,
        degraded,
        done: false,
    };
    let body = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let event = match s.pending.take() {
                Some(e) => Some(e),
                None => StreamExt::next(&mut s.events).await,
            };
            let data = s.event(event);
            if !data.is_empty() {
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(data)), s));
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers")
}
