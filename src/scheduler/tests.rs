use super::*;

pub(super) const BS: usize = 4;

pub(super) fn sched(max_tokens: usize, max_seqs: usize, num_blocks: usize, aging: Duration) -> Scheduler {
    let config =
        SchedulerConfig { max_num_batched_tokens: max_tokens, max_num_seqs: max_seqs, max_step_tokens_while_decoding: usize::MAX, aging };
    Scheduler::new(config, BlockManager::new(num_blocks, BS, true))
}

pub(super) fn spec(id: SeqId, priority: Priority, arrival: Instant, prompt_len: usize) -> SeqSpec {
    let prompt = (0..prompt_len as u32).map(|t| t + 1000 * id as u32).collect();
    SeqSpec { id, priority, arrival, prompt, salt: None, deadline: None, extra_slots: 0 }
}

/// Runs one step as the engine would (every sampled sequence gets token 7) and checks the
/// invariants.
pub(super) fn step(s: &mut Scheduler, now: Instant) -> StepOutput {
    let out = s.schedule(now);
    assert!(out.num_tokens() <= s.config().max_num_batched_tokens, "token budget exceeded: {out:?}");
    assert!(s.slots_used() <= s.config().max_num_seqs, "slot budget exceeded");
    for sc in &out.scheduled {
        assert!(sc.start + sc.num_tokens <= s.block_table(sc.id).len() * BS, "table too short");
    }
    s.complete_step(&out);
    for sc in out.scheduled.iter().filter(|sc| sc.sample) {
        s.append_token(sc.id, 7);
    }
    s.check().unwrap();
    out
}

fn ids(out: &StepOutput) -> Vec<SeqId> {
    out.scheduled.iter().map(|s| s.id).collect()
}

#[test]
fn chunked_prefill_mixes_with_decode_within_the_budget() {
    let t0 = Instant::now();
    let mut s = sched(8, 8, 64, Duration::ZERO);
    s.add(spec(1, Priority::Normal, t0, 3));
    let out = step(&mut s, t0);
    assert_eq!(out.scheduled, vec![Scheduled { id: 1, start: 0, num_tokens: 3, sample: true, draft: 0 }]);
    s.add(spec(2, Priority::Normal, t0, 20));
    // Sequence 1 decodes one token per step; 2 is prefilled in chunks of the remaining 7.
    let mut chunks = Vec::new();
    for _ in 0..3 {
        let out = step(&mut s, t0);
        assert_eq!(out.scheduled[0], Scheduled { id: 1, start: s.tokens(1).len() - 2, num_tokens: 1, sample: true, draft: 0 });
        chunks.push((out.scheduled[1].start, out.scheduled[1].num_tokens, out.scheduled[1].sample));
    }
    assert_eq!(chunks, vec![(0, 7, false), (7, 7, false), (14, 6, true)]);
    let out = step(&mut s, t0);
    assert_eq!(out.num_tokens(), 2, "both decode");
}

/// While sequences decode, prompt chunks share `max_step_tokens_while_decoding` less the
/// decodes (never below a quarter of it); with nothing decoding they take the whole budget.
/// The share binds classes up to the highest decoding one: a higher class's prompt is not
/// held back, and an equal class short only of the share takes it from a lower class's
/// chunk, not from its decodes.
#[test]
fn prompt_chunks_are_capped_while_sequences_decode() {
    let t0 = Instant::now();
    let config =
        SchedulerConfig { max_num_batched_tokens: 64, max_num_seqs: 16, max_step_tokens_while_decoding: 12, aging: Duration::ZERO };
    let mut s = Scheduler::new(config, BlockManager::new(128, BS, true));
    s.add(spec(1, Priority::Low, t0, 40));
    assert_eq!(step(&mut s, t0).num_tokens(), 40, "nothing decodes: the whole budget");
    s.add(spec(2, Priority::Low, t0, 40));
    let out = step(&mut s, t0);
    assert_eq!(out.scheduled[1], Scheduled { id: 2, start: 0, num_tokens: 11, sample: false, draft: 0 }, "12 less one decode");
    for id in 3..=12 {
        s.add(spec(id, if id == 3 { Priority::Normal } else { Priority::Low }, t0, 2));
    }
    // Until all twelve decode, prompt chunks (2's rest, the short prompts) share at most 11
    // (the Normal one's two tokens came first: nothing Normal decoded yet).
    while (1..=12).any(|id| s.tokens(id).len() <= if id <= 2 { 40 } else { 2 }) {
        let out = step(&mut s, t0);
        let chunks: usize = out.scheduled.iter().filter(|x| x.num_tokens > 1 && x.id != 3).map(|x| x.num_tokens).sum();
        assert!(chunks <= 11, "{out:?}");
    }
    s.add(spec(13, Priority::Low, t0, 30));
    let out = step(&mut s, t0);
    let chunk = out.scheduled.iter().find(|x| x.id == 13).expect("13 admitted");
    assert_eq!(chunk.num_tokens, 3, "a quarter of 12 while 12 sequences decode");
    // High is above every decoding class: its prompt takes what the step has left.
    s.add(spec(14, Priority::High, t0, 30));
    let out = step(&mut s, t0);
    assert_eq!(out.scheduled.iter().find(|x| x.id == 14).map(|x| x.num_tokens), Some(30));
    assert!(out.preempted.is_empty());
    // Normal, like the highest decoding class, is capped: the share is held by 13's chunk, so
    // 13 is preempted and the decodes stay.
    s.add(spec(15, Priority::Normal, t0, 30));
    let out = step(&mut s, t0);
    assert_eq!(out.preempted, vec![13]);
    assert_eq!(out.scheduled.iter().find(|x| x.id == 15).map(|x| x.num_tokens), Some(3));
    assert_eq!(out.scheduled.iter().filter(|x| x.num_tokens == 1).count(), 13);
}

