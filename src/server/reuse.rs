//! Exact output reuse: identical deterministic requests computed once.
//!
//! Our outputs are bit-identical whatever the batch, for greedy decoding and for seeded
//! sampling, so a request that matches another in everything that determines its output can
//! be given that output, token for token:
//! - **in flight**: it attaches to the running request ([`Flight`]) and receives its events
//!   from the start (those already produced are replayed, then it follows live). The
//!   computation runs on while any attached client remains, and is cancelled when all leave;
//! - **completed**: with the tenant's `output_cache` on, a finished output (every choice ended
//!   by a stop or its length) is kept, bounded in bytes, least recently used first out, for
//!   the tenant's TTL, and replayed at once.
//!
//! The [`Key`] is a SHA-256 over the model, the cache namespace (tenant salt), the prompt's
//! token ids and every field that can change the output (sampling with its seed, the
//! effective `max_tokens`, stops, stop ids, `ignore_eos`, `n`, logprobs, special tokens). A
//! request qualifies only when deterministic: temperature 0, or an explicit seed. Priority and
//! deadline are not part of it: they change when, not what; a request attaches only to a
//! computation of its own class or above, so reuse never makes it wait at a lower class.

use crate::engine::{RequestStream, ValidRequest};
use crate::request::{Event, FinishReason, Priority, Timings};
use futures_util::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How a response was produced (the `x-ballast-reuse` header and `usage.reused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Computed for this request (it may have been shared with others since).
    Miss,
    /// Attached to an identical request in flight.
    Coalesced,
    /// Served from the completed-output cache.
    Cached,
}

impl Reuse {
    pub fn name(self) -> &'static str {
        match self {
            Reuse::Miss => "miss",
            Reuse::Coalesced => "coalesced",
            Reuse::Cached => "cached",
        }
    }
}

/// What determines a request's output (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// The key of `valid` on `model`; `None` when the request is not deterministic.
    pub fn of(model: &str, valid: &ValidRequest) -> Option<Key> {
        let r = valid.request();
        if r.sampling.temperature != 0.0 && r.sampling.seed.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        // Debug forms are exact (floats print the shortest string that parses back to the
        // same bits) and name every field, so a new field changes keys rather than being
        // silently left out.
        let fields = format!(
            "{model:?}|{:?}|{:?}|{}|{:?}|{:?}|{}|{:?}|{}|{}|{:?}|{:?}",
            r.cache_salt,
            r.sampling,
            valid.max_tokens(),
            r.stop,
            r.stop_token_ids,
            r.ignore_eos,
            r.logprobs,
            r.n,
            r.skip_special_tokens,
            r.constraint,
            // The choice decides the constraint and how the output is read.
            r.tools
        );
        h.update(fields.as_bytes());
        for id in valid.prompt_ids() {
            h.update(id.to_le_bytes());
        }
        Some(Key(h.finalize().into()))
    }
}

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    /// No more events will come.
    done: bool,
    /// Every choice finished by a stop or its length (worth caching).
    complete: bool,
    wakers: Vec<Waker>,
}

/// One computation and its events so far, shared by every request attached to it.
pub struct Flight {
    key: Key,
    /// The class it runs at.
    priority: Priority,
    prompt_tokens: usize,
    log: Mutex<Log>,
    /// Replays attached (guarded by the registry's lock for in-flight flights).
    subscribers: AtomicU64,
    /// Set when the last subscriber of a running flight left: the driver cancels it.
    abandoned: tokio::sync::Notify,
    /// The tenant's output-cache TTL, when the output may be cached.
    cache_ttl: Option<Duration>,
}

impl Flight {
    fn push(&self, event: Event) {
        let mut log = self.log.lock();
        log.events.push(event);
        for w in log.wakers.drain(..) {
            w.wake();
        }
    }

    fn close(&self) {
        let mut log = self.log.lock();
        log.done = true;
        log.complete = log.events.iter().all(|e| match e {
            Event::Finish { reason, .. } => matches!(reason, FinishReason::Stop | FinishReason::Length),
            Event::Token { .. } => true,
        }) && log.events.iter().any(|e| matches!(e, Event::Finish { .. }));
        for w in log.wakers.drain(..) {
            w.wake();
        }
    }

    /// Approximate memory of the events.
    fn bytes(&self) -> usize {
        let log = self.log.lock();
        log.events
            .iter()
            .map(|e| match e {
                Event::Token { ids, text, logprobs, .. } => {
                    96 + ids.len() * 4 + text.len() + logprobs.iter().map(|l| 16 + l.top.len() * 8).sum::<usize>()
                }
                Event::Finish { .. } => 96,
            })
            .sum()
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
}

/// One request's view of a flight: its events from the start, then live. Rewrites the
/// timings of a reused request's finish to its own (it did not queue or compute).
struct SharedReplay {
    flight: Arc<Flight>,
    registry: Arc<Registry>,
    pos: usize,
    reused: bool,
    arrival: Instant,
    first_token: Option<Instant>,
}

/// One request's events: its own engine stream (a request no other can share: no copies, no
/// task), or its view of a shared [`Flight`].
pub struct Replay(Source);

enum Source {
    Own(RequestStream),
    Shared(SharedReplay),
}

impl Replay {
    pub fn prompt_tokens(&self) -> usize {
        match &self.0 {
            Source::Own(s) => s.prompt_ids().len(),
            Source::Shared(r) => r.flight.prompt_tokens,
        }
    }
}

impl futures_core::Stream for Replay {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match &mut self.get_mut().0 {
            Source::Own(s) => Pin::new(s).poll_next(cx),
            Source::Shared(r) => Pin::new(r).poll_next(cx),
        }
    }
}

impl futures_core::Stream for SharedReplay {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        let mut log = this.flight.log.lock();
        if let Some(e) = log.events.get(this.pos) {
            let mut e = e.clone();
            drop(log);
            this.pos += 1;
            if this.reused {
                let now = Instant::now();
                match &mut e {
                    Event::Token { .. } => {
                        this.first_token.get_or_insert(now);
                    }
                    Event::Finish { timings, .. } => {
                        let first = this.first_token.unwrap_or(now);
                        *timings = Timings {
                            queued: Duration::ZERO,
                            time_to_first_token: this.first_token.map(|t| t - this.arrival),
                            decode: now - first,
                            preemptions: 0,
                        };
                    }
                }
            }
            return Poll::Ready(Some(e));
        }
        if log.done {
            return Poll::Ready(None);
        }
        log.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for SharedReplay {
    fn drop(&mut self) {
        let mut flights = self.registry.flights.lock();
        if self.flight.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 && !self.flight.log.lock().done {
            // The last client left a running computation: cancel it, and never attach to it again.
            if flights.get(&self.flight.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                flights.remove(&self.flight.key);
            }
            self.flight.abandoned.notify_one();
        }
    }
}

struct Cached {
    flight: Arc<Flight>,
    expires: Instant,
    bytes: usize,
    /// Its position in the LRU order.
    tick: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Cached>,
    /// Least recently used first.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    next_tick: u64,
}

impl Cache {
    fn remove(&mut self, key: &Key) {
        if let Some(c) = self.entries.remove(key) {
            self.order.remove(&c.tick);
            self.bytes -= c.bytes;
        }
    }

    fn touch(&mut self, key: &Key) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(c) = self.entries.get_mut(key) {
            self.order.remove(&c.tick);
            c.tick = tick;
            self.order.insert(tick, *key);
        }
    }

    /// Evicts least recently used entries until `bytes` fit under `capacity`.
    fn make_room(&mut self, bytes: usize, capacity: usize, evictions: &AtomicU64) {
        while self.bytes + bytes > capacity {
            let Some((_, key)) = self.order.pop_first() else { break };
            let c = self.entries.remove(&key).expect("ordered entries exist");
            self.bytes -= c.bytes;
            evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Running flights and the completed-output cache of one server.
#[derive(Default)]
pub struct Registry {
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    cache: Mutex<Cache>,
    /// Bytes the cache may hold (the configuration in force).
    capacity: AtomicU64,
    evictions: AtomicU64,
}

impl Registry {
    pub fn new(capacity: usize) -> Arc<Registry> {
        let r = Registry::default();
        r.capacity.store(capacity as u64, Ordering::Relaxed);
        Arc::new(r)
    }

    /// A new capacity (a reload); entries beyond it go at once.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity as u64, Ordering::Relaxed);
        self.cache.lock().make_room(0, capacity, &self.evictions);
    }

    /// Attaches to an identical computation in flight at `priority` or above, else (when
    /// `cache` allows) to a cached output. `None`: this request must be computed.
    pub fn reuse(self: &Arc<Self>, key: Key, priority: Priority, cache: bool, arrival: Instant) -> Option<(Replay, Reuse)> {
        {
            let flights = self.flights.lock();
            if let Some(f) = flights.get(&key).filter(|f| f.priority >= priority) {
                return Some((self.attach(f.clone(), true, arrival), Reuse::Coalesced));
            }
        }
        if !cache {
            return None;
        }
        let mut c = self.cache.lock();
        let now = Instant::now();
        match c.entries.get(&key) {
            Some(e) if e.expires > now => {
                let flight = e.flight.clone();
                c.touch(&key);
                drop(c);
                flight.subscribers.fetch_add(1, Ordering::AcqRel);
                let replay = SharedReplay { flight, registry: self.clone(), pos: 0, reused: true, arrival, first_token: None };
                Some((Replay(Source::Shared(replay)), Reuse::Cached))
            }
            Some(_) => {
                c.remove(&key);
                None
            }
            None => None,
        }
    }

    fn attach(self: &Arc<Self>, flight: Arc<Flight>, reused: bool, arrival: Instant) -> Replay {
        flight.subscribers.fetch_add(1, Ordering::AcqRel);
        Replay(Source::Shared(SharedReplay { flight, registry: self.clone(), pos: 0, reused, arrival, first_token: None }))
    }

    /// Runs `stream` as the computation for `key` (when deterministic) and returns this
    /// request's view of it. Later identical requests attach to it; its output is cached when
    /// `cache_ttl` is set and it completes. A request without a key reads its own stream
    /// directly.
    pub fn lead(
        self: &Arc<Self>,
        key: Option<Key>,
        stream: RequestStream,
        priority: Priority,
        cache_ttl: Option<Duration>,
        arrival: Instant,
    ) -> Replay {
        let Some(key) = key else { return Replay(Source::Own(stream)) };
        let flight = Arc::new(Flight {
            key,
            priority,
            prompt_tokens: stream.prompt_ids().len(),
            log: Mutex::default(),
            subscribers: AtomicU64::new(0),
            abandoned: tokio::sync::Notify::new(),
            cache_ttl,
        });
        let replay = self.attach(flight.clone(), false, arrival);
        self.flights.lock().insert(key, flight.clone());
        let registry = self.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    event = StreamExt::next(&mut stream) => match event {
                        Some(e) => flight.push(e),
                        None => break,
                    },
                    _ = flight.abandoned.notified() => break,
                }
            }
            // Dropping the stream cancels the request if it is still running.
            drop(stream);
            flight.close();
            registry.completed(&flight);
        });
        replay
    }

    /// A flight ended: it leaves the running set, and its output enters the cache if it
    /// completed and its tenant caches outputs.
    fn completed(&self, flight: &Arc<Flight>) {
        {
            let mut flights = self.flights.lock();
            if flights.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                flights.remove(&flight.key);
            }
        }
        let Some(ttl) = flight.cache_ttl else { return };
        if !flight.log.lock().complete {
            return;
        }
        let bytes = flight.bytes();
        let capacity = self.capacity.load(Ordering::Relaxed) as usize;
        if bytes > capacity {
            return;
        }
        let mut c = self.cache.lock();
        c.remove(&flight.key);
        c.make_room(bytes, capacity, &self.evictions);
        let tick = c.next_tick;
        c.next_tick += 1;
        c.entries.insert(flight.key, Cached { flight: flight.clone(), expires: Instant::now() + ttl, bytes, tick });
        c.order.insert(tick, flight.key);
        c.bytes += bytes;
    }

    /// (entries, bytes) of the cache, and evictions so far.
    pub fn cache_stats(&self) -> (usize, usize, u64) {
        let c = self.cache.lock();
        (c.entries.len(), c.bytes, self.evictions.load(Ordering::Relaxed))
    }

    /// Computations in flight that others may attach to.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}
