//! Trying hard to break a live server: 200+ malformed requests, slow clients, a panic
//! injected into one request, clients vanishing at random points, a surge at several times
//! capacity, and a soak of random requests and cancellations. Afterwards the server is still
//! up, every KV block is back, and no file descriptor, thread or memory has leaked.

mod common;

use common::server::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn at_rest(addr: &str) {
    wait_until("the server to be at rest", || {
        metric(addr, "ballast_kv_blocks_used") == 0.0
            && metric(addr, "vllm:num_requests_running") == 0.0
            && metric(addr, "vllm:num_requests_waiting") == 0.0
    });
}

/// The malformed-request cases: (what, path, body bytes).
fn malformed_cases() -> Vec<(String, &'static str, Vec<u8>)> {
    let mut cases: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    let mut add = |what: String, path: &'static str, body: Vec<u8>| cases.push((what, path, body));
    let comp = json!({"prompt": "Hi", "max_tokens": 2});
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let wrong: [(&str, serde_json::Value); 5] =
        [("string", json!("x")), ("object", json!({"a": 1})), ("array", json!([1, "x"])), ("bool", json!(true)), ("float", json!(1.5))];
    let fields = [
        ("model", "string"),
        ("max_tokens", "int"),
        ("temperature", "float"),
        ("top_p", "float"),
        ("top_k", "int"),
        ("min_p", "float"),
        ("n", "int"),
        ("stream", "bool"),
        ("stream_options", "object"),
        ("stop", "string"),
        ("stop_token_ids", "array"),
        ("seed", "int"),
        ("presence_penalty", "float"),
        ("frequency_penalty", "float"),
        ("repetition_penalty", "float"),
        ("ignore_eos", "bool"),
        ("skip_special_tokens", "bool"),
        ("priority", "string"),
    ];
    for (path, base) in [("/v1/completions", &comp), ("/v1/chat/completions", &chat)] {
        for (field, kind) in fields {
            for (wkind, value) in &wrong {
                let compatible = match (kind, *wkind) {
                    (k, w) if k == w => true,
                    ("float", "int") | ("int", "float") => false,
                    ("float", "float") | ("array", "array") => true,
                    _ => false,
                };
                // Floats are fine where floats go; a stop list may be an array of strings only.
                if compatible || (kind == "float" && *wkind == "float") {
                    continue;
                }
                let mut b = base.clone();
                b[field] = value.clone();
                add(format!("{path} {field} = {wkind}"), path, b.to_string().into_bytes());
            }
        }
        // Out-of-range numbers.
        for (field, v) in [
            ("max_tokens", json!(-1)),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(1e20)),
            ("n", json!(0)),
            ("n", json!(-3)),
            ("n", json!(10_000)),
            ("temperature", json!(-0.5)),
            ("temperature", json!(1e39)),
            ("top_p", json!(0)),
            ("top_p", json!(1.5)),
            ("top_k", json!(-7)),
            ("min_p", json!(2)),
            ("min_p", json!(-1)),
            ("repetition_penalty", json!(0)),
            ("repetition_penalty", json!(-2)),
            ("presence_penalty", json!(3)),
            ("frequency_penalty", json!(-9)),
            ("seed", json!(-1)),
            ("seed", json!(1e30)),
            ("priority", json!("urgent")),
            ("priority", json!("")),
            ("stop", json!(vec!["a"; 17])),
            ("model", json!("gpt-4")),
            ("stop_token_ids", json!([-1])),
        ] {
            let mut b = base.clone();
            b[field] = v.clone();
            add(format!("{path} {field} = {v}"), path, b.to_string().into_bytes());
        }
        // Structure.
        let raw: Vec<(&str, Vec<u8>)> = vec![
            ("empty body", b"".to_vec()),
            ("not json", b"hello".to_vec()),
            ("truncated", br#"{"prompt": "x", "#.to_vec()),
            ("array", b"[]".to_vec()),
            ("null", b"null".to_vec()),
            ("string", br#""prompt""#.to_vec()),
            ("number", b"42".to_vec()),
            ("trailing garbage", br#"{"prompt": "x"} {"#.to_vec()),
            ("NaN", br#"{"prompt": "x", "temperature": NaN}"#.to_vec()),
            ("Infinity", br#"{"prompt": "x", "temperature": Infinity}"#.to_vec()),
            ("huge exponent", br#"{"prompt": "x", "temperature": 1e400}"#.to_vec()),
            ("invalid UTF-8", b"{\"prompt\": \"\xff\xfe\xc0\xaf\", \"max_tokens\": 2}".to_vec()),
            ("lone surrogate", br#"{"prompt": "\ud800", "max_tokens": 2}"#.to_vec()),
            ("deeply nested", [b"{\"prompt\": ".to_vec(), vec![b'['; 100_000], vec![b']'; 100_000], b"}".to_vec()].concat()),
            ("unknown field", br#"{"prompt": "x", "temprature": 0.5}"#.to_vec()),
            ("unsupported field", br#"{"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}"#.to_vec()),
            ("unsupported value", br#"{"prompt": "x", "response_format": {"type": "xml"}}"#.to_vec()),
            (
                "invalid schema",
                br#"{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 7}}}}"#.to_vec(),
            ),
            ("duplicate keys", br#"{"prompt": "x", "prompt": "y", "max_tokens": "z"}"#.to_vec()),
        ];
        for (what, body) in raw {
            add(format!("{path} {what}"), path, body);
        }
    }
    // Completions-specific.
    let c = "/v1/completions";
    for (what, body) in [
        ("empty prompt", json!({"prompt": ""})),
        ("empty id list", json!({"prompt": []})),
        ("two prompts", json!({"prompt": ["a", "b"]})),
        ("ids out of range", json!({"prompt": [1, 99_999_999]})),
        ("negative id", json!({"prompt": [1, -5]})),
        ("prompt over the context", json!({"prompt": "word ".repeat(9000)})),
        ("missing prompt", json!({"max_tokens": 3})),
        ("echo", json!({"prompt": "x", "echo": true})),
        ("logprobs too many", json!({"prompt": "x", "logprobs": 50})),
        ("logprobs negative", json!({"prompt": "x", "logprobs": -1})),
        ("prompt object", json!({"prompt": {"text": "x"}})),
        ("prompt null", json!({"prompt": null})),
    ] {
        add(format!("{c} {what}"), c, body.to_string().into_bytes());
    }
    // Chat-specific.
    let ch = "/v1/chat/completions";
    for (what, body) in [
        ("no messages", json!({"messages": []})),
        ("messages not a list", json!({"messages": "hi"})),
        ("message without role", json!({"messages": [{"content": "hi"}]})),
        ("image part", json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
        ("content number", json!({"messages": [{"role": "user", "content": 7}]})),
        ("top_logprobs too many", json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 99})),
        ("chat over the context", json!({"messages": [{"role": "user", "content": "word ".repeat(9000)}]})),
        ("max_completion_tokens 0", json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})),
    ] {
        add(format!("{ch} {what}"), ch, body.to_string().into_bytes());
    }
    for (what, path, body) in [
        ("tokenize nothing", "/tokenize", json!({})),
        ("tokenize both", "/tokenize", json!({"prompt": "x", "messages": []})),
        ("detokenize out of range", "/detokenize", json!({"tokens": [99_999_999]})),
        ("detokenize strings", "/detokenize", json!({"tokens": ["a"]})),
        ("unknown route", "/v1/embeddings", json!({"input": "x"})),
        ("unknown route 2", "/v2/completions", json!({})),
    ] {
        add(format!("{path} {what}"), path, body.to_string().into_bytes());
    }
    cases
}

#[test]
fn two_hundred_malformed_requests_each_get_a_clear_4xx() {
    // Strict about fields, so that a typo is a 400 too (by default it is ignored and named in
    // x-ballast-ignored-fields, as vLLM does: tests/validation.rs).
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("strict.toml");
    std::fs::write(&cfg, "[server]\nstrict_fields = true\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = &server.addr;
    assert_eq!(http(addr, "POST", "/v1/completions", &[], &completion("Warm up", 2)).0, 200);
    let (rss_before, fds_before, _) = process_usage(server.child.id());
    let cases = malformed_cases();
    assert!(cases.len() >= 200, "{} cases", cases.len());
    for (what, path, body) in &cases {
        let (status, text) = post_bytes(addr, path, body);
        assert!((400..500).contains(&status), "{what}: status {status}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: no message: {text}");
    }
    // A 10 MB body, and the wrong method.
    let (status, _) = post_bytes(addr, "/v1/completions", &vec![b' '; 10 << 20]);
    assert_eq!(status, 413);
    assert_eq!(http(addr, "GET", "/v1/completions", &[], "").0, 405);
    // Still serving, nothing left running, memory and descriptors bounded.
    assert_eq!(http(addr, "POST", "/v1/completions", &[], &completion("Still alive?", 2)).0, 200);
    at_rest(addr);
    let (rss_after, fds_after, _) = process_usage(server.child.id());
    eprintln!("{} malformed cases; RSS {rss_before} → {rss_after} KiB, fds {fds_before} → {fds_after}", cases.len());
    assert!(rss_after < rss_before + 64 * 1024, "memory grew by {} KiB", rss_after - rss_before);
    assert!(fds_after <= fds_before + 2, "descriptors leaked: {fds_before} → {fds_after}");
}

#[test]
fn slow_clients_are_timed_out_and_excess_connections_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\nread_timeout_secs = 1\nmax_connections = 8\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = &server.addr;
    // A head that trickles in and never completes: the connection is closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n").unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(start.elapsed() < Duration::from_secs(5), "closed after the read timeout");
    // A body that never arrives: 408.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"prompt\"").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // More connections than allowed: the extra ones get a 503 with Retry-After. A server of its
    // own whose idle connections live 60 s, so that on a loaded machine the eight stay open
    // however long the server takes to accept them; probe until it has (an event, not a window).
    std::fs::write(&cfg, "[server]\nread_timeout_secs = 60\nmax_connections = 8\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = &server.addr;
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let probe = || http_raw(addr, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let opened = Instant::now();
    let body = loop {
        let (status, body) = probe();
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(opened.elapsed() < Duration::from_secs(30), "a 9th connection was still served after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(body.contains("too many open connections"), "{body}");
    drop(idle);
    wait_until("connections to free up", || probe().0 == 200);
}

/// A panic injected into one request's sampling fails that request only.
#[test]
fn a_panic_in_one_request_is_contained() {
    let server = Server::start_with_env(&[], &[("BALLAST_FAULT_INJECTION", "49000")]);
    let addr = server.addr.clone();
    let normal: Vec<_> = (0..3)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || http(&addr, "POST", "/v1/completions", &[], &completion(&format!("Story {i}:"), 20)))
        })
        .collect();
    let poisoned = json!({"prompt": [1, 504, 49000, 3575], "max_tokens": 5}).to_string();
    let (status, _, body) = http(&addr, "POST", "/v1/completions", &[], &poisoned);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("internal error"), "{body}");
    for h in normal {
        let (status, _, body) = h.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 20);
    }
    let streamed = json!({"prompt": [1, 49000], "max_tokens": 5, "stream": true}).to_string();
    assert_eq!(http(&addr, "POST", "/v1/completions", &[], &streamed).0, 500);
    assert_eq!(http(&addr, "POST", "/v1/completions", &[], &completion("After the fault", 3)).0, 200);
    at_rest(&addr);
    assert_eq!(
        metric(
            &addr,
            "ballast_requests_finished_total{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"normal\",finish_reason=\"error\"}"
        ),
        2.0
    );
}

/// Clients vanish while queued, mid-prefill and mid-stream; every block comes back.
#[test]
fn clients_vanishing_at_random_points_leak_nothing() {
    let server = Server::start(&["--max-num-seqs", "4", "--max-batch-tokens", "64"]);
    let addr = server.addr.clone();
    let (_, fds_before, threads_before) = process_usage(server.child.id());
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let addr = addr.clone();
            let (stream, wait_ms, words) = (next() % 2 == 0, next() % 800, 20 + next() % 200);
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("{i} {}", "word ".repeat(words as usize)), "max_tokens": 200, "ignore_eos": true, "stream": stream}).to_string();
                let mut s = TcpStream::connect(&addr).unwrap();
                let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                s.write_all(req.as_bytes()).unwrap();
                if stream && wait_ms % 2 == 0 {
                    // Read a little of the stream first.
                    let mut buf = [0u8; 512];
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let _ = s.read(&mut buf);
                }
                std::thread::sleep(Duration::from_millis(wait_ms));
                drop(s);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    at_rest(&addr);
    let cancelled: f64 = ["low", "normal", "high", "critical"]
        .iter()
        .map(|p| metric(&addr, &format!("ballast_requests_finished_total{{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"{p}\",finish_reason=\"cancelled\"}}")))
        .sum();
    assert!(cancelled >= 20.0, "{cancelled} cancelled");
    let (_, fds_after, threads_after) = process_usage(server.child.id());
    assert!(fds_after <= fds_before + 2, "descriptors: {fds_before} → {fds_after}");
    assert!(threads_after <= threads_before + 2, "threads: {threads_before} → {threads_after}");
}

/// Mixed classes at several times capacity through `ballast bench` (two sequence slots, 20
/// requests a second of 32 tokens: over capacity even on an idle fast machine): no high-class failure,
/// every request accounted for, nothing left behind.
#[test]
fn a_surge_is_absorbed_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 500\ndeadline_ms = 8000\n[classes.normal]\nmax_queue_ms = 3000\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "4", "--max-batch-tokens", "128"]);
    let addr = &server.addr;
    // Readiness is polled throughout: shedding must never take the replica out of a pool.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, readiness) = std::thread::scope(|s| {
        let poll = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, _, body) = http(addr, "GET", "/ready", &[], "");
                seen.push((status, body.contains("\"shedding\":true")));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args([
                "bench",
                &format!("http://{addr}"),
                "--rate",
                "20",
                "--num-requests",
                "120",
                "--prompt-words",
                "12",
                "--max-tokens",
                "32",
            ])
            .args(["--class-mix", "high=1,normal=1,low=6", "--json"])
            .output()
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, poll.join().unwrap())
    });
    eprintln!("readiness polls: {}, of which shedding normal traffic: {}", readiness.len(), readiness.iter().filter(|r| r.1).count());
    assert!(readiness.iter().all(|&(status, _)| status == 200), "the replica left the pool while shedding: {readiness:?}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut offered = 0;
    for (class, c) in v["classes"].as_object().unwrap() {
        let refused: u64 = c["refused_or_failed"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(status, n)| {
                assert!(status == "429" || status == "503", "{class}: {status} is neither a completion nor an honest refusal");
                n.as_u64().unwrap()
            })
            .sum();
        assert_eq!(c["refusals_with_retry_after"].as_u64().unwrap(), refused, "{class}: a refusal without Retry-After");
        assert_eq!(c["ok"].as_u64().unwrap() + refused, c["requests"].as_u64().unwrap(), "{class}: a request vanished");
        offered += c["requests"].as_u64().unwrap();
        if class == "high" {
            assert_eq!(refused, 0, "a high-class request failed");
            assert!(c["ttft_p99_s"].as_f64().unwrap() < 10.0, "high p99 TTFT {}", c["ttft_p99_s"]);
        }
    }
    assert_eq!(offered, 120);
    let shed: f64 = ["low", "normal"]
        .iter()
        .map(|p| metric(addr, &format!("ballast_requests_rejected_total{{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"{p}\",reason=\"overload\",status=\"429\"}}")))
        .sum();
    assert!(shed > 0.0, "the surge was shed");
    at_rest(addr);
}

