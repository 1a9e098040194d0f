//! Structured output: the official `openai` client's `parse()` into a Pydantic model,
//! `json_object`, 100 seeded generations that validate against their schema, bad schemas
//! refused (tests/structured_client.py); and constraints on `Request` through the engine
//! itself: a regex is matched exactly, a grammar that cannot finish within `max_tokens` ends
//! with `length`, constrained and unconstrained requests share a batch without changing the
//! unconstrained ones' output.

mod common;

use ballast::backend::cpu::Precision;
use ballast::constraint::Constraint;
use ballast::kv::KvDtype;
use ballast::request::{FinishReason, Request};
use common::server::*;
use common::*;
use std::process::Command;

#[test]
fn the_openai_client_gets_structured_output() {
    let server = Server::start(&["--max-num-seqs", "16"]);
    let model = model_path().file_stem().unwrap().to_string_lossy().into_owned();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/structured_client.py");
    let out = Command::new(python()).arg(&script).arg(format!("http://{}", server.addr)).arg(&model).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "structured output checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all structured output checks passed"));
}

#[test]
fn constraints_on_requests_through_the_engine() {
    let engine = cpu_engine(load_model(), Precision::Int16, KvDtype::F16, 256, 64);
    let phone = Request { constraint: Some(Constraint::Regex("[0-9]{3}-[0-9]{4}".into())), ..Request::new("Call me at").max_tokens(32) };
    let never = Request { constraint: Some(Constraint::Regex("a{200}".into())), ..Request::new("Say a lot of a:").max_tokens(5) };
    let free = Request::new("The capital of France is").max_tokens(8);
    let alone = engine.submit(free.clone()).unwrap().collect_output();
    let together = run_together(&engine, vec![phone, never, free]);
    let (p, n, f) = (&together[0], &together[1], &together[2]);
    let is_phone = p.text.len() == 8 && p.text.chars().enumerate().all(|(i, c)| if i == 3 { c == '-' } else { c.is_ascii_digit() });
    assert!(is_phone && p.finish == Some(FinishReason::Stop), "{:?} {:?}", p.text, p.finish);
    let only_a = n.text.len() >= 5 && n.text.chars().all(|c| c == 'a');
    assert!(only_a && n.finish == Some(FinishReason::Length) && n.ids.len() == 5, "cut by max_tokens, never hung: {n:?}");
    assert_eq!((&f.ids, &f.text), (&alone[0].ids, &alone[0].text), "an unconstrained neighbour is unchanged");
    // A bad constraint is refused when the request is prepared.
    let bad = Request { constraint: Some(Constraint::JsonSchema(serde_json::json!({"type": 5}))), ..Request::new("x") };
    assert!(matches!(engine.prepare(bad), Err(ballast::engine::SubmitError::Constraint(_))));
}

#[test]
fn a_constrained_request_is_shed_rather_than_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("free.toml");
    std::fs::write(&cfg, "[[tenants]]\nname = \"free\"\napi_keys = [\"sk-free-0001\"]\nalways_degrade = true\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let auth = [("authorization", "Bearer sk-free-0001")];
    let plain = serde_json::json!({"prompt": "Hello", "max_tokens": 200});
    let (status, headers, _) = http(&server.addr, "POST", "/v1/completions", &auth, &plain.to_string());
    assert_eq!((status, header(&headers, "x-ballast-degraded").is_some()), (200, true), "an unconstrained request is degraded");
    let json = serde_json::json!({"prompt": "Hello", "max_tokens": 4, "response_format": {"type": "json_object"}});
    let (status, headers, body) = http(&server.addr, "POST", "/v1/completions", &auth, &json.to_string());
    assert_eq!((status, header(&headers, "retry-after").is_some()), (429, true), "{body}");
    assert!(body.contains("overloaded_error") && body.contains("constrained"), "{body}");
    // The refusal released the tenant's slot.
    assert_eq!(http(&server.addr, "POST", "/v1/completions", &auth, &plain.to_string()).0, 200);
}
