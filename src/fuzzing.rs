//! Fuzz-target bodies, shared by `fuzz/` (cargo-fuzz, nightly, long runs) and
//! `tests/fuzz_smoke.rs` (stable, a bounded run over the checked-in corpus in CI). Each takes
//! arbitrary bytes and must return without panicking, hanging or allocating without bound;
//! errors are the expected outcome for most inputs.

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::detok::{Detokenizer, StopStrings};
use crate::format::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// GGUF parsing, every tensor's bytes, and the tokenizer built from the metadata.
pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else { return };
    for t in file.tensors() {
        let _ = file.tensor_data(t);
    }
    let _ = Tokenizer::from_gguf(&file);
}

/// An HF `config.json` into a validated model configuration.
pub fn hf_config(data: &[u8]) {
    let _ = crate::model::config_from_json(data);
}

/// A safetensors header (what `load_hf` maps shards with).
pub fn safetensors_header(data: &[u8]) {
    if let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(data) {
        for (name, info) in meta.tensors() {
            std::hint::black_box((name, info.shape.len()));
        }
    }
    let _ = safetensors::SafeTensors::deserialize(data);
}

/// Encoding arbitrary text, decoding arbitrary ids (in and out of range), streaming
/// detokenization and stop strings over them.
pub fn tokenizer(tok: &Tokenizer, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = tok.encode(&text, true);
    let vocab = tok.vocab_size() as u32;
    let ids: Vec<u32> = data.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32 % (vocab + 8)).collect();
    let _ = tok.decode(&ids, false);
    let mut detok = Detokenizer::new(data.first().is_some_and(|b| b & 1 == 1));
    let stops = [text.chars().take(3).collect::<String>()];
    let mut stop = StopStrings::new(&stops);
    for &id in ids.iter().filter(|&&id| id < vocab).take(64) {
        if let Ok(delta) = detok.push(tok, id) {
            stop.push(&delta);
        }
    }
    let _ = detok.flush(tok);
    stop.flush();
}

/// A completions or chat request body through the server's validation.
pub fn request_json(data: &[u8]) {
    let completion = data.first().is_some_and(|b| b & 1 == 0);
    let _ = crate::server::validate_body(data, completion);
}

/// A hostile template and messages: split at the first NUL (template, then messages as JSON
/// or as one user message). Rendering is bounded by fuel and recursion limits.
pub fn chat_template(data: &[u8]) {
    let (source, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(template) = ChatTemplate::new(&String::from_utf8_lossy(source)) else { return };
    let messages: Vec<ChatMessage> =
        serde_json::from_slice(rest).unwrap_or_else(|_| vec![ChatMessage::new("user", &String::from_utf8_lossy(rest))]);
    let _ = template.render(&messages, true, &Default::default());
}

/// A constraint through the compiler and a few steps of its matcher: the bytes as a JSON
/// schema (when they parse as JSON) or as a regular expression (first byte odd), against the
/// default model's vocabulary. Must return an error or a matcher, never panic or hang.
pub fn json_schema(grammars: &crate::constraint::Grammars, data: &[u8]) {
    use crate::constraint::Constraint;
    let constraint = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) if data.first().is_some_and(|b| b & 1 == 0) => Constraint::JsonSchema(v),
        _ => Constraint::Regex(String::from_utf8_lossy(data).into_owned()),
    };
    if let Ok(mut m) = grammars.compile(&constraint) {
        let mut logits = vec![0.0f32; 64];
        for _ in 0..4 {
            if m.is_stopped() || crate::constraint::mask(&mut m, &mut logits).is_err() {
                break;
            }
            let Some(t) = logits.iter().position(|x| x.is_finite()) else { break };
            if m.consume_token(t as u32).is_err() {
                break;
            }
        }
    }
}

/// A model's reply through the tool-call parser (format by the first byte), whole and streamed
/// in pieces cut where the bytes say: both must give the same text and calls, and every call
/// must carry a JSON object as its arguments.
pub fn tool_calls(data: &[u8]) {
    use crate::tools::{Piece, ToolFormat};
    let format = if data.first().is_some_and(|b| b & 1 == 1) { ToolFormat::Llama3Json } else { ToolFormat::Hermes };
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default()).into_owned();
    let names = ["f".to_string(), "get_weather".to_string()];
    let whole = format.parse(&text, &names);
    let mut parser = format.parser(&names);
    let mut pieces = Vec::new();
    let mut rest = text.as_str();
    let mut cuts = data.iter().cycle();
    while !rest.is_empty() {
        let mut cut = (*cuts.next().expect("non-empty") as usize % 7 + 1).min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        pieces.extend(parser.push(&rest[..cut]));
        rest = &rest[cut..];
    }
    pieces.extend(parser.finish());
    assert_eq!(whole, Piece::join(pieces), "a streamed reply reads as the whole one");
    for c in &whole.1 {
        assert!(serde_json::from_str::<serde_json::Value>(&c.arguments).is_ok_and(|v| v.is_object()), "{c:?}");
    }
}
