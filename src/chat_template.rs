//! Chat templates (the Jinja in `tokenizer.chat_template`), rendered with minijinja the way
//! HF transformers renders them: `trim_blocks` and `lstrip_blocks` on, Python string methods
//! available, `raise_exception` for templates that reject a conversation.
//!
//! Templates come from model files, so they are treated as untrusted: rendering is bounded in
//! work (fuel) and recursion, and every failure is an error value.

use crate::tokenizer::SpecialTokens;
use crate::tools::ToolCall;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

/// Rendering work allowed per conversation (minijinja fuel units, about one per instruction).
const FUEL: u64 = 5_000_000;

#[derive(thiserror::Error, Debug)]
pub enum TemplateError {
    #[error("the model has no chat template")]
    Missing,
    #[error("invalid chat template: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant message's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The author's name (a function message's function).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string(), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }

    /// The message as templates read it (HF transformers' convention): an assistant's calls are
    /// `{"id", "type": "function", "function": {"name", "arguments"}}` with the arguments as
    /// an object (what templates pass to `tojson`). Content is always a string (empty when a
    /// message only calls tools): templates test it for truth, and those without tools
    /// concatenate it.
    fn template_value(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), self.role.clone().into());
        m.insert("content".into(), self.content.clone().into());
        if !self.tool_calls.is_empty() {
            let calls = self
                .tool_calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments).unwrap_or_else(|_| c.arguments.clone().into());
                    serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
                })
                .collect();
            m.insert("tool_calls".into(), serde_json::Value::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), id.clone().into());
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), name.clone().into());
        }
        serde_json::Value::Object(m)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it for chat templates: Python's `json.dumps` (`", "` and
/// `": "` separators, keys in their order, non-ASCII kept, nothing HTML-escaped), with its
/// `indent`, `separators`, `sort_keys` and `ensure_ascii` keywords. Models were trained on
/// prompts rendered so; minijinja's own filter writes compact, HTML-safe JSON.
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators is a pair of strings")),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = PyJson { indent, item, key, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        let quoted = serde_json::Value::from(s).to_string();
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }

    fn write(&self, v: &serde_json::Value, level: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::String(s) => self.string(s, out),
            J::Array(items) if items.is_empty() => out.push_str("[]"),
            J::Object(map) if map.is_empty() => out.push_str("{}"),
            J::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.write(x, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            J::Object(map) => {
                let mut entries: Vec<(&String, &J)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key);
                    self.write(x, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, special: &SpecialTokens) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt, special)
    }

    /// [`Self::render`] with the tools the model may call (OpenAI's tool objects, as
    /// [`crate::tools::Tools::template_values`] gives them).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String, TemplateError> {
        let template = self.env.get_template("chat").map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let token = |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        let messages: Vec<serde_json::Value> = messages.iter().map(ChatMessage::template_value).collect();
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(&messages)),
            tools => Value::from(minijinja::value::Serde(tools)),
            add_generation_prompt => add_generation_prompt,
            bos_token => token(&special.bos),
            eos_token => token(&special.eos),
        };
        template.render(ctx).map_err(|e| TemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true, &SpecialTokens::default()).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_trim_blocks_work() {
        let src = "{% for m in messages %}\n  {{ m.content.strip().upper() }}|\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t.render(&[ChatMessage::new("user", "  a b ")], false, &SpecialTokens::default()).unwrap();
        assert_eq!(out, "  A B|\n");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let err = t.render(&[], false, &SpecialTokens::default()).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
        assert!(matches!(ChatTemplate::new("{% for %}"), Err(TemplateError::Syntax(_))));
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let t = ChatTemplate::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}").unwrap();
        assert!(matches!(t.render(&[], false, &SpecialTokens::default()), Err(TemplateError::Render(_))));
    }

    /// Qwen2.5-Coder's template (tools, parallel calls, tool answers) renders exactly as
    /// transformers renders it (`tests/data/chat-templates/README.md`).
    #[test]
    fn tool_conversations_render_as_transformers_renders_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat-templates");
        let source = std::fs::read_to_string(dir.join("qwen2.5-coder.jinja")).unwrap();
        let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tools-conversation.json")).unwrap()).unwrap();
        let expected = std::fs::read_to_string(dir.join("tools-conversation.qwen2.5-coder.txt")).unwrap();
        // As the API carries them: arguments are JSON text.
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap_or_default().into(),
                tool_calls: m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .map(|c| ToolCall {
                                id: c["id"].as_str().unwrap().into(),
                                name: c["function"]["name"].as_str().unwrap().into(),
                                arguments: c["function"]["arguments"].to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                tool_call_id: m["tool_call_id"].as_str().map(str::to_string),
                name: None,
            })
            .collect();
        let t = ChatTemplate::new(&source).unwrap();
        let special = SpecialTokens { eos: Some((0, "<|im_end|>".into())), ..SpecialTokens::default() };
        let out = t.render_with_tools(&messages, Some(case["tools"].as_array().unwrap()), true, &special).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let src = "{{ messages[0].content | tojson }}|{{ messages | tojson(indent=2) }}|{{ {'b': 1, 'a': [1.5, 'é<>&']} | tojson(sort_keys=true, ensure_ascii=true) }}|{{ [] | tojson(separators=[',', ':']) }}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t.render(&[ChatMessage::new("user", "say \"hi\"\n")], false, &SpecialTokens::default()).unwrap();
        // Python: json.dumps(x), json.dumps(x, indent=2), json.dumps(x, sort_keys=True, ensure_ascii=True).
        let expected = "\"say \\\"hi\\\"\\n\"|[\n  {\n    \"role\": \"user\",\n    \"content\": \"say \\\"hi\\\"\\n\"\n  }\n]|{\"a\": [1.5, \"\\u00e9<>&\"], \"b\": 1}|[]";
        assert_eq!(out, expected);
    }
}
