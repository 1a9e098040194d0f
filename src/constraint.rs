//! Constrained decoding: a request may require its output to match a JSON schema, be any
//! JSON object, match a regular expression or a Lark grammar. The constraint engine is
//! `llguidance` (the one llama.cpp, vLLM and SGLang use) over a token trie of our own
//! tokenizer's vocabulary.
//!
//! A constraint is compiled once, when the request is prepared (an invalid, unsupported or
//! too large one is an error then, before anything is queued), into a [`Matcher`] that the
//! engine keeps beside the choice: before each sampled token it computes the set of allowed
//! tokens (the others' logits become −∞), and after it consumes the chosen one. When the
//! grammar is complete the choice stops. Unconstrained rows pay nothing; a constrained row
//! never takes the backend's greedy shortcut, since its logits must be masked.

use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

/// What a request's output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON Schema (draft 2020-12; `$ref`/`$defs`, `anyOf`, enums, patterns, item counts…).
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
    /// A regular expression (the whole output).
    Regex(String),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConstraintError {
    #[error("constrained decoding needs the model's tokenizer")]
    NoTokenizer,
    #[error("the tokenizer's vocabulary cannot be read for constrained decoding: {0}")]
    Vocabulary(String),
    #[error("{0}")]
    Grammar(String),
}

/// Compiles constraints for one model's vocabulary (built once, shared by every request).
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

impl Grammars {
    /// The token trie of `tokenizer` (`vocab_size`: the width of the model's logits) with its
    /// end-of-sequence ids.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize, eos: &[u32]) -> Result<Grammars, ConstraintError> {
        let json = tokenizer.inner().to_string(false).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        // The logits may be wider than the vocabulary: the padding ids are never allowed.
        for i in words.len()..vocab_size {
            words.push(format!("\u{ff}<[{i}]>").into_bytes());
        }
        words.truncate(vocab_size.max(1));
        let first_eos = eos.first().copied().ok_or_else(|| ConstraintError::Vocabulary("no end-of-sequence token".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, first_eos), &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// The matcher of one choice; an invalid or unsupported constraint is an error naming why.
    pub fn compile(&self, c: &Constraint) -> Result<Matcher, ConstraintError> {
        let grammar = match c {
            Constraint::JsonSchema(schema) => {
                if !schema.is_object() {
                    return Err(ConstraintError::Grammar("a JSON schema must be an object".into()));
                }
                if schema.to_string().len() > 256 << 10 {
                    return Err(ConstraintError::Grammar("the JSON schema is larger than 256 KiB".into()));
                }
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(with_layout(serde_json::json!({"type": "object"}))),
            Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(ConstraintError::Grammar(e)),
            None => Ok(matcher),
        }
    }
}

/// JSON laid out as `json.dumps` does (`", "` and `": "`, no other whitespace) unless the
/// schema sets its own `x-guidance` options: with free whitespace a sampling model can pad an
/// object with newlines until it runs out of tokens.
pub(crate) fn with_layout(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut()
        && !o.contains_key("x-guidance")
    {
        o.insert("x-guidance".into(), serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// Sets the logits of the tokens `matcher` does not allow now to −∞. `Err`: the matcher
/// failed (a reason to end the choice).
pub fn mask(matcher: &mut Matcher, logits: &mut [f32]) -> Result<(), String> {
    let allowed = matcher.compute_mask().map_err(|e| e.to_string())?;
    apply_mask(&allowed, logits);
    Ok(())
}

/// Sets the logits of the tokens `allowed` leaves out to −∞.
pub fn apply_mask(allowed: &llguidance::toktrie::SimpleVob, logits: &mut [f32]) {
    let n = allowed.len().min(logits.len());
    for (i, x) in logits[..n].iter_mut().enumerate() {
        if !allowed.is_allowed(i as u32) {
            *x = f32::NEG_INFINITY;
        }
    }
    for x in &mut logits[n..] {
        *x = f32::NEG_INFINITY;
    }
}
