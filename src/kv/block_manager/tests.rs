use super::*;
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
    const BS: usize = 4;
    let m = BlockManager::new(48, BS, true);
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
        salt: Option<&'static str>,
    }
    let mut live: Vec<Live> = Vec::new();
    let mut counts = [0usize; 6];
    let (mut hits, mut evictions_seen) = (0, 0);
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
                let needed = tokens.len().div_ceil(BS) - hit.blocks.len() + hit.num_queued;
                if needed <= m.num_free() {
                    hits += !hit.blocks.is_empty() as usize;
                    let mut table = m.take_hit(hit, Some(tokens.len()));
                    table.reserve(cached, tokens.len()).expect("counted above");
                    table.commit(&tokens, tokens.len());
                    live.push(Live { table, computed: tokens.len(), tokens, salt });
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
                    l.tokens.extend((0..n).map(|_| rng.below(5) as u32));
                    l.computed += n;
                    l.table.commit(&l.tokens, l.computed);
                }
            }
            // Fork (n > 1).
            3 if !live.is_empty() && live.len() < 12 => {
                let i = rng.below(live.len());
                let table = live[i].table.fork();
                let (tokens, computed, salt) = (live[i].tokens.clone(), live[i].computed, live[i].salt);
                live.push(Live { table, tokens, computed, salt });
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
    drop(live);
    m.check(&[]).unwrap();
    assert_eq!(m.num_free(), 48, "nothing leaked");
    assert!(hits > 1000 && evictions_seen > 1000, "the test exercised hits ({hits}) and evictions ({evictions_seen})");
    assert!(counts.iter().all(|&c| c > 10_000), "{counts:?}");
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
