//! The pool behind a [`super::BlockManager`]: block metadata, the free queue, the prefix
//! caches, and the hashes that key them.

use super::super::events::KvEvent;
use crate::idmap::IdMap;
use sha2::{Digest, Sha256};

pub(super) const NIL: u32 = u32::MAX;

/// A prefix-cache key of one full block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlockKey {
    pub(super) hash: u64,
    pub(super) parent: u64,
    pub(super) tokens: Box<[u32]>,
    /// A local page (in `Pool::local_cache`, never announced by KV events).
    pub(super) local: bool,
}

#[derive(Debug, Clone)]
pub(super) struct BlockMeta {
    pub(super) ref_count: u32,
    pub(super) key: Option<BlockKey>,
    pub(super) prev: u32,
    pub(super) next: u32,
    pub(super) queued: bool,
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
pub(super) struct Pool {
    pub(super) block_size: usize,
    pub(super) meta: Vec<BlockMeta>,
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) num_queued: usize,
    pub(super) cache: IdMap<u64, u32>,
    /// The local pages' cache (sliding-window layers), keyed by [`local_hash`].
    pub(super) local_cache: IdMap<u64, u32>,
    pub(super) copies: Vec<(u32, u32)>,
    pub(super) stats: CacheStats,
    pub(super) caching: bool,
    /// Changes to the cache since the last [`super::BlockManager::take_events`], while recording.
    pub(super) events: Option<Vec<KvEvent>>,
    /// The shared namespace's root hash (`root_hash(None)`).
    pub(super) shared_root: u64,
}

impl Pool {
    /// `num_blocks` free blocks of `block_size` tokens, all queued in id order.
    pub(super) fn new(num_blocks: usize, block_size: usize, caching: bool) -> Pool {
        let meta = (0..num_blocks as u32)
            .map(|i| BlockMeta {
                ref_count: 0,
                key: None,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == num_blocks as u32 { NIL } else { i + 1 },
                queued: true,
            })
            .collect();
        Pool {
            block_size,
            meta,
            head: if num_blocks == 0 { NIL } else { 0 },
            tail: if num_blocks == 0 { NIL } else { num_blocks as u32 - 1 },
            num_queued: num_blocks,
            cache: IdMap::default(),
            local_cache: IdMap::default(),
            copies: Vec::new(),
            stats: CacheStats::default(),
            caching,
            events: None,
            shared_root: root_hash(None),
        }
    }

    pub(super) fn unlink(&mut self, id: u32) {
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

    pub(super) fn push_front(&mut self, id: u32) {
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

    pub(super) fn push_back(&mut self, id: u32) {
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
    pub(super) fn pop(&mut self) -> Option<u32> {
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
    pub(super) fn retain(&mut self, id: u32) {
        if self.meta[id as usize].queued {
            self.unlink(id);
        }
        self.meta[id as usize].ref_count += 1;
    }

    pub(super) fn record_removed(&mut self, hash: u64) {
        let Some(events) = &mut self.events else { return };
        match events.last_mut() {
            Some(KvEvent::Removed { hashes }) => hashes.push(hash),
            _ => events.push(KvEvent::Removed { hashes: vec![hash] }),
        }
    }

    /// A block newly cached: extends the last event when it is the chain this block continues.
    pub(super) fn record_stored(&mut self, key: &BlockKey, root: u64) {
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

    pub(super) fn release(&mut self, id: u32) {
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
pub(super) fn digest_u64(h: Sha256) -> u64 {
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("32-byte digest"))
}

/// The chained hash of one block.
pub(super) fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = Sha256::new();
    h.update(parent.to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    digest_u64(h)
}

/// The local-page cache key of group `group` for the block whose chained hash is `hash`.
pub(super) fn local_hash(hash: u64, group: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(b"ballast-local\0");
    h.update(hash.to_le_bytes());
    h.update((group as u64).to_le_bytes());
    digest_u64(h)
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
