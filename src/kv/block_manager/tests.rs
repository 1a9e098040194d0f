use super::pool::local_hash;
use super::*;
use crate::kv::KvError;
use crate::testing::Rng;

#[test]
fn reserve_grows_by_whole_blocks_and_drop_returns_them() {
    let m = BlockManager::new(3, 4, true);
    let mut t = m.table(None);
    t.reserve(0, 5).unwrap();
    assert_eq!(t.blocks().len(), 2);
    t.reserve(5, 8).unwrap();
    assert_eq!(t.blocks().len(), 2);
    assert_eq!(t.reserve(8, 13), Err(KvError::OutOfBlocks { needed: 2, free: 1 }));
    assert_eq!(t.blocks().len(), 2, "a failed reserve changes nothing");
    assert_eq!(m.num_free(), 1);
    drop(t);
    assert_eq!(m.num_free(), 3);
    m.check(&[]).unwrap();
}

#[test]
fn a_committed_prefix_is_found_verified_and_salted() {
    let m = BlockManager::new(8, 4, true);
    let tokens: Vec<u32> = (0..11).collect();
    let mut a = m.table(None);
    a.reserve(0, 11).unwrap();
    a.commit(&tokens, 11);
    assert_eq!(m.num_cached(), 2, "two full blocks, the partial third is not cached");
    let hit = m.lookup(&tokens, None, usize::MAX);
    assert_eq!(hit.blocks, a.blocks()[..2]);
    assert_eq!(hit.num_queued, 0, "still referenced by a");
    assert!(m.lookup(&tokens, Some("tenant-b"), usize::MAX).blocks.is_empty(), "salt separates tenants");
    let mut other = tokens.clone();
    other[5] = 99;
    assert_eq!(m.lookup(&other, None, usize::MAX).blocks.len(), 1, "the chain breaks at the first different block");
    assert_eq!(m.lookup(&tokens, None, 1).blocks.len(), 1, "max_blocks caps the hit");

    let blocks = a.blocks().to_vec();
    drop(a);
    let hit = m.lookup(&tokens, None, usize::MAX);
    assert_eq!(hit.blocks, blocks[..2], "freed cached blocks stay cached");
    assert_eq!(hit.num_queued, 2);
    let b = m.take_hit(hit, Some(tokens.len()));
    assert_eq!(m.num_free(), 6);
    assert_eq!(m.stats().hit_tokens, 8);
    assert_eq!(m.stats().queried_tokens, 11);
    m.check(&[&b]).unwrap();
}

#[test]
fn eviction_takes_uncached_blocks_first_then_least_recently_used() {
    let m = BlockManager::new(4, 2, true);
    let mut a = m.table(None);
    a.reserve(0, 4).unwrap();
    a.commit(&[1, 2, 3, 4], 4);
    drop(a);
    assert_eq!(m.num_cached(), 2);
    let mut b = m.table(None);
    b.reserve(0, 4).unwrap();
    assert_eq!(m.num_cached(), 2, "two never-cached blocks are used before evicting");
    b.reserve(4, 6).unwrap();
    assert_eq!(m.num_cached(), 1, "then the least valuable cached block goes: the sequence's tail");
    assert_eq!(m.lookup(&[1, 2, 3, 4], None, 9).blocks.len(), 1, "the prefix block survives");
    assert_eq!(m.stats().evictions, 1);
}

#[test]
fn fork_shares_and_copy_on_write_gives_each_writer_its_own_tail() {
    let m = BlockManager::new(6, 4, true);
    let mut a = m.table(None);
    a.reserve(0, 6).unwrap();
    a.commit(&[1, 2, 3, 4, 5, 6], 6);
    let mut b = a.fork();
    assert_eq!(a.blocks(), b.blocks());
    assert_eq!(m.num_free(), 4);
    assert_eq!(b.blocks_needed(6, 7), 1, "writing the shared tail needs a copy");
    b.reserve(6, 7).unwrap();
    assert_eq!(a.blocks()[0], b.blocks()[0], "the full block stays shared");
    assert_ne!(a.blocks()[1], b.blocks()[1]);
    assert_eq!(m.take_copies(), vec![(a.blocks()[1], b.blocks()[1])]);
    assert_eq!(a.blocks_needed(6, 7), 0, "a is the sole owner again: writes in place");
    a.reserve(6, 7).unwrap();
    assert!(m.take_copies().is_empty());
    m.check(&[&a, &b]).unwrap();
    drop(a);
    drop(b);
    assert_eq!(m.num_free(), 6);
    m.check(&[]).unwrap();
}

