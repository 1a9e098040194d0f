//! Block ids with reference counts, per-sequence tables that free themselves, and the
//! automatic prefix cache.
//!
//! # Contract
//!
//! A [`BlockManager`] is a handle to one pool of `num_blocks` ids (cheap to clone, single
//! thread: the engine thread owns it). Every id is in exactly one of two states:
//! - **referenced**: `ref_count > 0`, held by that many [`SeqBlocks`] tables;
//! - **queued**: `ref_count == 0`, in the *free queue*, an intrusive doubly linked list whose
//!   head is reused first. Uncached blocks enter at the head (they are worth nothing), cached
//!   ones at the tail (least recently used first out), a table's last block first so a
//!   sequence's tail goes before its prefix.
//!
//! A block is *cached* when it is full, its K/V have been computed, and it is registered under
//! its chained hash `h_i = H(h_{i-1}, tokens of block i)` (`h_{-1}` = hash of the tenant salt,
//! so tenants with different salts never share entries). A lookup walks a prompt's full blocks
//! and accepts a block only if its stored parent hash and token ids equal the prompt's: a hash
//! collision can cost a miss, never a wrong hit. Cached blocks are never written again.
//!
//! Sharing: a block is held by several tables only as part of a shared prefix — a cached
//! block (prefix reuse) or a block copied by [`SeqBlocks::fork`] — so it sits at the same
//! logical index in each. Before a table writes into a
//! shared block, [`SeqBlocks::reserve`] gives it a private copy (copy-on-write) and records the
//! `(src, dst)` pair, which the engine copies on the device before the step runs
//! ([`BlockManager::take_copies`]).
//!
//! # Sliding-window layers
//!
//! A pool made by [`BlockManager::with_window`] serves a model whose local layers attend only
//! to their last `window` keys (Gemma 3). An id is then a *page*: one block of K/V for a group
//! of `g` layers (the backend's pool has `g` layers). A sequence's table holds the global
//! layers' pages ([`SeqBlocks::blocks`]) and, for each of the `local_pages` groups of local
//! layers, one more table ([`SeqBlocks::local_tables`]) whose entries below the window are
//! [`NO_BLOCK`]: [`SeqBlocks::reserve`]`(start, ..)` releases every local page whose positions
//! all lie before `start - window + 1`, the first key a query at `start` or later can see. A
//! long context thus costs the local layers a constant number of pages, and both kinds come
//! out of one free queue, so short and long sequences share the memory as they need it.
//!
//! Local pages are cached too, under [`local_hash`] of the block's chained hash and their
//! group, in a map of their own that KV events never announce. A prefix hit of `h` blocks
//! needs the global pages of all `h` and the local pages of every group for the blocks the
//! window of position `h * block_size` reaches; a lookup takes the longest such `h`.
//!
//! # Complexity
//! - allocate / free / evict one block: O(1) (list splice, hash-map removal);
//! - [`BlockManager::lookup`] of `n` tokens: O(n) hashing, O(n / block_size) map probes;
//! - [`SeqBlocks::commit`]: O(tokens newly completed);
//! - [`SeqBlocks::fork`]: O(blocks of the table); dropping a table: O(its blocks).

use super::events::KvEvent;
use pool::{NIL, Pool, block_hash};
use std::cell::RefCell;
use std::rc::Rc;
use window::{LocalTables, local_hit};

pub use pool::{CacheStats, root_hash};
pub use table::SeqBlocks;
pub use window::{NO_BLOCK, WindowGroups};

/// A prompt's cached prefix, found by [`BlockManager::lookup`]; valid until the pool next
/// changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    pub blocks: Vec<u32>,
    hashes: Vec<u64>,
    root: u64,
    /// Hit pages currently unreferenced, global and local (taking them uses up free-queue
    /// entries).
    pub num_queued: usize,
    /// Sliding-window pools: each local group's pages of blocks `local_first..blocks.len()`.
    local: Vec<Vec<u32>>,
    local_first: usize,
}

