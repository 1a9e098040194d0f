//! The KV-cache event publisher: a ZMQ PUB socket that sends the engine's
//! [`crate::kv::KvEventBatch`]es in vLLM's wire format (vLLM ≥ 0.26, whose events are maps),
//! which vllm-router's `kv_aware` policy, llm-d's precise prefix-cache scorer and Dynamo read.
//!
//! Each message is three frames: `[topic, seq (u64 big-endian, from 0), payload]`. The payload
//! is msgpack: the array `[timestamp (f64), events, data_parallel_rank (0)]`, each event a map
//! with a `"type"` key:
//! - `BlockStored {block_hashes, parent_block_hash (nil for a prompt's first block),
//!   token_ids (full blocks), block_size, lora_id (nil), medium, lora_name (nil)}`, plus
//!   `extra_keys` (one entry per block) for a salted namespace: `["ns:<16 hex digits>"]` on a
//!   prompt's first block, nil elsewhere;
//! - `BlockRemoved {block_hashes, medium}`;
//! - `AllBlocksCleared {}`: the first message of a process, and its last.
//!
//! With a replay endpoint (`--kv-events-replay-endpoint`), a ZMQ ROUTER socket answers a
//! subscriber that lost messages (a gap in `seq`, a late start), as vLLM's does: it sends
//! `[start seq (u64 big-endian)]` and gets every kept message from that seq on as
//! `["", topic, seq, payload]`, then `["", "", -1 (i64 big-endian), ""]`. The last
//! `--kv-events-buffer-steps` messages are kept.
//!
//! Nothing here slows the engine: the engine only `try_send`s into a bounded queue (drops are
//! counted and leave a gap in `seq`), and a PUB socket drops messages for a subscriber that
//! does not keep up. Subscribers may come and go at any time.

use crate::kv::{KvEvent, KvEventBatch, KvEventSink};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zeromq::{Socket, SocketRecv, SocketSend};

/// Messages kept for replay: (seq, payload), oldest first.
type Kept = Arc<parking_lot::Mutex<VecDeque<(u64, bytes::Bytes)>>>;

/// Batches the engine may queue ahead of the publisher before they are dropped.
pub const QUEUE_BATCHES: usize = 4096;

/// A running publisher: where it listens and what it has sent.
#[derive(Debug)]
pub struct KvEventPublisher {
    /// The endpoint as configured (`tcp://*:5557`).
    pub endpoint: String,
    /// The address bound (the port resolved when the configured one is 0).
    pub bound: String,
    pub topic: String,
    /// The replay socket's configured and bound addresses.
    pub replay: Option<(String, String)>,
    sink: KvEventSink,
    published: Arc<AtomicU64>,
    kept: Kept,
    keep: usize,
}

/// The sockets a publisher runs ([`KvEventPublisher::run`]).
pub struct Sockets {
    publish: zeromq::PubSocket,
    replay: Option<zeromq::RouterSocket>,
    rx: tokio::sync::mpsc::Receiver<KvEventBatch>,
}

/// A `tcp://HOST:PORT` endpoint as the socket binds it (`*` is every interface).
fn bind_address(flag: &str, endpoint: &str) -> anyhow::Result<String> {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        anyhow::bail!("{flag} {endpoint}: only tcp://HOST:PORT endpoints are supported");
    };
    Ok(match rest.strip_prefix("*:") {
        Some(port) => format!("tcp://0.0.0.0:{port}"),
        None => endpoint.to_string(),
    })
}

impl KvEventPublisher {
    /// Binds `endpoint` (`tcp://HOST:PORT`; `*` means every interface). The returned sink goes
    /// into the engine's configuration; [`Self::run`] then sends what it receives.
    pub async fn bind(endpoint: &str, topic: &str, replay: Option<&str>, keep: usize) -> anyhow::Result<(KvEventPublisher, Sockets)> {
        let local = bind_address("--kv-events-endpoint", endpoint)?;
        let mut socket = zeromq::PubSocket::new();
        let bound = socket.bind(&local).await.map_err(|e| anyhow::anyhow!("binding the KV event endpoint {endpoint}: {e}"))?;
        let (replay_socket, replay) = match replay {
            None => (None, None),
            Some(r) => {
                let local = bind_address("--kv-events-replay-endpoint", r)?;
                let mut router = zeromq::RouterSocket::new();
                let bound = router.bind(&local).await.map_err(|e| anyhow::anyhow!("binding the KV event replay endpoint {r}: {e}"))?;
                (Some(router), Some((r.to_string(), bound.to_string())))
            }
        };
        let (sink, rx) = KvEventSink::channel(QUEUE_BATCHES);
        let publisher = KvEventPublisher {
            endpoint: endpoint.to_string(),
            bound: bound.to_string(),
            topic: topic.to_string(),
            replay,
            sink,
            published: Arc::default(),
            kept: Arc::default(),
            keep,
        };
        Ok((publisher, Sockets { publish: socket, replay: replay_socket, rx }))
    }

    /// The engine's end of the queue.
    pub fn sink(&self) -> KvEventSink {
        self.sink.clone()
    }

