//! Iteration-level scheduling: which sequences compute how many tokens in the next step.
//!
//! Each [`Scheduler::schedule`] call builds one step under two budgets, tokens
//! (`max_num_batched_tokens`) and sequence slots (`max_num_seqs`). While sequences are
//! decoding, prompt chunks (a sequence computing more than one token) of a class no higher
//! than the highest decoding one share a smaller budget, `max_step_tokens_while_decoding`
//! less the decoding tokens (but never less than a quarter of it), so a long prompt arriving
//! cannot stall the running streams for a whole `max_num_batched_tokens` step: it bounds the
//! inter-token gap. A higher class's prompt is not held back for a lower class's latency.
//!
//! 1. **Running** sequences, highest class first (FIFO within a class), each get their next
//!    tokens: one for a decoding sequence, the next chunk of a prompt still being prefilled.
//!    A sequence that needs a KV block when none is free preempts the lowest running sequence
//!    (possibly itself).
//! 2. **Waiting** sequences, by *effective* class (base class raised one level per `aging`
//!    waited, up to `high`, so nothing below the top waits forever behind newer work; aged
//!    traffic never competes with `critical`), then arrival, are admitted with as much of their
//!    prompt as the token budget allows (chunked prefill), after a prefix-cache lookup so
//!    cached blocks are not recomputed. If slots or blocks are short, a waiting sequence
//!    preempts running ones of a *strictly lower* class, lowest and newest first; if that is
//!    not enough, admission stops (no lower class overtakes it).
//!
//! A preempted sequence drops its blocks (the full ones stay in the prefix cache), keeps its
//! generated tokens, and waits again; on resumption it recomputes only `prompt + output`
//! beyond what is still cached. A waiting sequence whose first token can no longer be produced
//! before its deadline (at the measured prefill rate) is expired without computing anything.
//!
//! The scheduler knows nothing of the model: the engine runs the step, then calls
//! [`Scheduler::complete_step`] and appends sampled tokens. Time is passed in, so tests run in
//! virtual time.

use crate::idmap::IdMap;
use crate::kv::{BlockManager, SeqBlocks};
use crate::request::Priority;
use budget::Budget;
use std::time::{Duration, Instant};

pub type SeqId = u64;

pub use types::{Ended, Scheduled, SchedulerConfig, SeqSpec, StepOutput};

#[derive(Debug)]
struct Seq {
    priority: Priority,
    arrival: Instant,
    tokens: Vec<u32>,
    num_prompt: usize,
    num_computed: usize,
    salt: Option<String>,
    deadline: Option<Instant>,
    extra_slots: usize,
    blocks: Option<SeqBlocks>,
    /// Effective rank when admitted (running sequences keep it).
    rank: u8,
    /// Tokens scheduled in the step being built.
    scheduled: usize,
    num_preemptions: u32,
    /// Prompt tokens found in the prefix cache at first admission.
    num_cached_prompt: Option<usize>,
    /// Tokens proposed to follow `tokens`, verified in the next step if the budgets allow
    /// (see `draft.rs`).
    draft: Vec<u32>,
    /// Positions whose K/V a draft model has in its own pool (the same blocks' ids as this
    /// sequence's table), see `draft.rs`.
    draft_computed: usize,
}

pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    seqs: IdMap<SeqId, Seq>,
    waiting: Vec<SeqId>,
    running: Vec<SeqId>,
    /// Measured prompt tokens per second (for deadlines); `None` until known.
    prefill_rate: Option<f64>,
    num_preemptions: u64,
    /// By the preempted sequence's base class.
    preemptions_by_class: [u64; 4],
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Scheduler {
        assert!(config.max_num_batched_tokens > 0 && config.max_num_seqs > 0, "budgets must be positive");
        Scheduler {
            config,
            blocks,
            seqs: IdMap::default(),
            waiting: Vec::new(),
            running: Vec::new(),
            prefill_rate: None,
            num_preemptions: 0,
            preemptions_by_class: [0; 4],
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// Queues a new sequence (its prompt must be non-empty).
    pub fn add(&mut self, spec: SeqSpec) {
        assert!(!spec.prompt.is_empty(), "empty prompt");
        let seq = Seq {
            priority: spec.priority,
            arrival: spec.arrival,
            num_prompt: spec.prompt.len(),
            tokens: spec.prompt,
            num_computed: 0,
            salt: spec.salt,
            deadline: spec.deadline,
            extra_slots: spec.extra_slots,
            blocks: None,
            rank: spec.priority.rank(),
            scheduled: 0,
            num_preemptions: 0,
            num_cached_prompt: None,
            draft: Vec::new(),
            draft_computed: 0,
        };
        let old = self.seqs.insert(spec.id, seq);
        assert!(old.is_none(), "sequence id {} reused", spec.id);
        self.waiting.push(spec.id);
    }

    /// Removes a sequence on the scheduler's own decision.
    fn end(&mut self, id: SeqId) -> Ended {
        self.take(id).expect("a scheduled sequence")
    }

    /// Removes a sequence (finished, cancelled or failed), freeing its blocks now, and says
    /// what it had: `None` if it was not there.
    pub fn take(&mut self, id: SeqId) -> Option<Ended> {
        let seq = self.seqs.get(&id)?;
        let ended = Ended { id, num_cached_prompt: seq.num_cached_prompt.unwrap_or(0), num_preemptions: seq.num_preemptions };
        self.remove(id);
        Some(ended)
    }

    /// Removes a sequence (finished, cancelled or failed), freeing its blocks now. False if it
    /// was not there.
    pub fn remove(&mut self, id: SeqId) -> bool {
        if self.seqs.remove(&id).is_none() {
            return false;
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        true
    }

    /// A new running sequence `child` sharing `parent`'s tokens and blocks (one of its
    /// reserved slots).
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        let p = self.seqs.get_mut(&parent).expect("fork of an unknown sequence");
        assert!(p.blocks.is_some(), "fork of a sequence that is not running");
        p.extra_slots = p.extra_slots.saturating_sub(1);
        let seq = Seq {
            priority: p.priority,
            arrival: p.arrival,
            tokens: p.tokens.clone(),
            num_prompt: p.num_prompt,
            num_computed: p.num_computed,
            salt: p.salt.clone(),
            deadline: None,
            extra_slots: 0,
            blocks: p.blocks.as_ref().map(SeqBlocks::fork),
            rank: p.rank,
            scheduled: 0,
            num_preemptions: 0,
            num_cached_prompt: p.num_cached_prompt,
            draft: Vec::new(),
            draft_computed: p.draft_computed,
        };
        self.seqs.insert(child, seq);
        self.running.push(child);
    }

    /// Appends a sampled token to a sequence (computed in its next step).
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        self.seqs.get_mut(&id).expect("unknown sequence").tokens.push(token);
    }

    /// Tells the scheduler the measured prefill rate (prompt tokens per second).
    pub fn set_prefill_rate(&mut self, tokens_per_second: f64) {
        if tokens_per_second.is_finite() && tokens_per_second > 0.0 {
            self.prefill_rate = Some(tokens_per_second);
        }
    }

    /// The class a waiting sequence competes as: its own, raised one per `aging` waited, up
    /// to `high` — aged traffic never overtakes `critical`, and a class already at `high` or
    /// above is not raised.
    fn effective_rank(&self, seq: &Seq, now: Instant) -> u8 {
        let aging = self.config.aging;
        let base = seq.priority.rank();
        if aging.is_zero() || base >= Priority::High.rank() {
            return base;
        }
        let boost = (now.saturating_duration_since(seq.arrival).as_nanos() / aging.as_nanos()).min(3) as u8;
        (base + boost).min(Priority::High.rank())
    }

    fn slots_used(&self) -> usize {
        self.running.iter().map(|id| 1 + self.seqs[id].extra_slots).sum()
    }

    /// Whether a waiting sequence can no longer produce its first token in time.
    fn missed_deadline(&self, seq: &Seq, now: Instant) -> bool {
        let Some(deadline) = seq.deadline else { return false };
        if seq.tokens.len() > seq.num_prompt {
            return false; // already produced tokens: it runs to completion
        }
        let prefill = self.prefill_rate.map_or(Duration::ZERO, |rate| Duration::from_secs_f64(seq.tokens.len() as f64 / rate));
        now + prefill > deadline
    }

    fn preempt(&mut self, id: SeqId, budget: &mut Budget, out: &mut StepOutput) {
        let seq = self.seqs.get_mut(&id).expect("running sequence");
        let left = seq.tokens.len() - seq.num_computed;
        seq.blocks = None;
        seq.num_computed = 0;
        seq.num_preemptions += 1;
        seq.draft.clear();
        seq.draft_computed = 0;
        if seq.scheduled > 0 {
            budget.give_back(seq.scheduled, left, seq.rank);
            seq.scheduled = 0;
            out.scheduled.retain(|s| s.id != id);
        }
        self.preemptions_by_class[seq.priority.rank() as usize] += 1;
        self.running.retain(|&r| r != id);
        self.waiting.push(id);
        self.num_preemptions += 1;
        out.preempted.push(id);
    }

    /// The running sequence to preempt first among those `eligible`: lowest rank, newest
    /// arrival.
    fn lowest_running(&self, eligible: impl Fn(&Seq) -> bool) -> Option<(SeqId, u8)> {
        self.running
            .iter()
            .map(|&id| (id, &self.seqs[&id]))
            .filter(|(_, s)| eligible(s))
            .min_by(|a, b| a.1.rank.cmp(&b.1.rank).then(b.1.arrival.cmp(&a.1.arrival)).then(b.0.cmp(&a.0)))
            .map(|(id, s)| (id, s.rank))
    }

    /// Plans the next step (see the module doc).
    pub fn schedule(&mut self, now: Instant) -> StepOutput {
        let mut out = StepOutput::default();
        // Decoding sequences: how many, and the highest class among them.
        let (decoding, capped) = self
            .running
            .iter()
            .map(|id| &self.seqs[id])
            .filter(|s| s.tokens.len() - s.num_computed == 1)
            .fold((0, None), |(n, top): (usize, Option<u8>), s| (n + 1, top.max(Some(s.rank))));
        let cap = self.config.max_step_tokens_while_decoding;
        let prefill = cap.saturating_sub(decoding).max(cap / 4).max(1);
        let mut budget = Budget { tokens: self.config.max_num_batched_tokens, prefill, capped };

        let expired: Vec<SeqId> = self.waiting.iter().copied().filter(|id| self.missed_deadline(&self.seqs[id], now)).collect();
        for id in expired {
            let ended = self.end(id);
            out.expired.push(ended);
        }
        self.schedule_running(&mut budget, &mut out);
        self.admit_waiting(now, &mut budget, &mut out);
        self.grant_drafts(&mut budget, &mut out);
        for s in &out.scheduled {
            self.seqs.get_mut(&s.id).expect("scheduled").scheduled = 0;
        }
        out
    }

    /// Step 1 of [`Scheduler::schedule`]: running sequences, highest rank first, each its next
    /// token or prompt chunk; out of blocks, the lowest running sequence is preempted.
    fn schedule_running(&mut self, budget: &mut Budget, out: &mut StepOutput) {
        let seqs = &self.seqs;
        self.running.sort_by_cached_key(|id| {
            let s = &seqs[id];
            (std::cmp::Reverse(s.rank), s.arrival, *id)
        });
        let mut i = 0;
        while i < self.running.len() && budget.tokens > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let start = seq.num_computed;
            let (left, rank) = (seq.tokens.len() - start, seq.rank);
            let n = budget.grant(left, rank);
            if n == 0 {
                i += 1;
                continue;
            }
            loop {
                let seq = self.seqs.get_mut(&id).expect("running");
                let table = seq.blocks.as_mut().expect("running sequences hold blocks");
                if table.reserve(start, start + n).is_ok() {
                    seq.scheduled = n;
                    let sample = start + n == seq.tokens.len();
                    out.scheduled.push(Scheduled { id, start, num_tokens: n, sample, draft: 0 });
                    budget.take(n, left, rank);
                    i += 1;
                    break;
                }
                let last = *self.running.last().expect("non-empty");
                if last != id {
                    self.preempt(last, budget, out);
                } else if self.running.len() == 1 {
                    // Alone and still out of blocks: it outgrew the whole pool.
                    let ended = self.end(id);
                    out.out_of_memory.push(ended);
                    break;
                } else {
                    self.preempt(id, budget, out);
                    break;
                }
            }
        }
    }

    /// Step 2 of [`Scheduler::schedule`]: waiting sequences by effective rank, then arrival.
    fn admit_waiting(&mut self, now: Instant, budget: &mut Budget, out: &mut StepOutput) {
        let bs = self.blocks.block_size();
        let mut order: Vec<(u8, Instant, SeqId)> =
            self.waiting.iter().map(|&id| (self.effective_rank(&self.seqs[&id], now), self.seqs[&id].arrival, id)).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        'admit: for (rank, _, id) in order {
            loop {
                let seq = &self.seqs[&id];
                let len = seq.tokens.len();
                if len.div_ceil(bs) > self.blocks.num_blocks() || 1 + seq.extra_slots > self.config.max_num_seqs {
                    let ended = self.end(id);
                    out.out_of_memory.push(ended);
                    continue 'admit;
                }
                // Keep at least one token to compute: its logits are what we sample from.
                let hit = self.blocks.lookup(&seq.tokens, seq.salt.as_deref(), (len - 1) / bs);
                let cached = hit.blocks.len() * bs;
                let n = budget.grant(len - cached, rank);
                let new_blocks = self.blocks.pages_to_admit(&hit, cached + n);
                let slots_ok = self.slots_used() + 1 + seq.extra_slots <= self.config.max_num_seqs;
                if n > 0 && slots_ok && new_blocks <= self.blocks.num_free() {
                    let first = seq.num_cached_prompt.is_none();
                    let mut table = self.blocks.take_hit(hit, first.then_some(seq.num_prompt));
                    table.reserve(cached, cached + n).expect("counted above");
                    let seq = self.seqs.get_mut(&id).expect("waiting");
                    seq.num_cached_prompt.get_or_insert(cached.min(seq.num_prompt));
                    seq.blocks = Some(table);
                    seq.num_computed = cached;
                    seq.rank = rank;
                    seq.scheduled = n;
                    out.scheduled.push(Scheduled { id, start: cached, num_tokens: n, sample: cached + n == len, draft: 0 });
                    budget.take(n, len - cached, rank);
                    self.waiting.retain(|&w| w != id);
                    self.running.push(id);
                    break;
                }
                // Short of tokens, slots or blocks: take them from strictly lower classes,
                // lowest and newest first (when only tokens are short, from sequences that
                // hold some of this step's budget: prefill chunks, if it is the prefill
                // budget that ran out).
                let only_budget = n == 0 && slots_ok;
                let held = if budget.tokens > 0 { 2 } else { 1 };
                let victim = self.lowest_running(|s| !only_budget || s.scheduled >= held);
                match victim {
                    Some((victim, victim_rank)) if victim_rank < rank => self.preempt(victim, budget, out),
                    _ => break 'admit,
                }
            }
        }
    }

    /// Records that the step of `out` ran: its tokens' K/V are in the cache (full blocks are
    /// registered in the prefix cache).
    pub fn complete_step(&mut self, out: &StepOutput) {
        for s in &out.scheduled {
            let Some(seq) = self.seqs.get_mut(&s.id) else { continue };
            // Drafted rows count once verified (`accept_drafted`).
            seq.num_computed = s.start + s.num_tokens - s.draft;
            if let Some(table) = seq.blocks.as_mut() {
                table.commit(&seq.tokens, seq.num_computed);
            }
        }
    }
}

mod budget;
mod draft;
#[cfg(test)]
mod draft_tests;
mod queries;
#[cfg(test)]
mod tests;
mod types;
