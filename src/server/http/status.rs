//! `GET /status`: a live page for operators (one HTML file, no external assets, works
//! offline), and `GET /status.json`, the data it polls every second. The page holds no data
//! itself; where tenants have API keys, the JSON needs one (the page asks for it and keeps it
//! for the browser session). `[server] status_page = false` turns both off (404). Reading
//! them takes the engine's published metrics snapshot and never waits on the engine.

use super::authenticate;
use crate::request::Priority;
use crate::server::State;
use crate::server::openai::ApiError;
use axum::extract::State as Extract;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::Arc;

const PAGE: &str = include_str!("status.html");

/// Errors kept for the page.
pub const RECENT_ERRORS: usize = 20;

/// One error answer, for the page's list.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentError {
    pub unix_time: f64,
    pub request_id: String,
    pub status: u16,
    pub message: String,
}

/// Remembers an error answer (the newest [`RECENT_ERRORS`]).
pub fn record_error(errors: &parking_lot::Mutex<VecDeque<RecentError>>, e: RecentError) {
    let mut q = errors.lock();
    if q.len() == RECENT_ERRORS {
        q.pop_front();
    }
    q.push_back(e);
}

fn not_found() -> ApiError {
    ApiError::new(404, "not_found_error", "the status page is turned off ([server] status_page)")
}

pub(super) async fn page(Extract(state): Extract<Arc<State>>) -> Result<Response, ApiError> {
    if !state.config().status_page {
        return Err(not_found());
    }
    let mut resp = Html(PAGE).into_response();
    // Everything the page runs is in it: no other origin, no framing.
    resp.headers_mut().insert(
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            .parse()
            .expect("ascii"),
    );
    Ok(resp)
}

pub(super) async fn data(Extract(state): Extract<Arc<State>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.config().status_page {
        return Err(not_found());
    }
    authenticate(&state, &headers)?;
    let signals = state.signals();
    let (levels, draining) = {
        let mut a = state.admission.lock();
        a.update(&signals);
        (Priority::ALL.map(|p| a.level(p)), a.is_draining())
    };
    let e = state.engine.metrics();
    let counts = state.metrics.class_counts();
    let classes: Vec<serde_json::Value> = Priority::ALL
        .iter()
        .rev()
        .map(|&p| {
            let i = p.rank() as usize;
            let level = ["normal", "degrade", "shed"][levels[i] as usize];
            serde_json::json!({
                "class": p.name(),
                "waiting": e.waiting[i],
                "estimated_wait_s": signals.queue_wait(p).as_secs_f64().min(1e6),
                "level": level,
                "admitted": counts[i].0,
                "degraded": counts[i].1,
                "shed": counts[i].2,
                "ttft_recent_s": signals.ttft[i].map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let (entries, bytes, _) = state.reuse.cache_stats();
    let errors: Vec<RecentError> = state.recent_errors.lock().iter().rev().cloned().collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Ok(axum::Json(serde_json::json!({
        "model": state.model_name,
        "fallback_model": state.fallback.as_ref().map(|f| &f.1),
        "backend": state.engine.backend_name(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": now - state.started_unix as f64,
        "unix_time": now,
        "draining": draining,
        "classes": classes,
        "running": e.running,
        "kv_usage": if e.kv_blocks_total == 0 { 0.0 } else { e.kv_blocks_used as f64 / e.kv_blocks_total as f64 },
        "kv_blocks_total": e.kv_blocks_total,
        "prefix_cache_hit_rate": e.prefix_cache_hit_rate(),
        "tokens_generated": e.tokens_generated,
        "drain_rate": signals.drain_rate,
        "time_to_drain_s": signals.time_to_drain().as_secs_f64().min(1e6),
        "output_cache": {"entries": entries, "bytes": bytes, "in_flight": state.reuse.in_flight()},
        "errors": errors,
    }))
    .into_response())
}
