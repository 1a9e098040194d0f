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
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Top alternatives per token (0–20).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: Common,
}

/// Chat message content: a string or a list of text parts.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct WireMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

impl WireMessage {
    pub fn into_message(self, index: usize) -> Result<ChatMessage, ApiError> {
        let param = format!("messages[{index}].content");
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::bad_request(
                            &param,
                            format!("content parts of type {:?} are not supported (text only)", p.kind),
                        ));
                    }
                    text += p.text.as_deref().unwrap_or("");
                }
                text
            }
        };
        Ok(ChatMessage::new(&self.role, &content))
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
        let e = parse::<ChatRequest>(br#"{"messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
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
