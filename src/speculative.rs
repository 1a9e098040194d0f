//! Speculative decoding: a cheap drafter proposes the next few tokens of a decoding sequence,
//! and one step of the model computes them all after the sequence's own last token, as a
//! short chunk. Every one of those rows is then sampled in order with the request's own
//! sampler, and a drafted token is kept while the model chose it; the first row where the
//! model chose otherwise (or the row after the last draft) gives one more token of the model's
//! own. So a step yields between one and `1 + K` tokens for about the cost of reading the
//! weights once.
//!
//! Exactness. A drafter here proposes tokens deterministically (a point mass `q` on its
//! token); for such a draft the standard rejection rule (accept with `min(1, p/q)`, else draw
//! from the normalised residual `max(0, p - q)`) is the same as drawing from the model's `p`
//! and keeping the draft when the draw equals it. That is what the engine does, with the
//! request's own random stream, one draw per emitted token: with a batch-invariant backend
//! (the CPU backend; the GPU backend with `deterministic`) greedy and seeded output are the
//! same token for token with and without speculation.
//!
//! Under pressure it is the first thing to go: the engine withholds drafts from a sequence
//! while any sequence of its class or above waits, and from everyone while more than
//! [`SpeculativeConfig::disable_by_batch_size`] sequences decode (at high batch sizes the
//! rows cost compute the batch needs). Drafted rows come only from the step's prompt share,
//! never at another sequence's decode, and never preempt anything (see `scheduler/draft.rs`).

use crate::model::LoadedModel;

/// How the engine speculates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Tokens drafted per step at most (`K`).
    pub num_speculative_tokens: usize,
    /// Prompt lookup: the longest and shortest suffix of the context to look for earlier in
    /// it ([`ngram_draft`]).
    pub ngram_max: usize,
    pub ngram_min: usize,
    /// With more sequences decoding than this, nobody drafts.
    pub disable_by_batch_size: usize,
    /// A draft model's output matrix requantized to this type when that reads fewer bytes
    /// ([`lighten_draft_head`]); `None` keeps the file's.
    pub draft_head: Option<crate::quant::GgmlType>,
}

impl Default for SpeculativeConfig {
    fn default() -> Self {
        SpeculativeConfig { num_speculative_tokens: 4, ngram_max: 4, ngram_min: 2, disable_by_batch_size: 8, draft_head: None }
    }
}

impl SpeculativeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_speculative_tokens == 0 || self.num_speculative_tokens > 32 {
            return Err(format!("num_speculative_tokens must be 1 to 32 (got {})", self.num_speculative_tokens));
        }
        if self.ngram_min == 0 || self.ngram_min > self.ngram_max {
            return Err(format!("n-gram sizes must satisfy 1 <= min <= max (got {} and {})", self.ngram_min, self.ngram_max));
        }
        Ok(())
    }
}

/// Gives the draft model's weights an output matrix in `head` when that type takes fewer
/// bytes a row than the current one (the tied embedding stays as it is for the lookups).
/// Drafting one token reads every weight of the draft once, and a small model's output
/// matrix is a large share of them (Qwen2.5-Coder-0.5B: its 136M-element Q8_0 embedding,
/// 37% of the bytes a token). Draft tokens are only proposals the model verifies, so this
/// moves the acceptance rate, never the output. Returns the bytes saved a drafted token.
pub fn lighten_draft_head(
    weights: &mut crate::model::weights::HostWeights,
    head: crate::quant::GgmlType,
    threads: usize,
) -> Result<usize, String> {
    let out = weights.output();
    let (old, new) = (out.row_bytes(), head.row_bytes(out.cols as u64).unwrap_or(u64::MAX) as usize);
    if new >= old || out.dtype == head {
        return Ok(0);
    }
    let (lighter, rows) = (out.requantized(head, threads)?, out.rows);
    weights.lm_head = Some(lighter);
    Ok((old - new) * rows)
}

/// Prompt lookup: the tokens that followed the most recent earlier occurrence of the
/// context's last `n` tokens, for the largest `n` from `max_n` down to `min_n` that occurs,
/// at most `k` of them (empty: no match). Editing, summarising or answering about a given
/// text repeats it, so its continuation is a good guess.
pub fn ngram_draft(context: &[u32], min_n: usize, max_n: usize, k: usize) -> &[u32] {
    let len = context.len();
    if k == 0 {
        return &[];
    }
    for n in (min_n.max(1)..=max_n).rev() {
        if n >= len {
            continue;
        }
        let suffix = &context[len - n..];
        // Latest start `s < len - n` with context[s..s + n] == suffix.
        if let Some(s) = (0..len - n).rev().find(|&s| &context[s..s + n] == suffix) {
            let from = s + n;
            return &context[from..(from + k).min(len)];
        }
    }
    &[]
}

