//! The step's flattened batch: every token the forward pass computes this step, from every
//! sequence, with where it sits and where its K/V goes. Built once per step, passed down
//! explicitly; its buffers are reused so a steady state allocates nothing.
//!
//! Invariants (checked by [`BatchPlan::push_seq`]):
//! - sequences occupy consecutive row ranges, in push order;
//! - a sequence's new tokens are its positions `num_cached .. num_cached + n`, and its block
//!   table covers all `num_cached + n` positions;
//! - `logits_rows` is ascending.
//!
//! A model with sliding-window pools (`kv::WindowGroups`) addresses its local layers through
//! one more plan per group of them ([`BatchPlan::local`]): the same tokens, each group's slots
//! and tables. A local table's entries below the window of the sequence's first new token may
//! be [`NO_BLOCK`]; the plan holds block 0 there, which attention never reads (a query's keys
//! start at its window).

use crate::kv::{NO_BLOCK, WindowGroups};

/// One sequence's part of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqPlan {
    /// First row of this sequence in the batch.
    pub query_start: usize,
    /// Rows (new tokens) this step.
    pub num_query_tokens: usize,
    /// Tokens in the cache once this step has written its own: the attention span of the
    /// sequence's last query.
    pub num_context_tokens: usize,
    /// Start of this sequence's table in [`BatchPlan::block_tables`].
    pub block_table_start: usize,
    pub num_blocks: usize,
}

/// Which rows of a sequence produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    None,
    Last,
    All,
    /// The last `n` rows (all of them if the sequence has fewer).
    Tail(usize),
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    #[error("a sequence needs at least one new token")]
    Empty,
    #[error("block table holds {capacity} tokens but the sequence reaches {needed}")]
    TableTooShort { capacity: usize, needed: usize },
    #[error("block id {block} out of range (pool has {num_blocks})")]
    BadBlock { block: u32, num_blocks: usize },
    #[error("{given} local tables for {groups} groups of local layers")]
    LocalTables { given: usize, groups: usize },
}

#[derive(Clone, Debug, Default)]
pub struct BatchPlan {
    /// `[num_tokens]`
    pub token_ids: Vec<u32>,
    /// `[num_tokens]` position of each token in its sequence.
    pub positions: Vec<u32>,
    /// `[num_tokens]` KV slot each token's K/V is written to.
    pub slot_mapping: Vec<u32>,
    /// `[num_seqs]`
    pub seqs: Vec<SeqPlan>,
    /// All sequences' block tables, concatenated.
    pub block_tables: Vec<u32>,
    /// Rows whose logits are wanted, ascending.
    pub logits_rows: Vec<u32>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the pool (every id in a table is below it).
    pub num_blocks: usize,
    /// Sliding-window pools: one plan per group of local layers (see the module doc).
    pub local: Vec<BatchPlan>,
    /// Set on a local plan: what its tables may leave out (see the module doc).
    pub window: Option<WindowGroups>,
}

impl BatchPlan {
    pub fn new(block_size: usize, num_blocks: usize) -> BatchPlan {
        BatchPlan { block_size, num_blocks, ..BatchPlan::default() }
    }

    /// A plan for a pool with sliding-window pools (`None`: [`Self::new`]).
    pub fn with_window(block_size: usize, num_blocks: usize, window: Option<WindowGroups>) -> BatchPlan {
        let local = window.map_or(0, |w| w.local_pages);
        let local = (0..local).map(|_| BatchPlan { window, ..BatchPlan::new(block_size, num_blocks) }).collect();
        BatchPlan { local, ..BatchPlan::new(block_size, num_blocks) }
    }

