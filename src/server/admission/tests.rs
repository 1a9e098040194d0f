use super::*;
use crate::server::config::{ServerConfig, Tenant};
use std::sync::Arc;

fn config(tenant: Tenant) -> Arc<ServerConfig> {
    Arc::new(ServerConfig { tenants: vec![tenant], ..ServerConfig::default() })
}

fn tenant() -> Tenant {
    Tenant {
        name: "t".into(),
        max_priority: Priority::Critical,
        tokens_per_minute: None,
        requests_per_minute: None,
        max_concurrent: None,
        cache_salt: None,
        always_degrade: false,
    }
}

fn idle() -> Signals {
    Signals { drain_rate: 10.0, ..Signals::default() }
}

fn rejected(d: &Decision) -> Option<(RejectReason, Duration)> {
    match d {
        Decision::Reject { reason, retry_after, .. } => Some((*reason, *retry_after)),
        Decision::Admit { .. } => None,
    }
}

#[test]
fn tenant_concurrency_is_a_429_until_a_request_finishes() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(Tenant { max_concurrent: Some(2), ..tenant() }), t0);
    for _ in 0..2 {
        assert_eq!(a.admit(0, Priority::Normal, 10, &idle(), t0), Decision::Admit { degrade: false });
    }
    let d = a.admit(0, Priority::Normal, 10, &idle(), t0);
    assert_eq!(rejected(&d).map(|r| r.0), Some(RejectReason::TenantConcurrency));
    assert_eq!(RejectReason::TenantConcurrency.status(), 429);
    a.finish("t", 5);
    assert!(rejected(&a.admit(0, Priority::Normal, 10, &idle(), t0)).is_none());
}

#[test]
fn rate_limits_refill_and_say_when() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(Tenant { requests_per_minute: Some(2.0), ..tenant() }), t0);
    a.admit(0, Priority::Normal, 10, &idle(), t0);
    a.admit(0, Priority::Normal, 10, &idle(), t0);
    let (reason, retry) = rejected(&a.admit(0, Priority::Normal, 10, &idle(), t0)).unwrap();
    assert_eq!(reason, RejectReason::TenantRequests);
    assert!((retry.as_secs_f64() - 30.0).abs() < 0.01, "one request refills in 30 s: {retry:?}");
    assert!(rejected(&a.admit(0, Priority::Normal, 10, &idle(), t0 + Duration::from_secs(31))).is_none());
    // Tokens: 600/min; a 1000-token completion puts the tenant in debt for a while.
    let mut a = Admission::new(config(Tenant { tokens_per_minute: Some(600.0), ..tenant() }), t0);
    a.admit(0, Priority::Normal, 10, &idle(), t0);
    a.finish("t", 1000);
    let t2 = t0 + Duration::from_secs(10);
    let (reason, retry) = rejected(&a.admit(0, Priority::Normal, 10, &idle(), t2)).unwrap();
    assert_eq!(reason, RejectReason::TenantTokens);
    assert!((retry.as_secs_f64() - 31.1).abs() < 0.01, "-310 tokens at 10/s, one needed: {retry:?}");
    assert!(rejected(&a.admit(0, Priority::Normal, 10, &idle(), t2 + retry)).is_none());
}