#[test]
fn a_higher_class_preempts_at_the_slot_limit() {
    let t0 = Instant::now();
    let mut s = sched(64, 2, 64, Duration::ZERO);
    s.add(spec(1, Priority::Low, t0, 5));
    s.add(spec(2, Priority::Low, t0 + Duration::from_millis(1), 5));
    step(&mut s, t0);
    step(&mut s, t0);
    // The slots are full of a lower class: the high request preempts.
    s.add(spec(3, Priority::High, t0 + Duration::from_millis(2), 5));
    let out = step(&mut s, t0);
    assert_eq!(out.preempted, vec![2], "the newest of the lowest class goes");
    assert_eq!(ids(&out), vec![1, 3]);
    assert_eq!(s.num_waiting(), 1);
    // Equal class never preempts.
    s.add(spec(4, Priority::Low, t0 + Duration::from_millis(3), 5));
    let out = step(&mut s, t0);
    assert!(out.preempted.is_empty());
    // When 3 finishes, the preempted sequence resumes from prompt + output, its full prompt
    // block still cached.
    s.remove(3);
    let out = step(&mut s, t0);
    let resumed = out.scheduled.iter().find(|sc| sc.id == 2).expect("2 resumes first (older)");
    assert_eq!(s.tokens(2).len(), 8, "prompt 5 + 2 tokens before preemption + 1 sampled now");
    assert_eq!(resumed.start, 4, "one cached block of 4 tokens");
    assert_eq!(resumed.num_tokens, 3);
    assert_eq!(s.num_preemptions_of(2), 1);
}

#[test]
fn a_higher_class_preempts_at_the_block_limit() {
    let t0 = Instant::now();
    // 6 blocks of 4 tokens: two 10-token prompts take 3 blocks each.
    let mut s = sched(64, 8, 6, Duration::ZERO);
    s.add(spec(1, Priority::Normal, t0, 10));
    s.add(spec(2, Priority::Low, t0, 10));
    step(&mut s, t0);
    assert_eq!(s.blocks().num_free(), 0);
    s.add(spec(3, Priority::Critical, t0, 6));
    let out = step(&mut s, t0);
    assert_eq!(out.preempted, vec![2]);
    assert!(ids(&out).contains(&3) && ids(&out).contains(&1));
    // Sequence 1 now needs a fourth block to grow past 12 tokens: with nothing lower running
    // than itself... it is the lowest running (normal vs critical) and preempts itself.
    for _ in 0..3 {
        step(&mut s, t0);
    }
    assert!(s.num_preemptions() >= 1);
    s.check().unwrap();
}

