//! Overload in virtual time: the admission ladder and the scheduler (the real ones) against a
//! cost-model backend (a step costs `a + b · tokens`) and a fake clock. 60 virtual seconds of
//! steady high and normal traffic, with a 10× surge of low-class traffic in the middle, run in
//! well under a second of real time.
//!
//! Asserted: no high-class request fails; high-class p99 time to first token stays within 2×
//! its value without the surge; every low request is answered (completed, degraded or refused
//! with a Retry-After); no KV block leaks.

use ballast::admission::{Admission, Decision, Policy, Signals};
use ballast::kv::BlockManager;
use ballast::request::Priority;
use ballast::scheduler::{Scheduler, SchedulerConfig, SeqId, SeqSpec};
use ballast::testing::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Step cost: fixed overhead plus per-token work (a small CPU-class model).
const STEP_FIXED: f64 = 0.004;
const STEP_PER_TOKEN: f64 = 0.000_15;

#[derive(Default, Debug)]
struct Outcome {
    completed: usize,
    degraded: usize,
    refused: usize,
    refused_without_retry_after: usize,
    deadline_failed: usize,
    ttft: Vec<f64>,
}

struct Live {
    class: Priority,
    arrival: Instant,
    max_tokens: usize,
    generated: usize,
    first_token: Option<Instant>,
}

/// Requests per second per class at virtual time `t`.
fn rates(t: f64, surge: bool) -> [f64; 4] {
    let low = if surge && (15.0..45.0).contains(&t) { 30.0 } else { 3.0 };
    [low, 3.0, 2.0, 0.0]
}

fn simulate(surge: bool) -> ([Outcome; 4], usize) {
    let t0 = Instant::now();
    let config = SchedulerConfig {
        max_num_batched_tokens: 512,
        max_num_seqs: 48,
        max_step_tokens_while_decoding: 32,
        aging: Duration::from_secs(10),
    };
    let blocks = BlockManager::new(2048, 16, true);
    let mut sched = Scheduler::new(config, blocks.clone());
    let server = Arc::new(Policy::default());
    let tenant = server.authenticate(None).unwrap().clone();
    let mut admission = Admission::new(server.clone(), t0);
    let mut rng = Rng::new(0xDEAD_BEEF_CAFE_F00D);
    let mut outcomes: [Outcome; 4] = Default::default();
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut finishes: VecDeque<f64> = VecDeque::new();
    let mut next_arrival = [0.0f64; 4];
    let mut next_id: SeqId = 0;
    let mut t = 0.0f64;
    let end = 60.0;
    while t < end || !live.is_empty() || sched.num_waiting() > 0 {
        let now = t0 + Duration::from_secs_f64(t);
        // Arrivals up to now (Poisson per class), through admission.
        for class in Priority::ALL {
            let i = class.rank() as usize;
            loop {
                let rate = rates(next_arrival[i], surge)[i];
                if rate == 0.0 || next_arrival[i] > t || next_arrival[i] >= end {
                    break;
                }
                let arrival = t0 + Duration::from_secs_f64(next_arrival[i]);
                next_arrival[i] += -rng.unit().max(1e-12).ln() / rate;
                let prompt_len = rng.range(32, 256);
                let mut max_tokens = rng.range(16, 160);
                while finishes.front().is_some_and(|f| t - f > 30.0) {
                    finishes.pop_front();
                }
                let span = finishes.front().map_or(1.0, |f| (t - f).clamp(1.0, 30.0));
                let used = blocks.num_used() as f64 / blocks.num_blocks() as f64;
                let signals = Signals {
                    waiting: sched.waiting_by_class(),
                    running: sched.num_running(),
                    kv_usage: used,
                    drain_rate: finishes.len() as f64 / span,
                    ttft: [None; 4],
                };
                match admission.admit(&tenant, class, prompt_len, &signals, now) {
                    Decision::Reject { retry_after, .. } => {
                        outcomes[i].refused += 1;
                        outcomes[i].refused_without_retry_after += (retry_after < Duration::from_secs(1)) as usize;
                        continue;
                    }
                    Decision::Admit { degrade } => {
                        if degrade {
                            outcomes[i].degraded += 1;
                            max_tokens = max_tokens.min(server.degrade_max_tokens);
                        }
                    }
                }
                let prompt = (0..prompt_len).map(|_| rng.range(0, 49152) as u32).collect();
                let deadline = server.classes[i].deadline.map(|d| arrival + d);
                sched.add(SeqSpec { id: next_id, priority: class, arrival, prompt, salt: None, deadline, extra_slots: 0 });
                live.insert(next_id, Live { class, arrival, max_tokens, generated: 0, first_token: None });
                next_id += 1;
            }
        }
        let out = sched.schedule(now);
        for e in out.expired.iter().chain(&out.out_of_memory) {
            let l = live.remove(&e.id).expect("live");
            outcomes[l.class.rank() as usize].deadline_failed += 1;
            admission.finish("default", 0);
            finishes.push_back(t);
        }
        if out.scheduled.is_empty() {
            t += 0.001;
            continue;
        }
        t += STEP_FIXED + STEP_PER_TOKEN * out.num_tokens() as f64;
        let done_at = t0 + Duration::from_secs_f64(t);
        sched.complete_step(&out);
        for s in out.scheduled.iter().filter(|s| s.sample) {
            let l = live.get_mut(&s.id).expect("live");
            l.first_token.get_or_insert(done_at);
            l.generated += 1;
            if l.generated >= l.max_tokens {
                let l = live.remove(&s.id).unwrap();
                sched.remove(s.id);
                let o = &mut outcomes[l.class.rank() as usize];
                o.completed += 1;
                o.ttft.push((l.first_token.unwrap() - l.arrival).as_secs_f64());
                admission.finish("default", l.max_tokens);
                finishes.push_back(t);
            } else {
                sched.append_token(s.id, 7);
            }
        }
        assert!(t < 600.0, "the simulation does not drain");
    }
    sched.check().expect("scheduler invariants");
    (outcomes, blocks.num_used())
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)]
}

