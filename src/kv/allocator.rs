//! Block ids: a free list and per-sequence tables.

use super::KvLayout;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache full: need {needed} more blocks, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
}

/// Hands out block ids `0..num_blocks`; each id is either free or owned by exactly one table.
#[derive(Debug)]
pub struct BlockAllocator {
    /// Free ids, popped from the end (so low ids are used first).
    free: Vec<u32>,
    num_blocks: usize,
}

impl BlockAllocator {
    pub fn new(layout: &KvLayout) -> BlockAllocator {
        let num_blocks = layout.num_blocks;
        BlockAllocator { free: (0..num_blocks as u32).rev().collect(), num_blocks }
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Whether `table` can grow to hold `num_tokens` tokens.
    pub fn can_reserve(&self, table: &BlockTable, num_tokens: usize) -> bool {
        table.num_missing(num_tokens) <= self.free.len()
    }

    /// Grows `table` so that it holds at least `num_tokens` tokens. On error nothing changes.
    pub fn reserve(&mut self, table: &mut BlockTable, num_tokens: usize) -> Result<(), KvError> {
        let needed = table.num_missing(num_tokens);
        if needed > self.free.len() {
            return Err(KvError::OutOfBlocks { needed, free: self.free.len() });
        }
        let start = self.free.len() - needed;
        table.blocks.extend(self.free.drain(start..).rev());
        Ok(())
    }

    /// Returns every block of `table` to the free list and empties it.
    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.extend(table.blocks.drain(..).rev());
    }
}

/// The blocks of one sequence, in logical order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
    block_size: usize,
}

impl BlockTable {
    pub fn new(block_size: usize) -> BlockTable {
        assert!(block_size > 0, "block size must be positive");
        BlockTable { blocks: Vec::new(), block_size }
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Tokens the table can hold without growing.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.block_size
    }

    fn num_missing(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size).saturating_sub(self.blocks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvDtype;

    fn layout(num_blocks: usize) -> KvLayout {
        KvLayout {
            num_layers: 1,
            num_blocks,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 2,
            dtype: KvDtype::F32,
        }
    }

    #[test]
    fn reserve_grows_by_whole_blocks_and_release_returns_them() {
        let mut alloc = BlockAllocator::new(&layout(3));
        let mut t = BlockTable::new(4);
        alloc.reserve(&mut t, 5).unwrap();
        assert_eq!(t.blocks(), &[0, 1]);
        alloc.reserve(&mut t, 8).unwrap();
        assert_eq!(t.blocks().len(), 2);
        assert_eq!(
            alloc.reserve(&mut t, 13),
            Err(KvError::OutOfBlocks { needed: 2, free: 1 })
        );
        assert_eq!(t.blocks().len(), 2, "a failed reserve changes nothing");
        alloc.release(&mut t);
        assert_eq!(alloc.num_free(), 3);
        assert!(t.blocks().is_empty());
    }

    #[test]
    fn tables_never_share_blocks() {
        let mut alloc = BlockAllocator::new(&layout(64));
        let mut tables: Vec<BlockTable> = (0..8).map(|_| BlockTable::new(4)).collect();
        let mut state = 12345u64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let t = &mut tables[(state % 8) as usize];
            if state % 5 == 0 {
                alloc.release(t);
            } else {
                let want = t.capacity() + (state >> 8) as usize % 9;
                let _ = alloc.reserve(t, want);
            }
            let mut seen = [false; 64];
            for id in tables.iter().flat_map(|t| t.blocks()).chain(alloc.free.iter()) {
                assert!(!seen[*id as usize], "block {id} held twice");
                seen[*id as usize] = true;
            }
            assert!(seen.iter().all(|s| *s), "a block leaked");
        }
    }
}
