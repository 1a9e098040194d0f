//! Exact output reuse on a live server: identical deterministic requests are computed once
//! and every copy gets the same output bit for bit (tokens' text, log-probs, finish reason),
//! greedy and seeded, streamed and not; followers that join mid-stream get the whole output,
//! and keep it when the first client leaves; nothing is ever shared between tenants with
//! different salts, nor for sampling without a seed; the cache's byte bound and TTL hold.

mod common;

use common::server::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// A server whose open tenant caches outputs, with extra `[server]` lines.
fn server_with(dir: &std::path::Path, server: &str, args: &[&str]) -> Server {
    let cfg = dir.join(format!("reuse-{}.toml", server.len()));
    std::fs::write(&cfg, format!("[server]\noutput_cache = true\n{server}")).unwrap();
    Server::start(&[&["--config", cfg.to_str().unwrap()], args].concat())
}

/// Each choice's text, log-probs and finish reason, from a JSON body or an SSE stream.
fn output(body: &str) -> Value {
    let mut choices: Vec<Value> = Vec::new();
    let mut add = |c: &Value| {
        let i = c["index"].as_u64().unwrap() as usize;
        while choices.len() <= i {
            choices.push(json!({"text": "", "logprobs": [], "finish_reason": null}));
        }
        let out = &mut choices[i];
        let text = c["text"].as_str().or(c["message"]["content"].as_str()).or(c["delta"]["content"].as_str()).unwrap_or("");
        out["text"] = format!("{}{text}", out["text"].as_str().unwrap()).into();
        if let Some(lps) = c["logprobs"]["content"].as_array().or(c["logprobs"]["token_logprobs"].as_array()) {
            out["logprobs"].as_array_mut().unwrap().extend(lps.iter().cloned());
        }
        if !c["finish_reason"].is_null() {
            out["finish_reason"] = c["finish_reason"].clone();
        }
    };
    if body.trim_start().starts_with('{') {
        for c in serde_json::from_str::<Value>(body).unwrap()["choices"].as_array().unwrap() {
            add(c);
        }
    } else {
        for line in body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
            for c in serde_json::from_str::<Value>(line).unwrap()["choices"].as_array().unwrap() {
                add(c);
            }
        }
    }
    assert!(!choices.is_empty() && choices.iter().all(|c| !c["finish_reason"].is_null()), "an unfinished output: {body}");
    Value::Array(choices)
}

/// POSTs a completion: (x-ballast-reuse, output, the body's usage or the stream's).
fn complete(addr: &str, headers: &[(&str, &str)], body: &Value) -> (String, Value, Value) {
    let (status, h, text) = http(addr, "POST", "/v1/completions", headers, &body.to_string());
    assert_eq!(status, 200, "{text}");
    let usage = if body["stream"] == true {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| !v["usage"].is_null())
            .map_or(Value::Null, |v| v["usage"].clone())
    } else {
        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
    };
    (header(&h, "x-ballast-reuse").expect("x-ballast-reuse").to_string(), output(&text), usage)
}

#[test]
fn identical_requests_get_the_same_output_computed_once() {
    let dir = tempfile::tempdir().unwrap();
    let cached = server_with(dir.path(), "", &[]);
    let fresh = Server::start(&[]);
    let greedy = json!({"model": MODEL, "prompt": "The three laws of motion are", "max_tokens": 24, "temperature": 0, "logprobs": 2});
    let seeded = json!({"model": MODEL, "prompt": "Write a line of a poem:", "max_tokens": 24, "temperature": 0.9, "seed": 11, "logprobs": 1, "n": 2});
    for base in [greedy, seeded] {
        let (how, first, usage) = complete(&cached.addr, &[], &base);
        assert_eq!(how, "miss");
        assert!(usage.get("reused").is_none(), "{usage}");
        for stream in [false, true] {
            let mut body = base.clone();
            body["stream"] = stream.into();
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            // Streamed or not is how the output is sent, not what it is: both reuse it.
            let (how, again, usage) = complete(&cached.addr, &[], &body);
            assert_eq!(how, "cached", "an identical request is served from the cache (stream: {stream})");
            assert_eq!(usage["reused"], "cached");
            assert_eq!(again, first, "a cached output is the computed one, bit for bit (stream: {stream})");
            let (how, computed, _) = complete(&fresh.addr, &[], &body);
            assert_eq!(how, "miss");
            assert_eq!(computed, first, "and a fresh computation elsewhere gives the same (stream: {stream})");
        }
    }
    // A field that changes the output never matches; sampling without a seed is never shared.
    let (how, _, _) = complete(&cached.addr, &[], &json!({"prompt": "The three laws of motion are", "max_tokens": 23, "temperature": 0}));
    assert_eq!(how, "miss");
    let unseeded = json!({"prompt": "Write a line of a poem:", "max_tokens": 8, "temperature": 0.9});
    for _ in 0..2 {
        assert_eq!(complete(&cached.addr, &[], &unseeded).0, "miss");
    }
    // Counted per tenant, class and outcome.
    let series =
        |how: &str| format!("ballast_output_reuse_total{{model_name=\"{MODEL}\",tenant=\"default\",priority=\"normal\",reuse=\"{how}\"}}");
    assert_eq!(metric(&cached.addr, &series("cached")), 4.0);
    assert_eq!(metric(&cached.addr, &series("miss")), 5.0);
    assert_eq!(metric(&cached.addr, "ballast_output_cache_entries"), 3.0);
}

