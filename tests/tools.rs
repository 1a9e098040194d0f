//! Tool calling on a model whose chat template offers tools (Qwen2.5-Coder-0.5B-Instruct):
//! the official `openai` client end to end (tests/tools_client.py: auto, required and named
//! calls, streamed and not, a tool round trip, `none`, `parallel_tool_calls`, Pydantic tools,
//! seeded calls that all validate, bad tools refused); tools on `Request` through the engine
//! itself; a tool-calling request shed rather than degraded; a model without tools refusing
//! them.

mod common;

use ballast::backend::cpu::Precision;
use ballast::chat_template::ChatMessage;
use ballast::engine::SubmitError;
use ballast::kv::KvDtype;
use ballast::model::{self, LoadOptions};
use ballast::request::{FinishReason, Prompt, Request};
use ballast::tools::{Function, ToolChoice, ToolFormat, Tools};
use common::server::*;
use common::*;
use std::process::Command;

const MODEL: &str = "qwen2.5-coder-0.5b";

fn weather() -> Function {
    Function {
        name: "get_weather".into(),
        description: Some("The current weather in a city.".into()),
        parameters: Some(serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
        })),
        strict: None,
    }
}

#[test]
fn the_openai_client_calls_tools() {
    let path = real_model_path(MODEL);
    let server = Server::start(&["--model", path.to_str().unwrap(), "--max-num-seqs", "16", "--kv-cache-mib", "256"]);
    let model = path.file_stem().unwrap().to_string_lossy().into_owned();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools_client.py");
    let out = Command::new(python()).arg(&script).arg(format!("http://{}", server.addr)).arg(&model).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tool calling checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all tool calling checks passed"));
}

#[test]
fn tools_on_requests_through_the_engine() {
    let loaded = model::load(&real_model_path(MODEL), LoadOptions::default(), &mut |_, _| {}).unwrap();
    let engine = cpu_engine(loaded, Precision::Int16, KvDtype::F16, 256, 128);
    assert_eq!(engine.tool_format(), Some(ToolFormat::Hermes), "read from the model's chat template");
    let chat = |q: &str| Prompt::Chat(vec![ChatMessage::new("user", q)]);
    let tools = |choice| Some(Tools { functions: vec![weather()], choice, parallel: false });
    let forced = Request { tools: tools(ToolChoice::Function("get_weather".into())), ..Request::new(chat("Hi there!")).max_tokens(60) };
    let free = Request::new(chat("Say hello.")).max_tokens(12);
    let alone = engine.submit(free.clone()).unwrap().collect_output();
    let together = run_together(&engine, vec![forced, free]);
    let (content, calls) = ToolFormat::Hermes.parse(&together[0].text, &["get_weather".into()]);
    assert_eq!((content.as_str(), calls.len(), &together[0].finish), ("", 1, &Some(FinishReason::Stop)), "{:?}", together[0].text);
    let args: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
    let days = args["days"].as_i64().unwrap_or(0);
    assert!(
        args["city"].is_string() && (1..=7).contains(&days) && args.as_object().unwrap().len() == 2,
        "constrained to the schema: {args}"
    );
    assert_eq!((&together[1].ids, &together[1].text), (&alone[0].ids, &alone[0].text), "an unconstrained neighbour is unchanged");
    // Offering tools changes the prompt (the template lists them); `none` leaves them out.
    let greedy = |r: Request| Request { sampling: ballast::sampler::SamplingParams { temperature: 0.0, ..Default::default() }, ..r };
    let with = engine.prepare(greedy(Request { tools: tools(ToolChoice::Auto), ..Request::new(chat("Hi")) })).unwrap();
    let without = engine.prepare(Request { tools: tools(ToolChoice::None), ..Request::new(chat("Hi")) }).unwrap();
    assert!(with.prompt_ids().len() > without.prompt_ids().len() + 50 && with.tool_format() == Some(ToolFormat::Hermes));
    assert_eq!((without.tool_format(), without.has_contract()), (None, false));
    // Output reuse never hands an auto reply to a required call of the same prompt.
    let required = engine.prepare(greedy(Request { tools: tools(ToolChoice::Required), ..Request::new(chat("Hi")) })).unwrap();
    let key = |v| ballast::server::reuse::Key::of("m", v).unwrap();
    assert_eq!(with.prompt_ids(), required.prompt_ids());
    assert_ne!(key(&with), key(&required));
    // Refusals, before anything is queued.
    let refused = |r: Request| engine.prepare(r).map(|_| ()).unwrap_err();
    let text = Request { tools: tools(ToolChoice::Auto), ..Request::new("Hi") };
    assert!(matches!(refused(text), SubmitError::Tools(m) if m.contains("chat prompt")));
    let unknown = Request { tools: tools(ToolChoice::Function("nope".into())), ..Request::new(chat("Hi")) };
    assert!(matches!(refused(unknown), SubmitError::ToolChoice(m) if m.contains("nope")));
    let mut bad = weather();
    bad.parameters = Some(serde_json::json!({"type": "object", "properties": {"x": {"type": 5}}}));
    let bad = Request { tools: Some(Tools { functions: vec![bad], choice: ToolChoice::Auto, parallel: true }), ..Request::new(chat("Hi")) };
    assert!(matches!(refused(bad), SubmitError::Tools(m) if m.contains("get_weather")));
    // A model whose template knows no tools refuses them.
    let plain = cpu_engine(load_model(), Precision::Int16, KvDtype::F16, 256, 16);
    assert_eq!(plain.tool_format(), None);
    let r = Request { tools: tools(ToolChoice::Auto), ..Request::new(chat("Hi")) };
    assert!(matches!(plain.prepare(r).map(|_| ()).unwrap_err(), SubmitError::Tools(m) if m.contains("does not offer tools")));
}

