//! Drafted rows in the scheduler: scheduled with their sequence's token, from the prompt
//! share and only with blocks to spare; verified tokens join the sequence, the rest roll back.

use super::tests::{BS, sched, spec, step};
use super::*;

/// One sequence decoding (its prompt of 3 computed, one token sampled).
fn decoding(max_tokens: usize, num_blocks: usize) -> Scheduler {
    let t0 = Instant::now();
    let mut s = sched(max_tokens, 8, num_blocks, Duration::ZERO);
    s.add(spec(1, Priority::Normal, t0, 3));
    step(&mut s, t0);
    s
}

#[test]
fn a_draft_is_computed_with_the_token_and_what_is_not_kept_rolls_back() {
    let mut s = decoding(64, 64);
    *s.draft_mut(1) = vec![50, 51, 52];
    let out = s.schedule(Instant::now());
    assert_eq!(out.scheduled, vec![Scheduled { id: 1, start: 3, num_tokens: 4, sample: true, draft: 3 }]);
    assert!(s.block_table(1).len() * BS >= 7, "blocks for every drafted row");
    s.complete_step(&out);
    // The model chose 50 (the first draft), then 9 instead of 51.
    s.append_token(1, 50);
    s.accept_drafted(1);
    s.append_token(1, 9);
    s.end_draft(1);
    s.check().unwrap();
    assert_eq!(s.tokens(1)[3..], [7, 50, 9]);
    assert!(s.draft(1).is_empty());
    assert_eq!(s.block_table(1).len(), 2, "6 tokens hold 2 blocks of 4");
    let out = s.schedule(Instant::now());
    assert_eq!(
        out.scheduled[0],
        Scheduled { id: 1, start: 5, num_tokens: 1, sample: true, draft: 0 },
        "on from the first token not computed"
    );
}

#[test]
fn a_draft_takes_only_blocks_no_other_sequence_needs_and_lives_one_step() {
    // Three blocks of 4. The high sequence (4 tokens, one block) drafts 3; the low one
    // (5 tokens) needs its second block for its own token. The low one gets the free block,
    // the draft gets nothing, and nobody is preempted.
    let t0 = Instant::now();
    let mut s = sched(64, 8, 3, Duration::ZERO);
    s.add(spec(1, Priority::High, t0, 3));
    s.add(spec(2, Priority::Low, t0, 4));
    step(&mut s, t0);
    *s.draft_mut(1) = vec![50, 51, 52];
    let out = step(&mut s, t0);
    assert!(out.preempted.is_empty(), "{out:?}");
    assert_eq!(out.scheduled[0], Scheduled { id: 1, start: 3, num_tokens: 1, sample: true, draft: 0 });
    assert_eq!(out.scheduled[1], Scheduled { id: 2, start: 4, num_tokens: 1, sample: true, draft: 0 });
    assert!(s.draft(1).is_empty(), "a draft not verified this step is dropped");
}

#[test]
fn drafts_come_after_every_decode_of_the_step() {
    // A budget of 16 tokens and 8 decoding sequences with drafts of 4: every one decodes,
    // and the 8 tokens left go to the first two's drafts (drafts first would have starved
    // the last ones).
    let t0 = Instant::now();
    let mut s = sched(16, 8, 64, Duration::ZERO);
    for id in 1..=8 {
        s.add(spec(id, Priority::Normal, t0, 2));
    }
    step(&mut s, t0);
    for id in 1..=8 {
        *s.draft_mut(id) = vec![50, 51, 52, 53];
    }
    let out = s.schedule(t0);
    let drafts: Vec<usize> = out.scheduled.iter().map(|x| x.draft).collect();
    assert_eq!(drafts, [4, 4, 0, 0, 0, 0, 0, 0], "{out:?}");
    assert_eq!(out.num_tokens(), 16);
}

#[test]
fn drafts_come_from_the_prompt_share_and_only_whole() {
    let t0 = Instant::now();
    let config = SchedulerConfig { max_num_batched_tokens: 64, max_num_seqs: 8, max_step_tokens_while_decoding: 8, aging: Duration::ZERO };
    let mut s = Scheduler::new(config, BlockManager::new(64, BS, true));
    for id in 1..=7 {
        s.add(spec(id, Priority::Normal, t0, 2));
    }
    step(&mut s, t0);
    // Seven decode: a share of max(8 - 7, 8 / 4) = 2 tokens for prompt chunks and drafts.
    for id in 1..=7 {
        *s.draft_mut(id) = vec![50, 51, 52];
    }
    let out = s.schedule(t0);
    let drafted: Vec<usize> = out.scheduled.iter().map(|x| x.draft).collect();
    assert_eq!(drafted, [2, 0, 0, 0, 0, 0, 0], "the first takes the share; the rest decode alone");
    assert_eq!(out.num_tokens(), 7 + 2);
}

#[test]
fn a_waiting_higher_class_is_not_kept_out_by_a_draft() {
    let t0 = Instant::now();
    let mut s = sched(16, 8, 3, Duration::ZERO);
    s.add(spec(1, Priority::Low, t0, 3));
    step(&mut s, t0);
    *s.draft_mut(1) = vec![50, 51, 52, 53];
    // A critical prompt of 9 tokens needs all three blocks: the drafted low one gives way.
    s.add(spec(2, Priority::Critical, t0, 9));
    let out = step(&mut s, t0);
    assert_eq!(out.preempted, vec![1]);
    assert_eq!(out.scheduled, vec![Scheduled { id: 2, start: 0, num_tokens: 9, sample: true, draft: 0 }]);
    assert!(s.draft(1).is_empty());
    assert_eq!(s.blocks().num_used(), 3);
}
