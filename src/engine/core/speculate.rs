//! Drafts for the next step ([`crate::speculative`]): proposed before the scheduler plans it
//! (by prompt lookup; a draft model's only as placeholders, filled in `draft_model.rs` once
//! the rows are granted), verified by `emit.rs` once the step has run.

use super::Core;
use crate::backend::Backend;
use std::time::Instant;

impl<B: Backend> Core<B> {
    /// Proposes a draft to every decoding sequence that may have one now: none while more
    /// sequences decode than the configuration allows, or while a sequence of its class or
    /// above waits (counted as withheld); none for a choice that still forks, that has no
    /// room left in its length or the model's context, or that holds ids the draft model
    /// does not have.
    pub(super) fn propose_drafts(&mut self, now: Instant) {
        let Some(spec) = self.speculative else { return };
        let max_context = self.model.config().max_position_embeddings;
        let decoding: Vec<_> = self.scheduler.decoding().collect();
        let crowded = decoding.len() > spec.disable_by_batch_size;
        let top_waiting = self.scheduler.top_waiting_rank(now);
        for (id, class, rank) in decoding {
            let Some(c) = self.live.get(id) else { continue };
            let len = self.scheduler.tokens(id).len();
            // Rows after the first each emit one more token: keep them within the choice's
            // length and the context.
            let room = (c.max_tokens.saturating_sub(c.num_generated + 1)).min(max_context.saturating_sub(len + 1));
            let k = spec.num_speculative_tokens.min(room);
            if k == 0 || c.pending_forks > 0 || (self.draft_model.is_some() && !self.draft_reads(id)) {
                continue;
            }
            if crowded || top_waiting.is_some_and(|w| w >= rank) {
                self.metrics.speculative[class.rank() as usize].withheld += 1;
                continue;
            }
            let draft = if self.draft_model.is_some() {
                // Placeholders: the draft model fills what the scheduler grants.
                vec![0; k]
            } else {
                crate::speculative::ngram_draft(self.scheduler.tokens(id), spec.ngram_min, spec.ngram_max, k).to_vec()
            };
            *self.scheduler.draft_mut(id) = draft;
        }
    }
}
