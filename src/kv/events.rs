//! KV-cache events: what the prefix cache gained and lost, for routers that place requests
//! where their prefix is already resident (vllm-router `kv_aware`, llm-d's precise prefix
//! scorer, Dynamo).
//!
//! The [`super::BlockManager`] records events while a sink is attached; the engine thread
//! takes them after every step and hands them to a [`KvEventSink`] without ever waiting: the
//! sink's queue is bounded, a full queue drops the batch and counts it, and the sequence
//! number it would have had is skipped, so a subscriber sees the gap. The server's publisher
//! (`server::kv_events`) encodes batches in vLLM's wire format and sends them on a ZMQ PUB
//! socket.
//!
//! Block hashes are the prefix cache's own chained hashes (`h_i = H(h_{i-1}, tokens)`, rooted
//! in the tenant's cache namespace), stable u64 ids: the same prompt under the same namespace
//! gets the same ids on every replica and in every build. Blocks of a salted namespace are
//! sent in batches of their own, the namespace named by an opaque id (never the salt) in the
//! first block's `extra_keys`, so a subscriber never merges one tenant's blocks with
//! another's, and a subscriber that refuses salted batches loses only those.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One change to the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Full blocks newly cached, a chain in order: each block's parent is the one before it,
    /// the first's is `parent` (`None`: the first block of a prompt).
    Stored { hashes: Vec<u64>, parent: Option<u64>, tokens: Vec<u32>, namespace: Option<u64> },
    /// Cached blocks evicted.
    Removed { hashes: Vec<u64> },
    /// Everything this publisher announced is gone (sent at start and at shutdown).
    Cleared,
}

impl KvEvent {
    /// The salted namespace this event belongs to (`None`: the shared one).
    pub fn namespace(&self) -> Option<u64> {
        match self {
            KvEvent::Stored { namespace, .. } => *namespace,
            _ => None,
        }
    }
}

/// A batch the engine hands to the publisher: one message on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct KvEventBatch {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Where the blocks live: `"GPU"` (device memory) or `"CPU"` (host memory).
    pub medium: &'static str,
    pub events: Vec<KvEvent>,
}

/// The engine's end of the publisher's queue. Cloning shares the queue and the counters.
#[derive(Clone, Debug)]
pub struct KvEventSink {
    tx: tokio::sync::mpsc::Sender<KvEventBatch>,
    next_seq: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl KvEventSink {
    /// A sink and the publisher's receiving end, holding at most `capacity` batches.
    pub fn channel(capacity: usize) -> (KvEventSink, tokio::sync::mpsc::Receiver<KvEventBatch>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (KvEventSink { tx, next_seq: Arc::default(), dropped: Arc::default() }, rx)
    }

    /// Hands `events` over without waiting: the shared namespace's events in one batch, each
    /// salted namespace's in a batch of its own, in the order they happened within each.
    pub fn send(&self, events: Vec<KvEvent>, medium: &'static str) {
        if events.is_empty() {
            return;
        }
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut groups: Vec<(Option<u64>, Vec<KvEvent>)> = Vec::new();
        for e in events {
            let ns = e.namespace();
            match groups.iter_mut().find(|(n, _)| *n == ns) {
                Some((_, group)) => group.push(e),
                None => groups.push((ns, vec![e])),
            }
        }
        for (_, events) in groups {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if self.tx.try_send(KvEventBatch { seq, timestamp, medium, events }).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Batches dropped because the publisher's queue was full or gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Batches handed over or dropped so far (the next sequence number).
    pub fn sent(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }
}
