//! `ballast serve` on the real model, end to end: the official `openai` Python client, client
//! disconnects freeing KV blocks, tenants (401, 429 + Retry-After, class limits), body limits,
//! SIGTERM drain, and SIGHUP reloads of good and bad configurations.

mod common;

use common::server::*;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

#[test]
fn the_official_openai_client_works_against_the_server() {
    let server = Server::start(&[]);
    let model = model_path().file_stem().unwrap().to_string_lossy().into_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python()).arg(&script).arg(format!("http://{}", server.addr)).arg(&model).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all openai client checks passed"));
}

#[test]
fn a_client_that_disconnects_frees_its_blocks() {
    let server = Server::start(&[]);
    let addr = &server.addr;
    for stream in [true, false] {
        let body =
            serde_json::json!({"prompt": "Tell me a long story.", "max_tokens": 4000, "ignore_eos": true, "stream": stream}).to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        wait_until("the request to run", || metric(addr, "vllm:num_requests_running") == 1.0);
        assert!(metric(addr, "ballast_kv_blocks_used") > 0.0);
        drop(s);
        wait_until("the blocks to be freed", || {
            metric(addr, "ballast_kv_blocks_used") == 0.0 && metric(addr, "vllm:num_requests_running") == 0.0
        });
    }
    let cancelled = metric(
        addr,
        "ballast_requests_finished_total{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"normal\",finish_reason=\"cancelled\"}",
    );
    assert_eq!(cancelled, 2.0);
}

