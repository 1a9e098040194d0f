//! Scheduler overhead per step in a steady state: 256 running sequences of mixed classes
//! decoding (64-token prompts, finishing at 192 tokens and replaced by new ones, which are
//! prefilled), 32 more waiting on the slot budget. One iteration is what the engine does around
//! a forward pass: schedule, complete the step, append each sampled token, retire finished
//! sequences. Compare with the forward pass itself (milliseconds at this batch size).

use ballast::kv::BlockManager;
use ballast::request::Priority;
use ballast::scheduler::{Scheduler, SchedulerConfig, SeqSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};

fn prompt(id: u64) -> Vec<u32> {
    (0..64).map(|t| (t * 7 + id as u32 * 13) % 49152).collect()
}

fn setup(running: usize, waiting: usize) -> Scheduler {
    let config = SchedulerConfig {
        max_num_batched_tokens: 32768,
        max_num_seqs: running,
        max_step_tokens_while_decoding: usize::MAX,
        aging: Duration::from_secs(10),
    };
    let mut s = Scheduler::new(config, BlockManager::new(16384, 16, true));
    let t0 = Instant::now();
    for id in 0..(running + waiting) as u64 {
        let priority = Priority::ALL[id as usize % 4];
        s.add(SeqSpec { id, priority, arrival: t0, prompt: prompt(id), salt: None, deadline: None, extra_slots: 0 });
    }
    let out = s.schedule(t0);
    s.complete_step(&out);
    for sc in out.scheduled.iter().filter(|sc| sc.sample) {
        s.append_token(sc.id, 1);
    }
    assert_eq!(s.num_running(), running);
    s
}

fn bench(c: &mut Criterion) {
    let mut s = setup(256, 32);
    let mut token = 0u32;
    let mut next_id = 288;
    c.bench_function("schedule_step_256_running", |b| {
        b.iter(|| {
            let now = Instant::now();
            let out = s.schedule(now);
            s.complete_step(&out);
            token = (token + 1) % 49152;
            for sc in out.scheduled.iter().filter(|sc| sc.sample) {
                s.append_token(sc.id, token);
                if s.tokens(sc.id).len() >= 192 {
                    s.remove(sc.id);
                    let priority = Priority::ALL[next_id as usize % 4];
                    let spec = SeqSpec {
                        id: next_id,
                        priority,
                        arrival: now,
                        prompt: prompt(next_id),
                        salt: None,
                        deadline: None,
                        extra_slots: 0,
                    };
                    s.add(spec);
                    next_id += 1;
                }
            }
            out.scheduled.len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
