//! A sequence's tables ([`SeqBlocks`]): growth with copy-on-write, the window's releases,
//! prefix-cache registration, rollback, fork and release on drop.

use super::super::KvError;
use super::pool::{BlockKey, Pool, block_hash, local_hash};
use super::window::{LocalTables, NO_BLOCK};
use std::cell::RefCell;
use std::rc::Rc;

/// One sequence's blocks in logical order. Dropping it releases them (cached blocks stay
/// cached until evicted).
#[derive(Debug)]
pub struct SeqBlocks {
    pub(super) pool: Rc<RefCell<Pool>>,
    pub(super) blocks: Vec<u32>,
    /// Chained hashes of the leading full, computed blocks registered so far.
    pub(super) hashes: Vec<u64>,
    pub(super) root: u64,
    pub(super) local: Option<LocalTables>,
}

impl SeqBlocks {
    /// The global layers' table (every layer's, without sliding-window pools).
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Each local group's table ([`NO_BLOCK`] below the window); empty without sliding-window
    /// pools.
    pub fn local_tables(&self) -> &[Vec<u32>] {
        self.local.as_ref().map_or(&[], |l| &l.tables)
    }

    fn block_size(&self) -> usize {
        self.pool.borrow().block_size
    }

    /// Tokens the table holds without growing.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.block_size()
    }

    /// New pages (from the free queue) that [`Self::reserve`]`(start, end)` would take.
    pub fn blocks_needed(&self, start: usize, end: usize) -> usize {
        self.pages_needed(start, end).0
    }

    /// New pages (from the free queue) that [`Self::reserve`]`(start, end)` would take, and the
    /// pages below the window it would free first.
    fn pages_needed(&self, start: usize, end: usize) -> (usize, usize) {
        let pool = self.pool.borrow();
        let bs = pool.block_size;
        let shared = |t: &[u32]| start < end && t.get(start / bs).is_some_and(|&b| b != NO_BLOCK && pool.meta[b as usize].ref_count > 1);
        let grow = end.div_ceil(bs).saturating_sub(self.blocks.len());
        let mut needed = grow + shared(&self.blocks) as usize;
        let mut freed = 0;
        if let Some(l) = &self.local {
            let below = l.below(start, bs);
            for t in &l.tables {
                needed += grow + shared(t) as usize;
                freed += t[below.clone()].iter().filter(|&&b| b != NO_BLOCK && pool.meta[b as usize].ref_count == 1).count();
            }
        }
        (needed, freed)
    }

    /// Makes positions `start..end` writable: grows the tables and gives them a private copy
    /// of a shared block in that range; with sliding-window pools, first releases the local
    /// pages no query from `start` on can see (`start` never decreases while a table lives).
    /// All or nothing.
    pub fn reserve(&mut self, start: usize, end: usize) -> Result<(), KvError> {
        let (needed, freed) = self.pages_needed(start, end);
        let mut pool = self.pool.borrow_mut();
        if needed > pool.num_queued + freed {
            return Err(KvError::OutOfBlocks { needed, free: pool.num_queued + freed });
        }
        let bs = pool.block_size;
        let end_blocks = end.div_ceil(bs);
        if let Some(l) = &mut self.local {
            let below = l.below(start, bs);
            for t in &mut l.tables {
                for b in t[below.clone()].iter_mut().rev().filter(|b| **b != NO_BLOCK) {
                    pool.release(std::mem::replace(b, NO_BLOCK));
                }
            }
            l.released = l.released.max(below.end);
        }
        let tables = std::iter::once(&mut self.blocks).chain(self.local.iter_mut().flat_map(|l| l.tables.iter_mut()));
        for t in tables {
            if start < end
                && let Some(&src) = t.get(start / bs)
                && src != NO_BLOCK
                && pool.meta[src as usize].ref_count > 1
            {
                let dst = pool.pop().expect("counted above");
                pool.release(src);
                pool.copies.push((src, dst));
                t[start / bs] = dst;
            }
            while t.len() < end_blocks {
                let id = pool.pop().expect("counted above");
                t.push(id);
            }
        }
        Ok(())
    }

    /// Registers the full blocks among the first `num_computed` of `tokens` (the sequence's
    /// ids, whose K/V are now in the cache) in the prefix cache.
    pub fn commit(&mut self, tokens: &[u32], num_computed: usize) {
        let mut pool = self.pool.borrow_mut();
        if !pool.caching {
            return;
        }
        let bs = pool.block_size;
        let full = (num_computed / bs).min(self.blocks.len());
        let first_new = self.hashes.len();
        if first_new == full {
            return;
        }
        while self.hashes.len() < full {
            let i = self.hashes.len();
            let parent = self.hashes.last().copied().unwrap_or(self.root);
            self.hashes.push(block_hash(parent, &tokens[i * bs..(i + 1) * bs]));
        }
        // A block computed while an equal one was cached elsewhere stayed unregistered; if that
        // one has since been evicted, register ours again so the chain (and what KV events
        // announced) has no hole above the new blocks.
        let mut from = first_new;
        while from > 0 && !pool.cache.contains_key(&self.hashes[from - 1]) && pool.meta[self.blocks[from - 1] as usize].key.is_none() {
            from -= 1;
        }
        for i in from..full {
            let (hash, id) = (self.hashes[i], self.blocks[i]);
            if pool.meta[id as usize].key.is_none() && !pool.cache.contains_key(&hash) {
                let parent = if i == 0 { self.root } else { self.hashes[i - 1] };
                let key = BlockKey { hash, parent, tokens: tokens[i * bs..(i + 1) * bs].into(), local: false };
                pool.record_stored(&key, self.root);
                pool.meta[id as usize].key = Some(key);
                pool.cache.insert(hash, id);
            }
        }
        let Some(l) = &mut self.local else { return };
        for i in l.registered.min(full)..full {
            let parent = if i == 0 { self.root } else { self.hashes[i - 1] };
            for (g, t) in l.tables.iter().enumerate() {
                let (hash, id) = (local_hash(self.hashes[i], g), t[i]);
                if id != NO_BLOCK && pool.meta[id as usize].key.is_none() && !pool.local_cache.contains_key(&hash) {
                    pool.meta[id as usize].key = Some(BlockKey { hash, parent, tokens: tokens[i * bs..(i + 1) * bs].into(), local: true });
                    pool.local_cache.insert(hash, id);
                }
            }
        }
        l.registered = l.registered.max(full);
    }

    /// Releases the blocks past the first `num_tokens` positions (speculative rows that were
    /// not kept). Registered blocks are never among them: they hold computed tokens.
    pub fn truncate(&mut self, num_tokens: usize) {
        let mut pool = self.pool.borrow_mut();
        let keep = num_tokens.div_ceil(pool.block_size).max(self.hashes.len());
        let tables = self.local.iter_mut().flat_map(|l| l.tables.iter_mut()).chain(std::iter::once(&mut self.blocks));
        for t in tables {
            while t.len() > keep {
                let b = t.pop().expect("longer than keep");
                if b != NO_BLOCK {
                    pool.release(b);
                }
            }
        }
    }

    /// A second table sharing every block of this one (n > 1 sampling).
    pub fn fork(&self) -> SeqBlocks {
        let mut pool = self.pool.borrow_mut();
        for &b in self.blocks.iter().chain(self.local_tables().iter().flatten()).filter(|&&b| b != NO_BLOCK) {
            pool.retain(b);
        }
        SeqBlocks {
            pool: self.pool.clone(),
            blocks: self.blocks.clone(),
            hashes: self.hashes.clone(),
            root: self.root,
            local: self.local.clone(),
        }
    }
}

impl Drop for SeqBlocks {
    fn drop(&mut self) {
        let mut pool = self.pool.borrow_mut();
        // Local pages first: without their global prefix they are worth nothing.
        for t in self.local.iter().flat_map(|l| l.tables.iter()) {
            for &b in t.iter().rev().filter(|&&b| b != NO_BLOCK) {
                pool.release(b);
            }
        }
        for &b in self.blocks.iter().rev() {
            pool.release(b);
        }
    }
}