/// Hundreds of requests with random parameters (`BALLAST_SOAK_REQUESTS` per worker, default
/// 60, for longer runs), a fifth of them abandoned; then: every block back, no descriptor,
/// thread or memory growth.
#[test]
fn a_soak_of_random_requests_leaks_nothing() {
    let server = Server::start(&["--max-num-seqs", "8"]);
    let addr = server.addr.clone();
    assert_eq!(http(&addr, "POST", "/v1/completions", &[], &completion("Warm up", 2)).0, 200);
    let (rss_before, fds_before, threads_before) = process_usage(server.child.id());
    let workers: Vec<_> = (0..6u64)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut rng = 0xABCD_u64 + w * 7919;
                let mut next = move |n: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % n
                };
                let mut ok = 0;
                let per_worker: usize = std::env::var("BALLAST_SOAK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
                for i in 0..per_worker {
                    let chat = next(2) == 0;
                    let mut body = if chat {
                        json!({"messages": [{"role": "user", "content": format!("Q{i}: say something")}]})
                    } else {
                        json!({"prompt": format!("Item {i} of worker {w}:")})
                    };
                    body["max_tokens"] = json!(1 + next(4));
                    body["temperature"] = json!(next(3) as f64 * 0.5);
                    body["stream"] = json!(next(2) == 0);
                    if next(3) == 0 {
                        body["n"] = json!(1 + next(3));
                    }
                    if next(3) == 0 {
                        body["stop"] = json!(["\n", "."]);
                    }
                    if next(4) == 0 {
                        body["seed"] = json!(next(1000));
                    }
                    if !chat && next(4) == 0 {
                        body["logprobs"] = json!(next(4));
                    }
                    let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
                    let text = body.to_string();
                    if next(5) == 0 {
                        // Abandon it after sending.
                        let mut s = TcpStream::connect(&addr).unwrap();
                        let req = format!(
                            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        s.write_all(req.as_bytes()).unwrap();
                        std::thread::sleep(Duration::from_millis(next(50)));
                    } else {
                        let (status, _, resp) = http(&addr, "POST", path, &[], &text);
                        assert_eq!(status, 200, "{text} → {resp}");
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();
    at_rest(&addr);
    let (rss_after, fds_after, threads_after) = process_usage(server.child.id());
    eprintln!(
        "soak: {ok} requests completed; RSS {rss_before} → {rss_after} KiB, fds {fds_before} → {fds_after}, threads {threads_before} → {threads_after}"
    );
    let per_worker: usize = std::env::var("BALLAST_SOAK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    assert!(ok * 10 > per_worker * 6 * 6, "most requests completed: {ok}");
    assert!(fds_after <= fds_before + 2 && threads_after <= threads_before + 2);
    assert!(rss_after < rss_before + 64 * 1024, "memory grew by {} KiB", rss_after.saturating_sub(rss_before));
}

#[test]
fn a_burst_within_one_step_is_seen_by_the_ladder_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("burst.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 1000\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "1"]);
    // A measured drain rate first: a few requests one after another.
    for i in 0..4 {
        assert_eq!(http(&server.addr, "POST", "/v1/completions", &[], &completion(&format!("Warm {i}"), 16)).0, 200);
    }
    let rate = metric(&server.addr, "ballast_drain_rate_requests_per_second");
    assert!(rate > 0.0);
    // 40 low requests released together: the ladder allows about rate x 1 s of queue, so most
    // are shed; without counting requests still on their way to the engine thread, a burst
    // inside one step would all be admitted.
    let barrier = std::sync::Barrier::new(40);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (addr, barrier) = (&server.addr, &barrier);
                s.spawn(move || {
                    let body = serde_json::json!({"prompt": format!("Burst {i}"), "max_tokens": 16, "priority": "low"}).to_string();
                    barrier.wait();
                    http(addr, "POST", "/v1/completions", &[], &body).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let served = statuses.iter().filter(|&&s| s == 200).count();
    let shed = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("burst of 40 at a drain rate of {rate:.1}/s: {served} served, {shed} shed");
    assert_eq!(served + shed, 40, "{statuses:?}");
    assert!(served as f64 <= rate * 1.0 * 2.0 + 4.0, "{served} admitted against a 1 s queue target at {rate:.1}/s");
    assert!(shed > 0);
}
