//! What the ladder measures about recent requests: how fast they finish (the drain rate) and
//! how long each class waits for its first token. Thread-safe; the host reports each
//! request's end and first token.

use crate::request::Priority;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The drain rate's window.
const DRAIN_WINDOW: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Observed {
    /// When recent requests finished.
    finishes: Mutex<VecDeque<Instant>>,
    /// Moving average of time to first token per class (seconds), by rank.
    ttft: Mutex<[Option<f64>; 4]>,
}

impl Observed {
    /// A request of class `p` got its first token `ttft` after it arrived.
    pub fn first_token(&self, p: Priority, ttft: Duration) {
        let mut t = self.ttft.lock();
        let slot = &mut t[p.rank() as usize];
        let x = ttft.as_secs_f64();
        *slot = Some(slot.map_or(x, |old| 0.8 * old + 0.2 * x));
    }

    /// Recent time to first token per class.
    pub fn recent_ttft(&self) -> [Option<Duration>; 4] {
        self.ttft.lock().map(|t| t.map(Duration::from_secs_f64))
    }

    /// A request ended (however it ended).
    pub fn finished(&self) {
        let now = Instant::now();
        let mut f = self.finishes.lock();
        f.push_back(now);
        while f.front().is_some_and(|t| now.duration_since(*t) > DRAIN_WINDOW) {
            f.pop_front();
        }
    }

    /// Requests finished per second over the recent window (0 before any finished).
    pub fn drain_rate(&self) -> f64 {
        let now = Instant::now();
        let mut f = self.finishes.lock();
        while f.front().is_some_and(|t| now.duration_since(*t) > DRAIN_WINDOW) {
            f.pop_front();
        }
        let Some(oldest) = f.front() else { return 0.0 };
        let span = now.duration_since(*oldest).clamp(Duration::from_secs(1), DRAIN_WINDOW);
        f.len() as f64 / span.as_secs_f64()
    }
}
