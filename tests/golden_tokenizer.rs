//! The tokenizer built from the GGUF metadata against the goldens: ids of tricky strings,
//! decoding back, every prompt's ids, and the chat template's rendering.

mod common;

use ballast::chat_template::{ChatMessage, ChatTemplate};
use ballast::format::gguf::GgufFile;
use ballast::tokenizer::Tokenizer;
use common::*;

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(&model_path()).unwrap();
    Tokenizer::from_gguf(&file).unwrap()
}

#[test]
fn tricky_strings_encode_to_the_golden_ids_and_decode_back() {
    let tok = tokenizer();
    let golden = read_json(&data_dir().join("goldens/public/tokenization.json"));
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), expected, "encoding {text:?}");
        let decoded = tok.decode(&expected, false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "decoding {text:?}");
    }
}

#[test]
fn every_golden_prompt_encodes_to_its_prompt_ids() {
    let tok = tokenizer();
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    for case in golden["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt, true).unwrap(), ids(&case["prompt_ids"]), "case {}", case["id"]);
    }
}

#[test]
fn chat_cases_render_through_the_model_template() {
    let tok = tokenizer();
    let template = ChatTemplate::new(tok.chat_template().expect("SmolLM2 has a chat template")).unwrap();
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    let mut num_chat = 0;
    for case in golden["cases"].as_array().unwrap() {
        let Some(messages) = case.get("messages").and_then(|m| m.as_array()) else { continue };
        let messages: Vec<ChatMessage> =
            messages.iter().map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
        let rendered = template.render(&messages, true, tok.special()).unwrap();
        assert_eq!(rendered, case["prompt"].as_str().unwrap(), "case {}", case["id"]);
        num_chat += 1;
    }
    assert!(num_chat >= 3, "the goldens have chat cases");
}

#[test]
fn special_tokens_and_bos_follow_the_gguf() {
    let tok = tokenizer();
    let s = tok.special();
    assert_eq!(s.eos.as_ref().map(|e| e.0), Some(2));
    assert!(!s.add_bos, "SmolLM2 adds no BOS");
    assert_eq!(tok.encode("<|im_start|>user", true).unwrap()[0], 1);
    assert_eq!(tok.vocab_size(), 49152);
}

#[test]
fn streaming_detokenization_never_splits_a_character() {
    use ballast::detok::Detokenizer;
    let tok = tokenizer();
    let golden = read_json(&data_dir().join("goldens/public/tokenization.json"));
    let mut num_multibyte = 0;
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ids(&case["ids"]);
        let mut detok = Detokenizer::new(false);
        let mut streamed = String::new();
        for &id in &ids {
            let delta = detok.push(&tok, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "{text:?}: partial character emitted");
            streamed.push_str(&delta);
        }
        streamed.push_str(&detok.flush(&tok).unwrap());
        assert_eq!(streamed, case["decoded"].as_str().unwrap(), "{text:?}");
        num_multibyte += text.chars().any(|c| c.len_utf8() > 1) as usize;
    }
    assert!(num_multibyte > 3, "the goldens exercise multi-byte characters");
}
