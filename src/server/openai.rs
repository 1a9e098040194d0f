//! OpenAI wire types: request bodies (parsed leniently about unknown fields, strictly about
//! the types and ranges of known ones) and the errors' JSON shape.

use crate::chat_template::ChatMessage;
use serde::Deserialize;

/// An API error: status, OpenAI's `{"error": {...}}` body, optionally `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", message: message.into(), param: Some(param.to_string()), retry_after: None }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None, retry_after: None }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        })
    }
}

/// `prompt`: a string, token ids, or a one-element list of either.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub skip_special_tokens: Option<bool>,
    pub priority: Option<String>,
    /// Structured output (see `validate::response_format`).
    pub response_format: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Top alternatives per token (0–20).
    #[serde(default)]
    pub logprobs: CompletionLogprobs,
    #[serde(default)]
    pub echo: bool,
    /// An alias of `max_tokens` (sglang-router renames it so).
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// Completions' `logprobs`: a number of alternatives, or `false` / `null` for none (what
/// routers send when they write out every field).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompletionLogprobs(pub Option<i64>);

impl<'de> Deserialize<'de> for CompletionLogprobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Flag(bool),
        }
        match Option::<Raw>::deserialize(d)? {
            None | Some(Raw::Flag(false)) => Ok(CompletionLogprobs(None)),
            Some(Raw::Count(n)) => Ok(CompletionLogprobs(Some(n))),
            Some(Raw::Flag(true)) => Err(serde::de::Error::custom("logprobs of a completion is a number of alternatives (0–20), not true")),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    /// Checked by [`messages`] (serde cannot name the place of every problem).
    pub messages: Vec<serde_json::Value>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// Checked by [`super::tool_calls::tools`] (with `tool_choice`, `parallel_tool_calls`).
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<serde_json::Value>,
    #[serde(flatten)]
    pub common: Common,
}

/// Chat messages checked as OpenAI's API checks them, each problem a 400 naming its place
/// (`messages[1].content[0].text`):
/// - `role` is one of `system`, `developer`, `user`, `assistant`, `tool`, `function`;
/// - `content` is a string or a non-empty array of parts, required except for an assistant
///   message (which may leave it out or null); parts are objects with a `type`: `text` (with a
///   string `text`) everywhere, `refusal` (with a string `refusal`) in assistant messages;
///   images, audio and files are refused as unsupported by this server (a text model);
/// - `name` matches `^[a-zA-Z0-9_-]{1,64}$` (and is required for `function` messages);
/// - an assistant message may carry `tool_calls` (`id`, `type` `function`, `function.name`,
///   `function.arguments` as JSON text); a `tool` message has a `tool_call_id` that names a
///   call of an earlier assistant message; the legacy `function_call` and audio are refused;
/// - no other field.
///
/// Parts are concatenated into the message's text.
pub fn messages(messages: &[serde_json::Value]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages", "messages is empty: give at least one message"));
    }
    let parsed: Vec<ChatMessage> =
        messages.iter().enumerate().map(|(i, m)| message(m, &format!("messages[{i}]"))).collect::<Result<_, _>>()?;
    for (i, m) in parsed.iter().enumerate() {
        if let Some(id) = &m.tool_call_id
            && !parsed[..i].iter().any(|p| p.tool_calls.iter().any(|c| &c.id == id))
        {
            return Err(ApiError::bad_request(
                &format!("messages[{i}].tool_call_id"),
                format!("messages[{i}]: a tool message must answer a call of an earlier assistant message, and no call has the id {id:?}"),
            ));
        }
    }
    Ok(parsed)
}

const ROLES: [&str; 6] = ["system", "developer", "user", "assistant", "tool", "function"];