/// 100,000 random operations on a small pool, checking the full invariant set after each:
/// no leak, ref counts equal to the holders, shared blocks only as shared prefixes, cache
/// entries pointing at their blocks, every hit verified against the tokens.
#[test]
fn randomized_operations_keep_every_invariant() {
    randomized_operations(None);
}

/// The same with sliding-window pools: two local groups seeing 6 keys (1½ blocks).
#[test]
fn randomized_operations_keep_every_invariant_with_a_sliding_window() {
    randomized_operations(Some(WindowGroups { window: 6, local_pages: 2 }));
}

fn randomized_operations(window: Option<WindowGroups>) {
    const BS: usize = 4;
    let m = BlockManager::with_window(48, BS, true, window);
    m.record_events();
    // What a KV-event subscriber believes is cached: always exactly the cache's keys.
    let mut announced: std::collections::HashMap<u64, (Option<u64>, Vec<u32>)> = Default::default();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    // A few shared "system prompts" so hits happen often.
    let prefixes: Vec<Vec<u32>> = (0..4).map(|p| (0..(8 + 4 * p)).map(|i| (p * 100 + i) as u32).collect()).collect();
    struct Live {
        table: SeqBlocks,
        tokens: Vec<u32>,
        computed: usize,
        /// The start of the last reserve (the window's releases follow it).
        start: usize,
        salt: Option<&'static str>,
    }
    let mut live: Vec<Live> = Vec::new();
    let mut counts = [0usize; 6];
    let (mut hits, mut evictions_seen, mut windowed_holes) = (0, 0, 0);
    for step in 0..100_000 {
        let op = rng.below(6);
        match op {
            // Admit a new sequence: a shared prefix plus a random tail, prefix-cache lookup.
            0 | 1 if live.len() < 12 => {
                let salt = [None, Some("t1")][rng.below(2)];
                let mut tokens = prefixes[rng.below(prefixes.len())].clone();
                tokens.extend((0..rng.below(9)).map(|_| rng.below(5) as u32));
                let max_blocks = (tokens.len() - 1) / BS;
                let hit = m.lookup(&tokens, salt, max_blocks);
                let root = root_hash(salt);
                let mut parent = root;
                for (i, &b) in hit.blocks.iter().enumerate() {
                    let chunk = &tokens[i * BS..(i + 1) * BS];
                    let key = m.pool.borrow().meta[b as usize].key.clone().expect("hit blocks are cached");
                    assert_eq!((key.parent, &*key.tokens), (parent, chunk), "a hit is verified by content");
                    parent = key.hash;
                }
                let cached = hit.blocks.len() * BS;
                if let Some(w) = window {
                    let first = w.first_block(cached_of(&hit), BS);
                    for (g, pages) in hit.local.iter().enumerate() {
                        assert_eq!(pages.len(), hit.blocks.len() - first, "the window's pages of every block");
                        for (i, &p) in (first..).zip(pages) {
                            let key = m.pool.borrow().meta[p as usize].key.clone().expect("hit pages are cached");
                            assert_eq!((key.hash, &*key.tokens), (local_hash(hit.hashes[i], g), &tokens[i * BS..(i + 1) * BS]));
                        }
                    }
                }
                let needed = m.pages_to_admit(&hit, tokens.len());
                if needed <= m.num_free() {
                    hits += !hit.blocks.is_empty() as usize;
                    let mut table = m.take_hit(hit, Some(tokens.len()));
                    table.reserve(cached, tokens.len()).expect("counted above");
                    table.commit(&tokens, tokens.len());
                    live.push(Live { table, computed: tokens.len(), start: cached, tokens, salt });
                } else {
                    let mut table = m.take_hit(hit, Some(tokens.len()));
                    assert!(table.reserve(cached, tokens.len()).is_err());
                }
            }
            // Append (decode) tokens to a sequence.
            2 if !live.is_empty() => {
                let i = rng.below(live.len());
                let l = &mut live[i];
                let n = 1 + rng.below(5);
                if l.table.reserve(l.computed, l.computed + n).is_ok() {
                    l.start = l.computed;
                    l.tokens.extend((0..n).map(|_| rng.below(5) as u32));
                    l.computed += n;
                    l.table.commit(&l.tokens, l.computed);
                }
            }
            // Fork (n > 1).
            3 if !live.is_empty() && live.len() < 12 => {
                let i = rng.below(live.len());
                let table = live[i].table.fork();
                let (tokens, computed, start, salt) = (live[i].tokens.clone(), live[i].computed, live[i].start, live[i].salt);
                live.push(Live { table, tokens, computed, start, salt });
            }
            // Free (finish, cancel or preempt).
            4 if !live.is_empty() => {
                live.swap_remove(rng.below(live.len()));
            }
            // Pressure: a large allocation that evicts cached blocks, then frees them.
            5 => {
                let before = m.stats().evictions;
                let mut t = m.table(None);
                let _ = t.reserve(0, BS * (1 + rng.below(m.num_free().max(1))));
                evictions_seen += (m.stats().evictions > before) as usize;
            }
            _ => {}
        }
        counts[op] += 1;
        let copies = m.take_copies();
        for (src, dst) in copies {
            assert_ne!(src, dst);
        }
        let tables: Vec<&SeqBlocks> = live.iter().map(|l| &l.table).collect();
        if let Some(w) = window {
            for l in &live {
                // Below the window of the last reserve's start nothing is held; from it on,
                // everything.
                let first = w.first_block(l.start, BS);
                for t in l.table.local_tables() {
                    assert!(t[..first.min(t.len())].iter().all(|&b| b == NO_BLOCK), "step {step}: a page below the window");
                    assert!(t[first.min(t.len())..].iter().all(|&b| b != NO_BLOCK), "step {step}: a hole inside the window");
                }
            }
            windowed_holes += live.iter().any(|l| l.table.local_tables().iter().any(|t| t.first() == Some(&NO_BLOCK))) as usize;
        }
        if let Err(e) = m.check(&tables) {
            panic!("step {step}: {e}");
        }
        apply_events(&mut announced, m.take_events(), BS);
        let pool = m.pool.borrow();
        assert_eq!(announced.len(), pool.cache.len(), "step {step}: events and cache disagree");
        for (hash, &id) in &pool.cache {
            let key = pool.meta[id as usize].key.as_ref().unwrap();
            let root = root_hash(if announced[hash].0.is_none() && key.parent != root_hash(None) { Some("t1") } else { None });
            let parent = (key.parent != root).then_some(key.parent);
            assert_eq!(announced[hash], (parent, key.tokens.to_vec()), "step {step}: block {hash:x} announced otherwise");
        }
    }
    if window.is_some() {
        assert!(windowed_holes > 1000, "sequences outgrew the window ({windowed_holes} steps with released pages)");
    }
    drop(live);
    m.check(&[]).unwrap();
    assert_eq!(m.num_free(), 48, "nothing leaked");
    assert!(hits > 1000 && evictions_seen > 1000, "the test exercised hits ({hits}) and evictions ({evictions_seen})");
    assert!(counts.iter().all(|&c| c > 10_000), "{counts:?}");
}