/// A draft model proposes token ids for the target: both must read ids the same way.
pub(crate) fn check_draft_model(target: &LoadedModel, draft: &LoadedModel) -> Result<(), String> {
    let (t, d) = match (&target.tokenizer, &draft.tokenizer) {
        (Some(t), Some(d)) => (t, d),
        _ => return Err("a draft model needs both models' tokenizers, to check that they match".into()),
    };
    if t.vocab_size() != d.vocab_size() {
        return Err(format!("the draft model's tokenizer has {} tokens, the model's {}: they must match", d.vocab_size(), t.vocab_size()));
    }
    if let Some(id) = (0..t.vocab_size() as u32).find(|&id| t.id_to_token(id) != d.id_to_token(id)) {
        return Err(format!(
            "the draft model's tokenizer differs from the model's: token {id} is {:?} there and {:?} here",
            d.id_to_token(id),
            t.id_to_token(id)
        ));
    }
    // (A smaller embedding table than the model's is allowed, as Qwen2.5's 0.5B for its 7B:
    // sequences holding ids past it are not drafted for.)
    if draft.config.vocab_size > target.config.vocab_size || draft.config.vocab_size < t.vocab_size() {
        return Err(format!(
            "the draft model's vocabulary ({}) must cover the tokenizer's {} tokens and not exceed the model's {}",
            draft.config.vocab_size,
            t.vocab_size(),
            target.config.vocab_size
        ));
    }
    Ok(())
}

/// Drafting counters of one class (see [`crate::engine::Metrics::speculative`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecCounts {
    /// Tokens drafted and verified by the model.
    pub drafted: u64,
    /// Of those, tokens the model chose (emitted without a step of their own).
    pub accepted: u64,
    /// Steps in which a sequence decoded without a draft it would have had, because of load.
    pub withheld: u64,
}

impl std::iter::Sum<SpecCounts> for SpecCounts {
    fn sum<I: Iterator<Item = SpecCounts>>(iter: I) -> SpecCounts {
        iter.fold(SpecCounts::default(), |a, c| SpecCounts {
            drafted: a.drafted + c.drafted,
            accepted: a.accepted + c.accepted,
            withheld: a.withheld + c.withheld,
        })
    }
}

impl SpecCounts {
    /// Accepted over drafted tokens (0 before any draft).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 { 0.0 } else { self.accepted as f64 / self.drafted as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: every start, every `n`, compared one by one.
    fn reference(context: &[u32], min_n: usize, max_n: usize, k: usize) -> Vec<u32> {
        for n in (min_n..=max_n).rev() {
            if n >= context.len() {
                continue;
            }
            let suffix = context[context.len() - n..].to_vec();
            let mut last = None;
            for s in 0..context.len() - n {
                if context[s..s + n].to_vec() == suffix {
                    last = Some(s);
                }
            }
            if let Some(s) = last {
                return context[s + n..].iter().take(k).copied().collect();
            }
        }
        Vec::new()
    }

    #[test]
    fn proposes_the_continuation_of_the_latest_match() {
        let c = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3];
        assert_eq!(ngram_draft(&c, 2, 3, 4), &[7, 8, 5, 1]);
        assert_eq!(ngram_draft(&c, 2, 3, 1), &[7]);
        // Only the tokens that exist after the match.
        assert_eq!(ngram_draft(&[4, 5, 4, 5], 2, 2, 8), &[4, 5]);
        assert!(ngram_draft(&[1, 2, 3, 4], 1, 3, 4).is_empty(), "nothing repeats");
        assert!(ngram_draft(&[1, 1], 1, 1, 0).is_empty());
        assert!(ngram_draft(&[], 1, 4, 4).is_empty());
    }

    #[test]
    fn matches_the_reference_on_random_contexts() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..2000 {
            let len = next(40) as usize;
            let vocab = 1 + next(5);
            let context: Vec<u32> = (0..len).map(|_| next(vocab) as u32).collect();
            let min_n = 1 + next(3) as usize;
            let max_n = min_n + next(3) as usize;
            let k = next(6) as usize;
            assert_eq!(ngram_draft(&context, min_n, max_n, k), reference(&context, min_n, max_n, k), "{context:?} {min_n} {max_n} {k}");
        }
    }

    #[test]
    fn bad_configurations_are_named() {
        assert!(SpeculativeConfig::default().validate().is_ok());
        let bad = [
            SpeculativeConfig { num_speculative_tokens: 0, ..Default::default() },
            SpeculativeConfig { ngram_min: 0, ..Default::default() },
            SpeculativeConfig { ngram_min: 5, ngram_max: 3, ..Default::default() },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
