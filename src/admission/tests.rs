use super::*;

fn config(tenant: Tenant) -> Arc<Policy> {
    Arc::new(Policy { tenants: vec![tenant], ..Policy::default() })
}

fn tenant() -> Tenant {
    Tenant::open("t")
}

/// The first tenant of the policy in force (as a request authenticated now would carry it).
fn first(a: &Admission) -> Tenant {
    a.policy().tenants[0].clone()
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
        assert_eq!(a.admit(&first(&a), Priority::Normal, 10, &idle(), t0), Decision::Admit { degrade: false });
    }
    let d = a.admit(&first(&a), Priority::Normal, 10, &idle(), t0);
    assert_eq!(rejected(&d).map(|r| r.0), Some(RejectReason::TenantConcurrency));
    assert_eq!(RejectReason::TenantConcurrency.status(), 429);
    a.finish("t", 5);
    assert!(rejected(&a.admit(&first(&a), Priority::Normal, 10, &idle(), t0)).is_none());
}

#[test]
fn rate_limits_refill_and_say_when() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(Tenant { requests_per_minute: Some(2.0), ..tenant() }), t0);
    a.admit(&first(&a), Priority::Normal, 10, &idle(), t0);
    a.admit(&first(&a), Priority::Normal, 10, &idle(), t0);
    let (reason, retry) = rejected(&a.admit(&first(&a), Priority::Normal, 10, &idle(), t0)).unwrap();
    assert_eq!(reason, RejectReason::TenantRequests);
    assert!((retry.as_secs_f64() - 30.0).abs() < 0.01, "one request refills in 30 s: {retry:?}");
    assert!(rejected(&a.admit(&first(&a), Priority::Normal, 10, &idle(), t0 + Duration::from_secs(31))).is_none());
    // Tokens: 600/min; a 1000-token completion puts the tenant in debt for a while.
    let mut a = Admission::new(config(Tenant { tokens_per_minute: Some(600.0), ..tenant() }), t0);
    a.admit(&first(&a), Priority::Normal, 10, &idle(), t0);
    a.finish("t", 1000);
    let t2 = t0 + Duration::from_secs(10);
    let (reason, retry) = rejected(&a.admit(&first(&a), Priority::Normal, 10, &idle(), t2)).unwrap();
    assert_eq!(reason, RejectReason::TenantTokens);
    assert!((retry.as_secs_f64() - 31.1).abs() < 0.01, "-310 tokens at 10/s, one needed: {retry:?}");
    assert!(rejected(&a.admit(&first(&a), Priority::Normal, 10, &idle(), t2 + retry)).is_none());
}

#[test]
fn the_ladder_degrades_then_sheds_the_lowest_class_first_with_hysteresis() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(tenant()), t0);
    // Default targets: low sheds above 2 s of estimated wait, normal above 10 s.
    let with_low_queue = |n: usize| Signals { waiting: [n, 0, 0, 0], drain_rate: 10.0, ..Signals::default() };
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(5), t0), Decision::Admit { degrade: false });
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(15), t0), Decision::Admit { degrade: true }, "1.5 s > half of 2 s");
    let (reason, retry) = rejected(&a.admit(&first(&a), Priority::Low, 1, &with_low_queue(30), t0)).unwrap();
    assert_eq!((reason, a.policy().status(reason)), (RejectReason::Overload, 429));
    let strict = Policy { shed_status: 503, ..Policy::default() };
    assert_eq!(strict.status(reason), 503, "configurable");
    assert!(retry >= Duration::from_secs(1));
    assert_eq!(
        a.admit(&first(&a), Priority::Normal, 1, &with_low_queue(30), t0),
        Decision::Admit { degrade: false },
        "low's queue is behind normal"
    );
    // Hysteresis: at 1.5 s (entered degrade from below) it stays shed until below 1.4 s.
    assert!(rejected(&a.admit(&first(&a), Priority::Low, 1, &with_low_queue(15), t0)).is_some());
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(12), t0), Decision::Admit { degrade: true });
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(8), t0), Decision::Admit { degrade: true }, "0.8 s: above 0.35 × 2 s");
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(18), t0), Decision::Admit { degrade: true }, "below 2 s: no shed");
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_low_queue(6), t0), Decision::Admit { degrade: false });

    // A normal queue pushes normal to shed; low can be no better; critical is never touched.
    let normal_queue = Signals { waiting: [0, 200, 0, 0], drain_rate: 10.0, ..Signals::default() };
    assert!(rejected(&a.admit(&first(&a), Priority::Normal, 1, &normal_queue, t0)).is_some());
    assert!(rejected(&a.admit(&first(&a), Priority::Low, 1, &normal_queue, t0)).is_some());
    assert_eq!(a.admit(&first(&a), Priority::High, 1, &normal_queue, t0), Decision::Admit { degrade: false });
    let flood = Signals { waiting: [0, 0, 0, 100_000], drain_rate: 1.0, kv_usage: 1.0, ..Signals::default() };
    assert_eq!(a.admit(&first(&a), Priority::Critical, 1, &flood, t0), Decision::Admit { degrade: false });
}

