//! Admission: tenant limits and the overload ladder, for any transport. The HTTP server
//! (`crate::server`) is one user; a host that embeds the library and speaks its own protocol
//! uses the same pieces: a [`Policy`] (tenants and class targets), an [`Admission`] (a pure
//! state machine over explicit [`Signals`] and an explicit clock, so it is tested and
//! simulated in virtual time), [`Observed`] (the drain rate and recent TTFTs the signals need)
//! and [`degrade`] (the degraded treatment of an admitted request).
//!
//! For each request, in order:
//! 1. **Draining** → 503. **A tenant that a reload removed or changed** since the request was
//!    authenticated → 503 with `Retry-After` (a retry authenticates against the new policy):
//!    a request never runs with another snapshot's tenant, class, limits or cache salt.
//! 2. **Tenant limits** → 429: concurrent requests, requests per minute, tokens per minute
//!    (token buckets; prompt tokens are charged at admission, completion tokens when they are
//!    known, so a tenant can go into debt by one request and then waits).
//! 3. **The ladder** for the request's class. The estimated queue wait of a class is the work
//!    queued at or above it divided by the measured drain rate. Each class below `critical`
//!    has a level — `normal`, `degrade` (above half its `max_queue` target) or `shed` (above
//!    it) — with hysteresis (it steps down only once the wait falls well below the threshold
//!    that raised it), and a class is never at a lower level than the class above it: the
//!    lowest class degrades and sheds first. `critical` is never degraded or shed here; it is
//!    refused only when the hardware cannot hold it (the engine's own checks).
//!    A class with a TTFT target that its recent requests miss pushes every class below it to
//!    `degrade` (to `shed` beyond twice the target): the lower classes make room for it.
//!
//! Every refusal carries a `Retry-After` estimated from the drain rate.
//!
//! A host without HTTP: it admits, degrades and sheds, and tells the client when to retry.
//!
//! ```
//! use ballast::admission::{degrade, Admission, Decision, Policy, Signals};
//! use ballast::request::{Priority, Prompt, Request};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! let policy = Arc::new(Policy::default()); // one open tenant; low is shed above a 2 s queue
//! let tenant = policy.authenticate(None).unwrap().clone();
//! let mut admission = Admission::new(policy.clone(), Instant::now());
//! // In a real host: `Signals::from_engine(&engine.metrics(), &observed)`.
//! let calm = Signals { drain_rate: 10.0, ..Signals::default() };
//! let busy = Signals { waiting: [15, 0, 0, 0], drain_rate: 10.0, ..Signals::default() };
//! let surge = Signals { waiting: [50, 0, 0, 0], drain_rate: 10.0, ..Signals::default() };
//!
//! assert_eq!(admission.admit(&tenant, Priority::Low, 12, &calm, Instant::now()), Decision::Admit { degrade: false });
//! // 1.5 s of queue ahead of a low request: above half its target, so it is degraded.
//! let Decision::Admit { degrade: true } = admission.admit(&tenant, Priority::Low, 12, &busy, Instant::now()) else { panic!() };
//! let mut request = Request { max_tokens: Some(2000), n: 4, ..Request::new(Prompt::Text("Hello".into())) };
//! assert_eq!(degrade(&mut request, policy.degrade_max_tokens), ["max_tokens", "n"]);
//! assert_eq!((request.max_tokens, request.n), (Some(128), 1));
//! // 5 s of queue: shed, with an honest estimate of when to come back.
//! match admission.admit(&tenant, Priority::Low, 12, &surge, Instant::now()) {
//!     Decision::Reject { reason, retry_after, message } => {
//!         assert_eq!(policy.status(reason), 429, "shed: retry here later or elsewhere now");
//!         assert!(retry_after >= Duration::from_secs(1), "{message}");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Critical traffic is never shed by the ladder.
//! assert!(matches!(admission.admit(&tenant, Priority::Critical, 12, &surge, Instant::now()), Decision::Admit { .. }));
//! // Every admitted request is finished exactly once, with the tokens it generated.
//! for generated in [10, 128, 5] {
//!     admission.finish(&tenant.name, generated);
//! }
//! assert_eq!(admission.in_flight(), 0);
//! ```

