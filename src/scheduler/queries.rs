//! Read-only views of the scheduler's state, for the engine, metrics and tests.

use super::{Scheduler, SeqBlocks, SeqId};

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

    /// The sequence's local-layer tables (sliding-window pools; see [`crate::kv::SeqBlocks`]).
    pub fn local_tables(&self, id: SeqId) -> &[Vec<u32>] {
        self.seqs[&id].blocks.as_ref().map_or(&[], |b| b.local_tables())
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

    /// Checks the block manager's invariants against the live tables (tests).
    pub fn check(&self) -> Result<(), String> {
        let tables: Vec<&SeqBlocks> = self.seqs.values().filter_map(|s| s.blocks.as_ref()).collect();
        self.blocks.check(&tables)?;
        for id in &self.waiting {
            if self.seqs[id].blocks.is_some() {
                return Err(format!("waiting sequence {id} holds blocks"));
            }
        }
        for id in &self.running {
            let seq = &self.seqs[id];
            let held = seq.blocks.as_ref().map_or(0, |t| t.blocks().len());
            if held > seq.tokens.len().div_ceil(self.blocks.block_size()) {
                return Err(format!("sequence {id} holds {held} blocks for {} tokens (a draft not rolled back?)", seq.tokens.len()));
            }
        }
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err("a sequence is neither running nor waiting".into());
        }
        Ok(())
    }
}