#[test]
fn a_tool_calling_request_is_shed_rather_than_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("free.toml");
    std::fs::write(&cfg, "[[tenants]]\nname = \"free\"\napi_keys = [\"sk-free-0001\"]\nalways_degrade = true\n").unwrap();
    let path = real_model_path(MODEL);
    let server = Server::start(&["--model", path.to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    let auth = [("authorization", "Bearer sk-free-0001")];
    let ask = serde_json::json!([{"role": "user", "content": "Weather in Oslo?"}]);
    let plain = serde_json::json!({"messages": ask, "max_tokens": 200});
    let (status, headers, _) = http(&server.addr, "POST", "/v1/chat/completions", &auth, &plain.to_string());
    assert_eq!((status, header(&headers, "x-ballast-degraded").is_some()), (200, true), "a request without tools is degraded");
    let tool = serde_json::json!({"type": "function", "function": {"name": "get_weather", "parameters": weather().parameters}});
    let with_tools = serde_json::json!({"messages": ask, "max_tokens": 200, "tools": [tool]});
    let (status, headers, body) = http(&server.addr, "POST", "/v1/chat/completions", &auth, &with_tools.to_string());
    assert_eq!((status, header(&headers, "retry-after").is_some()), (429, true), "{body}");
    assert!(body.contains("tool-calling request is not degraded"), "{body}");
    // Tools offered with `none` ask for text: degraded like any other request.
    let none = serde_json::json!({"messages": ask, "max_tokens": 4, "tools": [tool], "tool_choice": "none"});
    assert_eq!(http(&server.addr, "POST", "/v1/chat/completions", &auth, &none.to_string()).0, 200);
}

#[test]
fn a_model_without_tools_refuses_them_by_name() {
    let server = Server::start(&[]);
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    });
    let (status, _, body) = http(&server.addr, "POST", "/v1/chat/completions", &[], &body.to_string());
    assert_eq!(status, 400, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["param"], "tools", "{body}");
    assert!(e["error"]["message"].as_str().unwrap().contains("does not offer tools"), "{body}");
    // Completions take no tools.
    let body = serde_json::json!({"prompt": "Hi", "tools": [{"type": "function", "function": {"name": "f"}}]});
    assert_eq!(http(&server.addr, "POST", "/v1/completions", &[], &body.to_string()).0, 400);
}