#[test]
fn tenants_limits_and_config_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ballast.toml");
    let tenants = r#"
        [server]
        max_body_bytes = 2048
        [[tenants]]
        name = "alpha"
        api_keys = ["sk-alpha-0001"]
        max_priority = "normal"
        requests_per_minute = 3
    "#;
    std::fs::write(&cfg, tenants).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_ballast")).args(["check-config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success() && String::from_utf8_lossy(&check.stdout).contains("ok"));
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = &server.addr;
    let alpha = [("authorization", "Bearer sk-alpha-0001")];
    let beta = [("authorization", "Bearer sk-beta-00001")];

    let (status, _, body) = http(addr, "POST", "/v1/completions", &[], &completion("Hi", 2));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("authentication_error"));
    assert_eq!(http(addr, "POST", "/v1/completions", &alpha, &completion("Hi", 2)).0, 200);
    let high = serde_json::json!({"prompt": "Hi", "max_tokens": 2, "priority": "high"}).to_string();
    let (status, _, body) = http(addr, "POST", "/v1/completions", &alpha, &high);
    assert_eq!(status, 400, "above the tenant's class: {body}");
    let (status, _, body) = http(addr, "POST", "/v1/completions", &alpha, &completion(&"long ".repeat(1000), 2));
    assert_eq!(status, 413, "{body}");
    for _ in 0..2 {
        assert_eq!(http(addr, "POST", "/v1/completions", &alpha, &completion("Hi", 2)).0, 200);
    }
    let (status, headers, body) = http(addr, "POST", "/v1/completions", &alpha, &completion("Hi", 2));
    assert_eq!(status, 429, "the fourth request in a minute: {body}");
    let retry: u64 = header(&headers, "retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry), "one request refills in 20 s: {retry}");
    assert!(body.contains("requests per minute"));

    // A bad configuration is rejected and the running one stays.
    std::fs::write(&cfg, "[[tenants]]\nname = \"beta\"\napi_keys = [\"short\"]\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_ballast")).args(["check-config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("shorter than 8"));
    server.signal("-HUP");
    wait_until("the failed reload", || metric(addr, "ballast_config_reload_failures_total") == 1.0);
    assert_eq!(http(addr, "POST", "/v1/completions", &beta, &completion("Hi", 2)).0, 401);
    assert_eq!(http(addr, "GET", "/ready", &[], "").0, 200, "still serving");

    // A good one takes effect atomically: beta exists, alpha keeps its (exhausted) budget.
    std::fs::write(&cfg, format!("{tenants}\n[[tenants]]\nname = \"beta\"\napi_keys = [\"sk-beta-00001\"]\nmax_priority = \"critical\"\n"))
        .unwrap();
    server.signal("-HUP");
    wait_until("the reload", || metric(addr, "ballast_config_reloads_total") == 1.0);
    let critical = serde_json::json!({"prompt": "Hi", "max_tokens": 2, "priority": "critical"}).to_string();
    let (status, headers, _) = http(addr, "POST", "/v1/completions", &beta, &critical);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ballast-priority"), Some("critical"));
    assert_eq!(http(addr, "POST", "/v1/completions", &alpha, &completion("Hi", 2)).0, 429);
}

#[test]
fn sigterm_drains_in_flight_work_and_refuses_new_work() {
    let mut server = Server::start(&[]);
    let addr = server.addr.clone();
    // Load: several requests in flight, streaming and not.
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = serde_json::json!({"prompt": format!("Count slowly ({i}):"), "max_tokens": 60 + 20 * i, "ignore_eos": true, "stream": i % 2 == 1}).to_string();
                http(&addr, "POST", "/v1/completions", &[], &body)
            })
        })
        .collect();
    wait_until("the requests to run", || metric(&addr, "vllm:num_requests_running") == 4.0);
    server.signal("-TERM");
    wait_until("readiness to drop", || http(&addr, "GET", "/ready", &[], "").0 == 503);
    let (status, headers, body) = http(&addr, "POST", "/v1/completions", &[], &completion("Hi", 2));
    assert_eq!(status, 503, "{body}");
    assert!(header(&headers, "retry-after").is_some());
    for (i, h) in in_flight.into_iter().enumerate() {
        let (status, _, body) = h.join().unwrap();
        assert_eq!(status, 200, "in-flight request {i} finished: {body}");
        if i % 2 == 0 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 60 + 20 * i);
        } else {
            assert!(body.contains("\"finish_reason\":\"length\"") && body.contains("[DONE]"), "the stream ran to its end");
        }
    }
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// `ballast bench` against the live server: every request answered, the JSON summary sane.
#[test]
fn the_load_generator_reports_per_class() {
    let server = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["bench", &format!("http://{}", server.addr), "--concurrency", "3", "--num-requests", "6"])
        .args(["--prompt-words", "8", "--max-tokens", "5", "--class-mix", "high=1,low=1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let classes = v["classes"].as_object().unwrap();
    let ok: u64 = classes.values().map(|c| c["ok"].as_u64().unwrap()).sum();
    assert_eq!(ok, 6, "{v}");
    assert!(classes.keys().all(|k| k == "high" || k == "low"));
    for c in classes.values() {
        assert!(c["ttft_p50_s"].as_f64().unwrap() > 0.0);
        assert!(c["itl_p50_s"].as_f64().unwrap() > 0.0);
    }
    assert!(v["output_tokens_per_s"].as_f64().unwrap() > 0.0);
    let (status, _, body) = http(&server.addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(
        body.contains("ballast_requests_admitted_total{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"high\"}"),
        "per-class counters"
    );
}

/// Degraded requests go to the fallback model when one is loaded (text and chat), and are
/// capped otherwise (token-id prompts); both say so in a header and the body.
#[test]
fn degraded_requests_are_routed_to_the_fallback_model_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ballast.toml");
    let config = "[server]\ndegrade_max_tokens = 3\n\n[[tenants]]\nname = \"free\"\napi_keys = [\"sk-free-0001\"]\nalways_degrade = true\n\n[[tenants]]\nname = \"paid\"\napi_keys = [\"sk-paid-0001\"]\n\n[classes.high]\nttft_target_ms = 5000\n";
    std::fs::write(&cfg, config).unwrap();
    let model = model_path();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--fallback-model", model.to_str().unwrap()]);
    let addr = &server.addr;
    let free = [("authorization", "Bearer sk-free-0001")];
    let paid = [("authorization", "Bearer sk-paid-0001")];
    let stem = model.file_stem().unwrap().to_string_lossy().into_owned();

    let (status, headers, body) = http(addr, "POST", "/v1/completions", &free, &completion("The capital of France is", 6));
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-ballast-degraded"), Some("fallback_model"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], format!("{stem}-fallback"));
    assert_eq!(v["degraded"], serde_json::json!(["fallback_model"]));
    assert!(v["choices"][0]["text"].as_str().unwrap().starts_with(" Paris"), "the fallback answered: {v}");

    let ids = serde_json::json!({"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 10, "n": 2, "temperature": 0.5}).to_string();
    let (status, headers, body) = http(addr, "POST", "/v1/completions", &free, &ids);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-ballast-degraded"), Some("max_tokens,n"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], stem.as_str());
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);

    let (status, headers, _) = http(addr, "POST", "/v1/completions", &paid, &completion("Hi", 2));
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ballast-degraded"), None);
    let degraded = metric(addr, &format!("ballast_requests_degraded_total{{model_name=\"{stem}\",priority=\"normal\"}}"));
    assert_eq!(degraded, 2.0);
}

/// The tenant race: a reload that lands while a request's body is still arriving (after the
/// server authenticated it, before admission) never lets the request run with another
/// tenant's class, limits or prefix-cache salt, also under concurrent load and reloads.
#[test]
fn a_reload_between_authentication_and_admission_never_swaps_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ballast.toml");
    let alpha_def = "[[tenants]]\nname = \"alpha\"\napi_keys = [\"sk-alpha-0001\"]\nmax_priority = \"normal\"\n";
    let beta_def = "[[tenants]]\nname = \"beta\"\napi_keys = [\"sk-beta-00001\"]\nmax_priority = \"critical\"\n";
    let alpha_first = format!("{alpha_def}{beta_def}");
    let beta_first = format!("{beta_def}{alpha_def}");
    // Written whole then renamed, so a reload never reads half a file.
    let write = |text: &str| {
        let tmp = dir.path().join("next.toml");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
    };
    write(&alpha_first);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let addr = server.addr.clone();
    let alpha = [("authorization", "Bearer sk-alpha-0001")];
    let beta = [("authorization", "Bearer sk-beta-00001")];
    let reloads = std::sync::atomic::AtomicUsize::new(0);
    let reload_to = |text: &str| {
        write(text);
        let n = reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as f64 + 1.0;
        server.signal("-HUP");
        wait_until("the reload", || metric(&addr, "ballast_config_reloads_total") >= n);
    };
    let cached = |body: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
    };
    // Long enough to fill whole KV blocks (cached per 16 tokens).
    let text = |tag: &str| format!("{tag}: the quick brown fox jumps over the lazy dog, again and again, {}", "and again ".repeat(12));

    // Beta's prompt is in the cache under beta's salt (a second run hits it: the cache works).
    let shared = text("shared");
    assert_eq!(http(&addr, "POST", "/v1/completions", &beta, &completion(&shared, 1)).0, 200);
    let (status, _, body) = http(&addr, "POST", "/v1/completions", &beta, &completion(&shared, 1));
    assert!(status == 200 && cached(&body) >= 16, "{body}");

    // Authenticated as alpha (index 0), admitted after a reload that puts beta at index 0.
    let high = serde_json::json!({"prompt": shared, "max_tokens": 1, "priority": "high"}).to_string();
    let (status, _, body) = http_split(&addr, "/v1/completions", &alpha, &high, || reload_to(&beta_first));
    assert_eq!(status, 400, "alpha may not ask for high, whatever sits at its index now: {body}");
    assert!(body.contains("maximum"), "{body}");
    let (status, headers, body) = http_split(&addr, "/v1/completions", &alpha, &completion(&shared, 1), || reload_to(&alpha_first));
    assert_eq!((status, header(&headers, "x-ballast-priority")), (200, Some("normal")), "{body}");
    assert_eq!(cached(&body), 0, "alpha never sees beta's cache: {body}");

    // A reload that removes alpha: its request still arriving is refused cleanly, with a retry.
    let (status, headers, body) = http_split(&addr, "/v1/completions", &alpha, &completion(&text("gone"), 1), || reload_to(beta_def));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("removed") && header(&headers, "retry-after").is_some(), "{body}");
    assert_eq!(http(&addr, "POST", "/v1/completions", &alpha, &completion("Hi", 1)).0, 401);
    reload_to(&alpha_first);

    // Under concurrent load: clients race reloads that keep swapping the tenants' order.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                reload_to(if flip { &alpha_first } else { &beta_first });
                flip = !flip;
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
        });
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (addr, text, cached) = (&addr, &text, &cached);
                s.spawn(move || {
                    for k in 0..6 {
                        // Beta first, so alpha's identical prompt would hit if it ran as beta.
                        let prompt = text(&format!("client {c} round {k}"));
                        assert_eq!(http(addr, "POST", "/v1/completions", &beta, &completion(&prompt, 1)).0, 200);
                        let (status, _, body) = http(addr, "POST", "/v1/completions", &alpha, &completion(&prompt, 1));
                        assert_eq!(status, 200, "{body}");
                        assert_eq!(cached(&body), 0, "alpha ran with beta's salt: {body}");
                        let high = serde_json::json!({"prompt": prompt, "max_tokens": 1, "priority": "high"}).to_string();
                        let (status, _, body) = http(addr, "POST", "/v1/completions", &alpha, &high);
                        assert_eq!(status, 400, "alpha ran with beta's class: {body}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(reloads.load(std::sync::atomic::Ordering::SeqCst) >= 5, "the reloads raced the requests");
}

/// Shedding answers 429 + Retry-After (what routers retry elsewhere without tripping a
/// replica's circuit breaker) and never makes the replica unready; `shed_status = 503` keeps
/// the old status for deployments that want it.
#[test]
fn shed_load_is_a_429_and_the_replica_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    for (shed_status, want) in [(None, 429), (Some(503), 503)] {
        let cfg = dir.path().join("c.toml");
        let server_section = shed_status.map_or(String::new(), |s| format!("[server]\nshed_status = {s}\n"));
        std::fs::write(&cfg, format!("{server_section}[classes.normal]\nmax_queue_ms = 50\n")).unwrap();
        let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "4"]);
        let addr = server.addr.clone();
        // A measured drain rate first (the ladder estimates queue waits from it).
        for i in 0..4 {
            assert_eq!(http(&addr, "POST", "/v1/completions", &[], &completion(&format!("Warm up {i}"), 4)).0, 200);
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        let (results, readiness) = std::thread::scope(|s| {
            let poll = s.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let (status, _, body) = http(&addr, "GET", "/ready", &[], "");
                    seen.push((status, body.contains("\"shedding\":true")));
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                seen
            });
            let clients: Vec<_> = (0..24)
                .map(|i| {
                    let addr = &addr;
                    s.spawn(move || {
                        // Staggered, so that the engine's queue (the ladder's signal) builds up.
                        std::thread::sleep(std::time::Duration::from_millis(25 * i));
                        http(addr, "POST", "/v1/completions", &[], &completion(&format!("Story number {i}:"), 48))
                    })
                })
                .collect();
            let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (results, poll.join().unwrap())
        });
        let shed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
        assert!(!shed.is_empty(), "the burst was shed");
        for (status, headers, body) in &shed {
            assert_eq!(*status, want, "{body}");
            assert!(header(headers, "retry-after").is_some() && body.contains("overloaded_error"), "{body}");
        }
        assert!(readiness.iter().all(|r| r.0 == 200), "unready while shedding: {readiness:?}");
        assert!(readiness.iter().any(|r| r.1), "readiness polled while normal traffic was shed: {readiness:?}");
    }
}

