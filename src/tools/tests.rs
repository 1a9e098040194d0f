use super::*;

fn names() -> Vec<String> {
    vec!["f".into(), "g".into()]
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: String::new(), name: name.into(), arguments: arguments.into() }
}

/// Feeds `text` in pieces of `step` bytes (at char boundaries) and joins what comes out.
fn streamed(format: ToolFormat, text: &str, step: usize) -> (String, Vec<ToolCall>) {
    let mut p = format.parser(&names());
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = step.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        pieces.extend(p.push(&rest[..cut]));
        rest = &rest[cut..];
    }
    pieces.extend(p.finish());
    Piece::join(pieces)
}

#[test]
fn formats_are_read_from_templates() {
    assert_eq!(ToolFormat::detect("{{- '\\n<tool_call>\\n{\"name\": \"' }}"), Some(ToolFormat::Hermes));
    let llama = "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}";
    assert_eq!(ToolFormat::detect(llama), Some(ToolFormat::Llama3Json));
    assert_eq!(ToolFormat::detect("{% for m in messages %}{{ m.content }}{% endfor %}"), None);
}

#[test]
fn hermes_replies_split_into_text_and_calls() {
    let cases: Vec<(&str, &str, Vec<ToolCall>)> = vec![
        ("Just text, a < b and <tool.", "Just text, a < b and <tool.", vec![]),
        ("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>", "", vec![call("f", "{\"x\":1}")]),
        (
            "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {\"s\": \"<tool_call>?\"}}\n</tool_call>\n",
            "Let me check.",
            vec![call("f", "{}"), call("g", "{\"s\":\"<tool_call>?\"}")],
        ),
        // Arguments given as a JSON string, and a call whose closing tag never came.
        ("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 2}\"}", "", vec![call("f", "{\"a\": 2}")]),
        // Malformed calls stay text, whole.
        ("<tool_call>\n{\"name\": \"f\", \"argu</tool_call>", "<tool_call>\n{\"name\": \"f\", \"argu</tool_call>", vec![]),
        ("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": ", "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": ", vec![]),
        ("<tool_call>[1, 2]</tool_call> after", "<tool_call>[1, 2]</tool_call> after", vec![]),
        // Bare call objects (tags dropped) naming an offered function, and objects that are not.
        (" {\"name\": \"g\", \"arguments\": {\"x\": [1]}}\n", "", vec![call("g", "{\"x\":[1]}")]),
        ("{\"name\": \"h\", \"arguments\": {}}", "{\"name\": \"h\", \"arguments\": {}}", vec![]),
        ("{\"name\": \"f\", \"arguments\": {}, \"id\": 1}", "{\"name\": \"f\", \"arguments\": {}, \"id\": 1}", vec![]),
        ("```json\n{\n  \"name\": \"f\",\n  \"arguments\": {\"u\": \"c\"}\n}\n```", "", vec![call("f", "{\"u\":\"c\"}")]),
        ("```json\n[1]\n```", "```json\n[1]\n```", vec![]),
        ("```python\nprint(1)\n```", "```python\nprint(1)\n```", vec![]),
        ("{\"a\": 1}\n<tool_call>{\"name\": \"f\"}</tool_call>", "{\"a\": 1}", vec![call("f", "{}")]),
    ];
    for (text, content, calls) in cases {
        assert_eq!(ToolFormat::Hermes.parse(text, &names()), (content.to_string(), calls.clone()), "{text:?}");
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(streamed(ToolFormat::Hermes, text, step), (content.to_string(), calls.clone()), "{text:?} in steps of {step}");
        }
    }
}

#[test]
fn streamed_text_is_released_as_soon_as_it_cannot_start_a_call() {
    let mut p = ToolFormat::Hermes.parser(&names());
    assert_eq!(p.push("Hello wor"), vec![Piece::Text("Hello wor".into())]);
    assert_eq!(p.push("ld <tool"), vec![Piece::Text("ld".into())]);
    assert_eq!(p.push("s> here"), vec![Piece::Text(" <tools> here".into())]);
    assert_eq!(p.push("\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}"), vec![]);
    assert_eq!(p.push("\n</tool_call>"), vec![Piece::Call(call("f", "{}"))]);
    assert_eq!(p.push("\n"), vec![]);
    assert_eq!(p.finish(), vec![]);
    assert_eq!(p.calls(), 1);
}

#[test]
fn llama3_replies_are_one_json_object() {
    let cases: Vec<(&str, &str, Vec<ToolCall>)> = vec![
        ("{\"name\": \"f\", \"parameters\": {\"q\": \"a; b\"}}", "", vec![call("f", "{\"q\":\"a; b\"}")]),
        ("{\"name\": \"f\", \"parameters\": {}}; {\"name\": \"g\", \"parameters\": {}}", "", vec![call("f", "{}"), call("g", "{}")]),
        ("The answer is 4.", "The answer is 4.", vec![]),
        ("{not a call", "{not a call", vec![]),
    ];
    for (text, content, calls) in cases {
        for step in [1, 5, 100] {
            assert_eq!(streamed(ToolFormat::Llama3Json, text, step), (content.to_string(), calls.clone()), "{text:?}");
        }
    }
}

#[test]
fn required_calls_become_a_grammar_over_the_offered_functions() {
    let f = |name: &str| Function { name: name.into(), description: None, parameters: None, strict: None };
    let mut tools = Tools { functions: vec![f("a"), f("b")], choice: ToolChoice::Required, parallel: true };
    let Constraint::Lark(g) = ToolFormat::Hermes.constraint(&tools) else { panic!() };
    assert!(g.starts_with("start: call (\"\\n\" call)*\n") && g.contains("\"const\":\"a\"") && g.contains("\"const\":\"b\""), "{g}");
    tools.choice = ToolChoice::Function("b".into());
    let Constraint::Lark(g) = ToolFormat::Hermes.constraint(&tools) else { panic!() };
    assert!(g.starts_with("start: call\n") && !g.contains("\"const\":\"a\"") && g.contains("\"const\":\"b\""), "{g}");
    let Constraint::Lark(g) = ToolFormat::Llama3Json.constraint(&tools) else { panic!() };
    assert!(g.contains("\"parameters\"") && !g.contains("<tool_call>"), "{g}");
    tools.choice = ToolChoice::None;
    assert_eq!(tools.template_values(), None);
    tools.choice = ToolChoice::Auto;
    assert_eq!(tools.template_values().unwrap()[1], json!({"type": "function", "function": {"name": "b"}}));
}
