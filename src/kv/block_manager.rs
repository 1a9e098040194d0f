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

use super::KvError;
use super::events::KvEvent;
use crate::idmap::IdMap;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::rc::Rc;

const NIL: u32 = u32::MAX;

/// A prefix-cache key of one full block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockKey {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
    /// A local page (in `Pool::local_cache`, never announced by KV events).
    local: bool,
}

#[derive(Debug, Clone)]
struct BlockMeta {
    ref_count: u32,
    key: Option<BlockKey>,
    prev: u32,
    next: u32,
    queued: bool,
}

/// Prefix-cache counters, in tokens (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Prompt tokens of admitted sequences that were looked up.
    pub queried_tokens: u64,
    /// Of those, tokens found in the cache.
    pub hit_tokens: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
}

#[derive(Debug)]
struct Pool {
    block_size: usize,
    meta: Vec<BlockMeta>,
    head: u32,
    tail: u32,
    num_queued: usize,
    cache: IdMap<u64, u32>,
    /// The local pages' cache (sliding-window layers), keyed by [`local_hash`].
    local_cache: IdMap<u64, u32>,
    copies: Vec<(u32, u32)>,
    stats: CacheStats,
    caching: bool,
    /// Changes to the cache since the last [`BlockManager::take_events`], while recording.
    events: Option<Vec<KvEvent>>,
    /// The shared namespace's root hash (`root_hash(None)`).
    shared_root: u64,
}

impl Pool {
    fn unlink(&mut self, id: u32) {
        let (prev, next) = {
            let m = &mut self.meta[id as usize];
            debug_assert!(m.queued);
            m.queued = false;
            (std::mem::replace(&mut m.prev, NIL), std::mem::replace(&mut m.next, NIL))
        };
        if prev == NIL {
            self.head = next
        } else {
            self.meta[prev as usize].next = next
        }
        if next == NIL {
            self.tail = prev
        } else {
            self.meta[next as usize].prev = prev
        }
        self.num_queued -= 1;
    }

    fn push_front(&mut self, id: u32) {
        let old = self.head;
        let m = &mut self.meta[id as usize];
        (m.prev, m.next, m.queued) = (NIL, old, true);
        if old == NIL {
            self.tail = id
        } else {
            self.meta[old as usize].prev = id
        }
        self.head = id;
        self.num_queued += 1;
    }

    fn push_back(&mut self, id: u32) {
        let old = self.tail;
        let m = &mut self.meta[id as usize];
        (m.prev, m.next, m.queued) = (old, NIL, true);
        if old == NIL {
            self.head = id
        } else {
            self.meta[old as usize].next = id
        }
        self.tail = id;
        self.num_queued += 1;
    }

    /// Takes the head of the free queue, evicting its cache entry.
    fn pop(&mut self) -> Option<u32> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        if let Some(key) = self.meta[id as usize].key.take() {
            if key.local {
                if self.local_cache.get(&key.hash) == Some(&id) {
                    self.local_cache.remove(&key.hash);
                }
            } else if self.cache.get(&key.hash) == Some(&id) {
                self.cache.remove(&key.hash);
                self.record_removed(key.hash);
            }
            self.stats.evictions += 1;
        }
        self.meta[id as usize].ref_count = 1;
        Some(id)
    }

    /// Adds a reference to `id`, taking it out of the free queue if it was there.
    fn retain(&mut self, id: u32) {
        if self.meta[id as usize].queued {
            self.unlink(id);
        }
        self.meta[id as usize].ref_count += 1;
    }

    fn record_removed(&mut self, hash: u64) {
        let Some(events) = &mut self.events else { return };
        match events.last_mut() {
            Some(KvEvent::Removed { hashes }) => hashes.push(hash),
            _ => events.push(KvEvent::Removed { hashes: vec![hash] }),
        }
    }

    /// A block newly cached: extends the last event when it is the chain this block continues.
    fn record_stored(&mut self, key: &BlockKey, root: u64) {
        let Some(events) = &mut self.events else { return };
        if let Some(KvEvent::Stored { hashes, tokens, .. }) = events.last_mut()
            && hashes.last() == Some(&key.parent)
        {
            hashes.push(key.hash);
            tokens.extend_from_slice(&key.tokens);
            return;
        }
        let parent = (key.parent != root).then_some(key.parent);
        let namespace = (root != self.shared_root).then_some(root);
        events.push(KvEvent::Stored { hashes: vec![key.hash], parent, tokens: key.tokens.to_vec(), namespace });
    }

    fn release(&mut self, id: u32) {
        let m = &mut self.meta[id as usize];
        debug_assert!(m.ref_count > 0, "block {id} released twice");
        m.ref_count -= 1;
        if m.ref_count == 0 {
            if m.key.is_some() { self.push_back(id) } else { self.push_front(id) }
        }
    }
}

/// The first 8 bytes of a SHA-256 digest: stable across builds, platforms and replicas (KV
/// events name blocks by it).
fn digest_u64(h: Sha256) -> u64 {
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("32-byte digest"))
}

/// The chained hash of one block.
fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = Sha256::new();
    h.update(parent.to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    digest_u64(h)
}

/// The local-page cache key of group `group` for the block whose chained hash is `hash`.
fn local_hash(hash: u64, group: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(b"ballast-local\0");
    h.update(hash.to_le_bytes());
    h.update((group as u64).to_le_bytes());
    digest_u64(h)
}