/// The endpoints routers poll: load in vLLM's and SGLang's shapes, server info in both, and
/// the token ids a request would run (what prefix-aware routers hash), checked like the
/// request itself.
#[test]
fn router_endpoints_answer_in_the_shapes_routers_read() {
    let server = Server::start(&[]);
    let addr = server.addr.clone();
    let json = |path: &str| -> serde_json::Value {
        let (status, _, body) = http(&addr, "GET", path, &[], "");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(json("/get_load"), serde_json::json!({"load": 0}));
    let sglang = json("/get_load?shape=sglang");
    assert_eq!(
        (sglang[0]["dp_rank"].as_u64(), sglang[0]["num_reqs"].as_u64(), sglang[0]["num_waiting_reqs"].as_u64()),
        (Some(0), Some(0), Some(0))
    );
    // Busy: a long request in flight counts.
    let busy = std::thread::spawn({
        let addr = addr.clone();
        move || http(&addr, "POST", "/v1/completions", &[], &completion("Once upon a time", 400))
    });
    // (A request counts from the moment it is handed to the engine thread; its KV blocks a
    // step later.)
    wait_until("the load to show", || json("/get_load")["load"].as_u64() == Some(1));
    wait_until("its KV tokens to show", || json("/get_load?shape=sglang")[0]["num_tokens"].as_u64().unwrap() > 0);
    assert_eq!(busy.join().unwrap().0, 200);
    // The snapshot is published just after the step that answered the client: on a loaded
    // machine the client can ask before it lands.
    wait_until("the load to drain", || json("/get_load")["load"].as_u64() == Some(0));
    for path in ["/server_info", "/get_server_info", "/model_info"] {
        let info = json(path);
        assert_eq!(info["served_model_name"], "SmolLM2-135M-Instruct.Q4_1", "{path}");
        assert_eq!(info["vllm_config"]["cache_config"]["block_size"], 16, "{path}");
        assert_eq!(info["page_size"], 16, "{path}");
        assert!(
            info["max_model_len"].as_u64().unwrap() >= 2048 && info["model_path"].as_str().unwrap().ends_with(".gguf"),
            "{path}: {info}"
        );
    }
    // Render: the ids /tokenize gives for the same prompt, template applied for chat.
    let messages = serde_json::json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]);
    let tokenized = |body: serde_json::Value| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&http(&addr, "POST", "/tokenize", &[], &body.to_string()).2).unwrap()["tokens"].clone()
    };
    let (status, _, body) =
        http(&addr, "POST", "/v1/chat/completions/render", &[], &serde_json::json!({"messages": messages, "max_tokens": 5}).to_string());
    assert_eq!(status, 200, "{body}");
    let rendered: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rendered["prompt_token_ids"], tokenized(serde_json::json!({"messages": messages})));
    let (status, _, body) =
        http(&addr, "POST", "/v1/completions/render", &[], &serde_json::json!({"prompt": "Hello world", "max_tokens": 5}).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["prompt_token_ids"],
        tokenized(serde_json::json!({"prompt": "Hello world"}))
    );
    let (status, _, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions/render",
        &[],
        &serde_json::json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("messages[0].role"), "{body}");
    assert_eq!(json("/get_load")["load"], 0, "rendering runs nothing");
}