#[test]
fn a_surge_of_low_traffic_never_hurts_high_traffic() {
    let real = Instant::now();
    let (calm, calm_leak) = simulate(false);
    let (surge, surge_leak) = simulate(true);
    let elapsed = real.elapsed();
    for (name, o) in [("calm", &calm), ("surge", &surge)] {
        for p in Priority::ALL {
            let x = &o[p.rank() as usize];
            if x.completed + x.refused + x.deadline_failed > 0 {
                eprintln!(
                    "{name:>5} {:<8} completed {:>5} (degraded {:>4}) refused {:>5} deadline {:>3}  ttft p99 {:.3} s",
                    p.name(),
                    x.completed,
                    x.degraded,
                    x.refused,
                    x.deadline_failed,
                    if x.ttft.is_empty() { 0.0 } else { p99(&x.ttft) }
                );
            }
        }
    }
    eprintln!("simulated 2 × 60 virtual seconds in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "virtual time must be cheap: {elapsed:?}");
    assert_eq!((calm_leak, surge_leak), (0, 0), "KV blocks leaked");
    let (high_calm, high) = (&calm[2], &surge[2]);
    assert_eq!(high.refused + high.deadline_failed, 0, "a high-class request failed");
    assert!(high.completed > 50);
    let (a, b) = (p99(&high_calm.ttft), p99(&high.ttft));
    assert!(b <= 2.0 * a, "high p99 TTFT {b:.3} s under the surge vs {a:.3} s without");
    let low = &surge[0];
    assert!(low.refused > 0 && low.degraded > 0, "the surge was degraded and shed: {low:?}");
    assert_eq!(low.refused_without_retry_after, 0, "every refusal carries a Retry-After");
    // Every low request got an answer: completed, refused, or failed its deadline early.
    let offered: usize = low.completed + low.refused + low.deadline_failed;
    assert!(offered > 500, "the surge happened: {offered}");
}
