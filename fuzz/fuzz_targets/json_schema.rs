#![no_main]
use std::sync::OnceLock;

/// The constraint compiler of the default model's vocabulary (`$BALLAST_TEST_MODEL`, else
/// models/ in the checkout).
fn grammars() -> &'static ballast::constraint::Grammars {
    static G: OnceLock<ballast::constraint::Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let path = std::env::var_os("BALLAST_TEST_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf").into());
        let file = ballast::format::gguf::GgufFile::open(&path).expect("the default model (run models/fetch)");
        let tok = ballast::tokenizer::Tokenizer::from_gguf(&file).expect("its tokenizer");
        let eos = [tok.special().eos.as_ref().expect("an EOS token").0];
        ballast::constraint::Grammars::new(&tok, tok.vocab_size(), &eos).expect("the vocabulary")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| ballast::fuzzing::json_schema(grammars(), data));
