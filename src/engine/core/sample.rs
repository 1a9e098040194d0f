//! The step's forward pass and sampling: the backend picks greedy tokens on its side when it
//! can (only ids come back), else each sequence samples from its row of the logits.

use super::{Core, SeqState};
use crate::backend::{Backend, BackendError};
use crate::plan::LogitsFor;
use crate::sampler::logprobs;
use crate::scheduler::SeqId;

impl<B: Backend> Core<B> {
    /// Runs the step's forward pass. True: the backend picked every sampled sequence's token
    /// (all greedy, no logprobs, no pending forks) into `self.greedy`; false: `self.logits`.
    pub(super) fn forward(&mut self, out: &crate::scheduler::StepOutput) -> Result<bool, BackendError> {
        let copies = self.blocks.take_copies();
        if !copies.is_empty() {
            self.backend.copy_blocks(&mut self.kv, &copies)?;
        }
        self.plan.clear();
        for s in &out.scheduled {
            let tokens = &self.scheduler.tokens(s.id)[s.start..s.start + s.num_tokens];
            let logits = if s.sample { LogitsFor::Last } else { LogitsFor::None };
            self.plan
                .push_seq(tokens, s.start, self.scheduler.block_table(s.id), logits)
                .map_err(|e| BackendError::Shape { op: "plan", detail: e.to_string() })?;
        }
        let greedy =
            out.scheduled.iter().filter(|s| s.sample).all(|s| {
                self.seqs.get(&s.id).is_none_or(|st| st.sampler.is_plain_greedy() && st.logprobs.is_none() && st.pending_forks == 0)
            });
        if greedy {
            return self.model.forward_argmax(&self.backend, &self.plan, &mut self.kv, &mut self.greedy, &mut self.logits);
        }
        self.model.forward(&self.backend, &self.plan, &mut self.kv, &mut self.logits)?;
        Ok(false)
    }

    /// A greedy sequence's token, picked by the backend.
    pub(super) fn on_greedy_token(&mut self, id: SeqId, token: u32) {
        self.seqs.get_mut(&id).expect("checked").sampler.observe(token);
        self.on_token(id, token, None);
    }

    /// A sequence's logits are ready (`self.logits[range]`): fork pending choices, sample.
    pub(super) fn on_logits(&mut self, id: SeqId, range: std::ops::Range<usize>) {
        let st = self.seqs.get_mut(&id).expect("checked");
        let forks = std::mem::take(&mut st.pending_forks);
        let mut choices = vec![id];
        if forks > 0 {
            let req = st.request;
            for i in 1..=forks {
                let child = self.next_seq;
                self.next_seq += 1;
                self.scheduler.fork(id, child);
                let parent = &self.seqs[&id];
                let seed = parent.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let state = SeqState {
                    request: req,
                    index: i,
                    sampler: parent.sampler.fork(seed),
                    seed,
                    detok: parent.detok.clone(),
                    stops: parent.stops.clone(),
                    stop_ids: parent.stop_ids.clone(),
                    max_tokens: parent.max_tokens,
                    logprobs: parent.logprobs,
                    num_generated: 0,
                    pending_forks: 0,
                    first_scheduled: parent.first_scheduled,
                    first_token: None,
                    inject_panic: parent.inject_panic,
                };
                self.seqs.insert(child, state);
                self.requests.get_mut(&req).expect("live request").seq_ids.push(child);
                choices.push(child);
            }
        }
        for choice in choices {
            // Each choice samples from its own copy (penalties edit the row in place).
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.logits[range.clone()]);
            // A failed delivery cancels the whole request, siblings included.
            let Some(st) = self.seqs.get_mut(&choice) else { continue };
            let top = st.logprobs;
            let raw = top.map(|_| self.scratch.clone());
            let token = st.sampler.sample(&mut self.scratch);
            let lp = match (top, raw) {
                (Some(k), Some(raw)) => Some(logprobs(&raw, token, k)),
                _ => None,
            };
            self.on_token(choice, token, lp);
        }
    }
}
