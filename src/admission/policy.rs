//! What admission enforces: tenants (API keys, their highest class, their limits and their
//! prefix-cache namespace) and the per-class targets of the overload ladder. Immutable once
//! built; a reload builds a new one and every request keeps the one it was authenticated
//! against (an `Arc`), so a request never mixes two configurations.

use crate::request::Priority;
use std::collections::HashMap;
use std::time::Duration;

/// One tenant: who may use the server and how much.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub max_priority: Priority,
    pub tokens_per_minute: Option<f64>,
    pub requests_per_minute: Option<f64>,
    pub max_concurrent: Option<usize>,
    /// `None`: share the common prefix-cache namespace (only the open tenant).
    pub cache_salt: Option<String>,
    /// Every request gets the degraded treatment (a free tier served by the fallback model).
    pub always_degrade: bool,
    /// Completed deterministic outputs are kept this long and served again to identical
    /// requests of the same cache namespace (`None`: no output cache for this tenant).
    pub output_cache_ttl: Option<Duration>,
}

impl Tenant {
    /// A tenant without limits that may use every class and shares the common cache namespace:
    /// the one tenant of a server without API keys.
    pub fn open(name: &str) -> Tenant {
        Tenant {
            name: name.into(),
            max_priority: Priority::Critical,
            tokens_per_minute: None,
            requests_per_minute: None,
            max_concurrent: None,
            cache_salt: None,
            always_degrade: false,
            output_cache_ttl: None,
        }
    }
}

/// Targets of one priority class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassTargets {
    /// Estimated queue wait above which new requests of this class are shed (`None`: never);
    /// above half of it they are degraded.
    pub max_queue: Option<Duration>,
    /// Requests still without a first token this long after arrival fail early.
    pub deadline: Option<Duration>,
    /// When this class's recent time to first token exceeds it, the classes below it are
    /// degraded (beyond twice it, shed) to give it room.
    pub ttft_target: Option<Duration>,
}

/// Tenants and class targets: everything admission decides by.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub tenants: Vec<Tenant>,
    /// API key → index into `tenants`. Empty: no key is needed and every request belongs to
    /// the first tenant.
    pub keys: HashMap<String, usize>,
    /// Indexed by [`Priority::rank`].
    pub classes: [ClassTargets; 4],
    /// The `max_tokens` cap of a degraded request.
    pub degrade_max_tokens: usize,
    /// How long in-flight requests may finish once draining starts (and the `Retry-After` of
    /// requests refused while draining).
    pub drain_timeout: Duration,
    /// The status of a request shed by the ladder: 429 (the default: routers spill it to
    /// another replica without counting it against the replica's circuit breaker) or 503.
    pub shed_status: u16,
}

impl Default for Policy {
    /// One open tenant (no key, every class, no limits) and the default class targets.
    fn default() -> Self {
        Policy {
            tenants: vec![Tenant::open("default")],
            keys: HashMap::new(),
            classes: default_classes(),
            degrade_max_tokens: 128,
            drain_timeout: Duration::from_secs(30),
            shed_status: 429,
        }
    }
}

/// Low and normal traffic is shed when its queue wait is estimated above 2 s / 10 s; high
/// above 30 s; critical never.
fn default_classes() -> [ClassTargets; 4] {
    let ms = |v: u64| Some(Duration::from_millis(v));
    [
        ClassTargets { max_queue: ms(2_000), deadline: ms(30_000), ttft_target: None },
        ClassTargets { max_queue: ms(10_000), deadline: ms(60_000), ttft_target: None },
        ClassTargets { max_queue: ms(30_000), deadline: None, ttft_target: None },
        ClassTargets { max_queue: None, deadline: None, ttft_target: None },
    ]
}

impl Policy {
    /// Whether requests need an API key.
    pub fn requires_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant an API key belongs to (without keys configured: the open tenant, whatever
    /// the key). The key is compared in constant time against every configured key (no early
    /// exit, no hash lookup on the secret).
    pub fn authenticate(&self, key: Option<&str>) -> Option<&Tenant> {
        if !self.requires_keys() {
            return self.tenants.first();
        }
        let key = key?;
        let mut hit = None;
        for (candidate, &i) in &self.keys {
            if constant_time_eq(candidate.as_bytes(), key.as_bytes()) {
                hit = Some(i);
            }
        }
        hit.and_then(|i| self.tenants.get(i))
    }

    /// The tenant of this name.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The HTTP status of a refusal: the reason's own, the policy's `shed_status` for
    /// [`super::RejectReason::Overload`].
    pub fn status(&self, reason: super::RejectReason) -> u16 {
        match reason {
            super::RejectReason::Overload => self.shed_status,
            other => other.status(),
        }
    }

    pub fn class(&self, p: Priority) -> &ClassTargets {
        &self.classes[p.rank() as usize]
    }
}

/// Equality whose time depends only on the lengths (a key's length is not a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}
