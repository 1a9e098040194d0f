//! One step's token budgets while [`super::Scheduler::schedule`] builds it.

/// What is left of one step's budgets: all tokens, and the part prompt chunks may take.
///
/// The prompt share protects the inter-token latency of the sequences decoding in the step,
/// so it binds only chunks of a class no higher than the highest decoding one (`capped`); a
/// higher class's prompt is not held back for a lower class's latency.
pub(super) struct Budget {
    pub(super) tokens: usize,
    pub(super) prefill: usize,
    /// The highest rank among decoding sequences (`None`: nothing decodes, nothing capped).
    pub(super) capped: Option<u8>,
}

impl Budget {
    /// Whether a sequence of `rank` with `left` tokens to compute draws on the prompt share:
    /// a chunk (more than one token) of a class the share binds.
    fn draws_prefill(&self, left: usize, rank: u8) -> bool {
        left > 1 && self.capped.is_some_and(|c| rank <= c)
    }

    /// Tokens a sequence of `rank` with `left` tokens to compute gets now.
    pub(super) fn grant(&self, left: usize, rank: u8) -> usize {
        let n = left.min(self.tokens);
        if self.draws_prefill(left, rank) { n.min(self.prefill) } else { n }
    }

    /// Records `n` tokens granted to a sequence of `rank` that had `left` to compute.
    pub(super) fn take(&mut self, n: usize, left: usize, rank: u8) {
        self.tokens -= n;
        if self.draws_prefill(left, rank) {
            self.prefill -= n;
        }
    }

    /// Returns what [`Budget::take`] took.
    pub(super) fn give_back(&mut self, n: usize, left: usize, rank: u8) {
        self.tokens += n;
        if self.draws_prefill(left, rank) {
            self.prefill = self.prefill.saturating_add(n);
        }
    }

    /// Drafted rows a decoding sequence with `drafted` proposed tokens gets from what the
    /// step left: from the prompt share.
    pub(super) fn grant_draft(&self, drafted: usize) -> usize {
        drafted.min(self.prefill).min(self.tokens)
    }

    pub(super) fn take_draft(&mut self, n: usize) {
        self.tokens -= n;
        self.prefill -= n;
    }
}