impl PrefixHit {
    pub fn num_tokens(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

/// A handle to the pool; see the module doc for the contract.
#[derive(Debug, Clone)]
pub struct BlockManager {
    pool: Rc<RefCell<Pool>>,
    window: Option<WindowGroups>,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` tokens; `prefix_caching` turns the cache
    /// on (off: blocks are never registered and lookups always miss).
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> BlockManager {
        BlockManager::with_window(num_blocks, block_size, prefix_caching, None)
    }

    /// A pool of `num_pages` pages for a model with sliding-window layers (see the module
    /// doc); `None` is [`Self::new`].
    pub fn with_window(num_blocks: usize, block_size: usize, prefix_caching: bool, window: Option<WindowGroups>) -> BlockManager {
        assert!(block_size > 0, "block size must be positive");
        assert!(window.is_none_or(|w| w.window > 0), "a sliding window sees at least one key");
        assert!(num_blocks < NIL as usize, "too many blocks");
        let pool = Pool::new(num_blocks, block_size, prefix_caching);
        BlockManager { pool: Rc::new(RefCell::new(pool)), window }
    }

    pub fn block_size(&self) -> usize {
        self.pool.borrow().block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.borrow().meta.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn num_free(&self) -> usize {
        self.pool.borrow().num_queued
    }

    /// Blocks held by at least one table.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Blocks registered in the prefix cache (referenced or not).
    pub fn num_cached(&self) -> usize {
        self.pool.borrow().cache.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.pool.borrow().stats
    }

    /// Starts recording [`KvEvent`]s (blocks cached and evicted) for [`Self::take_events`].
    pub fn record_events(&self) {
        self.pool.borrow_mut().events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call (none unless recording).
    pub fn take_events(&self) -> Vec<KvEvent> {
        self.pool.borrow_mut().events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// An empty table.
    pub fn table(&self, salt: Option<&str>) -> SeqBlocks {
        let local = self.window.map(|w| LocalTables { window: w, tables: vec![Vec::new(); w.local_pages], registered: 0, released: 0 });
        SeqBlocks { pool: self.pool.clone(), blocks: Vec::new(), hashes: Vec::new(), root: root_hash(salt), local }
    }

    /// The longest cached prefix of `tokens` made of full blocks, at most `max_blocks` of them.
    pub fn lookup(&self, tokens: &[u32], salt: Option<&str>, max_blocks: usize) -> PrefixHit {
        let pool = self.pool.borrow();
        let root = root_hash(salt);
        let mut hit = PrefixHit { root, ..PrefixHit::default() };
        if !pool.caching {
            return hit;
        }
        let mut parent = root;
        for chunk in tokens.chunks_exact(pool.block_size).take(max_blocks) {
            let hash = block_hash(parent, chunk);
            let Some(&id) = pool.cache.get(&hash) else { break };
            let m = &pool.meta[id as usize];
            let verified = m.key.as_ref().is_some_and(|k| k.parent == parent && *k.tokens == *chunk);
            if !verified {
                break;
            }
            hit.blocks.push(id);
            hit.hashes.push(hash);
            hit.num_queued += m.queued as usize;
            parent = hash;
        }
        if let Some(w) = self.window {
            local_hit(&pool, w, tokens, &mut hit);
        }
        hit
    }

    /// Pages a new table taking `hit` needs to hold positions `0..end` (as
    /// [`SeqBlocks::reserve`]`(hit's tokens, end)` after [`Self::take_hit`] would take).
    pub fn pages_to_admit(&self, hit: &PrefixHit, end: usize) -> usize {
        let grow = end.div_ceil(self.block_size()).saturating_sub(hit.blocks.len());
        grow * (1 + self.window.map_or(0, |w| w.local_pages)) + hit.num_queued
    }

    /// A table starting with the blocks of `hit` (which must come from [`Self::lookup`] with
    /// no pool change since). `count_prompt`: the prompt's length, to count this lookup in the
    /// hit rate (`None` for a lookup that should not count, such as a resumption).
    pub fn take_hit(&self, hit: PrefixHit, count_prompt: Option<usize>) -> SeqBlocks {
        let mut pool = self.pool.borrow_mut();
        for &id in hit.blocks.iter().chain(hit.local.iter().flatten()) {
            pool.retain(id);
        }
        if let Some(n) = count_prompt {
            pool.stats.queried_tokens += n as u64;
            pool.stats.hit_tokens += (hit.blocks.len() * pool.block_size).min(n) as u64;
        }
        drop(pool);
        let local = self.window.map(|w| {
            let tables = hit
                .local
                .into_iter()
                .chain(std::iter::repeat(Vec::new()))
                .take(w.local_pages)
                .map(|ids| std::iter::repeat_n(NO_BLOCK, hit.local_first).chain(ids).collect())
                .collect();
            LocalTables { window: w, tables, registered: hit.blocks.len(), released: hit.local_first }
        });
        SeqBlocks { pool: self.pool.clone(), blocks: hit.blocks, hashes: hit.hashes, root: hit.root, local }
    }

    /// The `(src, dst)` block copies recorded since the last call; the caller must perform
    /// them before the step that writes `dst`.
    pub fn take_copies(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.pool.borrow_mut().copies)
    }

    /// Checks every invariant of the module doc against the given live tables (all of them);
    /// a description of the first violation otherwise. O(blocks + table entries).
    pub fn check(&self, tables: &[&SeqBlocks]) -> Result<(), String> {
        let pool = self.pool.borrow();
        let n = pool.meta.len();
        // Every table of every sequence: the global one, then each local group's.
        let slices: Vec<&[u32]> =
            tables.iter().flat_map(|t| std::iter::once(&t.blocks[..]).chain(t.local_tables().iter().map(|l| &l[..]))).collect();
        let mut refs = vec![0u32; n];
        for t in &slices {
            for &b in t.iter().filter(|&&b| b != NO_BLOCK) {
                if b as usize >= n {
                    return Err(format!("a table names block {b} of a pool of {n}"));
                }
                refs[b as usize] += 1;
            }
        }
        for t in tables {
            if let Some(l) = &t.local {
                let len = t.blocks.len();
                if l.tables.iter().any(|x| x.len() != len) {
                    return Err(format!("a local table's length differs from its global one ({len})"));
                }
            }
        }
        let mut queued = vec![false; n];
        let (mut id, mut prev, mut count) = (pool.head, NIL, 0);
        while id != NIL {
            let m = &pool.meta[id as usize];
            if queued[id as usize] || m.prev != prev || !m.queued {
                return Err(format!("free queue corrupt at block {id}"));
            }
            queued[id as usize] = true;
            (prev, id, count) = (id, m.next, count + 1);
        }
        if prev != pool.tail || count != pool.num_queued {
            return Err(format!("free queue holds {count} blocks, counted {}", pool.num_queued));
        }
        for (i, m) in pool.meta.iter().enumerate() {
            if m.ref_count != refs[i] {
                return Err(format!("block {i}: ref count {} but {} tables hold it", m.ref_count, refs[i]));
            }
            if (m.ref_count == 0) != queued[i] || m.queued != queued[i] {
                return Err(format!("block {i}: ref count {} but queued = {}", m.ref_count, queued[i]));
            }
            if refs[i] > 1 {
                let mut at = slices.iter().filter_map(|t| t.iter().position(|&b| b as usize == i));
                let first = at.next();
                if at.any(|p| Some(p) != first) {
                    return Err(format!("block {i} is shared at different positions"));
                }
            }
        }
        for (cache, local) in [(&pool.cache, false), (&pool.local_cache, true)] {
            for (&hash, &id) in cache {
                if pool.meta[id as usize].key.as_ref().map(|k| (k.hash, k.local)) != Some((hash, local)) {
                    return Err(format!("cache entry {hash:x} points at block {id} with another key"));
                }
            }
        }
        Ok(())
    }
}

mod pool;
mod table;
mod window;

#[cfg(test)]
mod tests;
