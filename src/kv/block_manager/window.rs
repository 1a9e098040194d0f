//! Sliding-window pages (see the module doc of [`super`]): the geometry, a prefix hit's
//! local pages, and a sequence's local tables.

use super::PrefixHit;
use super::pool::{NIL, Pool, local_hash};

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

/// Narrows a global prefix hit to the longest prefix whose window every local group's cached
/// pages also cover (see the module doc), and collects those pages.
pub(super) fn local_hit(pool: &Pool, w: WindowGroups, tokens: &[u32], hit: &mut PrefixHit) {
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
pub(super) struct LocalTables {
    pub(super) window: WindowGroups,
    pub(super) tables: Vec<Vec<u32>>,
    /// Blocks below this index have been offered to the local cache.
    pub(super) registered: usize,
    /// Every entry below this index is [`NO_BLOCK`] (a step scans only the new ones).
    pub(super) released: usize,
}

impl LocalTables {
    /// The entries that are held but lie below `lo`, where the window of `start` begins.
    pub(super) fn below(&self, start: usize, block_size: usize) -> std::ops::Range<usize> {
        let lo = self.window.first_block(start, block_size).min(self.tables.first().map_or(0, Vec::len));
        self.released.min(lo)..lo
    }
}