mod observe;
mod policy;
mod signals;

pub use observe::Observed;
pub use policy::{ClassTargets, Policy, Tenant};
pub use signals::Signals;

use crate::request::{Priority, Request};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    Degrade = 1,
    Shed = 2,
}

/// Why a request was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Draining,
    TenantConcurrency,
    TenantRequests,
    TenantTokens,
    Overload,
    /// The request's tenant was removed or changed by a reload after it was authenticated.
    Reloaded,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Draining,
        RejectReason::TenantConcurrency,
        RejectReason::TenantRequests,
        RejectReason::TenantTokens,
        RejectReason::Overload,
        RejectReason::Reloaded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Draining => "draining",
            RejectReason::TenantConcurrency => "tenant_concurrency",
            RejectReason::TenantRequests => "tenant_requests_per_minute",
            RejectReason::TenantTokens => "tenant_tokens_per_minute",
            RejectReason::Overload => "overload",
            RejectReason::Reloaded => "config_reloaded",
        }
    }

    /// The default status: 429 for a tenant over its own limits and for load shed by the
    /// ladder (retryable elsewhere, and not a replica failure to a router's circuit breaker;
    /// [`Policy::status`] may make shedding a 503), 503 for a server draining or reloaded.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::TenantConcurrency | RejectReason::TenantRequests | RejectReason::TenantTokens | RejectReason::Overload => 429,
            RejectReason::Draining | RejectReason::Reloaded => 503,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run it; `degrade` says whether to apply the degraded limits.
    Admit {
        degrade: bool,
    },
    Reject {
        reason: RejectReason,
        retry_after: Duration,
        message: String,
    },
}

/// A token bucket refilled continuously; may go negative (debt).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Bucket {
        Bucket { level: per_minute, capacity: per_minute, per_second: per_minute / 60.0, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// Time until the level reaches `want`.
    fn wait_for(&self, want: f64) -> Duration {
        Duration::from_secs_f64(((want - self.level) / self.per_second).clamp(0.0, 3600.0))
    }
}

#[derive(Clone, Debug)]
struct TenantState {
    in_flight: usize,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Admission state: per-tenant usage and the ladder's levels. One per server, behind a mutex.
pub struct Admission {
    config: Arc<Policy>,
    /// By tenant name (so a reload keeps usage and in-flight counts).
    tenants: HashMap<String, TenantState>,
    levels: [Level; 4],
    draining: bool,
}

fn tenant_state(t: &Tenant, now: Instant) -> TenantState {
    TenantState {
        in_flight: 0,
        requests: t.requests_per_minute.map(|r| Bucket::new(r, now)),
        tokens: t.tokens_per_minute.map(|r| Bucket::new(r, now)),
    }
}

impl Admission {
    pub fn new(config: Arc<Policy>, now: Instant) -> Admission {
        let tenants = config.tenants.iter().map(|t| (t.name.clone(), tenant_state(t, now))).collect();
        Admission { config, tenants, levels: [Level::Normal; 4], draining: false }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.config
    }

    /// Swaps in a new policy. A tenant that keeps its name keeps its in-flight count and
    /// bucket levels (capped at the new capacities). Requests authenticated against the old
    /// policy whose tenant is gone or changed are refused at admission ([`RejectReason::Reloaded`]).
    pub fn reload(&mut self, config: Arc<Policy>, now: Instant) {
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let mut fresh = tenant_state(t, now);
            if let Some(old) = self.tenants.get(&t.name) {
                fresh.in_flight = old.in_flight;
                for (new, old) in [(&mut fresh.requests, &old.requests), (&mut fresh.tokens, &old.tokens)] {
                    if let (Some(n), Some(o)) = (new.as_mut(), old) {
                        let mut o = *o;
                        o.refill(now);
                        n.level = o.level.min(n.capacity);
                    }
                }
            }
            tenants.insert(t.name.clone(), fresh);
        }
        self.tenants = tenants;
        self.config = config;
    }

    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn level(&self, p: Priority) -> Level {
        self.levels[p.rank() as usize]
    }

