//! The step's forward pass: the scheduled tokens (and granted drafts) into one plan, then
//! the model on the backend. When every sampled sequence is plain greedy the backend picks the
//! tokens on its side (only ids come back); otherwise the logits come back for sampling.

use super::Core;
use crate::backend::{Backend, BackendError};
use crate::plan::LogitsFor;
use crate::scheduler::StepOutput;

/// What the forward pass produced for the sampled rows.
pub(super) enum Picked {
    /// The backend's greedy tokens, one per sampled row (`Core::greedy`; a sequence with a
    /// draft has `1 + draft` rows).
    Tokens,
    /// Logits, one vocabulary-wide row per sampled row (`Core::logits`), likewise.
    Logits,
}

impl<B: Backend> Core<B> {
    pub(super) fn forward(&mut self, out: &StepOutput) -> Result<Picked, BackendError> {
        self.plan.clear();
        let mut with_draft = Vec::new();
        for s in &out.scheduled {
            let mut tokens = &self.scheduler.tokens(s.id)[s.start..s.start + s.num_tokens - s.draft];
            let logits = if s.draft > 0 {
                // The sequence's last token, then its drafted ones: every row is sampled.
                with_draft.clear();
                with_draft.extend_from_slice(tokens);
                with_draft.extend_from_slice(&self.scheduler.draft(s.id)[..s.draft]);
                tokens = &with_draft;
                LogitsFor::Tail(1 + s.draft)
            } else if s.sample {
                LogitsFor::Last
            } else {
                LogitsFor::None
            };
            self.plan
                .push_seq_with_local(tokens, s.start, self.scheduler.block_table(s.id), self.scheduler.local_tables(s.id), logits)
                .map_err(|e| BackendError::Shape { op: "plan", detail: e.to_string() })?;
        }
        let greedy = out.scheduled.iter().filter(|s| s.sample).all(|s| {
            self.live
                .get(s.id)
                .is_none_or(|c| c.sampler.is_plain_greedy() && c.logprobs.is_none() && c.pending_forks == 0 && c.matcher.is_none())
        });
        if greedy && self.model.forward_argmax(&self.backend, &self.plan, &mut self.kv, &mut self.greedy, &mut self.logits)? {
            return Ok(Picked::Tokens);
        }
        if !greedy {
            // The constrained rows' masks depend only on the tokens so far: computed on a
            // second thread while the model runs (on a GPU the forward pass leaves the CPU
            // free; on the CPU backend they share its cores).
            let sampled: Vec<_> = out.scheduled.iter().filter(|s| s.sample).map(|s| s.id).collect();
            let mut matchers = self.live.matchers_mut(&sampled);
            let (model, backend, plan, kv, logits) = (&mut self.model, &self.backend, &self.plan, &mut self.kv, &mut self.logits);
            let (result, masks) = if matchers.is_empty() {
                (model.forward(backend, plan, kv, logits), Vec::new())
            } else {
                std::thread::scope(|scope| {
                    let masks = scope.spawn(move || {
                        matchers.iter_mut().map(|(id, m)| (*id, m.compute_mask().map_err(|e| e.to_string()))).collect::<Vec<_>>()
                    });
                    let result = model.forward(backend, plan, kv, logits);
                    (result, masks.join().expect("computing a token mask panicked"))
                })
            };
            for (id, mask) in masks {
                if let Some(c) = self.live.get_mut(id) {
                    c.premask = Some(mask);
                }
            }
            result?;
        }
        Ok(Picked::Logits)
    }
}