fn message(m: &serde_json::Value, at: &str) -> Result<ChatMessage, ApiError> {
    use serde_json::Value;
    let bad = |field: &str, msg: String| ApiError::bad_request(&format!("{at}.{field}"), msg);
    let Value::Object(map) = m else {
        return Err(ApiError::bad_request(at, format!("{at} must be an object with a role and content")));
    };
    let role = match map.get("role") {
        None => return Err(bad("role", format!("{at}.role is missing"))),
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
        Some(other) => return Err(bad("role", format!("{at}.role must be one of {}, got {other}", ROLES.join(", ")))),
    };
    let allowed: &[&str] = match role {
        "assistant" => &["role", "content", "name", "refusal", "tool_calls", "function_call", "audio"],
        "tool" => &["role", "content", "tool_call_id"],
        _ => &["role", "content", "name"],
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(k, format!("{at}.{k} is not a field of a {role} message")));
    }
    match map.get("name") {
        None if role == "function" => return Err(bad("name", format!("{at}.name is required in a function message"))),
        None => {}
        Some(Value::String(n)) if super::tool_calls::valid_name(n) => {}
        Some(other) => return Err(bad("name", format!("{at}.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {other}"))),
    }
    for field in ["function_call", "audio"] {
        if map.get(field).is_some_and(|v| !v.is_null()) {
            let why = if field == "audio" {
                "audio is not supported by this server"
            } else {
                "the legacy function_call is not served: use tool_calls"
            };
            return Err(bad(field, format!("{at}.{field}: {why}")));
        }
    }
    let tool_calls = match map.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => super::tool_calls::message_calls(v, &format!("{at}.tool_calls"))?,
    };
    let tool_call_id = match map.get("tool_call_id") {
        _ if role != "tool" => None,
        Some(Value::String(id)) => Some(id.clone()),
        None => return Err(bad("tool_call_id", format!("{at}.tool_call_id is required in a tool message"))),
        Some(other) => return Err(bad("tool_call_id", format!("{at}.tool_call_id must be a string, got {other}"))),
    };
    let content = match map.get("content") {
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => return Err(bad("content", format!("{at}.content is required in a {role} message"))),
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(parts)) if parts.is_empty() => {
            return Err(bad("content", format!("{at}.content is an empty array: give a string or at least one part")));
        }
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                text += content_part(part, role, &format!("{at}.content[{j}]"))?;
            }
            text
        }
        Some(other) => return Err(bad("content", format!("{at}.content must be a string or an array of parts, got {other}"))),
    };
    if let Some(r) = map.get("refusal").filter(|r| !r.is_null() && !r.is_string()) {
        return Err(bad("refusal", format!("{at}.refusal must be a string, got {r}")));
    }
    let name = map.get("name").and_then(Value::as_str).map(str::to_string);
    Ok(ChatMessage { tool_calls, tool_call_id, name, ..ChatMessage::new(role, &content) })
}

/// One content part's text.
fn content_part<'a>(part: &'a serde_json::Value, role: &str, at: &str) -> Result<&'a str, ApiError> {
    use serde_json::Value;
    let Value::Object(map) = part else {
        return Err(ApiError::bad_request(at, format!("{at} must be an object with a type")));
    };
    let kind = match map.get("type") {
        Some(Value::String(k)) => k.as_str(),
        None => return Err(ApiError::bad_request(&format!("{at}.type"), format!("{at}.type is missing"))),
        Some(other) => return Err(ApiError::bad_request(&format!("{at}.type"), format!("{at}.type must be a string, got {other}"))),
    };
    let field = match kind {
        "text" => "text",
        "refusal" if role == "assistant" => "refusal",
        "image_url" | "input_audio" | "file" if role == "user" => {
            return Err(ApiError::bad_request(
                &format!("{at}.type"),
                format!("{at}: {kind} parts are not supported by this model (text only)"),
            ));
        }
        other => {
            return Err(ApiError::bad_request(
                &format!("{at}.type"),
                format!("{at}.type {other:?} is not a content part of a {role} message"),
            ));
        }
    };
    if let Some(k) = map.keys().find(|k| k.as_str() != "type" && k.as_str() != field) {
        return Err(ApiError::bad_request(&format!("{at}.{k}"), format!("{at}.{k} is not a field of a {kind} part")));
    }
    match map.get(field) {
        Some(Value::String(t)) => Ok(t),
        None => Err(ApiError::bad_request(&format!("{at}.{field}"), format!("{at}.{field} is missing"))),
        Some(other) => Err(ApiError::bad_request(&format!("{at}.{field}"), format!("{at}.{field} must be a string, got {other}"))),
    }
}

/// Parses a JSON body, naming the offending field on error.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(400, "invalid_request_error", format!("the body is not valid JSON: {inner}"));
        }
        let param = if path == "." { "body".to_string() } else { path };
        ApiError::bad_request(&param, format!("{param}: {inner}"))
    })?;
    de.end().map_err(|e| ApiError::new(400, "invalid_request_error", format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_name_the_field() {
        // Flattened fields lose their path, so the handler parses the shared ones alone first.
        let e = parse::<Common>(br#"{"prompt": "x", "temperature": "hot"}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("temperature")));
        let e = messages(&parse::<ChatRequest>(br#"{"messages": [{"role": "user", "content": 5}]}"#).unwrap().messages).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        let e = parse::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert!(e.message.contains("missing field `messages`"), "{e:?}");
        let e = parse::<CompletionRequest>(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"));
        let e = parse::<CompletionRequest>(br#"{"prompt": "x"} {"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{e:?}");
        let ok = parse::<CompletionRequest>(br#"{"prompt": [1, 2], "stop": "x", "unknown": 1, "stream": true}"#).unwrap();
        assert!(matches!(ok.prompt, PromptField::Ids(_)) && ok.common.stream);
    }
}