#[test]
fn draining_refuses_everything_and_reload_keeps_usage() {
    let t0 = Instant::now();
    let mut a = Admission::new(config(Tenant { max_concurrent: Some(1), ..tenant() }), t0);
    a.admit(&first(&a), Priority::Normal, 1, &idle(), t0);
    a.reload(config(Tenant { max_concurrent: Some(1), requests_per_minute: Some(5.0), ..tenant() }), t0);
    assert_eq!(a.in_flight(), 1, "the in-flight request is still counted");
    assert_eq!(rejected(&a.admit(&first(&a), Priority::Normal, 1, &idle(), t0)).unwrap().0, RejectReason::TenantConcurrency);
    a.set_draining();
    let (reason, _) = rejected(&a.admit(&first(&a), Priority::Critical, 1, &idle(), t0)).unwrap();
    assert_eq!((reason, reason.status()), (RejectReason::Draining, 503));
}

#[test]
fn a_missed_ttft_target_makes_the_lower_classes_give_way() {
    let t0 = Instant::now();
    let mut c = Policy { tenants: vec![tenant()], ..Policy::default() };
    c.classes[Priority::High.rank() as usize].ttft_target = Some(Duration::from_secs(1));
    let mut a = Admission::new(Arc::new(c), t0);
    let with_high_ttft = |s: f64| Signals { ttft: [None, None, Some(Duration::from_secs_f64(s)), None], ..idle() };
    assert_eq!(a.admit(&first(&a), Priority::Low, 1, &with_high_ttft(0.5), t0), Decision::Admit { degrade: false });
    assert_eq!(a.admit(&first(&a), Priority::Normal, 1, &with_high_ttft(1.5), t0), Decision::Admit { degrade: true });
    assert_eq!(
        a.admit(&first(&a), Priority::High, 1, &with_high_ttft(1.5), t0),
        Decision::Admit { degrade: false },
        "the class itself is not degraded"
    );
    assert_eq!(rejected(&a.admit(&first(&a), Priority::Low, 1, &with_high_ttft(2.5), t0)).unwrap().0, RejectReason::Overload);
    assert_eq!(
        a.admit(&first(&a), Priority::Low, 1, &with_high_ttft(0.5), t0),
        Decision::Admit { degrade: false },
        "back once high is on target"
    );
    // A tenant that always gets the degraded treatment.
    let mut a = Admission::new(config(Tenant { always_degrade: true, ..tenant() }), t0);
    assert_eq!(a.admit(&first(&a), Priority::High, 1, &idle(), t0), Decision::Admit { degrade: true });
}

