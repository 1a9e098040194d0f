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

/// Stop strings matched across token boundaries: text is released only once it can no longer
/// be the start of a stop string, and the stop string itself is never released.
#[derive(Debug, Default, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    /// Empty strings are ignored.
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds `delta`; returns the text now safe to emit and whether a stop string matched (the
    /// text after the match is dropped).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        self.held.push_str(delta);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        // Hold back the longest tail of `held` that begins some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(|(i, _)| &s[..i]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held-back text, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopStrings::new(&stops);
        let mut out = String::new();
        for d in deltas {
            let (text, stopped) = m.push(d);
            out += &text;
            if stopped {
                return (out, true);
            }
        }
        out += &m.flush();
        (out, false)
    }

    #[test]
    fn stops_match_across_deltas_and_are_never_emitted() {
        assert_eq!(run(&["END"], &["abc E", "N", "Dxyz"]), ("abc ".into(), true));
        assert_eq!(run(&["aab"], &["a", "a", "a", "b", "c"]), ("a".into(), true));
        assert_eq!(run(&["\n\n", "éé"], &["x\n", "y", "é", "é!"]), ("x\ny".into(), true));
        assert_eq!(run(&["END"], &["EN", "d"]), ("ENd".into(), false));
        assert_eq!(run(&["stop"], &["no match at all"]), ("no match at all".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn the_earliest_of_several_matches_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_only_what_could_still_become_a_stop() {
        let mut m = StopStrings::new(&["<|end|>".to_string()]);
        assert_eq!(m.push("hello <|"), ("hello ".into(), false));
        assert_eq!(m.push("en"), ("".into(), false));
        assert_eq!(m.push("x"), ("<|enx".into(), false));
    }
}
