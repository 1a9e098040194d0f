//! Tool calling: the functions a request offers the model, how the model's chat template says
//! a call is written, the grammar that makes a required call always parse, and the parser that
//! turns the model's text back into calls (whole, or as it streams).
//!
//! The call format is read from the chat template, as the model was trained to write it:
//! - [`ToolFormat::Hermes`] (Qwen2.5, Hermes, many others): each call is
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, several in a row for parallel
//!   calls, possibly after some text;
//! - [`ToolFormat::Llama3Json`] (Llama 3.1/3.2/3.3): the whole reply is one
//!   `{"name": …, "parameters": {…}}` object.
//!
//! With `tool_choice` `auto` the model decides and its text is parsed afterwards (a malformed
//! call stays text); with `required` or a named function the output is constrained to calls of
//! the offered functions with arguments matching their schemas, so it always parses.

use crate::constraint::Constraint;
use serde_json::{Value, json};

/// One function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments object (`None`: no arguments).
    pub parameters: Option<Value>,
    /// OpenAI's strict flag (passed to the template; calls are constrained to the schema
    /// either way when they are required).
    pub strict: Option<bool>,
}

impl Function {
    /// The tool as the chat template sees it: OpenAI's `{"type": "function", "function": …}`.
    pub fn template_value(&self) -> Value {
        let mut f = serde_json::Map::new();
        f.insert("name".into(), self.name.clone().into());
        if let Some(d) = &self.description {
            f.insert("description".into(), d.clone().into());
        }
        if let Some(p) = &self.parameters {
            f.insert("parameters".into(), p.clone());
        }
        if let Some(s) = self.strict {
            f.insert("strict".into(), s.into());
        }
        json!({"type": "function", "function": f})
    }

    /// The arguments' schema: the given one, or an empty object.
    pub fn arguments_schema(&self) -> Value {
        self.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}, "additionalProperties": false}))
    }
}

/// Whether and which tools the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No call: the tools are left out of the prompt and the output is text.
    None,
    /// The model decides; its output is parsed for calls.
    #[default]
    Auto,
    /// At least one call, constrained to the tools' schemas.
    Required,
    /// Exactly one call of this function, constrained to its schema.
    Function(String),
}

/// The tools of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    /// Several calls in one reply (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl Tools {
    /// The tools the chat template is given (none when the choice is `none`).
    pub fn template_values(&self) -> Option<Vec<Value>> {
        (self.choice != ToolChoice::None && !self.functions.is_empty())
            .then(|| self.functions.iter().map(Function::template_value).collect())
    }
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// `call_…`, unique in its response (given by the server; empty from the parser).
    pub id: String,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// How a model writes its calls (from its chat template).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
}

impl ToolFormat {
    /// The format a chat template teaches, if it handles tools at all.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if template.contains("\"parameters\": dictionary of argument name") {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The constraint of a required or named call (`None` for `auto` and `none`). Building it
    /// for any choice checks the tools' schemas.
    pub fn constraint(self, tools: &Tools) -> Constraint {
        let offered: Vec<&Function> = match &tools.choice {
            ToolChoice::Function(name) => tools.functions.iter().filter(|f| &f.name == name).collect(),
            _ => tools.functions.iter().collect(),
        };
        let args_key = match self {
            ToolFormat::Hermes => "arguments",
            ToolFormat::Llama3Json => "parameters",
        };
        let alternatives: Vec<Value> = offered
            .iter()
            .map(|f| {
                let mut properties = serde_json::Map::new();
                properties.insert("name".into(), json!({"const": f.name}));
                properties.insert(args_key.into(), f.arguments_schema());
                json!({"type": "object", "properties": properties, "required": ["name", args_key], "additionalProperties": false})
            })
            .collect();
        let body = crate::constraint::with_layout(json!({"anyOf": alternatives}));
        let single = !tools.parallel || matches!(tools.choice, ToolChoice::Function(_));
        let grammar = match self {
            ToolFormat::Hermes => {
                let start = if single { "start: call" } else { "start: call (\"\\n\" call)*" };
                format!("{start}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {body}\n")
            }
            ToolFormat::Llama3Json => format!("start: body\nbody: %json {body}\n"),
        };
        Constraint::Lark(grammar)
    }

