//! deploy/monitoring/ against the real tools: `promtool check rules` and `promtool test rules`
//! (each alert fires on its series and not on the healthy twin), every metric the rules and
//! the Grafana dashboard use is one a live ballast exports, and a real Prometheus server
//! scraping a live ballast through a surge fires the shedding alert and resolves it after.
//! Debian's `prometheus` package (promtool and the server) is installed by
//! scripts/test-tooling.

mod common;

use common::server::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    assert!(found, "{name} is missing: scripts/test-tooling installs Debian's prometheus package");
    Command::new(name)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    for args in [&["check", "rules", "ballast-rules.yml"][..], &["test", "rules", "tests.yml"][..]] {
        let out = tool("promtool").args(args).current_dir(dir()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// Metric names in `text` that are ours (`ballast_…`, `vllm:…`, recorded `ballast:…`).
fn our_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("ballast_") || word.starts_with("vllm:") || word.starts_with("ballast:") {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let server = Server::start(&[]);
    assert_eq!(http(&server.addr, "POST", "/v1/completions", &[], &completion("Hello", 2)).0, 200);
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], "");
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE ")
                .map(|t| t.split(' ').next().unwrap())
                .or_else(|| (!l.starts_with('#')).then(|| l.split(['{', ' ']).next().unwrap()))
        })
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    let rules = std::fs::read_to_string(dir().join("ballast-rules.yml")).unwrap();
    let recorded: BTreeSet<String> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ")).map(|s| s.trim().to_string()).collect();
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("grafana-dashboard.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 20, "{} dashboard queries", exprs.len());
    for (source, text) in [("ballast-rules.yml", rules.clone()), ("grafana-dashboard.json", exprs.join("\n"))] {
        let used = our_names(&text);
        assert!(used.len() >= 10, "{source}: {used:?}");
        for name in used {
            let known = exported.contains(&name) || recorded.contains(&name);
            assert!(known, "{source} uses {name}, which ballast does not export (and no rule records)");
        }
    }
}

struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The alerts Prometheus has now: (name, priority label, state).
fn alerts(prom: &Prometheus) -> Vec<(String, String, String)> {
    let (_, _, body) = http(&prom.addr, "GET", "/api/v1/alerts", &[], "");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    let s = |k: &str| a["labels"][k].as_str().or(a[k].as_str()).unwrap_or_default().to_string();
                    (s("alertname"), s("priority"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_fires_the_shedding_alert_during_a_surge_and_resolves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ballast.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 300\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "1"]);
    // The shipped rules, each `for` shortened to nothing so a short surge is enough.
    let rules = std::fs::read_to_string(dir().join("ballast-rules.yml")).unwrap();
    let rules: String =
        rules.lines().map(|l| if l.trim_start().starts_with("for: ") { "        for: 0s" } else { l }).collect::<Vec<_>>().join("\n");
    std::fs::write(tmp.path().join("rules.yml"), rules).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: ballast\n    static_configs:\n      - targets: ['{}']\n",
        server.addr
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).unwrap();
    let child = tool("prometheus")
        .arg(format!("--config.file={}", tmp.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prom = Prometheus { child, addr: format!("127.0.0.1:{port}") };
    wait_until("Prometheus is ready", || {
        std::net::TcpStream::connect(&prom.addr).is_ok() && http(&prom.addr, "GET", "/-/ready", &[], "").0 == 200
    });
    wait_until("the first scrape", || {
        let (_, _, body) = http(&prom.addr, "GET", "/api/v1/query?query=up", &[], "");
        body.contains("\"value\"")
    });
    assert!(!alerts(&prom).iter().any(|a| a.0 == "BallastShedding"), "no shedding before the surge");

    // The surge: low-class requests faster than one slot serves them, until the alert fires.
    let firing = |prom: &Prometheus| {
        alerts(prom).iter().any(|(name, priority, state)| name == "BallastShedding" && priority == "low" && state == "firing")
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let fired = std::thread::scope(|s| {
        s.spawn(|| low_class_surge(&server.addr, &stop));
        let start = Instant::now();
        let fired = loop {
            if firing(&prom) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(40) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        fired
    });
    let fired = fired.expect("BallastShedding{priority=\"low\"} fired during the surge");
    // After it, the ladder steps down and the alert resolves.
    let start = Instant::now();
    while alerts(&prom).iter().any(|a| a.0 == "BallastShedding") {
        assert!(start.elapsed() < Duration::from_secs(40), "the shedding alert never resolved: {:?}", alerts(&prom));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "BallastShedding fired {:.1} s into the surge and resolved {:.1} s after it",
        fired.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
