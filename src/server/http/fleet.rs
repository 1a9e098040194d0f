//! What the field's routers ask a worker beyond the OpenAI API (vllm-router, sglang-router,
//! llm-d): its load, what it serves, and the token ids a request would run.

use super::{authenticate, parse};
use crate::server::State;
use crate::server::openai::ApiError;
use crate::server::validate::{name_fields, submit_error};
use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

#[derive(serde::Deserialize, Default)]
pub(super) struct LoadQuery {
    /// `sglang`: SGLang's array shape; otherwise vLLM's object.
    shape: Option<String>,
}

/// The replica's load for load-balancing routers: requests in flight (running and waiting).
/// vLLM's shape `{"load": N}` (vllm-router `power_of_two`) by default; `?shape=sglang` gives
/// SGLang's `[{"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}]` (tokens held in KV).
pub(super) async fn get_load(Extract(state): Extract<Arc<State>>, query: axum::extract::Query<LoadQuery>) -> Response {
    let m = state.engine.metrics();
    let waiting: usize = m.waiting.iter().sum();
    match query.shape.as_deref() {
        Some("sglang") => {
            let tokens = m.kv_blocks_used * state.engine.config().block_size;
            axum::Json(
                serde_json::json!([{"dp_rank": 0, "num_reqs": m.running + waiting, "num_waiting_reqs": waiting, "num_tokens": tokens}]),
            )
            .into_response()
        }
        _ => axum::Json(serde_json::json!({"load": m.running + waiting})).into_response(),
    }
}

/// What a router needs to know about the replica, in the shapes vLLM (`/server_info`,
/// `vllm_config`) and SGLang (`/get_server_info`, flat) answer with.
pub(super) async fn server_info(Extract(state): Extract<Arc<State>>) -> Response {
    let block_size = state.engine.config().block_size;
    let blocks = state.engine.metrics().kv_blocks_total;
    let path = state.engine.model_info().path.display().to_string();
    let context = state.engine.max_context();
    axum::Json(serde_json::json!({
        "served_model_name": state.model_name,
        "model_path": path,
        "model_id": state.model_name,
        "max_model_len": context,
        "context_length": context,
        "block_size": block_size,
        "page_size": block_size,
        "num_kv_blocks": blocks,
        "max_total_num_tokens": blocks * block_size,
        "backend": state.engine.backend_name(),
        "kv_events": state.kv_events.as_ref().map(|p| serde_json::json!({"endpoint": p.endpoint, "bound": p.bound, "topic": p.topic})),
        "version": env!("CARGO_PKG_VERSION"),
        "vllm_config": {
            "model_config": {"model": path, "served_model_name": state.model_name, "max_model_len": context},
            "cache_config": {"block_size": block_size, "num_gpu_blocks": blocks},
        },
    }))
    .into_response()
}

/// Where this replica publishes KV-cache events, in vLLM's shape (an object keyed by
/// data-parallel rank; empty when events are off).
pub(super) async fn kv_event_sources(Extract(state): Extract<Arc<State>>) -> Response {
    let sources = state.kv_events.as_ref().map_or_else(|| serde_json::json!({}), |p| p.source());
    axum::Json(sources).into_response()
}

pub(super) async fn render_completion(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    render(state, headers, body, true).await
}

pub(super) async fn render_chat(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    render(state, headers, body, false).await
}

/// The token ids a generation request would run (chat template applied), checked as the
/// request itself would be, without running or admitting it: what prefix-aware routers hash.
async fn render(state: Arc<State>, headers: HeaderMap, body: Body, completion: bool) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let parsed = parse(&state, &caller, &headers, body, completion, Instant::now()).await?;
    let valid = state.engine.prepare(parsed.request).map_err(|e| name_fields(submit_error(e), parsed.length_param, !completion))?;
    let ids = valid.prompt_ids();
    Ok(axum::Json(serde_json::json!({
        "model": state.model_name,
        "prompt_token_ids": ids,
        "token_ids": ids,
        "count": ids.len(),
        "max_model_len": state.engine.max_context(),
    }))
    .into_response())
}