#[test]
fn cancellation_frees_blocks_at_once_mid_prefill_and_mid_decode() {
    let t0 = Instant::now();
    let mut s = sched(8, 8, 32, Duration::ZERO);
    s.add(spec(1, Priority::Normal, t0, 30));
    step(&mut s, t0);
    assert_eq!(s.blocks().num_free(), 30, "first chunk of 8 holds 2 blocks");
    assert!(s.remove(1), "cancel mid-prefill");
    assert_eq!(s.blocks().num_free(), 32);
    s.add(spec(2, Priority::Normal, t0, 3));
    step(&mut s, t0);
    step(&mut s, t0);
    assert_eq!(s.blocks().num_used(), 1);
    assert!(s.remove(2), "cancel mid-decode");
    assert_eq!(s.blocks().num_used(), 0);
    assert!(!s.remove(2));
    assert!(step(&mut s, t0).scheduled.is_empty());
}

#[test]
fn deadlines_expire_requests_that_can_no_longer_start_in_time() {
    let t0 = Instant::now();
    let mut s = sched(64, 1, 64, Duration::ZERO);
    s.set_prefill_rate(100.0);
    s.add(spec(1, Priority::Normal, t0, 10));
    step(&mut s, t0);
    // 50 tokens at 100 tok/s need 0.5 s: a 0.2 s deadline is hopeless now.
    let mut hopeless = spec(2, Priority::Normal, t0, 50);
    hopeless.deadline = Some(t0 + Duration::from_millis(200));
    s.add(hopeless);
    // A 1 s deadline is feasible, but it waits behind sequence 1 (one slot, same class).
    let mut feasible = spec(3, Priority::Normal, t0, 50);
    feasible.deadline = Some(t0 + Duration::from_secs(1));
    s.add(feasible);
    let out = step(&mut s, t0);
    assert_eq!(out.expired.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    assert!(!s.contains(2));
    let out = step(&mut s, t0 + Duration::from_millis(400));
    assert!(out.expired.is_empty(), "0.4 + 0.5 s is still in time");
    let out = step(&mut s, t0 + Duration::from_millis(600));
    assert_eq!(out.expired.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3], "0.6 + 0.5 s is not");
    s.check().unwrap();
}

#[test]
fn aging_lets_a_starved_low_request_through() {
    for aging in [Duration::ZERO, Duration::from_secs(1)] {
        let t0 = Instant::now();
        let mut s = sched(64, 1, 64, aging);
        s.add(spec(1, Priority::Low, t0, 4));
        let mut low_ran_at = None;
        // A steady stream of normal requests, each finishing after one step.
        for tick in 0..40u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            s.add(spec(tick + 2, Priority::Normal, now, 4));
            let out = step(&mut s, now);
            if ids(&out).contains(&1) {
                low_ran_at.get_or_insert(tick);
            }
            for sc in out.scheduled {
                if sc.id != 1 {
                    s.remove(sc.id);
                }
            }
        }
        if aging.is_zero() {
            assert_eq!(low_ran_at, None, "without aging the low request starves");
        } else {
            let tick = low_ran_at.expect("aging admits it");
            assert!((10..=12).contains(&tick), "admitted once it aged to normal and was the oldest: tick {tick}");
        }
    }
}

#[test]
fn prefix_hits_skip_cached_prompt_blocks() {
    let t0 = Instant::now();
    let mut s = sched(64, 8, 64, Duration::ZERO);
    let shared: Vec<u32> = (0..17).collect();
    let mut a = spec(1, Priority::Normal, t0, 0);
    a.prompt = shared.clone();
    s.add(a);
    step(&mut s, t0);
    let mut b = spec(2, Priority::Normal, t0, 0);
    b.prompt = shared.iter().copied().chain([99, 98]).collect();
    s.add(b);
    let out = step(&mut s, t0);
    let sb = out.scheduled.iter().find(|sc| sc.id == 2).unwrap();
    assert_eq!((sb.start, sb.num_tokens), (16, 3), "four full blocks came from the cache");
    assert_eq!(s.num_cached_prompt(2), 16);
    // A salted request with the same tokens shares nothing.
    let mut c = spec(3, Priority::Normal, t0, 0);
    c.prompt = shared.clone();
    c.salt = Some("tenant".into());
    s.add(c);
    let out = step(&mut s, t0);
    assert_eq!(out.scheduled.iter().find(|sc| sc.id == 3).unwrap().start, 0);
}

