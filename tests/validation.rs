//! Request validation as OpenAI's API and vLLM do it, through a live server: a table of chat
//! and length cases, each with the status and the `param` it must get (400s name the field,
//! the way the official clients show it). Valid rows must generate.

mod common;

use common::server::*;
use serde_json::{Value, json};

/// `(what, endpoint, body, status, param)`.
fn cases(max_context: u64) -> Vec<(&'static str, &'static str, Value, u16, Option<&'static str>)> {
    let user = |c: Value| json!({"role": "user", "content": c});
    let chat = |messages: Value| json!({"messages": messages, "max_tokens": 2});
    let c = "/v1/chat/completions";
    let p = "/v1/completions";
    let text = |t: &str| json!({"type": "text", "text": t});
    vec![
        // Messages: roles.
        ("no messages", c, json!({"messages": [], "max_tokens": 2}), 400, Some("messages")),
        ("messages not a list", c, json!({"messages": "hi", "max_tokens": 2}), 400, Some("messages")),
        ("a message that is not an object", c, chat(json!(["hi"])), 400, Some("messages[0]")),
        ("role missing", c, chat(json!([{"content": "hi"}])), 400, Some("messages[0].role")),
        ("unknown role", c, chat(json!([{"role": "robot", "content": "hi"}])), 400, Some("messages[0].role")),
        ("role not a string", c, chat(json!([{"role": 1, "content": "hi"}])), 400, Some("messages[0].role")),
        (
            "system, developer and user",
            c,
            chat(json!([{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No lists."}, user(json!("Hi"))])),
            200,
            None,
        ),
        // Content per role.
        ("user content missing", c, chat(json!([{"role": "user"}])), 400, Some("messages[0].content")),
        ("user content null", c, chat(json!([user(Value::Null)])), 400, Some("messages[0].content")),
        ("system content missing", c, chat(json!([{"role": "system"}, user(json!("Hi"))])), 400, Some("messages[0].content")),
        ("content a number", c, chat(json!([user(json!(5))])), 400, Some("messages[0].content")),
        ("content an object", c, chat(json!([user(json!({"text": "hi"}))])), 400, Some("messages[0].content")),
        ("content an empty list", c, chat(json!([user(json!([]))])), 400, Some("messages[0].content")),
        ("empty string content", c, chat(json!([user(json!(""))])), 200, None),
        ("assistant without content", c, chat(json!([user(json!("Hi")), {"role": "assistant"}, user(json!("Again"))])), 200, None),
        (
            "assistant with null content",
            c,
            chat(json!([user(json!("Hi")), {"role": "assistant", "content": null}, user(json!("Again"))])),
            200,
            None,
        ),
        // Content parts.
        ("text parts", c, chat(json!([user(json!([text("Hello"), text(" there")]))])), 200, None),
        ("system text parts", c, chat(json!([{"role": "system", "content": [text("Be brief.")]}, user(json!("Hi"))])), 200, None),
        ("a part without type", c, chat(json!([user(json!([{"text": "hi"}]))])), 400, Some("messages[0].content[0].type")),
        ("a part not an object", c, chat(json!([user(json!(["hi"]))])), 400, Some("messages[0].content[0]")),
        ("a text part without text", c, chat(json!([user(json!([{"type": "text"}]))])), 400, Some("messages[0].content[0].text")),
        (
            "a text part with a number",
            c,
            chat(json!([user(json!([{"type": "text", "text": 3}]))])),
            400,
            Some("messages[0].content[0].text"),
        ),
        (
            "an image part",
            c,
            chat(json!([user(json!([text("What is it?"), {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]))])),
            400,
            Some("messages[0].content[1].type"),
        ),
        ("an unknown part type", c, chat(json!([user(json!([{"type": "video", "text": "x"}]))])), 400, Some("messages[0].content[0].type")),
        (
            "a refusal part from the user",
            c,
            chat(json!([user(json!([{"type": "refusal", "refusal": "no"}]))])),
            400,
            Some("messages[0].content[0].type"),
        ),
        (
            "a refusal part from the assistant",
            c,
            chat(
                json!([user(json!("Hi")), {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}, user(json!("Please"))]),
            ),
            200,
            None,
        ),
        (
            "an unknown field in a part",
            c,
            chat(json!([user(json!([{"type": "text", "text": "hi", "lang": "en"}]))])),
            400,
            Some("messages[0].content[0].lang"),
        ),
        // Names and fields.
        ("a valid name", c, chat(json!([{"role": "user", "content": "Hi", "name": "alice_1-b"}])), 200, None),
        ("a name with a space", c, chat(json!([{"role": "user", "content": "Hi", "name": "alice b"}])), 400, Some("messages[0].name")),
        ("an empty name", c, chat(json!([{"role": "user", "content": "Hi", "name": ""}])), 400, Some("messages[0].name")),
        (
            "a name of 65 characters",
            c,
            chat(json!([{"role": "user", "content": "Hi", "name": "a".repeat(65)}])),
            400,
            Some("messages[0].name"),
        ),
        (
            "a function message without name",
            c,
            chat(json!([user(json!("Hi")), {"role": "function", "content": "42"}])),
            400,
            Some("messages[1].name"),
        ),
        (
            "an unknown field in a message",
            c,
            chat(json!([{"role": "user", "content": "Hi", "mood": "happy"}])),
            400,
            Some("messages[0].mood"),
        ),
        (
            "tool_call_id on a user message",
            c,
            chat(json!([{"role": "user", "content": "Hi", "tool_call_id": "x"}])),
            400,
            Some("messages[0].tool_call_id"),
        ),
        (
            "a tool message with no tool call before it",
            c,
            chat(json!([user(json!("Hi")), {"role": "tool", "content": "42", "tool_call_id": "call_1"}])),
            400,
            Some("messages[1].tool_call_id"),
        ),
        (
            "assistant tool_calls and their answer (the template renders what it knows)",
            c,
            chat(json!([
                user(json!("Hi")),
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            ])),
            200,
            None,
        ),
        (
            "a tool call without its arguments",
            c,
            chat(
                json!([user(json!("Hi")), {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f"}}]}]),
            ),
            400,
            Some("messages[1].tool_calls[0].function.arguments"),
        ),
        (
            "a tool message without its tool_call_id",
            c,
            chat(json!([user(json!("Hi")), {"role": "tool", "content": "42"}])),
            400,
            Some("messages[1].tool_call_id"),
        ),
        (
            "a refusal that is not a string",
            c,
            chat(json!([user(json!("Hi")), {"role": "assistant", "content": "x", "refusal": 5}, user(json!("Hi"))])),
            400,
            Some("messages[1].refusal"),
        ),
        // Lengths: a limit that cannot fit is an error naming the field, never a silent clamp.
        (
            "chat max_tokens beyond the context",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": max_context}),
            400,
            Some("max_tokens"),
        ),
        (
            "chat max_completion_tokens beyond the context",
            c,
            json!({"messages": [user(json!("Hi"))], "max_completion_tokens": max_context}),
            400,
            Some("max_completion_tokens"),
        ),
        (
            "chat max_completion_tokens of zero",
            c,
            json!({"messages": [user(json!("Hi"))], "max_completion_tokens": 0}),
            400,
            Some("max_completion_tokens"),
        ),
        ("chat max_tokens negative", c, json!({"messages": [user(json!("Hi"))], "max_tokens": -1}), 400, Some("max_tokens")),
        ("completion max_tokens beyond the context", p, json!({"prompt": "Hi", "max_tokens": max_context}), 400, Some("max_tokens")),
        ("completion max_tokens of zero", p, json!({"prompt": "Hi", "max_tokens": 0}), 400, Some("max_tokens")),
        ("completion max_tokens a string", p, json!({"prompt": "Hi", "max_tokens": "5"}), 400, Some("max_tokens")),
        ("a prompt beyond the context", p, json!({"prompt": vec![1u32; max_context as usize], "max_tokens": 1}), 400, Some("prompt")),
        ("completion max_tokens that fits", p, json!({"prompt": "Hi", "max_tokens": 3}), 200, None),
        // Other fields the APIs tie together.
        (
            "top_logprobs without logprobs",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "top_logprobs": 2}),
            400,
            Some("top_logprobs"),
        ),
        (
            "top_logprobs above 20",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "logprobs": true, "top_logprobs": 21}),
            400,
            Some("top_logprobs"),
        ),
        (
            "top_logprobs with logprobs",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "logprobs": true, "top_logprobs": 2}),
            200,
            None,
        ),
        (
            "stream_options without stream",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "stream_options": {"include_usage": true}}),
            400,
            Some("stream_options"),
        ),
        ("n of zero", c, json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "n": 0}), 400, Some("n")),
        // Fields routers and SDKs add: neutral values accepted, others refused; unknown ones
        // ignored (named in x-ballast-ignored-fields; strict_fields makes them a 400).
        ("an unknown top-level field (ignored)", c, json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "temprature": 0}), 200, None),
        (
            "vllm-router's chat body",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "stream": false, "logprobs": false, "echo": false,
            "ignore_eos": false, "skip_special_tokens": true, "no_stop_trim": false, "return_hidden_states": false, "continue_final_message": false,
            "separate_reasoning": true, "stream_reasoning": true, "include_reasoning": true, "add_generation_prompt": true}),
            200,
            None,
        ),
        (
            "sglang-router's chat body",
            c,
            json!({"messages": [user(json!("Hi"))], "max_completion_tokens": 2, "stream": false, "logprobs": false,
            "no_stop_trim": false, "return_hidden_states": false, "separate_reasoning": true, "stream_reasoning": true, "rid": null, "bootstrap_room": null}),
            200,
            None,
        ),
        (
            "vllm-router's completion body",
            p,
            json!({"prompt": "Hi", "max_tokens": 2, "stream": false, "logprobs": false, "echo": false,
            "ignore_eos": false, "skip_special_tokens": true, "no_stop_trim": false, "return_hidden_states": false}),
            200,
            None,
        ),
        ("completion max_completion_tokens (sglang-router's rename)", p, json!({"prompt": "Hi", "max_completion_tokens": 2}), 200, None),
        (
            "completion max_completion_tokens beyond the context",
            p,
            json!({"prompt": "Hi", "max_completion_tokens": max_context}),
            400,
            Some("max_completion_tokens"),
        ),
        ("completion logprobs true", p, json!({"prompt": "Hi", "max_tokens": 2, "logprobs": true}), 400, Some("logprobs")),
        (
            "no_stop_trim true (not supported)",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "no_stop_trim": true}),
            400,
            Some("no_stop_trim"),
        ),
        (
            "continue_final_message true (not supported)",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "continue_final_message": true}),
            400,
            Some("continue_final_message"),
        ),
        (
            "add_generation_prompt false (not supported)",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "add_generation_prompt": false}),
            400,
            Some("add_generation_prompt"),
        ),
        (
            "a known field of the wrong type stays a 400",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "ignore_eos": "no"}),
            400,
            Some("ignore_eos"),
        ),
        (
            "tools on a model whose template offers none (tests/tools.rs has a model that does)",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            400,
            Some("tools"),
        ),
        (
            "tool_choice required without tools",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "tool_choice": "required"}),
            400,
            Some("tool_choice"),
        ),
        (
            "parallel_tool_calls that is not a boolean",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "parallel_tool_calls": "yes"}),
            400,
            Some("parallel_tool_calls"),
        ),
        (
            "tools on a completion",
            p,
            json!({"prompt": "x", "max_tokens": 2, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            400,
            Some("tools"),
        ),
        (
            "no tools, tool_choice auto",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "tools": [], "tool_choice": "auto", "response_format": {"type": "text"}}),
            200,
            None,
        ),
        // Structured output (tests/structured.rs has the outputs).
        (
            "a JSON object response_format",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "response_format": {"type": "json_object"}}),
            200,
            None,
        ),
        (
            "an unknown response_format type",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "response_format": {"type": "xml"}}),
            400,
            Some("response_format"),
        ),
        (
            "response_format without a type",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "response_format": {}}),
            400,
            Some("response_format"),
        ),
        (
            "a json_schema that is not a schema",
            c,
            json!({"messages": [user(json!("Hi"))], "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}),
            400,
            Some("response_format"),
        ),
        (
            "a json_schema with an unknown type",
            p,
            json!({"prompt": "x", "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wrongtype"}}}}),
            400,
            Some("response_format"),
        ),
    ]
}

