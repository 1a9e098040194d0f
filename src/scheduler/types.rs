//! The scheduler's public vocabulary: its configuration, what it is given, what it decides.

use super::SeqId;
use crate::request::Priority;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Tokens computed per step at most.
    pub max_num_batched_tokens: usize,
    /// Sequences running at once at most.
    pub max_num_seqs: usize,
    /// Tokens a step computes at most while some sequence is decoding (see the module doc);
    /// `usize::MAX`: no separate limit.
    pub max_step_tokens_while_decoding: usize,
    /// Waiting this long raises a sequence one class, up to `high` (`Duration::ZERO`: no
    /// aging).
    pub aging: Duration,
}

/// A sequence to schedule.
#[derive(Clone, Debug)]
pub struct SeqSpec {
    pub id: SeqId,
    pub priority: Priority,
    pub arrival: Instant,
    pub prompt: Vec<u32>,
    pub salt: Option<String>,
    pub deadline: Option<Instant>,
    /// Slots reserved for choices that will fork from this sequence (n - 1).
    pub extra_slots: usize,
}

/// One sequence's share of a step: tokens `start .. start + num_tokens` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    pub start: usize,
    pub num_tokens: usize,
    /// The step reaches the sequence's last known token: sample from its logits.
    pub sample: bool,
    /// Of `num_tokens`, the last `draft` are the sequence's drafted tokens
    /// ([`super::Scheduler::draft_mut`]), computed to be verified: every one of the
    /// `1 + draft` rows is sampled.
    pub draft: usize,
}

/// A sequence the scheduler removed on its own, with what it had recorded about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub id: SeqId,
    pub num_cached_prompt: usize,
    pub num_preemptions: u32,
}

/// What [`super::Scheduler::schedule`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutput {
    pub scheduled: Vec<Scheduled>,
    /// Sequences preempted this step (now waiting).
    pub preempted: Vec<SeqId>,
    /// Sequences removed because their deadline can no longer be met.
    pub expired: Vec<Ended>,
    /// Sequences removed because they can never fit: alone they outgrow the KV pool, or they
    /// need more sequence slots (n) than there are.
    pub out_of_memory: Vec<Ended>,
}

impl StepOutput {
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_tokens).sum()
    }
}