/// A request authenticated against one policy and admitted after a reload runs as exactly the
/// tenant it authenticated as, or not at all: never as whichever tenant now sits at its index.
#[test]
fn a_reload_between_authentication_and_admission_never_swaps_tenants() {
    let t0 = Instant::now();
    let alpha =
        Tenant { cache_salt: Some("alpha".into()), max_priority: Priority::Normal, max_concurrent: Some(1), ..Tenant::open("alpha") };
    let beta = Tenant { cache_salt: Some("beta".into()), ..Tenant::open("beta") };
    let policy = |tenants: Vec<Tenant>| {
        let keys = tenants.iter().enumerate().map(|(i, t)| (format!("sk-{}-key", t.name), i)).collect();
        Arc::new(Policy { tenants, keys, ..Policy::default() })
    };
    let old = policy(vec![alpha.clone(), beta.clone()]);
    let mut a = Admission::new(old.clone(), t0);
    let caller = old.authenticate(Some("sk-alpha-key")).unwrap().clone();
    assert_eq!(caller, alpha);
    assert!(old.authenticate(Some("sk-alpha-kez")).is_none() && old.authenticate(None).is_none());

    // The same tenants in another order: admitted as alpha (its limits, its in-flight count).
    a.reload(policy(vec![beta.clone(), alpha.clone()]), t0);
    assert_eq!(a.admit(&caller, Priority::Normal, 1, &idle(), t0), Decision::Admit { degrade: false });
    let (reason, _) = rejected(&a.admit(&caller, Priority::Normal, 1, &idle(), t0)).unwrap();
    assert_eq!(reason, RejectReason::TenantConcurrency, "alpha's own limit of one, not beta's none");
    a.finish("alpha", 0);

    // Alpha changed (its salt now another's) or removed: refused, with a retry.
    let changed = Tenant { cache_salt: Some("beta".into()), ..alpha.clone() };
    for tenants in [vec![beta.clone(), changed], vec![beta.clone()]] {
        a.reload(policy(tenants), t0);
        match a.admit(&caller, Priority::Normal, 1, &idle(), t0) {
            Decision::Reject { reason: RejectReason::Reloaded, retry_after, message } => {
                assert_eq!((RejectReason::Reloaded.status(), retry_after), (503, Duration::from_secs(1)));
                assert!(message.contains("\"alpha\"") && message.contains("reload"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(a.in_flight(), 0, "nothing was counted for the refused requests");
}

#[test]
fn reused_outputs_pass_the_ladder_but_not_draining_and_cost_requests_not_tokens() {
    let t0 = Instant::now();
    let limits = Tenant { requests_per_minute: Some(3.0), tokens_per_minute: Some(600.0), max_concurrent: Some(2), ..tenant() };
    let mut a = Admission::new(config(limits), t0);
    // A flood sheds the normal class for computed requests...
    let flood = Signals { waiting: [0, 100_000, 0, 0], drain_rate: 1.0, kv_usage: 1.0, ..Signals::default() };
    assert_eq!(rejected(&a.admit(&first(&a), Priority::Normal, 10, &flood, t0)).map(|r| r.0), Some(RejectReason::Overload));
    assert_eq!(a.level(Priority::Normal), Level::Shed);
    // ...but not a reused one, which adds no work.
    assert_eq!(a.admit_reused(&first(&a), t0), Decision::Admit { degrade: false });
    // The token bucket is not charged, even in debt: reuse computes nothing.
    a.finish("t", 0);
    let mut b = Admission::new(config(Tenant { tokens_per_minute: Some(600.0), ..tenant() }), t0);
    b.admit(&first(&b), Priority::Normal, 10, &idle(), t0);
    b.finish("t", 1000);
    assert_eq!(rejected(&b.admit(&first(&b), Priority::Normal, 10, &idle(), t0)).map(|r| r.0), Some(RejectReason::TenantTokens));
    assert_eq!(b.admit_reused(&first(&b), t0), Decision::Admit { degrade: false });
    // The request rate and concurrency still count.
    assert_eq!(a.admit_reused(&first(&a), t0), Decision::Admit { degrade: false });
    assert_eq!(a.admit_reused(&first(&a), t0), Decision::Admit { degrade: false });
    assert_eq!(rejected(&a.admit_reused(&first(&a), t0)).map(|r| r.0), Some(RejectReason::TenantConcurrency));
    a.finish("t", 0);
    assert_eq!(rejected(&a.admit_reused(&first(&a), t0)).map(|r| r.0), Some(RejectReason::TenantRequests));
    // Draining refuses everything.
    a.set_draining();
    assert_eq!(rejected(&a.admit_reused(&first(&a), t0 + Duration::from_secs(60))).map(|r| r.0), Some(RejectReason::Draining));
}