fn cached_of(hit: &PrefixHit) -> usize {
    hit.blocks.len() * 4
}

/// Applies KV events as a subscriber would: block hash -> (parent, tokens).
fn apply_events(announced: &mut std::collections::HashMap<u64, (Option<u64>, Vec<u32>)>, events: Vec<KvEvent>, bs: usize) {
    for e in events {
        match e {
            KvEvent::Stored { hashes, parent, tokens, .. } => {
                assert_eq!(tokens.len(), hashes.len() * bs, "full blocks only");
                let mut parent = parent;
                for (h, chunk) in hashes.iter().zip(tokens.chunks(bs)) {
                    if let Some(p) = parent {
                        assert!(announced.contains_key(&p), "a parent is announced before its child");
                    }
                    assert!(announced.insert(*h, (parent, chunk.to_vec())).is_none(), "block {h:x} stored twice");
                    parent = Some(*h);
                }
            }
            KvEvent::Removed { hashes } => {
                for h in hashes {
                    assert!(announced.remove(&h).is_some(), "block {h:x} removed but never stored");
                }
            }
            KvEvent::Cleared => announced.clear(),
        }
    }
}

#[test]
fn events_announce_chains_parent_first_and_name_salted_namespaces() {
    let m = BlockManager::new(4, 2, true);
    m.record_events();
    let mut t = m.table(None);
    t.reserve(0, 5).unwrap();
    t.commit(&[1, 2, 3, 4, 5], 5);
    let events = m.take_events();
    let [KvEvent::Stored { hashes, parent: None, tokens, namespace: None }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((hashes.len(), &tokens[..]), (2, &[1, 2, 3, 4][..]), "one chain of the two full blocks");
    let first = hashes.clone();
    // A salted tenant with the same tokens: other hashes, its namespace named.
    let mut s = m.table(Some("tenant"));
    s.reserve(0, 2).unwrap();
    s.commit(&[1, 2], 2);
    let events = m.take_events();
    let [KvEvent::Stored { hashes, parent: None, namespace: Some(ns), .. }] = &events[..] else { panic!("{events:?}") };
    assert_ne!(hashes[0], first[0]);
    assert_eq!(*ns, root_hash(Some("tenant")));
    drop((t, s));
    assert!(m.take_events().is_empty(), "freeing keeps blocks cached");
    // Pressure evicts them: least recently used first, announced as removed.
    let mut big = m.table(None);
    big.reserve(0, 8).unwrap();
    let events = m.take_events();
    let [KvEvent::Removed { hashes }] = &events[..] else { panic!("{events:?}") };
    assert_eq!(hashes.len(), 3);
    assert!(first.iter().all(|h| hashes.contains(h)));
    // Without recording, nothing is kept.
    let quiet = BlockManager::new(2, 2, true);
    let mut q = quiet.table(None);
    q.reserve(0, 2).unwrap();
    q.commit(&[1, 2], 2);
    assert!(quiet.take_events().is_empty());
}

/// A sliding-window table holds a constant number of local pages however long the sequence,
/// a hit needs the window's local pages (and takes the longest prefix that has them), and
/// nothing leaks.
#[test]
fn local_pages_stay_within_the_window_and_hits_need_them() {
    const BS: usize = 4;
    let w = WindowGroups { window: 6, local_pages: 2 };
    let m = BlockManager::with_window(64, BS, true, Some(w));
    let tokens: Vec<u32> = (0..40).collect();
    let mut a = m.table(None);
    let mut peak = 0;
    for pos in 0..40 {
        a.reserve(pos, pos + 1).unwrap();
        a.commit(&tokens, pos + 1);
        let held: usize = a.local_tables().iter().map(|t| t.iter().filter(|&&b| b != NO_BLOCK).count()).sum();
        peak = peak.max(held);
        m.check(&[&a]).unwrap();
    }
    // A query at position p sees p-5..=p: at most three blocks of four, in each of two groups.
    assert_eq!(peak, 6);
    assert_eq!(m.num_used(), 10 + 4, "ten global pages, two local groups of two");
    drop(a);
    assert_eq!(m.num_free(), 64);
    // Every page is still cached: the whole prompt but its last token hits.
    let hit = m.lookup(&tokens, None, 39 / BS);
    assert_eq!(hit.blocks.len(), 9);
    assert_eq!(hit.local.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2], "blocks 7 and 8 hold the window of position 36");
    assert_eq!(m.pages_to_admit(&hit, 40), 9 + 4 + 3, "the hit's pages, then block 9 in each table");
    // Evict block 8's local page of group 1: the longest prefix whose window is cached is
    // now 8 blocks (its window, blocks 6 and 7, intact).
    let page = hit.local[1][1];
    {
        let mut pool = m.pool.borrow_mut();
        let key = pool.meta[page as usize].key.take().unwrap();
        pool.local_cache.remove(&key.hash);
    }
    let hit = m.lookup(&tokens, None, 39 / BS);
    assert_eq!(hit.blocks.len(), 8);
    let mut b = m.take_hit(hit, Some(40));
    assert_eq!(b.local_tables()[0][..6], [NO_BLOCK; 6]);
    b.reserve(32, 40).unwrap();
    b.commit(&tokens, 40);
    m.check(&[&b]).unwrap();
    assert!(b.local_tables().iter().all(|t| t.len() == 10 && t[7..].iter().all(|&p| p != NO_BLOCK)));
    drop(b);
    assert_eq!(m.num_free(), 64);
    m.check(&[]).unwrap();
}