    /// A parser of this format's output, fed as it streams; `names`: the offered functions (a
    /// reply that is only a JSON object is a call only if it names one of them).
    pub fn parser(self, names: &[String]) -> CallParser {
        CallParser {
            format: self,
            names: names.to_vec(),
            buf: String::new(),
            in_call: false,
            after_call: false,
            calls: 0,
            undecided: true,
            json_reply: false,
        }
    }

    /// The whole of a reply: its text (outside the calls) and its calls.
    pub fn parse(self, text: &str, names: &[String]) -> (String, Vec<ToolCall>) {
        let mut p = self.parser(names);
        let mut pieces = p.push(text);
        pieces.extend(p.finish());
        Piece::join(pieces)
    }
}

/// What the parser releases: text for the client, or a whole call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

impl Piece {
    /// Released pieces as a reply's text and its calls.
    pub fn join(pieces: impl IntoIterator<Item = Piece>) -> (String, Vec<ToolCall>) {
        let mut content = String::new();
        let mut calls = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => content += &t,
                Piece::Call(c) => calls.push(c),
            }
        }
        (content, calls)
    }
}

/// How a reply that may be a bare call object starts (held until its end): the object, or
/// a fenced JSON block of it (Qwen2.5-Coder writes calls so when it drops the tags).
const BARE: [&str; 3] = ["{", "```json\n", "```\n{"];

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Splits a streamed reply into text and calls. Text is released as soon as it cannot be the
/// start of a call; a call is released whole when it closes (or at the end, if its JSON is
/// complete). Whitespace that only separates text from calls is dropped. A call that does not
/// parse is released as the text it was, so nothing the model wrote is lost.
///
/// Small Hermes-format models sometimes drop the tags and reply with the bare
/// `{"name": …, "arguments": …}` object, or with it in a fenced JSON block (as llama.cpp's
/// parser, we read both): a reply that starts so is held to its end, and is a call if it is
/// exactly such an object naming an offered function.
#[derive(Debug)]
pub struct CallParser {
    format: ToolFormat,
    /// The offered functions.
    names: Vec<String>,
    /// Text not yet released.
    buf: String,
    /// Inside `<tool_call>` (Hermes).
    in_call: bool,
    /// Just after a call: leading whitespace is dropped.
    after_call: bool,
    calls: usize,
    /// The reply's first non-space character is not seen yet.
    undecided: bool,
    /// The reply starts with `{`: held to the end.
    json_reply: bool,
}

