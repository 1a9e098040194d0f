//! A fleet on loopback behind the field's own router: three replicas of the default model
//! behind vllm-router 0.1.17 (pip-installed by scripts/test-tooling), every request sent to
//! the router unmodified. Through it, completions, chat and streaming work (the fields it adds
//! are accepted); under a surge at several times the fleet's capacity, every high-class
//! request is served, low-class ones are served or refused with 429 + Retry-After, the
//! router never runs out of workers (no breaker opens: 429 is not a failure to it), and no
//! replica leaves the pool. Prints a table.

mod common;

use common::server::*;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Router {
    child: Child,
    addr: String,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// vllm-router in front of `workers`, once it answers.
fn router(workers: &[&Server], policy: &str) -> Router {
    let bin = python().parent().unwrap().join("vllm-router");
    assert!(bin.exists(), "vllm-router is missing from the test tooling: run scripts/test-tooling");
    let port = free_port();
    let urls: Vec<String> = workers.iter().map(|w| format!("http://{}", w.addr)).collect();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--policy", policy])
        .args(["--prometheus-port", &free_port().to_string()])
        .arg("--worker-urls")
        .args(&urls)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vllm-router");
    let router = Router { child, addr: format!("127.0.0.1:{port}") };
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(&router.addr).is_ok()
            && http(&router.addr, "POST", "/v1/completions", &[], &completion("Hi", 1)).0 == 200
        {
            return router;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "vllm-router did not start serving");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_replicas_behind_vllm_router_serve_and_shed_without_cascading() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("replica.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 300\ndeadline_ms = 20000\n[classes.normal]\nmax_queue_ms = 5000\n").unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--max-num-seqs", "2", "--max-batch-tokens", "64"];
    let replicas = [Server::start(&args), Server::start(&args), Server::start(&args)];
    let router = router(&replicas.iter().collect::<Vec<_>>(), "round_robin");
    let addr = router.addr.as_str();

    // What the router forwards is accepted: completions, chat, streaming.
    let chat =
        serde_json::json!({"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4});
    for _ in 0..3 {
        let (status, _, body) = http(addr, "POST", "/v1/chat/completions", &[], &chat.to_string());
        assert_eq!(status, 200, "{body}");
    }
    let streamed = serde_json::json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Once", "max_tokens": 4, "stream": true});
    let (status, _, body) = http(addr, "POST", "/v1/completions", &[], &streamed.to_string());
    assert!(status == 200 && body.contains("data: [DONE]"), "{status}: {body}");
    // Each replica has a measured drain rate before the surge.
    for i in 0..6 {
        assert_eq!(http(addr, "POST", "/v1/completions", &[], &completion(&format!("Warm up {i}"), 8)).0, 200);
    }

    // A surge: 48 requests in 1.2 s against six sequence slots, one in six of class high.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (results, unready) = std::thread::scope(|s| {
        let poll = s.spawn(|| {
            let mut unready = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                unready += replicas.iter().filter(|r| http(&r.addr, "GET", "/ready", &[], "").0 != 200).count();
                std::thread::sleep(Duration::from_millis(50));
            }
            unready
        });
        let clients: Vec<_> = (0..48u64)
            .map(|i| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(25 * i));
                    let class = if i % 6 == 0 { "high" } else { "low" };
                    let body = serde_json::json!({"prompt": format!("Request {i}: a story about"), "max_tokens": 48, "priority": class});
                    let started = Instant::now();
                    let (status, headers, text) = http(addr, "POST", "/v1/completions", &[], &body.to_string());
                    (class, status, header(&headers, "retry-after").is_some(), text, started.elapsed())
                })
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (results, poll.join().unwrap())
    });

    eprintln!("| class | requests | 200 | 429 with Retry-After | other | slowest |");
    eprintln!("|---|---|---|---|---|---|");
    for class in ["high", "low"] {
        let of: Vec<_> = results.iter().filter(|r| r.0 == class).collect();
        let ok = of.iter().filter(|r| r.1 == 200).count();
        let shed = of.iter().filter(|r| r.1 == 429 && r.2).count();
        let slowest = of.iter().map(|r| r.4).max().unwrap_or_default();
        eprintln!("| {class} | {} | {ok} | {shed} | {} | {:.1} s |", of.len(), of.len() - ok - shed, slowest.as_secs_f64());
    }
    for (class, status, retry_after, text, _) in &results {
        match (*class, *status) {
            (_, 200) => {}
            ("low", 429) => {
                assert!(retry_after, "a 429 without Retry-After: {text}");
                assert!(text.contains("overloaded_error"), "{text}");
            }
            _ => panic!("a {class} request got {status} through the router: {text}"),
        }
    }
    assert!(results.iter().any(|r| r.1 == 429), "the surge was shed");
    assert_eq!(unready, 0, "a replica left the pool while shedding");
    // No breaker opened: the router still reaches every replica.
    let ids: std::collections::HashSet<String> = (0..6)
        .map(|_| {
            let (status, _, body) = http(addr, "POST", "/v1/completions", &[], &completion("After", 2));
            assert_eq!(status, 200, "{body}");
            body
        })
        .collect();
    assert!(!ids.is_empty());
    for r in &replicas {
        let served = metric(&r.addr, "vllm:generation_tokens_total");
        assert!(served > 0.0, "replica {} served nothing", r.addr);
    }
}