    /// Moves the ladder to the levels the signals call for (with hysteresis).
    pub fn update(&mut self, signals: &Signals) {
        // The level a missed TTFT target of a higher class imposes on the classes below it.
        let mut imposed = [Level::Normal; 4];
        for p in Priority::ALL {
            let i = p.rank() as usize;
            let (Some(target), Some(ttft)) = (self.config.classes[i].ttft_target, signals.ttft[i]) else { continue };
            let level = if ttft > target * 2 {
                Level::Shed
            } else if ttft > target {
                Level::Degrade
            } else {
                Level::Normal
            };
            for below in imposed.iter_mut().take(i) {
                *below = (*below).max(level);
            }
        }
        let mut floor = Level::Normal;
        for p in [Priority::High, Priority::Normal, Priority::Low] {
            let i = p.rank() as usize;
            let level = match self.config.classes[i].max_queue {
                None => Level::Normal,
                Some(target) => {
                    let wait = signals.queue_wait(p).as_secs_f64();
                    let t = target.as_secs_f64();
                    match self.levels[i] {
                        Level::Normal if wait > t => Level::Shed,
                        Level::Normal if wait > 0.5 * t => Level::Degrade,
                        Level::Degrade if wait > t => Level::Shed,
                        Level::Degrade if wait < 0.35 * t => Level::Normal,
                        Level::Shed if wait < 0.35 * t => Level::Normal,
                        Level::Shed if wait < 0.7 * t => Level::Degrade,
                        same => same,
                    }
                }
            };
            // KV nearly full: the lowest class degrades (shorter outputs hold fewer blocks).
            let level = if p == Priority::Low && signals.kv_usage > 0.95 { level.max(Level::Degrade) } else { level };
            self.levels[i] = level.max(floor).max(imposed[i]);
            floor = self.levels[i];
        }
        self.levels[Priority::Critical.rank() as usize] = Level::Normal;
    }

    /// Decides on a request of `tenant` (as the policy it was authenticated against defines
    /// it) at class `p` with `prompt_tokens` tokens. On `Admit`, the caller must call
    /// [`Self::finish`] with the tenant's name once the request ends.
    pub fn admit(&mut self, tenant: &Tenant, p: Priority, prompt_tokens: usize, signals: &Signals, now: Instant) -> Decision {
        let limits_degrade = match self.tenant_gate(tenant, now, true) {
            Ok(always_degrade) => always_degrade,
            Err(refused) => return refused,
        };
        self.update(signals);
        let level = self.level(p);
        if level == Level::Shed {
            let target = self.config.classes[p.rank() as usize].max_queue.unwrap_or_default();
            let wait = signals.queue_wait(p);
            // Back when the queue should have drained below the level's exit threshold.
            let retry_after = wait.saturating_sub(target.mul_f64(0.7)).max(Duration::from_secs(1));
            let message = format!(
                "the server is overloaded for {} priority (estimated queue wait {:.1} s, target {:.1} s)",
                p.name(),
                wait.as_secs_f64(),
                target.as_secs_f64()
            );
            return Decision::Reject { reason: RejectReason::Overload, retry_after, message };
        }
        let st = self.tenants.get_mut(&tenant.name).expect("every configured tenant has a state");
        st.in_flight += 1;
        if let Some(b) = st.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = st.tokens.as_mut() {
            b.level -= prompt_tokens as f64;
        }
        Decision::Admit { degrade: level == Level::Degrade || limits_degrade }
    }