    /// Empties the plan, keeping its buffers.
    pub fn clear(&mut self) {
        self.token_ids.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.seqs.clear();
        self.block_tables.clear();
        self.logits_rows.clear();
        for l in &mut self.local {
            l.clear();
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn block_table(&self, seq: &SeqPlan) -> &[u32] {
        &self.block_tables[seq.block_table_start..seq.block_table_start + seq.num_blocks]
    }

    /// Appends a sequence whose first `num_cached` tokens are already in the cache and whose
    /// `new_tokens` are computed this step. On error the plan is unchanged.
    pub fn push_seq(&mut self, new_tokens: &[u32], num_cached: usize, block_table: &[u32], logits: LogitsFor) -> Result<(), PlanError> {
        self.push_seq_with_local(new_tokens, num_cached, block_table, &[], logits)
    }

    /// As [`Self::push_seq`], with the sequence's local tables (one per [`Self::local`] plan).
    pub fn push_seq_with_local(
        &mut self,
        new_tokens: &[u32],
        num_cached: usize,
        block_table: &[u32],
        local_tables: &[Vec<u32>],
        logits: LogitsFor,
    ) -> Result<(), PlanError> {
        if local_tables.len() != self.local.len() {
            return Err(PlanError::LocalTables { given: local_tables.len(), groups: self.local.len() });
        }
        self.check(new_tokens, num_cached, block_table)?;
        for (plan, table) in self.local.iter().zip(local_tables) {
            plan.check(new_tokens, num_cached, table)?;
        }
        self.push_checked(new_tokens, num_cached, block_table, logits);
        for (plan, table) in self.local.iter_mut().zip(local_tables) {
            plan.push_checked(new_tokens, num_cached, table, logits);
        }
        Ok(())
    }

    /// What [`Self::push_seq`] refuses.
    fn check(&self, new_tokens: &[u32], num_cached: usize, block_table: &[u32]) -> Result<(), PlanError> {
        if new_tokens.is_empty() {
            return Err(PlanError::Empty);
        }
        let bs = self.block_size;
        let num_context_tokens = num_cached + new_tokens.len();
        let needed_blocks = num_context_tokens.div_ceil(bs);
        if block_table.len() < needed_blocks {
            let capacity = block_table.len() * bs;
            return Err(PlanError::TableTooShort { capacity, needed: num_context_tokens });
        }
        // Entries the window lets a local table leave out.
        let may_skip = self.window.map_or(0, |w| w.first_block(num_cached, bs));
        let bad = |(i, &b): (usize, &u32)| b as usize >= self.num_blocks && !(b == NO_BLOCK && i < may_skip);
        if let Some((_, &block)) = block_table[..needed_blocks].iter().enumerate().find(|&x| bad(x)) {
            return Err(PlanError::BadBlock { block, num_blocks: self.num_blocks });
        }
        Ok(())
    }

    fn push_checked(&mut self, new_tokens: &[u32], num_cached: usize, block_table: &[u32], logits: LogitsFor) {
        let bs = self.block_size;
        let num_context_tokens = num_cached + new_tokens.len();
        let needed_blocks = num_context_tokens.div_ceil(bs);
        let table = &block_table[..needed_blocks];
        let query_start = self.token_ids.len();
        self.seqs.push(SeqPlan {
            query_start,
            num_query_tokens: new_tokens.len(),
            num_context_tokens,
            block_table_start: self.block_tables.len(),
            num_blocks: needed_blocks,
        });
        self.block_tables.extend(table.iter().map(|&b| if b == NO_BLOCK { 0 } else { b }));
        self.token_ids.extend_from_slice(new_tokens);
        for pos in num_cached..num_context_tokens {
            self.positions.push(pos as u32);
            self.slot_mapping.push(table[pos / bs] * bs as u32 + (pos % bs) as u32);
        }
        let end = query_start + new_tokens.len();
        let num_logits = match logits {
            LogitsFor::None => 0,
            LogitsFor::Last => 1,
            LogitsFor::All => new_tokens.len(),
            LogitsFor::Tail(n) => n.min(new_tokens.len()),
        };
        self.logits_rows.extend((end - num_logits) as u32..end as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let mut plan = BatchPlan::new(4, 16);
        plan.push_seq(&[7, 8, 9], 0, &[5], LogitsFor::Last).unwrap();
        plan.push_seq(&[1, 2], 3, &[9, 2], LogitsFor::All).unwrap();
        plan.push_seq(&[4, 5, 6], 0, &[1], LogitsFor::Tail(2)).unwrap();
        assert_eq!(plan.positions, vec![0, 1, 2, 3, 4, 0, 1, 2]);
        assert_eq!(plan.slot_mapping, vec![20, 21, 22, 39, 8, 4, 5, 6]);
        assert_eq!(plan.logits_rows, vec![2, 3, 4, 6, 7]);
        assert_eq!(plan.seqs[1].num_context_tokens, 5);
        assert_eq!(plan.block_table(&plan.seqs[1]), &[9, 2]);
    }

    #[test]
    fn bad_tables_are_errors_and_leave_the_plan_unchanged() {
        let mut plan = BatchPlan::new(4, 16);
        assert_eq!(plan.push_seq(&[1; 5], 0, &[0], LogitsFor::Last), Err(PlanError::TableTooShort { capacity: 4, needed: 5 }));
        assert_eq!(plan.push_seq(&[1], 0, &[16], LogitsFor::Last), Err(PlanError::BadBlock { block: 16, num_blocks: 16 }));
        assert_eq!(plan.push_seq(&[], 0, &[0], LogitsFor::Last), Err(PlanError::Empty));
        assert_eq!(plan.num_tokens(), 0);
        assert!(plan.seqs.is_empty());
    }

    /// A local plan takes the same tokens through its own table, whose entries below the
    /// window may be left out (planned as block 0) and nowhere else.
    #[test]
    fn local_plans_take_their_tables_and_holes_only_below_the_window() {
        let w = WindowGroups { window: 4, local_pages: 1 };
        let mut plan = BatchPlan::with_window(4, 16, Some(w));
        // Position 9's window is 6..=9: block 0 may be left out, block 1 may not.
        let holes = vec![vec![NO_BLOCK, 3, 7]];
        plan.push_seq_with_local(&[1, 2], 8, &[5, 6, 9], &holes, LogitsFor::Last).unwrap();
        assert_eq!(plan.slot_mapping, vec![36, 37]);
        assert_eq!(plan.local[0].slot_mapping, vec![28, 29]);
        assert_eq!(plan.local[0].block_tables, vec![0, 3, 7]);
        assert_eq!(plan.local[0].positions, plan.positions);
        let inside = vec![vec![2, NO_BLOCK, 7]];
        assert_eq!(
            plan.push_seq_with_local(&[1], 10, &[5, 6, 9], &inside, LogitsFor::Last),
            Err(PlanError::BadBlock { block: NO_BLOCK, num_blocks: 16 })
        );
        assert!(plan.push_seq(&[1], 10, &[5, 6, 9], LogitsFor::Last).is_err(), "a local table is required");
        assert_eq!((plan.num_tokens(), plan.local[0].num_tokens()), (2, 2), "refusals leave both plans unchanged");
        plan.clear();
        assert_eq!(plan.local[0].num_tokens(), 0);
    }
}
