//! KV-cache events on the wire, read by libzmq (pyzmq) and decoded by an independent msgpack
//! decoder (tests/kv_events_sub.py): three frames per message, sequence numbers without gaps,
//! vLLM's payload shape, chains that match the prompt's token ids, tenants' namespaces kept
//! apart, evictions announced, a subscriber that stops reading slows nothing, and the last
//! message says the cache is gone.

mod common;

use common::server::*;
use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Subscriber {
    child: Child,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subscribe(endpoint: &str) -> Subscriber {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kv_events_sub.py");
    let mut child = Command::new(python()).arg(script).arg(endpoint).stdout(Stdio::piped()).spawn().expect("start the subscriber");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the subscriber starts").expect("stdout");
    assert_eq!(first, "ready", "the subscriber needs pyzmq and msgpack: run scripts/test-tooling");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(serde_json::from_str(&line).expect("one JSON message per line"));
        }
    });
    Subscriber { child, messages }
}

fn events(messages: &[Value]) -> Vec<(u64, Value)> {
    messages.iter().flat_map(|m| m["batch"][1].as_array().unwrap().iter().map(|e| (m["seq"].as_u64().unwrap(), e.clone()))).collect()
}

fn wait_for(sub: &Subscriber, what: &str, f: impl Fn(&[Value]) -> bool) {
    let start = Instant::now();
    while !f(&sub.messages.lock().unwrap()) {
        assert!(start.elapsed() < Duration::from_secs(30), "no {what} within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().expect("hashes are u64")).collect()
}

#[test]
fn kv_events_reach_a_libzmq_subscriber_in_vllms_wire_format() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tenants.toml");
    std::fs::write(
        &cfg,
        "[[tenants]]\nname = \"alpha\"\napi_keys = [\"sk-alpha-1\"]\n[[tenants]]\nname = \"beta\"\napi_keys = [\"sk-beta-01\"]\n",
    )
    .unwrap();
    let topic = "kv@replica-1@smol";
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--kv-events-endpoint",
        "tcp://127.0.0.1:0",
        "--kv-events-topic",
        topic,
        "--kv-cache-mib",
        "8",
        "--kv-events-replay-endpoint",
        "tcp://127.0.0.1:0",
        "--kv-events-buffer-steps",
        "64",
    ]);
    let endpoint = server.kv_events.clone().expect("the server printed its KV event endpoint");
    let (status, _, sources) = http(&server.addr, "GET", "/kv_event_sources", &[], "");
    let sources: Value = serde_json::from_str(&sources).unwrap();
    assert_eq!(status, 200);
    assert_eq!((sources["0"]["topic"].as_str(), sources["0"]["encoding"].as_str()), (Some(topic), Some("msgpack")));
    let sub = subscribe(&endpoint);

    // The same prompt from two tenants: two namespaces.
    let prompt = "The history of the printing press begins in the fifteenth century, when movable type \
                  changed how books were made, sold and read across Europe and beyond. Printers, scribes, \
                  readers and rulers all had reasons to welcome it, or to fear it.";
    let mut prompt_ids = HashMap::new();
    for key in ["sk-alpha-1", "sk-beta-01"] {
        let auth = format!("Bearer {key}");
        let (status, _, body) = http(&server.addr, "POST", "/v1/completions", &[("authorization", &auth)], &completion(prompt, 1));
        assert_eq!(status, 200, "{body}");
        let (_, _, rendered) = http(&server.addr, "POST", "/v1/completions/render", &[("authorization", &auth)], &completion(prompt, 1));
        let rendered: Value = serde_json::from_str(&rendered).unwrap();
        let ids: Vec<u64> = rendered["prompt_token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert!(ids.len() >= 32, "the prompt spans full blocks: {} tokens", ids.len());
        prompt_ids.insert(key, ids);
    }
    let stored_batches =
        |m: &[Value]| m.iter().filter(|m| m["batch"][1].as_array().unwrap().iter().any(|e| e["type"] == "BlockStored")).count();
    wait_for(&sub, "stored blocks of both tenants", |m| stored_batches(m) >= 2);

    // Eviction: many other prompts through an 8 MiB cache, while a second subscriber that
    // never reads is stopped: requests are not slowed by it.
    let stalled = subscribe(&endpoint);
    let _ = Command::new("kill").args(["-STOP", &stalled.child.id().to_string()]).status();
    let start = Instant::now();
    for i in 0..12 {
        let other = format!("Request {i}: {}", prompt.repeat(3));
        let (status, _, body) =
            http(&server.addr, "POST", "/v1/completions", &[("authorization", "Bearer sk-alpha-1")], &completion(&other, 1));
        assert_eq!(status, 200, "{body}");
    }
    eprintln!(
        "12 prompts of ~{} tokens with a stalled subscriber: {:.2} s",
        3 * prompt_ids["sk-alpha-1"].len(),
        start.elapsed().as_secs_f64()
    );
    wait_for(&sub, "evictions", |m| events(m).iter().any(|(_, e)| e["type"] == "BlockRemoved"));
    // A subscriber that lost messages asks the replay socket (a DEALER, as vLLM's
    // subscribers do) and gets them again, byte for byte, then the end marker.
    let have = sub.messages.lock().unwrap().clone();
    let from = have[have.len() / 2]["seq"].as_u64().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kv_events_sub.py");
    let replay = server.kv_replay.clone().expect("the server printed its replay endpoint");
    let out = Command::new(python()).arg(&script).args(["--replay", &replay, &from.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (end, replayed) = replayed.split_last().unwrap();
    assert_eq!((end["topic"].as_str(), end["seq"].as_i64()), (Some(""), Some(-1)), "the end marker");
    let expected: Vec<&Value> = have.iter().filter(|m| m["seq"].as_u64() >= Some(from)).collect();
    assert!(!expected.is_empty() && replayed.len() >= expected.len(), "{} replayed, {} expected", replayed.len(), expected.len());
    for (r, m) in replayed.iter().zip(&expected) {
        assert_eq!((&r["topic"], &r["seq"], &r["batch"]), (&m["topic"], &m["seq"], &m["batch"]), "a replayed message differs");
    }
    // Only the newest 64 are kept: asking from 0 starts at the oldest kept.
    let out = Command::new(python()).arg(&script).args(["--replay", &replay, "0"]).output().unwrap();
    let kept = String::from_utf8_lossy(&out.stdout).lines().count() - 1;
    assert!(kept <= 64, "{kept} kept");
    let (status, _, metrics_text) = http(&server.addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    server.signal("-TERM");
    wait_for(&sub, "the final AllBlocksCleared", |m| m.last().is_some_and(|m| m["batch"][1][0]["type"] == "AllBlocksCleared"));
    let _ = Command::new("kill").args(["-CONT", &stalled.child.id().to_string()]).status();

    let messages = sub.messages.lock().unwrap().clone();
    // Frames, topic, sequence numbers (consecutive: nothing was dropped), payload shape.
    for (i, m) in messages.iter().enumerate() {
        assert_eq!((m["frames"].as_u64(), m["topic"].as_str()), (Some(3), Some(topic)), "{m}");
        if i > 0 {
            assert_eq!(m["seq"].as_u64().unwrap(), messages[i - 1]["seq"].as_u64().unwrap() + 1, "a gap in seq");
        }
        let batch = m["batch"].as_array().unwrap();
        assert!(batch.len() == 3 && batch[0].is_f64() && batch[2] == 0, "{m}");
    }
    assert!(metrics_text.contains("ballast_kv_event_batches_published_total{"), "{metrics_text}");
    assert!(metrics_text.contains("ballast_kv_event_batches_dropped_total{model_name=\"SmolLM2-135M-Instruct.Q4_1\"} 0"), "{metrics_text}");

    // Replaying the events: every chain's parent was announced first, no block twice, every
    // removal of a block announced, and each tenant's chain is its prompt's full blocks.
    let mut announced: HashMap<u64, Option<String>> = HashMap::new();
    let mut namespaces: Vec<(String, Vec<u64>, Vec<u64>)> = Vec::new();
    for m in &messages {
        let events = m["batch"][1].as_array().unwrap();
        let batch_ns: HashSet<Option<String>> =
            events.iter().filter(|e| e["type"] == "BlockStored").map(|e| e["extra_keys"][0][0].as_str().map(String::from)).collect();
        assert!(batch_ns.len() <= 1 || !batch_ns.contains(&None), "salted and shared blocks share a batch: {m}");
        for e in events {
            match e["type"].as_str().unwrap() {
                "BlockStored" => {
                    let hashes = ids(&e["block_hashes"]);
                    let tokens = ids(&e["token_ids"]);
                    assert_eq!((e["block_size"].as_u64(), e["medium"].as_str()), (Some(16), Some("CPU")));
                    assert!(e["lora_id"].is_null() && e["lora_name"].is_null() && e.get("lora_name").is_some());
                    assert_eq!(tokens.len(), 16 * hashes.len(), "full blocks only");
                    let extra = e["extra_keys"].as_array().expect("tenants' blocks carry their namespace");
                    assert_eq!(extra.len(), hashes.len());
                    let ns = match e["parent_block_hash"].as_u64() {
                        Some(p) => {
                            assert!(announced.contains_key(&p), "parent {p:x} not announced first");
                            assert!(extra.iter().all(Value::is_null));
                            announced[&p].clone()
                        }
                        None => {
                            let ns = extra[0][0].as_str().expect("a chain's first block names its namespace");
                            assert!(ns.starts_with("ns:") && !ns.contains("alpha"), "an opaque id, never the salt: {ns}");
                            namespaces.push((ns.to_string(), hashes.clone(), tokens.clone()));
                            Some(ns.to_string())
                        }
                    };
                    for h in hashes {
                        assert!(announced.insert(h, ns.clone()).is_none(), "block {h:x} stored twice");
                    }
                }
                "BlockRemoved" => {
                    assert_eq!(e["medium"].as_str(), Some("CPU"));
                    for h in ids(&e["block_hashes"]) {
                        assert!(announced.remove(&h).is_some(), "block {h:x} removed but never stored");
                    }
                }
                "AllBlocksCleared" => announced.clear(),
                other => panic!("unknown event type {other}"),
            }
        }
    }
    let (alpha, beta) = (&namespaces[0], &namespaces[1]);
    for ((_, hashes, tokens), key) in [(alpha, "sk-alpha-1"), (beta, "sk-beta-01")] {
        let full = prompt_ids[key].len() / 16 * 16;
        assert_eq!(tokens[..], prompt_ids[key][..full], "a chain is the prompt's full blocks");
        assert_eq!(hashes.len(), full / 16);
    }
    assert_ne!(alpha.0, beta.0, "two tenants, two namespaces");
    assert!(alpha.1.iter().all(|h| !beta.1.contains(h)), "the same tokens under two salts share no block id");
}
