//! A live `ballast serve` for tests, and a minimal HTTP/1.1 client.

use super::model_path;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Where KV-cache events are published (with `--kv-events-endpoint`), and replayed.
    pub kv_events: Option<String>,
    pub kv_replay: Option<String>,
    /// Every line the server wrote to stderr after its address.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let model = model_path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .arg("serve")
            .args(if extra.contains(&"--model") { vec![] } else { vec!["--model", model.to_str().unwrap()] })
            .args(if extra.contains(&"--port") { &[][..] } else { &["--port", "0"][..] })
            .args(if extra.contains(&"--kv-cache-mib") { &[][..] } else { &["--kv-cache-mib", "64"][..] })
            .args(extra)
            .env("BALLAST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ballast serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut kv_events, mut kv_replay) = (None, None);
        let addr = loop {
            let line = lines.next().expect("the server printed its address").expect("stderr");
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.trim().to_string();
            }
            if let Some(e) = line.strip_prefix("kv events on ") {
                kv_events = Some(e.trim().to_string());
            }
            if let Some(e) = line.strip_prefix("kv events replay on ") {
                kv_replay = Some(e.trim().to_string());
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server { child, addr, kv_events, kv_replay, log }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client: status, headers (lower-cased), body.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Vec<(String, String)>, String) {
    exchange(addr, method, path, headers, body, None::<fn()>)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn completion(prompt: &str, max_tokens: usize) -> String {
    serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true}).to_string()
}

/// A metric's value from `/metrics` (the first series whose line starts with `series`).
pub fn metric(addr: &str, series: &str) -> f64 {
    let (_, _, body) = http(addr, "GET", "/metrics", &[], "");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {series}"))
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes (a whole request, well-formed or not) and parses the response.
pub fn http_raw(addr: &str, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

/// A POST of `body` bytes to `path` with a JSON content type.
pub fn post_bytes(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    http_raw(addr, &raw)
}

/// Resident memory of a process in KiB, its open file descriptors and threads.
pub fn process_usage(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (field("VmRSS:"), fds, field("Threads:"))
}

/// A POST whose body arrives in two halves with `between` run in the gap (the server has
/// authenticated the request and is reading its body): status, headers, body.
pub fn http_split(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    between: impl FnOnce(),
) -> (u16, Vec<(String, String)>, String) {
    exchange(addr, "POST", path, headers, body, Some(between))
}

/// One request on its own connection; with `between`, the body is sent in two halves around it.
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    between: Option<impl FnOnce()>,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "content-type: application/json\r\n\r\n";
    let (first, rest) = body.split_at(if between.is_some() { body.len() / 2 } else { body.len() });
    s.write_all(&[head.as_bytes(), first.as_bytes()].concat()).unwrap();
    if let Some(between) = between {
        s.flush().unwrap();
        // Let the server read the head (and authenticate) before `between` runs: on a loaded
        // 2-core CI machine a reload right after the write could land first (a 401 where the
        // test means a request already authenticated).
        std::thread::sleep(Duration::from_millis(200));
        between();
        s.write_all(rest.as_bytes()).unwrap();
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect();
    (status, headers, body.to_string())
}

/// Low-class requests of 48 tokens from six clients, one after another each, until `stop`:
/// more than one sequence slot serves, so the low class sheds.
pub fn low_class_surge(addr: &str, stop: &std::sync::atomic::AtomicBool) {
    std::thread::scope(|s| {
        for c in 0..6 {
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let body =
                        serde_json::json!({"prompt": format!("Client {c}, request {n}"), "max_tokens": 48, "ignore_eos": true, "priority": "low"});
                    let _ = http(addr, "POST", "/v1/completions", &[], &body.to_string());
                    n += 1;
                }
            });
        }
    });
}
