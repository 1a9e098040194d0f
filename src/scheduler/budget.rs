//! One step's token budgets while [`super::Scheduler::schedule`] builds it.

/// What is left of one step's budgets: all tokens, and the part prefill chunks may take.
pub(super) struct Budget {
    pub(super) tokens: usize,
    pub(super) prefill: usize,
}

impl Budget {
    /// Tokens a sequence with `left` tokens to compute gets now: a single token (a decode,
    /// or a prompt's last) draws on `tokens` alone, a chunk on `prefill` too.
    pub(super) fn grant(&self, left: usize) -> usize {
        if left <= 1 { left.min(self.tokens) } else { left.min(self.tokens).min(self.prefill) }
    }

    /// Records `n` tokens granted to a sequence that had `left` to compute.
    pub(super) fn take(&mut self, n: usize, left: usize) {
        self.tokens -= n;
        if left > 1 {
            self.prefill -= n;
        }
    }

    /// Returns what [`Budget::take`] took.
    pub(super) fn give_back(&mut self, n: usize, left: usize) {
        self.tokens += n;
        if left > 1 {
            self.prefill = self.prefill.saturating_add(n);
        }
    }
}
