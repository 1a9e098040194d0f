#![no_main]
use std::sync::OnceLock;

/// The default model's tokenizer (`$BALLAST_TEST_MODEL`, else models/ in the checkout).
fn tokenizer() -> &'static ballast::tokenizer::Tokenizer {
    static TOK: OnceLock<ballast::tokenizer::Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = std::env::var_os("BALLAST_TEST_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf").into());
        let file = ballast::format::gguf::GgufFile::open(&path).expect("the default model (run models/fetch)");
        ballast::tokenizer::Tokenizer::from_gguf(&file).expect("its tokenizer")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| ballast::fuzzing::tokenizer(tokenizer(), data));