/// A streamed completion left open: its reader, for reading some events before leaving.
fn open_stream(addr: &str, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    BufReader::new(s)
}

/// Reads until `n` SSE data events have arrived.
fn read_events(r: &mut BufReader<TcpStream>, n: usize) {
    let mut seen = 0;
    let mut line = String::new();
    while seen < n {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended early");
        seen += line.starts_with("data: ") as usize;
    }
}

#[test]
fn followers_joining_mid_stream_get_everything_even_after_the_first_client_leaves() {
    let fresh = Server::start(&[]);
    let server = Server::start(&["--max-num-seqs", "2"]);
    let body = json!({"model": MODEL, "prompt": "Once upon a time, in a city by the sea,", "max_tokens": 96, "ignore_eos": true, "temperature": 0, "stream": true});
    let (_, truth, _) = complete(&fresh.addr, &[], &body);

    // The leader streams; a follower joins after a dozen events, streaming too, and gets the
    // whole output from the first token.
    let mut leader = open_stream(&server.addr, &body);
    read_events(&mut leader, 12);
    let (how, joined, usage) = complete(&server.addr, &[], &body);
    assert_eq!((how.as_str(), &usage), ("coalesced", &Value::Null), "streamed without include_usage");
    assert_eq!(joined, truth);
    drop(leader);

    // The leader leaves mid-stream; the follower (not streaming) still gets it all.
    let mut leader = open_stream(&server.addr, &body);
    read_events(&mut leader, 8);
    let follower = {
        let (addr, mut body) = (server.addr.clone(), body.clone());
        body["stream"] = false.into();
        std::thread::spawn(move || complete(&addr, &[], &body))
    };
    // The follower has attached once the server counts it.
    let series = format!("ballast_output_reuse_total{{model_name=\"{MODEL}\",tenant=\"default\",priority=\"normal\",reuse=\"coalesced\"}}");
    wait_until("the follower attached", || metric(&server.addr, &series) >= 2.0);
    drop(leader);
    let (how, output, usage) = follower.join().unwrap();
    assert_eq!((how.as_str(), usage["reused"].as_str()), ("coalesced", Some("coalesced")));
    assert_eq!(output, truth, "the computation went on for the follower");

    // When every client leaves, the computation is cancelled and its blocks are freed.
    let mut a = open_stream(&server.addr, &body);
    read_events(&mut a, 4);
    let mut b = open_stream(&server.addr, &body);
    read_events(&mut b, 4);
    drop((a, b));
    wait_until("the abandoned computation is cancelled", || {
        metric(&server.addr, "ballast_output_reuse_in_flight") == 0.0 && metric(&server.addr, "ballast_kv_blocks_used") == 0.0
    });
}

