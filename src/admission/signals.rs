//! What the ladder looks at: the engine's queues and KV use, and what [`Observed`] measured.

use super::Observed;
use crate::request::Priority;
use std::time::Duration;

/// The state of the system the ladder looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    /// Requests queued per class (waiting in the engine or about to be), by rank.
    pub waiting: [usize; 4],
    pub running: usize,
    /// Fraction of KV blocks in use (0–1).
    pub kv_usage: f64,
    /// Requests finishing per second, recently (0: not measured yet).
    pub drain_rate: f64,
    /// Recent time to first token per class (a moving average), by rank.
    pub ttft: [Option<Duration>; 4],
}

impl Signals {
    /// Estimated wait before a new request of class `p` starts.
    pub fn queue_wait(&self, p: Priority) -> Duration {
        let ahead: usize = self.waiting[p.rank() as usize..].iter().sum();
        if ahead == 0 || self.drain_rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((ahead as f64 / self.drain_rate).min(3600.0))
    }

    /// The signals now: the engine's queues and KV usage, and what `observed` measured.
    pub fn from_engine(metrics: &crate::engine::Metrics, observed: &Observed) -> Signals {
        let m = metrics;
        let kv_usage = if m.kv_blocks_total == 0 { 0.0 } else { m.kv_blocks_used as f64 / m.kv_blocks_total as f64 };
        Signals { waiting: m.waiting, running: m.running, kv_usage, drain_rate: observed.drain_rate(), ttft: observed.recent_ttft() }
    }

    /// Time to finish everything queued and running at the current drain rate.
    pub fn time_to_drain(&self) -> Duration {
        let all = self.waiting.iter().sum::<usize>() + self.running;
        if all == 0 || self.drain_rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((all as f64 / self.drain_rate).min(3600.0))
    }
}
