//! Incremental detokenization: turns a growing list of token ids into text deltas that never
//! split a UTF-8 character.
//!
//! Decoding token by token is wrong for byte-level vocabularies (one character can span
//! several tokens) and for decoders that look at neighbours (SentencePiece's leading space).
//! So each step decodes a short window twice — the tokens already emitted since the window
//! start, and the same plus the new ones — and emits the difference, holding it back while it
//! ends in an incomplete character (U+FFFD).

use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix_offset: usize,
    /// End of the tokens whose text has been emitted.
    read_offset: usize,
    skip_special: bool,
}

impl Detokenizer {
    pub fn new(skip_special: bool) -> Detokenizer {
        Detokenizer { skip_special, ..Default::default() }
    }

    /// Adds `id`; returns the text it completes (often empty, never a partial character).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let window = &self.ids[self.prefix_offset..];
        let prefix = tok.decode(&window[..self.read_offset - self.prefix_offset], self.skip_special)?;
        let text = tok.decode(window, self.skip_special)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match text.strip_prefix(prefix.as_str()) {
            Some(delta) if !delta.is_empty() => {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(delta)
            }
            _ => Ok(String::new()),
        }
    }

    /// Text held back at the end of generation (an incomplete character decodes as U+FFFD).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let window = &self.ids[self.prefix_offset..];
        let prefix = tok.decode(&window[..self.read_offset - self.prefix_offset], self.skip_special)?;
        let text = tok.decode(window, self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(text.strip_prefix(prefix.as_str()).unwrap_or("").to_string())
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
