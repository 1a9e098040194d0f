//! What an operator follows a request by: its id in the response headers, the body's `id`,
//! every error body and its one structured log line (`--log-format json`), with the W3C trace
//! id; ids are sanitised and bounded before they reach a header or a log.

mod common;

use common::server::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The `request finished` JSON log line of request `id`, once written.
fn finished_line(server: &Server, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let found = server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "ballast::request" && v["fields"]["id"] == id);
        if let Some(v) = found {
            return v["fields"].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no log line for request {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn request_ids_follow_a_request_through_headers_bodies_errors_and_logs() {
    let server = Server::start(&["--log-format", "json"]);
    let addr = &server.addr;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = json!({"prompt": "Hello there", "max_tokens": 6, "temperature": 0}).to_string();
    let (status, headers, text) = http(addr, "POST", "/v1/completions", &[("x-request-id", "client-42"), ("traceparent", trace)], &body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-request-id"), Some("client-42"));
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["id"], "cmpl-client-42");
    let line = finished_line(&server, "client-42");
    assert_eq!(
        (line["tenant"].as_str(), line["class"].as_str(), line["finish"].as_str()),
        (Some("default"), Some("normal"), Some("length"))
    );
    assert_eq!((line["output_tokens"].as_u64(), line["reuse"].as_str()), (Some(6), Some("miss")));
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(line["prompt_tokens"].as_u64().unwrap() > 0 && line["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(line["itl_p50_ms"].as_f64().unwrap() >= 0.0 && line["itl_max_ms"].as_f64().unwrap() >= line["itl_p50_ms"].as_f64().unwrap());
    assert_eq!(line["model"], "SmolLM2-135M-Instruct.Q4_1");

    // Streamed: every chunk carries the id.
    let stream = json!({"prompt": "Hello there", "max_tokens": 6, "temperature": 0, "stream": true}).to_string();
    let (_, headers, text) = http(addr, "POST", "/v1/completions", &[("x-request-id", "s-1")], &stream);
    assert_eq!(header(&headers, "x-request-id"), Some("s-1"));
    let ids: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert!(!ids.is_empty() && ids.iter().all(|i| i == "cmpl-s-1"), "{ids:?}");

    // Hostile ids are cut to 128 header-safe characters; no id gets a fresh one each time.
    let (_, headers, _) = http(addr, "POST", "/v1/completions", &[("x-request-id", "a b<script>\"x\"")], &body);
    assert_eq!(header(&headers, "x-request-id"), Some("a_b_script__x_"));
    let long = "z".repeat(400);
    let (_, headers, _) = http(addr, "POST", "/v1/completions", &[("x-request-id", &long)], &body);
    assert_eq!(header(&headers, "x-request-id").map(str::len), Some(128));
    let fresh: Vec<String> = (0..2)
        .map(|_| {
            let (_, headers, _) = http(addr, "GET", "/health", &[], "");
            header(&headers, "x-request-id").unwrap().to_string()
        })
        .collect();
    assert!(fresh.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())) && fresh[0] != fresh[1], "{fresh:?}");

    // A malformed traceparent is ignored, never a failure.
    let (status, _, _) = http(addr, "POST", "/v1/completions", &[("traceparent", "garbage"), ("x-request-id", "g-1")], &body);
    assert_eq!(status, 200);
    assert_eq!(finished_line(&server, "g-1")["trace_id"], "");

    // Every error body names the request.
    let (status, headers, text) =
        http(addr, "POST", "/v1/completions", &[("x-request-id", "bad-1")], r#"{"prompt": "x", "max_tokens": -1}"#);
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "x-request-id"), Some("bad-1"));
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["request_id"], "bad-1");
    let (status, _, text) = http(addr, "GET", "/no/such/route", &[("x-request-id", "lost-1")], "");
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["request_id"], "lost-1");
}