#[test]
fn chat_and_length_cases_get_the_status_and_param_openai_gives() {
    let server = Server::start(&[]);
    let addr = &server.addr;
    let (_, _, models) = http(addr, "GET", "/v1/models", &[], "");
    let max_context = serde_json::from_str::<Value>(&models).unwrap()["data"][0]["max_model_len"].as_u64().unwrap();
    let mut failures = Vec::new();
    for (what, endpoint, body, status, param) in cases(max_context) {
        let (got, _, text) = http(addr, "POST", endpoint, &[], &body.to_string());
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let got_param = reply["error"]["param"].as_str().map(str::to_string);
        if got != status || got_param.as_deref() != param {
            failures.push(format!("{what}: want {status} {param:?}, got {got} {got_param:?}: {text}"));
            continue;
        }
        if status == 200 {
            assert!(reply["choices"][0]["finish_reason"].is_string(), "{what}: {text}");
        } else {
            assert_eq!(reply["error"]["type"], "invalid_request_error", "{what}: {text}");
        }
    }
    assert!(failures.is_empty(), "{} of the cases failed:\n{}", failures.len(), failures.join("\n"));

    // Ignored fields are named in a header and counted; strict_fields makes them a 400.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temprature": 0, "rid": "x"}).to_string();
    let (status, headers, _) = http(addr, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!((status, header(&headers, "x-ballast-ignored-fields")), (200, Some("rid,temprature")));
    assert!(metric(addr, "ballast_ignored_fields_total{model_name=\"SmolLM2-135M-Instruct.Q4_1\",field=\"temprature\"}") >= 2.0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("strict.toml");
    std::fs::write(&cfg, "[server]\nstrict_fields = true\n").unwrap();
    let strict = Server::start(&["--config", cfg.to_str().unwrap()]);
    let (status, _, text) = http(&strict.addr, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!(status, 400, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["param"], "rid");

    // The length errors say the limit, as vLLM does.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": max_context}).to_string();
    let (_, _, text) = http(addr, "POST", "/v1/chat/completions", &[], &body);
    let message = serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with(&format!("max_completion_tokens is too large: {max_context}."))
            && message.contains(&format!("maximum context length is {max_context} tokens")),
        "{message}"
    );
}

#[test]
fn the_class_comes_from_the_body_then_x_priority_then_the_gateways_objective() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tenants.toml");
    std::fs::write(&cfg, "[[tenants]]\nname = \"web\"\napi_keys = [\"sk-web-0001\"]\nmax_priority = \"normal\"\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let admitted = |class: &str| {
        metric(&server.addr, &format!("ballast_requests_admitted_total{{model_name=\"SmolLM2-135M-Instruct.Q4_1\",priority=\"{class}\"}}"))
    };
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    let send = |headers: &[(&str, &str)]| {
        let mut all = vec![("authorization", "Bearer sk-web-0001")];
        all.extend_from_slice(headers);
        let (status, _, text) = http(&server.addr, "POST", "/v1/completions", &all, &body);
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)["error"]["param"].as_str().map(str::to_string))
    };
    // An InferenceObjective named after a class chooses it (class names are case-blind).
    assert_eq!(send(&[("x-gateway-inference-objective", "Low")]), (200, None));
    assert_eq!(admitted("low"), 1.0);
    // Another objective name leaves the default class.
    assert_eq!(send(&[("x-gateway-inference-objective", "chat-premium")]), (200, None));
    assert_eq!(admitted("normal"), 1.0);
    // x-priority wins over the objective; both are capped by the key's maximum.
    assert_eq!(send(&[("x-priority", "low"), ("x-gateway-inference-objective", "high")]), (200, None));
    assert_eq!(admitted("low"), 2.0);
    assert_eq!(send(&[("x-gateway-inference-objective", "high")]), (400, Some("x-gateway-inference-objective".into())));
}