#[test]
fn no_output_ever_crosses_tenants_with_different_salts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tenants.toml");
    let mut toml = String::new();
    for t in 0..4 {
        toml += &format!("[[tenants]]\nname = \"t{t}\"\napi_keys = [\"sk-tenant-{t}\"]\noutput_cache = true\n");
    }
    std::fs::write(&cfg, toml).unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "8"]);
    let keys: Vec<Value> = (0..3)
        .flat_map(|p| {
            let prompt = format!("Fact number {p} about the ocean:");
            [
                json!({"prompt": prompt, "max_tokens": 12, "temperature": 0}),
                json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.7, "seed": p}),
            ]
        })
        .collect();
    // Every tenant sends every request three times, in its own shuffled order, all tenants
    // at once: identical requests of different tenants overlap in flight and in the cache.
    let results: Vec<Vec<(usize, String, Value)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (addr, keys) = (&server.addr, &keys);
                s.spawn(move || {
                    let mut rng = ballast::testing::Rng::new(100 + t as u64);
                    let mut order: Vec<usize> = (0..keys.len()).flat_map(|k| [k, k, k]).collect();
                    for i in (1..order.len()).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                    let auth = format!("Bearer sk-tenant-{t}");
                    order
                        .into_iter()
                        .map(|k| {
                            let (how, out, _) = complete(addr, &[("authorization", &auth)], &keys[k]);
                            (k, how, out)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut reused = 0;
    for (t, sequence) in results.iter().enumerate() {
        let mut seen = std::collections::HashMap::new();
        for (k, how, out) in sequence {
            match seen.get(k) {
                // A tenant's first request for a key had nothing of its own to reuse: any
                // reuse would be another tenant's output.
                None => assert_eq!(how, "miss", "tenant t{t} got {how} for its first request {k}: another tenant's output"),
                Some(first) => {
                    assert_eq!(how, "cached", "tenant t{t}, request {k} again");
                    assert_eq!(out, first, "a reused output is the tenant's own");
                    reused += 1;
                }
            }
            seen.entry(*k).or_insert_with(|| out.clone());
        }
    }
    assert_eq!(reused, 4 * keys.len() * 2);
}

#[test]
fn the_cache_keeps_to_its_bytes_and_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("small.toml");
    std::fs::write(
        &cfg,
        "[server]\noutput_cache_mib = 0.01\n[[tenants]]\nname = \"t\"\napi_keys = [\"sk-small-01\"]\noutput_cache = true\noutput_cache_ttl_secs = 1.5\n",
    )
    .unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let auth = [("authorization", "Bearer sk-small-01")];
    let ask = |i: usize| json!({"prompt": format!("List item {i}:"), "max_tokens": 16, "temperature": 0, "logprobs": 3});
    for i in 0..24 {
        assert_eq!(complete(&server.addr, &auth, &ask(i)).0, "miss");
        let bytes = metric(&server.addr, "ballast_output_cache_bytes");
        assert!(bytes <= 0.01 * 1048576.0, "{bytes} bytes cached beyond the 10 KiB bound");
    }
    assert!(metric(&server.addr, "ballast_output_cache_evictions_total") > 0.0, "the bound evicted least recently used outputs");
    assert_eq!(complete(&server.addr, &auth, &ask(23)).0, "cached", "the newest output is kept");
    let kept = Instant::now();
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(kept.elapsed()));
    assert_eq!(complete(&server.addr, &auth, &ask(23)).0, "miss", "past its TTL an output is computed again");
}

#[test]
fn a_shedding_server_still_serves_reused_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // One sequence slot; the low class is shed as soon as anything waits.
    let server = server_with(dir.path(), "[classes.low]\nmax_queue_ms = 1\n", &["--max-num-seqs", "1"]);
    let cached = json!({"prompt": "A short note:", "max_tokens": 8, "temperature": 0, "priority": "low"});
    assert_eq!(complete(&server.addr, &[], &cached).0, "miss");
    // Long normal requests fill the slot and the queue.
    let long = json!({"prompt": "A very long story:", "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": true});
    let mut busy: Vec<_> = (0..3)
        .map(|i| {
            let mut b = long.clone();
            b["prompt"] = format!("A very long story, part {i}:").into();
            let mut r = open_stream(&server.addr, &b);
            if i == 0 {
                read_events(&mut r, 2);
            }
            r
        })
        .collect();
    let level = format!("ballast_overload_level{{model_name=\"{MODEL}\",priority=\"low\"}}");
    wait_until("the low class is shed", || metric(&server.addr, &level) == 2.0);
    let fresh = json!({"prompt": "Something new:", "max_tokens": 8, "temperature": 0, "priority": "low"});
    let (status, h, _) = http(&server.addr, "POST", "/v1/completions", &[], &fresh.to_string());
    assert_eq!((status, header(&h, "retry-after").is_some()), (429, true), "new low work is shed");
    // A cached output and a computation in flight add no work: both served.
    assert_eq!(complete(&server.addr, &[], &cached).0, "cached");
    let mut follower = long.clone();
    follower["prompt"] = "A very long story, part 0:".into();
    follower["priority"] = "low".into();
    follower["stream"] = false.into();
    follower["max_tokens"] = 400.into();
    let (how, out, _) = complete(&server.addr, &[], &follower);
    assert_eq!(how, "coalesced");
    assert_eq!(out[0]["finish_reason"], "length");
    busy.clear();
}
