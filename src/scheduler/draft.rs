//! Speculative rows: a decoding sequence may carry drafted tokens (proposed by the engine's
//! drafter) that the next step computes after its own last token, as a short chunk. The
//! sequence's `tokens` never hold a draft: a drafted token joins them only once the model has
//! chosen it ([`Scheduler::accept_drafted`], its K/V already written by the step), and the
//! blocks reserved for the rest are released ([`Scheduler::end_draft`]). So preemption,
//! prefix caching and forks see only verified tokens.
//!
//! Drafts are granted last ([`Scheduler::grant_drafts`]), once every running sequence has its
//! token or chunk and the waiting ones are admitted: only from what the step left of the
//! prompt share (a chunk's rows) and of the free blocks, highest class first. So a draft never
//! takes a row or a block another sequence would have had, and never causes a preemption.

use super::budget::Budget;
use super::{Scheduler, SeqId, StepOutput};
use crate::request::Priority;
use std::time::Instant;

impl Scheduler {
    /// Running sequences whose next step computes one token (their last sampled one), with
    /// their base class and the rank they run at.
    pub fn decoding(&self) -> impl Iterator<Item = (SeqId, Priority, u8)> + '_ {
        self.running
            .iter()
            .map(|id| (*id, &self.seqs[id]))
            .filter(|(_, s)| s.tokens.len() - s.num_computed == 1)
            .map(|(id, s)| (id, s.priority, s.rank))
    }

    /// Step 3 of [`Scheduler::schedule`]: each decoding sequence with a draft, in the step's
    /// order, gets as many drafted rows as the leftover budget and free blocks allow (none: it
    /// just decodes). A draft lives one step: dropped unless this step verifies it.
    pub(super) fn grant_drafts(&mut self, budget: &mut Budget, out: &mut StepOutput) {
        for s in out.scheduled.iter_mut() {
            let seq = self.seqs.get_mut(&s.id).expect("scheduled");
            let decoding = s.num_tokens == 1 && s.sample;
            if seq.draft.is_empty() || !decoding {
                continue;
            }
            let n = budget.grant_draft(seq.draft.len());
            let end = s.start + 1;
            let table = seq.blocks.as_mut().expect("scheduled sequences hold blocks");
            // From the step's first row (its window decides which local pages stay).
            if n > 0 && table.reserve(s.start, end + n).is_ok() {
                s.num_tokens += n;
                s.draft = n;
                budget.take_draft(n);
            }
        }
        for id in &self.running {
            let seq = self.seqs.get_mut(id).expect("running");
            if !seq.draft.is_empty() && !out.scheduled.iter().any(|s| s.id == *id && s.draft > 0) {
                seq.draft.clear();
            }
        }
    }

    /// The highest class any waiting sequence competes as now (aging included).
    pub fn top_waiting_rank(&self, now: Instant) -> Option<u8> {
        self.waiting.iter().map(|id| self.effective_rank(&self.seqs[id], now)).max()
    }

    /// The tokens proposed to follow a sequence's own (empty: none), for its next step.
    pub fn draft_mut(&mut self, id: SeqId) -> &mut Vec<u32> {
        &mut self.seqs.get_mut(&id).expect("unknown sequence").draft
    }

    pub fn draft(&self, id: SeqId) -> &[u32] {
        &self.seqs[&id].draft
    }

    /// The model chose the next drafted token: it has just been appended
    /// ([`Scheduler::append_token`]) and its K/V is already in the cache.
    pub fn accept_drafted(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("unknown sequence");
        // Its row was computed, and the next row's token follows it at once.
        assert!(seq.num_computed < seq.tokens.len(), "accepted a drafted token that was not appended");
        seq.num_computed += 1;
        if let Some(table) = seq.blocks.as_mut() {
            table.commit(&seq.tokens, seq.num_computed);
        }
    }

    /// Positions of the sequence whose K/V a draft model has computed into its own pool
    /// (which shares the block ids of this sequence's table). A drafter sets it; rolled-back
    /// rows and preemption lower it. A prefix-cache hit brings blocks whose draft K/V may
    /// not have been computed: they are recomputed when the sequence first drafts (a wrong
    /// draft cache could only lower the acceptance rate, never change the output).
    pub fn draft_computed(&self, id: SeqId) -> usize {
        self.seqs[&id].draft_computed
    }

    pub fn set_draft_computed(&mut self, id: SeqId, n: usize) {
        let seq = self.seqs.get_mut(&id).expect("unknown sequence");
        assert!(n <= seq.tokens.len() + seq.draft.len(), "draft K/V past the drafted tokens");
        seq.draft_computed = n;
    }

    /// The step's draft is settled: forget it and release the blocks reserved for the rows
    /// that were not kept. (A sequence that has ended is not there.)
    pub fn end_draft(&mut self, id: SeqId) {
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        seq.draft.clear();
        // The draft model's K/V past the last token kept are for tokens not kept.
        seq.draft_computed = seq.draft_computed.min(seq.tokens.len() - 1);
        if let Some(table) = seq.blocks.as_mut() {
            table.truncate(seq.tokens.len());
        }
    }
}