/// A reserve that would fit only once the pages below the window are released succeeds, and
/// a fork shares local pages and copies the written one.
#[test]
fn released_pages_make_room_and_forks_copy_local_pages_on_write() {
    const BS: usize = 2;
    let w = WindowGroups { window: 2, local_pages: 1 };
    let m = BlockManager::with_window(6, BS, false, Some(w));
    let mut a = m.table(None);
    a.reserve(0, 4).unwrap();
    assert_eq!(m.num_free(), 2);
    // Position 4's window is 3..=4: block 0's local page is released first, then block 2
    // takes one global and one local page.
    assert_eq!(a.blocks_needed(4, 5), 2);
    a.reserve(4, 5).unwrap();
    assert_eq!(a.local_tables()[0][0], NO_BLOCK);
    assert_eq!(m.num_free(), 1);
    let mut b = a.fork();
    b.reserve(5, 6).unwrap_err();
    m.check(&[&a, &b]).unwrap();
    drop(a);
    b.reserve(5, 6).unwrap();
    assert!(m.take_copies().is_empty(), "b is the sole owner after a is dropped");
    let mut c = b.fork();
    c.reserve(5, 6).unwrap();
    let copies = m.take_copies();
    assert_eq!(copies.len(), 2, "the shared block 2 copied in the global and the local table: {copies:?}");
    m.check(&[&b, &c]).unwrap();
    drop((b, c));
    assert_eq!(m.num_free(), 6);
}