/// A table entry below a sliding window: the page was released (see the module doc).
pub const NO_BLOCK: u32 = NIL;

/// How a model with sliding-window layers pages its KV cache (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGroups {
    /// Keys a local layer's query sees: its own and the `window - 1` before it.
    pub window: usize,
    /// Groups of local layers, each with a table of its own (pages a local block takes).
    pub local_pages: usize,
}

impl WindowGroups {
    /// The first block a query at position `pos` or later can see.
    pub fn first_block(&self, pos: usize, block_size: usize) -> usize {
        (pos + 1).saturating_sub(self.window) / block_size
    }
}

/// `h_{-1}`: the chain's root for a tenant salt (`None` is the shared namespace).
pub fn root_hash(salt: Option<&str>) -> u64 {
    let mut h = Sha256::new();
    h.update(b"ballast-prefix\0");
    match salt {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update(s.as_bytes());
        }
    }
    digest_u64(h)
}

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
        let meta = (0..num_blocks as u32)
            .map(|i| BlockMeta {
                ref_count: 0,
                key: None,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == num_blocks as u32 { NIL } else { i + 1 },
                queued: true,
            })
            .collect();
        let pool = Pool {
            block_size,
            meta,
            head: if num_blocks == 0 { NIL } else { 0 },
            tail: if num_blocks == 0 { NIL } else { num_blocks as u32 - 1 },
            num_queued: num_blocks,
            cache: IdMap::default(),
            local_cache: IdMap::default(),
            copies: Vec::new(),
            stats: CacheStats::default(),
            caching: prefix_caching,
            events: None,
            shared_root: root_hash(None),
        };
        BlockManager { pool: Rc::new(RefCell::new(pool)), window }
    }

    /// The sliding-window geometry, for a pool made by [`Self::with_window`].
    pub fn window(&self) -> Option<WindowGroups> {
        self.window
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
        let local = self.window.map(|w| LocalTables { window: w, tables: vec![Vec::new(); w.local_pages], registered: 0 });
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
            LocalTables { window: w, tables, registered: hit.blocks.len() }
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

/// Narrows a global prefix hit to the longest prefix whose window every local group's cached
/// pages also cover (see the module doc), and collects those pages.
fn local_hit(pool: &Pool, w: WindowGroups, tokens: &[u32], hit: &mut PrefixHit) {
    let bs = pool.block_size;
    let n = hit.blocks.len();
    // Block `i`'s pages, one per group, when every group's is cached for exactly its tokens.
    let pages = |i: usize| -> Option<Vec<u32>> {
        let parent = if i == 0 { hit.root } else { hit.hashes[i - 1] };
        let chunk = &tokens[i * bs..(i + 1) * bs];
        (0..w.local_pages)
            .map(|g| {
                let &id = pool.local_cache.get(&local_hash(hit.hashes[i], g))?;
                let k = pool.meta[id as usize].key.as_ref()?;
                (k.parent == parent && *k.tokens == *chunk).then_some(id)
            })
            .collect()
    };
    let mut found: Vec<Option<Vec<u32>>> = vec![None; n];
    let mut h = n;
    // A block missing at `i` rules out every `h > i` whose window reaches it, and the window
    // of a smaller `h` starts no later: the next candidate is `i`.
    let first = 'search: loop {
        let lo = w.first_block(h * bs, bs).min(h);
        for i in (lo..h).rev() {
            if found[i].is_none() {
                found[i] = pages(i);
            }
            if found[i].is_none() {
                h = i;
                continue 'search;
            }
        }
        break lo;
    };
    hit.blocks.truncate(h);
    hit.hashes.truncate(h);
    hit.local = (0..w.local_pages).map(|g| found[first..h].iter().map(|p| p.as_ref().expect("checked")[g]).collect()).collect();
    hit.local_first = first;
    hit.num_queued = hit.blocks.iter().chain(hit.local.iter().flatten()).filter(|&&id| pool.meta[id as usize].queued).count();
}

/// A sequence's local tables (sliding-window pools): one per group of local layers, all as
/// long as the global table, [`NO_BLOCK`] below the window.
#[derive(Debug, Clone)]
struct LocalTables {
    window: WindowGroups,
    tables: Vec<Vec<u32>>,
    /// Blocks below this index have been offered to the local cache.
    registered: usize,
}

/// One sequence's blocks in logical order. Dropping it releases them (cached blocks stay
/// cached until evicted).
#[derive(Debug)]
pub struct SeqBlocks {
    pool: Rc<RefCell<Pool>>,
    blocks: Vec<u32>,
    /// Chained hashes of the leading full, computed blocks registered so far.
    hashes: Vec<u64>,
    root: u64,
    local: Option<LocalTables>,
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
            let lo = l.window.first_block(start, bs);
            for t in &l.tables {
                needed += grow + shared(t) as usize;
                freed += t[..lo.min(t.len())].iter().filter(|&&b| b != NO_BLOCK && pool.meta[b as usize].ref_count == 1).count();
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
            let lo = l.window.first_block(start, bs);
            for t in &mut l.tables {
                let below = lo.min(t.len());
                for b in t[..below].iter_mut().rev().filter(|b| **b != NO_BLOCK) {
                    pool.release(std::mem::replace(b, NO_BLOCK));
                }
            }
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

#[cfg(test)]
mod tests;