    /// Sends every batch received until the engine's sinks are all gone (and answers replay
    /// requests).
    pub fn run(&self, sockets: Sockets, block_size: usize) -> impl Future<Output = ()> + Send + 'static {
        let Sockets { publish: mut socket, replay, mut rx } = sockets;
        let (topic, published) = (bytes::Bytes::from(self.topic.clone().into_bytes()), self.published.clone());
        let (kept, keep) = (self.kept.clone(), self.keep);
        async move {
            if let Some(router) = replay {
                tokio::spawn(answer_replays(router, topic.clone(), kept.clone()));
            }
            while let Some(batch) = rx.recv().await {
                let payload = bytes::Bytes::from(encode(&batch, block_size));
                {
                    let mut k = kept.lock();
                    k.push_back((batch.seq, payload.clone()));
                    while k.len() > keep {
                        k.pop_front();
                    }
                }
                let frames = vec![topic.clone(), bytes::Bytes::copy_from_slice(&batch.seq.to_be_bytes()), payload];
                let message = zeromq::ZmqMessage::try_from(frames).expect("three frames");
                match socket.send(message).await {
                    Ok(()) => {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("KV event batch {} not sent: {e}", batch.seq),
                }
            }
        }
    }

    /// Batches sent on the socket.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Batches the engine dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }

    /// vLLM's `/kv_event_sources` entry for this publisher (data-parallel rank 0).
    pub fn source(&self) -> serde_json::Value {
        serde_json::json!({"0": {
            "enable_kv_cache_events": true,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay.as_ref().map(|r| &r.0),
            "buffer_steps": self.keep,
            "topic": self.topic,
            "encoding": "msgpack",
            "schema_version": 1,
        }})
    }
}

/// Answers each replay request with the kept messages from its start seq on, then the end
/// marker. A malformed request gets just the end marker.
async fn answer_replays(mut router: zeromq::RouterSocket, topic: bytes::Bytes, kept: Kept) {
    const END: [u8; 8] = (-1i64).to_be_bytes();
    while let Ok(request) = router.recv().await {
        let Some(identity) = request.get(0).cloned() else { continue };
        let start = request.get(request.len() - 1).and_then(|f| <[u8; 8]>::try_from(&f[..]).ok()).map(u64::from_be_bytes);
        let replies: Vec<(u64, bytes::Bytes)> = match start {
            Some(start) if request.len() >= 2 => kept.lock().iter().filter(|(seq, _)| *seq >= start).cloned().collect(),
            _ => Vec::new(),
        };
        let empty = bytes::Bytes::new();
        for (seq, payload) in replies {
            let frames = vec![identity.clone(), empty.clone(), topic.clone(), bytes::Bytes::copy_from_slice(&seq.to_be_bytes()), payload];
            if router.send(zeromq::ZmqMessage::try_from(frames).expect("five frames")).await.is_err() {
                break;
            }
        }
        let end = vec![identity, empty.clone(), empty.clone(), bytes::Bytes::copy_from_slice(&END), empty];
        let _ = router.send(zeromq::ZmqMessage::try_from(end).expect("five frames")).await;
    }
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum WireEvent<'a> {
    BlockStored {
        block_hashes: &'a [u64],
        parent_block_hash: Option<u64>,
        token_ids: &'a [u32],
        block_size: usize,
        lora_id: Option<u32>,
        medium: &'a str,
        lora_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        extra_keys: Option<Vec<Option<[String; 1]>>>,
    },
    BlockRemoved {
        block_hashes: &'a [u64],
        medium: &'a str,
    },
    AllBlocksCleared {},
}

/// The msgpack payload of one batch (see the module doc).
pub fn encode(batch: &KvEventBatch, block_size: usize) -> Vec<u8> {
    let medium = batch.medium;
    let events: Vec<WireEvent> = batch
        .events
        .iter()
        .map(|e| match e {
            KvEvent::Stored { hashes, parent, tokens, namespace } => WireEvent::BlockStored {
                block_hashes: hashes,
                parent_block_hash: *parent,
                token_ids: tokens,
                block_size,
                lora_id: None,
                medium,
                lora_name: None,
                extra_keys: namespace
                    .map(|ns| (0..hashes.len()).map(|i| (i == 0 && parent.is_none()).then(|| [format!("ns:{ns:016x}")])).collect()),
            },
            KvEvent::Removed { hashes } => WireEvent::BlockRemoved { block_hashes: hashes, medium },
            KvEvent::Cleared => WireEvent::AllBlocksCleared {},
        })
        .collect();
    rmp_serde::to_vec_named(&(batch.timestamp, events, 0u32)).expect("KV events always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_an_array_of_timestamp_events_and_rank_with_tagged_map_events() {
        let batch = KvEventBatch {
            seq: 7,
            timestamp: 1.5,
            medium: "CPU",
            events: vec![
                KvEvent::Stored { hashes: vec![1, 2], parent: None, tokens: vec![5; 4], namespace: Some(0xab) },
                KvEvent::Removed { hashes: vec![3] },
                KvEvent::Cleared,
            ],
        };
        let v = rmpv::decode::read_value(&mut encode(&batch, 2).as_slice()).unwrap();
        let top = v.as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].as_f64(), Some(1.5));
        assert_eq!(top[2].as_u64(), Some(0));
        let events = top[1].as_array().unwrap();
        let field = |e: &rmpv::Value, k: &str| e.as_map().unwrap().iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v.clone());
        assert_eq!(field(&events[0], "type").unwrap().as_str(), Some("BlockStored"));
        assert!(field(&events[0], "parent_block_hash").unwrap().is_nil());
        assert_eq!(field(&events[0], "token_ids").unwrap().as_array().unwrap().len(), 4);
        let extra = field(&events[0], "extra_keys").unwrap();
        assert_eq!(extra.as_array().unwrap()[0].as_array().unwrap()[0].as_str(), Some("ns:00000000000000ab"));
        assert!(extra.as_array().unwrap()[1].is_nil());
        assert_eq!(field(&events[1], "type").unwrap().as_str(), Some("BlockRemoved"));
        assert_eq!(field(&events[1], "medium").unwrap().as_str(), Some("CPU"));
        assert_eq!(events[2].as_map().unwrap().len(), 1, "AllBlocksCleared has only its type");
    }
}
