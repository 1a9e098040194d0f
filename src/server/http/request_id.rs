//! Request ids: every request gets one (the client's `x-request-id`, sanitised, or a new one),
//! seen by the handlers in the same header, echoed in the response's `x-request-id`, named in
//! every error body (`error.request_id`) and in every log line about the request (a span with
//! the id and the W3C `traceparent`'s trace id). Error answers other than shed load are kept
//! for the status page.

use super::status::{RecentError, record_error};
use crate::server::State;
use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::{HeaderValue, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Longest request id kept (longer ones are cut).
pub const MAX_LEN: usize = 128;

/// `raw` with every character outside `[A-Za-z0-9._:-]` as `_`, at most [`MAX_LEN`] of them.
pub fn sanitize(raw: &str) -> String {
    raw.chars().take(MAX_LEN).map(|c| if c.is_ascii_alphanumeric() || "._:-".contains(c) { c } else { '_' }).collect()
}

/// A new id: 32 hex digits.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (RandomState::new().hash_one((n, std::time::SystemTime::now())), RandomState::new().hash_one(n));
    format!("{a:016x}{b:016x}")
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, not all zeros).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    ok.then(|| parts[1])
}

/// The middleware (see the module doc). Error answers are also kept for the status page.
pub async fn middleware(Extract(state): Extract<std::sync::Arc<State>>, mut req: Request<Body>, next: Next) -> Response {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(sanitize).filter(|s| !s.is_empty()).unwrap_or_else(new_id);
    let trace = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(trace_id).unwrap_or("").to_string();
    let value = HeaderValue::from_str(&id).expect("sanitised to header-safe characters");
    req.headers_mut().insert("x-request-id", value.clone());
    let span = tracing::info_span!("request", id = %id, trace_id = %trace);
    let mut resp = next.run(req).instrument(span).await;
    resp.headers_mut().insert("x-request-id", value);
    let is_json = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (resp.status().is_client_error() || resp.status().is_server_error()) && is_json {
        let (mut parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(mut v) if v["error"].is_object() => {
                let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let message = v["error"]["message"].as_str().unwrap_or_default().chars().take(300).collect();
                // Load shed by the ladder is counted per class on the page, not listed: a surge
                // would push every other error out of the list.
                let shed = parts.status.as_u16() == 429 && v["error"]["type"] == "overloaded_error";
                if !shed {
                    record_error(
                        &state.recent_errors,
                        RecentError { unix_time, request_id: id.clone(), status: parts.status.as_u16(), message },
                    );
                }
                v["error"]["request_id"] = id.into();
                parts.headers.remove("content-length");
                Body::from(v.to_string())
            }
            _ => Body::from(bytes),
        };
        return Response::from_parts(parts, body);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_header_safe() {
        assert_eq!(sanitize("abc-123_x.y:z"), "abc-123_x.y:z");
        assert_eq!(sanitize("a b\r\nc\u{e9}<script>"), "a_b__c__script_");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_LEN);
        let id = new_id();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != new_id());
    }

    #[test]
    fn only_valid_traceparents_give_a_trace_id() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(t), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