#[test]
fn forks_use_reserved_slots_and_share_blocks() {
    let t0 = Instant::now();
    let mut s = sched(64, 3, 64, Duration::ZERO);
    let mut a = spec(1, Priority::Normal, t0, 6);
    a.extra_slots = 2;
    s.add(a);
    s.add(spec(2, Priority::Normal, t0, 6));
    let out = step(&mut s, t0);
    assert_eq!(ids(&out), vec![1], "1 reserved all three slots");
    s.fork(1, 10);
    s.fork(1, 11);
    assert_eq!(s.block_table(10), s.block_table(1));
    let used = s.blocks().num_used();
    let out = step(&mut s, t0);
    assert_eq!(out.num_tokens(), 3, "each choice decodes its own token");
    assert_eq!(s.blocks().num_used(), used + 2, "two copy-on-write tails");
    assert_eq!(s.blocks().take_copies().len(), 2);
}

/// A seeded random workload in virtual time: arrivals of every class, cancellations, tight
/// blocks and slots. Budgets hold every step, invariants hold, and every sequence ends.
#[test]
fn random_workload_never_leaks_or_deadlocks() {
    let t0 = Instant::now();
    let mut s = sched(48, 6, 40, Duration::from_millis(500));
    let mut rng = 0x1234_5678_9ABC_DEF0u64;
    let mut rand = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut live: Vec<(SeqId, usize)> = Vec::new(); // (id, tokens to generate)
    let mut next = 0;
    for tick in 0..3000u64 {
        let now = t0 + Duration::from_millis(10 * tick);
        if tick < 2500 && rand(3) == 0 {
            let p = Priority::ALL[rand(4) as usize];
            let mut sp = spec(next, p, now, 1 + rand(40) as usize);
            sp.extra_slots = (rand(8) == 0) as usize;
            s.add(sp);
            live.push((next, 1 + rand(30) as usize));
            next += 1;
        }
        if !live.is_empty() && rand(40) == 0 {
            let (id, _) = live.swap_remove(rand(live.len() as u64) as usize);
            s.remove(id);
        }
        let out = step(&mut s, now);
        for e in out.out_of_memory.iter().chain(&out.expired) {
            live.retain(|l| l.0 != e.id);
        }
        live.retain(|&(id, want)| {
            let done = s.tokens(id).len() - s.num_prompt(id) >= want;
            if done {
                s.remove(id);
            }
            !done
        });
    }
    assert!(live.is_empty(), "every sequence finished: {} left", live.len());
    assert_eq!(s.blocks().num_used(), 0);
    assert!(s.num_preemptions() > 0, "the workload exercised preemption");
}

#[test]
fn a_waiting_higher_class_takes_token_budget_from_lower_classes() {
    let t0 = Instant::now();
    let mut s = sched(2, 8, 64, Duration::ZERO);
    s.add(spec(1, Priority::Low, t0, 2));
    s.add(spec(2, Priority::Low, t0, 2));
    step(&mut s, t0);
    step(&mut s, t0);
    assert_eq!(step(&mut s, t0).num_tokens(), 2, "two low decodes use the whole budget");
    s.add(spec(3, Priority::Critical, t0, 3));
    let out = step(&mut s, t0);
    assert!(ids(&out).contains(&3), "the critical request runs at once: {out:?}");
    assert_eq!(out.preempted.len(), 1);
    // An equal class waits for budget instead.
    let mut s = sched(2, 8, 64, Duration::ZERO);
    s.add(spec(1, Priority::Normal, t0, 2));
    s.add(spec(2, Priority::Normal, t0, 2));
    step(&mut s, t0);
    s.add(spec(3, Priority::Normal, t0, 3));
    assert!(step(&mut s, t0).preempted.is_empty());
}

#[test]
fn a_sequence_needing_more_slots_than_exist_is_ended_not_stuck() {
    let t0 = Instant::now();
    let mut s = sched(64, 2, 64, Duration::ZERO);
    s.add(SeqSpec { extra_slots: 2, ..spec(1, Priority::Normal, t0, 5) });
    s.add(spec(2, Priority::Normal, t0 + Duration::from_millis(1), 5));
    let out = step(&mut s, t0);
    assert_eq!(out.out_of_memory.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(ids(&out), vec![2], "the queue behind it moves");
}

#[test]
fn aged_traffic_never_overtakes_critical() {
    let t0 = Instant::now();
    let mut s = sched(64, 1, 64, Duration::from_secs(1));
    s.add(spec(1, Priority::Low, t0, 4));
    s.add(spec(2, Priority::Critical, t0 + Duration::from_secs(100), 4));
    // The low request has waited 100 aging periods; the critical one just arrived.
    let out = step(&mut s, t0 + Duration::from_secs(100));
    assert_eq!(ids(&out), vec![2]);
}
