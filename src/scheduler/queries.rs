//! Read-only views of the scheduler's state, for the engine, metrics and tests.

use super::{Scheduler, SeqId};

impl Scheduler {
    pub fn tokens(&self, id: SeqId) -> &[u32] {
        &self.seqs[&id].tokens
    }

    pub fn num_prompt(&self, id: SeqId) -> usize {
        self.seqs[&id].num_prompt
    }

    /// The block table of a running sequence.
    pub fn block_table(&self, id: SeqId) -> &[u32] {
        self.seqs[&id].blocks.as_ref().map_or(&[], |b| b.blocks())
    }

    pub fn num_preemptions_of(&self, id: SeqId) -> u32 {
        self.seqs.get(&id).map_or(0, |s| s.num_preemptions)
    }

    /// Prompt tokens the prefix cache supplied when the sequence was first admitted.
    pub fn num_cached_prompt(&self, id: SeqId) -> usize {
        self.seqs.get(&id).and_then(|s| s.num_cached_prompt).unwrap_or(0)
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Waiting sequences per base class, indexed by [`crate::request::Priority::rank`].
    pub fn waiting_by_class(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for id in &self.waiting {
            n[self.seqs[id].priority.rank() as usize] += 1;
        }
        n
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// Preemptions by the preempted sequence's class, indexed by [`crate::request::Priority::rank`].
    pub fn preemptions_by_class(&self) -> [u64; 4] {
        self.preemptions_by_class
    }
}