#[test]
fn the_ladder_degrades_then_sheds_the_lowest_class_first_with_hysteresis() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(tenant()), t0);
    // Default targets: low sheds above 2 s of estimated wait, normal above 10 s.
    let with_low_queue = |n: usize| Signals { waiting: [n, 0, 0, 0], drain_rate: 10.0, ..Signals::default() };
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(5), t0), Decision::Admit { degrade: false });
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(15), t0), Decision::Admit { degrade: true }, "1.5 s > half of 2 s");
    let (reason, retry) = rejected(&a.admit(0, Priority::Low, 1, &with_low_queue(30), t0)).unwrap();
    assert_eq!((reason, reason.status()), (RejectReason::Overload, 503));
    assert!(retry >= Duration::from_secs(1));
    assert_eq!(
        a.admit(0, Priority::Normal, 1, &with_low_queue(30), t0),
        Decision::Admit { degrade: false },
        "low's queue is behind normal"
    );
    // Hysteresis: at 1.5 s (entered degrade from below) it stays shed until below 1.4 s.
    assert!(rejected(&a.admit(0, Priority::Low, 1, &with_low_queue(15), t0)).is_some());
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(12), t0), Decision::Admit { degrade: true });
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(8), t0), Decision::Admit { degrade: true }, "0.8 s: above 0.35 × 2 s");
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(18), t0), Decision::Admit { degrade: true }, "below 2 s: no shed");
    assert_eq!(a.admit(0, Priority::Low, 1, &with_low_queue(6), t0), Decision::Admit { degrade: false });

    // A normal queue pushes normal to shed; low can be no better; critical is never touched.
    let normal_queue = Signals { waiting: [0, 200, 0, 0], drain_rate: 10.0, ..Signals::default() };
    assert!(rejected(&a.admit(0, Priority::Normal, 1, &normal_queue, t0)).is_some());
    assert!(rejected(&a.admit(0, Priority::Low, 1, &normal_queue, t0)).is_some());
    assert_eq!(a.admit(0, Priority::High, 1, &normal_queue, t0), Decision::Admit { degrade: false });
    let flood = Signals { waiting: [0, 0, 0, 100_000], drain_rate: 1.0, kv_usage: 1.0, ..Signals::default() };
    assert_eq!(a.admit(0, Priority::Critical, 1, &flood, t0), Decision::Admit { degrade: false });
}

#[test]
fn draining_refuses_everything_and_reload_keeps_usage() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(Tenant { max_concurrent: Some(1), ..tenant() }), t0);
    a.admit(0, Priority::Normal, 1, &idle(), t0);
    a.reload(config(Tenant { max_concurrent: Some(1), requests_per_minute: Some(5.0), ..tenant() }), t0);
    assert_eq!(a.in_flight(), 1, "the in-flight request is still counted");
    assert_eq!(rejected(&a.admit(0, Priority::Normal, 1, &idle(), t0)).unwrap().0, RejectReason::TenantConcurrency);
    a.set_draining();
    let (reason, _) = rejected(&a.admit(0, Priority::Critical, 1, &idle(), t0)).unwrap();
    assert_eq!((reason, reason.status()), (RejectReason::Draining, 503));
}

#[test]
fn a_missed_ttft_target_makes_the_lower_classes_give_way() {
    let t0 = Instant::now();
    let mut c = ServerConfig { tenants: vec![tenant()], ..ServerConfig::default() };
    c.classes[Priority::High.rank() as usize].ttft_target = Some(Duration::from_secs(1));
    let mut a = Admission::new(Arc::new(c), t0);
    let with_high_ttft = |s: f64| Signals { ttft: [None, None, Some(Duration::from_secs_f64(s)), None], ..idle() };
    assert_eq!(a.admit(0, Priority::Low, 1, &with_high_ttft(0.5), t0), Decision::Admit { degrade: false });
    assert_eq!(a.admit(0, Priority::Normal, 1, &with_high_ttft(1.5), t0), Decision::Admit { degrade: true });
    assert_eq!(
        a.admit(0, Priority::High, 1, &with_high_ttft(1.5), t0),
        Decision::Admit { degrade: false },
        "the class itself is not degraded"
    );
    assert_eq!(rejected(&a.admit(0, Priority::Low, 1, &with_high_ttft(2.5), t0)).unwrap().0, RejectReason::Overload);
    assert_eq!(a.admit(0, Priority::Low, 1, &with_high_ttft(0.5), t0), Decision::Admit { degrade: false }, "back once high is on target");
    // A tenant that always gets the degraded treatment.
    let mut a = Admission::new(config(Tenant { always_degrade: true, ..tenant() }), t0);
    assert_eq!(a.admit(0, Priority::High, 1, &idle(), t0), Decision::Admit { degrade: true });
}