impl CallParser {
    /// Calls released so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds `delta`; returns what can be released.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf += delta;
        self.released(false)
    }

    /// The end of the reply: releases everything held.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.released(true)
    }

    fn released(&mut self, end: bool) -> Vec<Piece> {
        if self.undecided {
            let t = self.buf.trim_start();
            if BARE.iter().any(|m| t.starts_with(m)) {
                self.undecided = false;
                self.json_reply = true;
            } else if !end && BARE.iter().any(|m| m.starts_with(t)) {
                return Vec::new();
            } else {
                self.undecided = false;
            }
        }
        if self.json_reply {
            if !end {
                return Vec::new();
            }
            self.json_reply = false;
            if let Some(calls) = self.bare_calls() {
                self.buf.clear();
                self.calls += calls.len();
                return calls.into_iter().map(Piece::Call).collect();
            }
        }
        match self.format {
            ToolFormat::Hermes => self.hermes(end),
            ToolFormat::Llama3Json => {
                let rest = std::mem::take(&mut self.buf);
                if rest.is_empty() { Vec::new() } else { vec![Piece::Text(rest)] }
            }
        }
    }

    /// The held reply as bare call objects (Llama 3: several separated by `;`), if it is
    /// exactly that and names offered functions.
    fn bare_calls(&self) -> Option<Vec<ToolCall>> {
        let key = match self.format {
            ToolFormat::Hermes => "arguments",
            ToolFormat::Llama3Json => "parameters",
        };
        let one = |s: &str| parse_bare(s, key).filter(|c| self.names.contains(&c.name));
        let body = self.buf.trim();
        // A fenced block: its first line (the fence and its language) and the closing fence.
        let body = match body.strip_prefix("```").and_then(|b| b.strip_suffix("```")) {
            Some(inner) => inner.split_once('\n').map_or("", |(_, rest)| rest),
            None => body,
        };
        if let Some(c) = one(body) {
            return Some(vec![c]);
        }
        match self.format {
            ToolFormat::Llama3Json => body.split(';').map(one).collect(),
            ToolFormat::Hermes => None,
        }
    }

    fn text(&mut self, out: &mut Vec<Piece>, t: &str) {
        let t = if self.after_call { t.trim_start() } else { t };
        if !t.is_empty() {
            self.after_call = false;
            out.push(Piece::Text(t.to_string()));
        }
    }

    fn call(&mut self, out: &mut Vec<Piece>, body: &str, raw: &str) {
        match parse_call(body, "arguments") {
            Some(c) => {
                self.calls += 1;
                self.after_call = true;
                out.push(Piece::Call(c));
            }
            None => {
                self.after_call = false;
                out.push(Piece::Text(raw.to_string()));
            }
        }
    }

    fn hermes(&mut self, end: bool) -> Vec<Piece> {
        let mut out = Vec::new();
        loop {
            if self.in_call {
                if let Some(pos) = self.buf.find(CLOSE) {
                    let raw: String = self.buf.drain(..pos + CLOSE.len()).collect();
                    self.in_call = false;
                    self.call(&mut out, &raw[..pos], &format!("{OPEN}{raw}"));
                    continue;
                }
                if end {
                    // Cut short (its length, or a model that skips the closing tag).
                    let raw = std::mem::take(&mut self.buf);
                    self.in_call = false;
                    self.call(&mut out, &raw, &format!("{OPEN}{raw}"));
                }
                return out;
            }
            if let Some(pos) = self.buf.find(OPEN) {
                let before: String = self.buf.drain(..pos + OPEN.len()).collect();
                let before = before[..pos].trim_end().to_string();
                self.text(&mut out, &before);
                self.in_call = true;
                continue;
            }
            // Hold trailing whitespace and whatever could still become `<tool_call>`.
            let keep = if end { self.buf.len() } else { held_from(&self.buf) };
            let release: String = self.buf.drain(..keep).collect();
            self.text(&mut out, &release);
            if end {
                // Trailing whitespace after the last call is dropped by `text`.
                let rest = std::mem::take(&mut self.buf);
                self.text(&mut out, &rest);
            }
            return out;
        }
    }
}

/// Where `buf`'s held tail starts: trailing whitespace, then a proper prefix of `<tool_call>`.
fn held_from(buf: &str) -> usize {
    let mut cut = buf.len();
    if let Some(lt) = buf.rfind('<')
        && OPEN.starts_with(&buf[lt..])
    {
        cut = lt;
    }
    buf[..cut].trim_end().len()
}

/// A bare reply object: exactly `name` and `args_key` (or just `name`).
fn parse_bare(body: &str, args_key: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let obj = v.as_object()?;
    if obj.keys().any(|k| k != "name" && k != args_key) {
        return None;
    }
    parse_call(body, args_key)
}

/// `{"name": "…", "<args_key>": {…}}` (or `"arguments"` either way) as a call.
fn parse_call(body: &str, args_key: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    let args = obj.get(args_key).or_else(|| obj.get("arguments")).or_else(|| obj.get("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object()) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall { id: String::new(), name, arguments })
}

#[cfg(test)]
mod tests;
