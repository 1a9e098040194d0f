//! Tool calling on the wire: `tools`, `tool_choice` and `parallel_tool_calls` checked into
//! [`crate::tools::Tools`] (each problem a 400 naming its place), an assistant message's
//! `tool_calls`, and the calls of a reply as OpenAI writes them (`message.tool_calls`,
//! streamed `delta.tool_calls`).

use super::openai::ApiError;
use crate::tools::{Function, ToolCall, ToolChoice, Tools};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// OpenAI's limit on the tools of one request.
const MAX_TOOLS: usize = 128;

fn bad(param: &str, message: String) -> ApiError {
    ApiError::bad_request(param, message)
}

pub(super) fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The request's tools (`None`: none offered, or `tool_choice` `none` with none given).
pub(super) fn tools(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad("parallel_tool_calls", format!("parallel_tool_calls must be a boolean, got {other}"))),
    };
    let functions = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() > MAX_TOOLS => {
            return Err(bad("tools", format!("at most {MAX_TOOLS} tools, got {}", list.len())));
        }
        Some(Value::Array(list)) => list.iter().enumerate().map(|(i, t)| tool(t, &format!("tools[{i}]"))).collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("tools", format!("tools must be an array of tools, got {other}"))),
    };
    let choice = tool_choice(choice)?;
    if functions.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(bad("tool_choice", "tool_choice asks for a tool call, and no tools are given".into())),
        };
    }
    Ok(Some(Tools { functions, choice, parallel }))
}

fn tool(t: &Value, at: &str) -> Result<Function, ApiError> {
    let Value::Object(map) = t else { return Err(bad(at, format!("{at} must be an object")))? };
    if let Some(k) = map.keys().find(|k| *k != "type" && *k != "function") {
        return Err(bad(&format!("{at}.{k}"), format!("{at}.{k} is not a field of a tool")));
    }
    match map.get("type") {
        Some(Value::String(t)) if t == "function" => {}
        Some(other) => {
            return Err(bad(&format!("{at}.type"), format!("{at}.type must be \"function\" (the only kind of tool), got {other}")));
        }
        None => return Err(bad(&format!("{at}.type"), format!("{at}.type is missing (\"function\")"))),
    }
    let at = format!("{at}.function");
    let Some(Value::Object(f)) = map.get("function") else {
        return Err(bad(&at, format!("{at} must be an object with a name")));
    };
    if let Some(k) = f.keys().find(|k| !["name", "description", "parameters", "strict"].contains(&k.as_str())) {
        return Err(bad(&format!("{at}.{k}"), format!("{at}.{k} is not a field of a function")));
    }
    let name = match f.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(other) => return Err(bad(&format!("{at}.name"), format!("{at}.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {other}"))),
        None => return Err(bad(&format!("{at}.name"), format!("{at}.name is missing"))),
    };
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(other) => return Err(bad(&format!("{at}.description"), format!("{at}.description must be a string, got {other}"))),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(other) => {
            return Err(bad(&format!("{at}.parameters"), format!("{at}.parameters must be a JSON Schema object, got {other}")));
        }
    };
    let strict = match f.get("strict") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(bad(&format!("{at}.strict"), format!("{at}.strict must be a boolean, got {other}"))),
    };
    Ok(Function { name, description, parameters, strict })
}

fn tool_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    let usage = "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}";
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad("tool_choice", format!("{usage}, got {s:?}"))),
        },
        Some(Value::Object(o)) => match (o.get("type").and_then(Value::as_str), o.get("function").and_then(|f| f.get("name"))) {
            (Some("function"), Some(Value::String(name))) if valid_name(name) => ToolChoice::Function(name.clone()),
            _ => return Err(bad("tool_choice", format!("{usage}, got {}", Value::Object(o.clone())))),
        },
        Some(other) => return Err(bad("tool_choice", format!("{usage}, got {other}"))),
    })
}

/// An assistant message's `tool_calls` (at `at`).
pub(super) fn message_calls(v: &Value, at: &str) -> Result<Vec<ToolCall>, ApiError> {
    let Value::Array(list) = v else { return Err(bad(at, format!("{at} must be an array of tool calls")))? };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("{at}[{i}]");
            let str_field = |v: Option<&Value>, place: &str| match v {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(&format!("{at}.{place}"), format!("{at}.{place} must be a string, got {other}"))),
                None => Err(bad(&format!("{at}.{place}"), format!("{at}.{place} is missing"))),
            };
            let id = str_field(c.get("id"), "id")?;
            if c.get("type").is_some_and(|t| t != "function") {
                return Err(bad(&format!("{at}.type"), format!("{at}.type must be \"function\"")));
            }
            let f = c.get("function");
            let name = str_field(f.and_then(|f| f.get("name")), "function.name")?;
            let arguments = str_field(f.and_then(|f| f.get("arguments")), "function.arguments")?;
            Ok(ToolCall { id, name, arguments })
        })
        .collect()
}

/// A call's id: `call_` and 24 hex digits, from the response id and the call's place (the
/// same reply replayed gets the same ids; different responses never share one).
pub(super) fn call_id(response_id: &str, choice: usize, call: usize) -> String {
    let digest = Sha256::digest(format!("{response_id}/{choice}/{call}").as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("call_{hex}")
}

/// A call as `message.tool_calls[k]` (and, with `index`, as a streamed `delta.tool_calls`
/// entry, given whole).
pub(super) fn call_json(call: &ToolCall, index: Option<usize>) -> Value {
    let mut v = json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}});
    if let Some(k) = index {
        v["index"] = k.into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_checked_field_by_field() {
        let weather = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}});
        let t = tools(Some(&json!([weather])), Some(&json!("required")), Some(&json!(false))).unwrap().unwrap();
        assert_eq!((t.functions[0].name.as_str(), t.choice.clone(), t.parallel), ("get_weather", ToolChoice::Required, false));
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(tools(Some(&json!([weather])), Some(&named), None).unwrap().unwrap().choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(tools(None, Some(&json!("auto")), None).unwrap(), None);
        let cases = [
            (json!([{"type": "retrieval"}]), json!(null), "tools[0].type"),
            (json!([{"type": "function", "function": {"name": "a b"}}]), json!(null), "tools[0].function.name"),
            (json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]), json!(null), "tools[0].function.parameters"),
            (json!([{"type": "function", "function": {"name": "f", "params": {}}}]), json!(null), "tools[0].function.params"),
            (json!({"type": "function"}), json!(null), "tools"),
            (json!([weather]), json!("always"), "tool_choice"),
            (json!([]), json!("required"), "tool_choice"),
        ];
        for (t, c, param) in cases {
            let e = tools(Some(&t), Some(&c), None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
        }
        let many: Vec<Value> = (0..129).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect();
        assert_eq!(tools(Some(&Value::Array(many)), None, None).unwrap_err().param.as_deref(), Some("tools"));
    }

    #[test]
    fn call_ids_are_unique_per_place_and_stable() {
        assert_eq!(call_id("chatcmpl-1", 0, 0), call_id("chatcmpl-1", 0, 0));
        assert_ne!(call_id("chatcmpl-1", 0, 0), call_id("chatcmpl-1", 0, 1));
        assert_ne!(call_id("chatcmpl-1", 0, 0), call_id("chatcmpl-2", 0, 0));
        assert_eq!(call_id("x", 1, 2).len(), 29);
    }
}