    /// Admits a request whose output is reused (coalesced with an identical one in flight, or
    /// cached): it adds no work, so the ladder never sheds or degrades it and its tokens are
    /// not charged; draining, a reloaded tenant, the tenant's concurrency and request rate
    /// still apply.
    pub fn admit_reused(&mut self, tenant: &Tenant, now: Instant) -> Decision {
        if let Err(refused) = self.tenant_gate(tenant, now, false) {
            return refused;
        }
        let st = self.tenants.get_mut(&tenant.name).expect("every configured tenant has a state");
        st.in_flight += 1;
        if let Some(b) = st.requests.as_mut() {
            b.level -= 1.0;
        }
        Decision::Admit { degrade: false }
    }

    /// What admission checks before the ladder: draining, the tenant still defined as the
    /// request saw it, its concurrency and request rate, and (`tokens`) its token rate. The
    /// tenant's `always_degrade` if it passes.
    fn tenant_gate(&mut self, tenant: &Tenant, now: Instant, tokens: bool) -> Result<bool, Decision> {
        if self.draining {
            let retry_after = self.config.drain_timeout.max(Duration::from_secs(1));
            return Err(Decision::Reject { reason: RejectReason::Draining, retry_after, message: "the server is shutting down".into() });
        }
        // The request carries the tenant of its own snapshot; it runs only if the policy in
        // force still defines that tenant exactly so (never with another one's limits or salt).
        let policy = self.config.clone();
        let limits = match policy.tenant(&tenant.name) {
            Some(current) if current == tenant => current,
            current => {
                let what = if current.is_none() { "was removed" } else { "was changed" };
                let message = format!("tenant {:?} {what} by a configuration reload while this request arrived; retry", tenant.name);
                return Err(Decision::Reject { reason: RejectReason::Reloaded, retry_after: Duration::from_secs(1), message });
            }
        };
        let st = self.tenants.get_mut(&limits.name).expect("every configured tenant has a state");
        if let Some(max) = limits.max_concurrent
            && st.in_flight >= max
        {
            let retry_after = Duration::from_secs(1);
            let message = format!("tenant {:?} has {max} requests in flight, its limit", limits.name);
            return Err(Decision::Reject { reason: RejectReason::TenantConcurrency, retry_after, message });
        }
        if let Some(b) = st.requests.as_mut() {
            b.refill(now);
            if b.level < 1.0 {
                let message = format!("tenant {:?} is over its {} requests per minute", limits.name, b.capacity);
                return Err(Decision::Reject { reason: RejectReason::TenantRequests, retry_after: b.wait_for(1.0), message });
            }
        }
        if tokens && let Some(b) = st.tokens.as_mut() {
            b.refill(now);
            if b.level <= 0.0 {
                let message = format!("tenant {:?} is over its {} tokens per minute", limits.name, b.capacity);
                return Err(Decision::Reject { reason: RejectReason::TenantTokens, retry_after: b.wait_for(1.0), message });
            }
        }
        Ok(limits.always_degrade)
    }

    /// An admitted request of tenant `name` ended having generated `completion_tokens`.
    pub fn finish(&mut self, name: &str, completion_tokens: usize) {
        if let Some(st) = self.tenants.get_mut(name) {
            st.in_flight = st.in_flight.saturating_sub(1);
            if let Some(b) = st.tokens.as_mut() {
                b.level -= completion_tokens as f64;
            }
        }
    }

    /// Requests in flight across all tenants.
    pub fn in_flight(&self) -> usize {
        self.tenants.values().map(|t| t.in_flight).sum()
    }
}

/// Applies the degraded treatment to an admitted request: `max_tokens` capped at `cap`, one
/// choice, no log-probs (each costs compute or KV that the higher classes need). Returns what
/// it changed, for the response to say so (`x-ballast-degraded`).
pub fn degrade(request: &mut Request, cap: usize) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if request.max_tokens.is_none_or(|m| m > cap) {
        request.max_tokens = Some(cap);
        changed.push("max_tokens");
    }
    if request.n > 1 {
        request.n = 1;
        changed.push("n");
    }
    if request.logprobs.take().is_some() {
        changed.push("logprobs");
    }
    changed
}

#[cfg(test)]
mod tests;
