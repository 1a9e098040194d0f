//! The operator's status page: its data during a surge, its key where tenants have keys, off
//! when configured so; and the page itself loaded in a real headless Chromium (Debian's, from
//! scripts/test-tooling) during a surge, showing the shedding class, the model and, as text,
//! a hostile error message.

mod common;

use common::server::*;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn status(addr: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (code, _, body) = http(addr, "GET", "/status.json", headers, "");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn the_status_data_shows_a_surge_and_keeps_to_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 300\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "1"]);
    let (code, d) = status(&server.addr, &[]);
    assert_eq!(code, 200, "{d}");
    assert_eq!((d["model"].as_str(), d["draining"].as_bool()), (Some(MODEL), Some(false)));
    assert_eq!(
        d["classes"].as_array().unwrap().iter().map(|c| c["class"].as_str().unwrap()).collect::<Vec<_>>(),
        ["critical", "high", "normal", "low"]
    );
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        s.spawn(|| low_class_surge(&server.addr, &stop));
        let mut seen = None;
        for _ in 0..100 {
            let (_, d) = status(&server.addr, &[]);
            let low = d["classes"][3].clone();
            if low["level"] == "shed" && low["shed"].as_u64() > Some(0) {
                seen = Some(d);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        seen
    });
    let d = seen.expect("the status data showed the low class shedding");
    assert!(d["classes"][3]["waiting"].as_u64().is_some() && d["kv_usage"].as_f64().unwrap() >= 0.0);
    assert!(d["tokens_generated"].as_u64().unwrap() > 0);

    // With API keys, the data needs one (the page itself holds none); off is a 404.
    let keyed = dir.path().join("k.toml");
    std::fs::write(&keyed, "[[tenants]]\nname = \"ops\"\napi_keys = [\"sk-ops-00001\"]\n").unwrap();
    let server = Server::start(&["--config", keyed.to_str().unwrap()]);
    assert_eq!(status(&server.addr, &[]).0, 401);
    assert_eq!(status(&server.addr, &[("authorization", "Bearer sk-ops-00001")]).0, 200);
    let (code, headers, page) = http(&server.addr, "GET", "/status", &[], "");
    assert_eq!(code, 200);
    assert!(page.contains("<title>ballast status</title>") && !page.contains("sk-ops"));
    assert!(header(&headers, "content-security-policy").is_some_and(|c| c.contains("default-src 'none'")));
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[server]\nstatus_page = false\n").unwrap();
    let server = Server::start(&["--config", off.to_str().unwrap()]);
    assert_eq!(http(&server.addr, "GET", "/status", &[], "").0, 404);
    assert_eq!(status(&server.addr, &[]).0, 404);
}

/// Debian's Chromium, headless, as the test tooling installs it.
fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> String {
    let found = Command::new("sh").arg("-c").arg("command -v chromium").output().is_ok_and(|o| o.status.success());
    assert!(found, "chromium is missing: scripts/test-tooling installs Debian's chromium");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_in_a_real_browser_shows_the_shedding_class_and_escapes_what_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, "[classes.low]\nmax_queue_ms = 300\n").unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--max-num-seqs", "1"]);
    // An error whose message carries markup: the page must show it as text.
    let hostile = "<img src=x onerror=alert(1)>";
    let (code, _, _) = http(&server.addr, "POST", "/v1/completions", &[], &json!({"model": hostile, "prompt": "x"}).to_string());
    assert_eq!(code, 404);
    let url = format!("http://{}/status", server.addr);
    let stop = AtomicBool::new(false);
    let shot = std::env::var("BALLAST_STATUS_SCREENSHOT").ok();
    let dom = std::thread::scope(|s| {
        s.spawn(|| low_class_surge(&server.addr, &stop));
        wait_until("the low class sheds", || {
            metric(&server.addr, &format!("ballast_overload_level{{model_name=\"{MODEL}\",priority=\"low\"}}")) == 2.0
        });
        // Several polls in virtual time, each a real request to the server.
        let dom = chromium(&dir.path().join("profile"), &["--virtual-time-budget=4000", "--dump-dom"], &url);
        if let Some(path) = &shot {
            chromium(
                &dir.path().join("profile2"),
                &["--virtual-time-budget=4000", "--window-size=1280,860", &format!("--screenshot={path}")],
                &url,
            );
        }
        stop.store(true, Ordering::SeqCst);
        dom
    });
    assert!(dom.contains(&format!("<span id=\"model\">{MODEL}</span>")), "{dom}");
    let low = dom.split("<tr id=\"class-low\">").nth(1).expect("the class table has a low row").split("</tr>").next().unwrap();
    assert!(low.contains("<td class=\"shed\">shed</td>"), "the low class shows shedding: {low}");
    assert!(dom.contains("serving") && dom.contains("% of"), "{dom}");
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "the hostile message is shown as text: {dom}");
    assert!(!dom.contains("<img src=x"), "no markup from the server reaches the page");
}
