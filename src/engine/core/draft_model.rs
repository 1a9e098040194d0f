//! A draft model ([`crate::engine::Engine::start_with_draft`]): a smaller model of the same
//! tokenizer proposes each speculating sequence's next tokens, greedily, one batched step per
//! drafted position. Its KV pool has as many blocks as the target's and is addressed by the
//! same block tables, so it needs no allocator, prefix cache or rollback of its own: the
//! target's table says where every position's K/V goes in both pools, block copies run on
//! both, and the scheduler tracks how far the draft's cache is valid
//! ([`crate::scheduler::Scheduler::draft_computed`]).
//!
//! Runs after the scheduler has granted the draft rows (the engine first asks for `K`
//! placeholder tokens) and before the target's forward pass verifies them.

use super::Core;
use crate::backend::{Backend, BackendError};
use crate::model::Llama;
use crate::plan::{BatchPlan, LogitsFor};
use crate::scheduler::{SeqId, StepOutput};

pub(in crate::engine) struct DraftModel<B: Backend> {
    pub(in crate::engine) model: Llama<B>,
    pub(in crate::engine) kv: B::KvPool,
    pub(in crate::engine) plan: BatchPlan,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

impl<B: Backend> DraftModel<B> {
    pub(in crate::engine) fn new(model: Llama<B>, kv: B::KvPool, plan: BatchPlan) -> DraftModel<B> {
        DraftModel { model, kv, plan, ids: Vec::new(), logits: Vec::new() }
    }

    /// Runs the plan; the greedy token of each logits row.
    fn run(&mut self, backend: &B) -> Result<Vec<u32>, BackendError> {
        if !self.model.forward_argmax(backend, &self.plan, &mut self.kv, &mut self.ids, &mut self.logits)? {
            let vocab = self.model.config().vocab_size;
            self.ids.clear();
            self.ids.extend(self.logits.chunks_exact(vocab).map(crate::sampler::argmax));
        }
        Ok(std::mem::take(&mut self.ids))
    }
}

impl<B: Backend> Core<B> {
    /// Whether the draft model's vocabulary holds every token of the sequence (a smaller
    /// draft vocabulary than the model's: ids past it, from a prompt of raw ids or a rare
    /// sample, would fail its pass; such a sequence is not drafted for).
    pub(super) fn draft_reads(&self, id: SeqId) -> bool {
        let Some(d) = &self.draft_model else { return false };
        let vocab = d.model.config().vocab_size;
        self.scheduler.tokens(id).iter().all(|&t| (t as usize) < vocab)
    }

    /// Computes the draft model's K/V of each listed sequence up to `end` (from where its
    /// draft cache stops), in as few passes as the batch allows; with `pick`, the greedy
    /// token after each sequence's last row, in the list's order.
    fn catch_up(&mut self, items: &[(SeqId, usize)], pick: bool) -> Result<Vec<u32>, BackendError> {
        let draft = self.draft_model.as_mut().expect("a draft model");
        let cap = draft.model.max_batch_tokens();
        let from = |s: &crate::scheduler::Scheduler, id: SeqId, end: usize| s.draft_computed(id).min(end - 1);
        // What does not fit one pass runs alone first, without logits.
        for &(id, end) in items {
            let mut done = from(&self.scheduler, id, end);
            while end - done > cap {
                draft.plan.clear();
                let tokens = &self.scheduler.tokens(id)[done..done + cap];
                draft.plan.push_seq(tokens, done, self.scheduler.block_table(id), LogitsFor::None).map_err(plan_error)?;
                draft.run(&self.backend)?;
                done += cap;
                self.scheduler.set_draft_computed(id, done);
            }
        }
        let logits = if pick { LogitsFor::Last } else { LogitsFor::None };
        let mut picked = Vec::with_capacity(items.len());
        let mut next = 0;
        while next < items.len() {
            draft.plan.clear();
            let first = next;
            while next < items.len() {
                let (id, end) = items[next];
                let start = from(&self.scheduler, id, end);
                if next > first && draft.plan.num_tokens() + end - start > cap {
                    break;
                }
                let tokens = &self.scheduler.tokens(id)[start..end];
                draft.plan.push_seq(tokens, start, self.scheduler.block_table(id), logits).map_err(plan_error)?;
                next += 1;
            }
            picked.extend(draft.run(&self.backend)?);
            for &(id, end) in &items[first..next] {
                self.scheduler.set_draft_computed(id, end);
            }
        }
        Ok(picked)
    }

    /// The draft model's part of a step: its K/V for the step's prompt chunks (so a
    /// sequence's first draft does not wait for its whole prompt), then the granted draft
    /// rows of the speculating sequences, greedily: after the tokens each has not had drafted
    /// K/V for (the one or two since its last draft), one row per further drafted position.
    pub(super) fn fill_drafts(&mut self, out: &StepOutput) -> Result<(), BackendError> {
        if self.draft_model.is_none() {
            return Ok(());
        }
        let chunks: Vec<(SeqId, usize)> = out
            .scheduled
            .iter()
            .filter(|s| s.draft == 0 && s.num_tokens > 1 && self.draft_reads(s.id))
            .map(|s| (s.id, s.start + s.num_tokens))
            .collect();
        self.catch_up(&chunks, false)?;
        let seqs: Vec<(SeqId, usize)> = out.scheduled.iter().filter(|s| s.draft > 0).map(|s| (s.id, s.draft)).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let ends: Vec<(SeqId, usize)> = seqs.iter().map(|&(id, _)| (id, self.scheduler.tokens(id).len())).collect();
        let mut proposed: Vec<Vec<u32>> = self.catch_up(&ends, true)?.into_iter().map(|t| vec![t]).collect();
        let draft = self.draft_model.as_mut().expect("checked");
        let rounds = seqs.iter().map(|s| s.1).max().unwrap_or(0);
        for round in 1..rounds {
            draft.plan.clear();
            let batch: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].1 > round).collect();
            for &i in &batch {
                let id = seqs[i].0;
                // The previous drafted token, at the position after the last computed one.
                let position = self.scheduler.tokens(id).len() + round - 1;
                let token = proposed[i][round - 1];
                draft.plan.push_seq(&[token], position, self.scheduler.block_table(id), LogitsFor::Last).map_err(plan_error)?;
            }
            let ids = draft.run(&self.backend)?;
            for (&i, &token) in batch.iter().zip(&ids) {
                proposed[i].push(token);
            }
        }
        for ((id, n), tokens) in seqs.into_iter().zip(proposed) {
            debug_assert_eq!(tokens.len(), n);
            let len = self.scheduler.tokens(id).len();
            *self.scheduler.draft_mut(id) = tokens;
            // K/V of the last token and of every drafted one but the last.
            self.scheduler.set_draft_computed(id, len + n - 1);
        }
        Ok(())
    }
}

fn plan_error(e: crate::plan::PlanError) -> BackendError {
    BackendError::Shape { op: "draft plan", detail: e.to_string() }
}
