//! The server's TOML configuration: tenants (API keys and limits) and the per-class targets
//! of the overload ladder. Parsed into raw structs, then validated into [`ServerConfig`] with
//! every problem listed (not just the first), each naming its place in the file.
//!
//! ```toml
//! [server]
//! max_body_bytes = 1048576     # larger bodies get 413
//! max_connections = 1024       # more open connections are answered 503 and closed
//! read_timeout_secs = 10       # a request's head and body must arrive within this
//! drain_timeout_secs = 30      # SIGTERM: how long in-flight requests may finish
//! degrade_max_tokens = 128     # max_tokens cap applied to degraded requests
//! shed_status = 429            # status of load shed by the ladder (429, or 503)
//! strict_fields = false        # true: unknown request fields are a 400 (default: ignored,
//!                              # named in x-ballast-ignored-fields, counted)
//! output_reuse = true          # false: never coalesce or cache outputs (every request computed)
//! status_page = true           # false: no /status page (with API keys, its data needs one)
//! output_cache_mib = 64        # memory for completed outputs kept for reuse (all tenants)
//! output_cache = false         # the output cache for the open tenant (no [[tenants]])
//!
//! [[tenants]]
//! name = "batch-jobs"
//! api_keys = ["sk-batch-1"]
//! max_priority = "normal"      # highest class its requests may ask for
//! tokens_per_minute = 200000   # prompt + completion tokens (token bucket)
//! requests_per_minute = 600
//! max_concurrent = 32
//! cache_salt = "batch-jobs"    # prefix-cache namespace (default: the tenant's name)
//! always_degrade = false       # true: always the degraded treatment (e.g. the fallback model)
//! output_cache = false         # true: identical deterministic requests of this tenant get a
//! output_cache_ttl_secs = 300  # completed output again, for this long (see README)
//!
//! [classes.low]
//! max_queue_ms = 2000          # estimated queue wait above which new requests are shed
//! deadline_ms = 30000          # queued longer than this without a first token: fail early
//!
//! [classes.high]
//! ttft_target_ms = 2000        # recent TTFT of this class above it: lower classes degrade
//!                              # (above twice it: they are shed)
//! ```
//!
//! Without a file there is one open tenant (no key, every class allowed, no limits).

use crate::admission::{Policy, Tenant};
use crate::request::Priority;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    classes: HashMap<String, RawClass>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_body_bytes: Option<u64>,
    max_connections: Option<u64>,
    read_timeout_secs: Option<f64>,
    drain_timeout_secs: Option<f64>,
    degrade_max_tokens: Option<u64>,
    shed_status: Option<u16>,
    strict_fields: Option<bool>,
    output_reuse: Option<bool>,
    status_page: Option<bool>,
    output_cache_mib: Option<f64>,
    output_cache: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    #[serde(default)]
    api_keys: Vec<String>,
    max_priority: Option<String>,
    tokens_per_minute: Option<f64>,
    requests_per_minute: Option<f64>,
    max_concurrent: Option<u64>,
    cache_salt: Option<String>,
    #[serde(default)]
    always_degrade: bool,
    #[serde(default)]
    output_cache: bool,
    output_cache_ttl_secs: Option<f64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawClass {
    max_queue_ms: Option<f64>,
    deadline_ms: Option<f64>,
    ttft_target_ms: Option<f64>,
}

/// A validated configuration: the HTTP server's own limits and the admission policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// A request's head and body must arrive within this (slow clients get 408 or are closed).
    pub read_timeout: Duration,
    /// Unknown request fields are a 400 (otherwise ignored, as vLLM does, and named in the
    /// response's `x-ballast-ignored-fields`).
    pub strict_fields: bool,
    /// Identical deterministic requests are computed once (in flight, and from the output
    /// cache of tenants that have one).
    pub output_reuse: bool,
    /// `/status` and `/status.json` are served (the data needs an API key where tenants have
    /// them).
    pub status_page: bool,
    /// Memory for completed outputs kept for reuse, all tenants together.
    pub output_cache_bytes: usize,
    /// Tenants and class targets (shared with admission and with every request authenticated
    /// against this configuration).
    pub policy: Arc<Policy>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 1 << 20,
            max_connections: 1024,
            read_timeout: Duration::from_secs(10),
            strict_fields: false,
            output_reuse: true,
            status_page: true,
            output_cache_bytes: 64 << 20,
            policy: Arc::new(Policy::default()),
        }
    }
}

/// Every problem found in a configuration, one per line.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

fn secs(ms: f64) -> Duration {
    Duration::from_secs_f64(ms / 1000.0)
}

impl ServerConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string().trim_end().to_string()]))?;
        let mut errors = Vec::new();
        let mut cfg = ServerConfig::default();
        let mut policy = Policy::default();
        if let Some(b) = raw.server.max_body_bytes {
            if b < 1024 {
                errors.push(format!("server.max_body_bytes = {b}: must be at least 1024"));
            }
            cfg.max_body_bytes = b as usize;
        }
        if let Some(c) = raw.server.max_connections {
            if c == 0 || c > 65536 {
                errors.push(format!("server.max_connections = {c}: must be between 1 and 65536"));
            }
            cfg.max_connections = c as usize;
        }
        if let Some(t) = raw.server.read_timeout_secs {
            if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
                errors.push(format!("server.read_timeout_secs = {t}: must be between 0 and 3600 (exclusive of 0)"));
            } else {
                cfg.read_timeout = Duration::from_secs_f64(t);
            }
        }
        if let Some(t) = raw.server.drain_timeout_secs {
            if !(0.0..=3600.0).contains(&t) {
                errors.push(format!("server.drain_timeout_secs = {t}: must be between 0 and 3600"));
            } else {
                policy.drain_timeout = Duration::from_secs_f64(t);
            }
        }
        if let Some(m) = raw.server.degrade_max_tokens {
            if m == 0 {
                errors.push("server.degrade_max_tokens = 0: must be at least 1".into());
            }
            policy.degrade_max_tokens = m as usize;
        }
        cfg.strict_fields = raw.server.strict_fields.unwrap_or(false);
        match raw.server.shed_status {
            None => {}
            Some(s @ (429 | 503)) => policy.shed_status = s,
            Some(s) => errors.push(format!("server.shed_status = {s}: must be 429 or 503")),
        }
        cfg.output_reuse = raw.server.output_reuse.unwrap_or(true);
        cfg.status_page = raw.server.status_page.unwrap_or(true);
        if let Some(m) = raw.server.output_cache_mib {
            if !(m.is_finite() && (0.0..=65536.0).contains(&m)) {
                errors.push(format!("server.output_cache_mib = {m}: must be between 0 and 65536"));
            } else {
                cfg.output_cache_bytes = (m * 1048576.0) as usize;
            }
        }
        if raw.server.output_cache == Some(true) {
            if raw.tenants.is_empty() {
                policy.tenants[0].output_cache_ttl = Some(Duration::from_secs(300));
            } else {
                errors.push("server.output_cache applies to the open tenant only: set output_cache in each [[tenants]]".into());
            }
        }
        if !raw.tenants.is_empty() {
            policy.tenants.clear();
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let at = format!("tenants[{i}] ({:?})", t.name);
            if t.name.trim().is_empty() {
                errors.push(format!("tenants[{i}].name is empty"));
            }
            if !names.insert(t.name.clone()) {
                errors.push(format!("{at}: the name is used twice"));
            }
            if t.api_keys.is_empty() {
                errors.push(format!("{at}: api_keys is empty (a tenant without keys cannot be reached)"));
            }
            for key in &t.api_keys {
                if key.len() < 8 {
                    errors.push(format!("{at}: api key {:?}… is shorter than 8 characters", &key[..key.len().min(2)]));
                }
                if let Some(&other) = policy.keys.get(key) {
                    errors.push(format!("{at}: an api key is also listed by tenants[{other}]"));
                }
                policy.keys.insert(key.clone(), policy.tenants.len());
            }
            let max_priority = match t.max_priority.as_deref().map(str::parse::<Priority>) {
                None => Priority::Normal,
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    errors.push(format!("{at}.max_priority: {e}"));
                    Priority::Normal
                }
            };
            let positive = |v: Option<f64>, field: &str, errors: &mut Vec<String>| {
                if let Some(x) = v.filter(|x| !(x.is_finite() && *x > 0.0)) {
                    errors.push(format!("{at}.{field} = {x}: must be a positive number"));
                }
                v
            };
            let tokens_per_minute = positive(t.tokens_per_minute, "tokens_per_minute", &mut errors);
            let requests_per_minute = positive(t.requests_per_minute, "requests_per_minute", &mut errors);
            if t.max_concurrent == Some(0) {
                errors.push(format!("{at}.max_concurrent = 0: must be at least 1"));
            }
            let output_cache_ttl = match (t.output_cache, t.output_cache_ttl_secs) {
                (false, Some(_)) => {
                    errors.push(format!("{at}.output_cache_ttl_secs needs output_cache = true"));
                    None
                }
                (false, None) => None,
                (true, None) => Some(Duration::from_secs(300)),
                (true, Some(s)) if s.is_finite() && s > 0.0 && s <= 86400.0 => Some(Duration::from_secs_f64(s)),
                (true, Some(s)) => {
                    errors.push(format!("{at}.output_cache_ttl_secs = {s}: must be between 0 and 86400 (exclusive of 0)"));
                    None
                }
            };
            policy.tenants.push(Tenant {
                cache_salt: Some(t.cache_salt.unwrap_or_else(|| t.name.clone())),
                name: t.name,
                max_priority,
                tokens_per_minute,
                requests_per_minute,
                max_concurrent: t.max_concurrent.map(|c| c as usize),
                always_degrade: t.always_degrade,
                output_cache_ttl,
            });
        }
        for (name, c) in raw.classes {
            let Ok(p) = name.parse::<Priority>() else {
                errors.push(format!("classes.{name}: unknown class (critical, high, normal or low)"));
                continue;
            };
            let target = &mut policy.classes[p.rank() as usize];
            let fields = [
                ("max_queue_ms", c.max_queue_ms, &mut target.max_queue),
                ("deadline_ms", c.deadline_ms, &mut target.deadline),
                ("ttft_target_ms", c.ttft_target_ms, &mut target.ttft_target),
            ];
            for (field, v, slot) in fields {
                match v {
                    Some(x) if !(x.is_finite() && x > 0.0) => {
                        errors.push(format!("classes.{name}.{field} = {x}: must be a positive number of milliseconds"))
                    }
                    Some(x) => *slot = Some(secs(x)),
                    None => {}
                }
            }
        }
        cfg.policy = Arc::new(policy);
        if errors.is_empty() { Ok(cfg) } else { Err(ConfigError(errors)) }
    }

    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
        ServerConfig::from_toml(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let cfg = ServerConfig::from_toml(
            r#"
            [server]
            max_body_bytes = 65536
            drain_timeout_secs = 5
            [[tenants]]
            name = "a"
            api_keys = ["sk-aaaaaaaa", "sk-aaaaaaab"]
            max_priority = "critical"
            tokens_per_minute = 1000
            max_concurrent = 2
            [[tenants]]
            name = "b"
            api_keys = ["sk-bbbbbbbb"]
            [classes.low]
            max_queue_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_body_bytes, 65536);
        assert_eq!(cfg.policy.tenants.len(), 2);
        assert_eq!(cfg.policy.keys["sk-aaaaaaab"], 0);
        assert_eq!(cfg.policy.tenants[1].max_priority, Priority::Normal);
        assert_eq!(cfg.policy.tenants[1].cache_salt.as_deref(), Some("b"));
        assert_eq!(cfg.policy.classes[0].max_queue, Some(Duration::from_millis(500)));
        assert_eq!(cfg.policy.classes[0].deadline, Some(Duration::from_secs(30)), "unset fields keep their defaults");
        assert!(cfg.policy.requires_keys());
        assert!(!ServerConfig::default().policy.requires_keys());
    }

    #[test]
    fn every_error_is_reported_with_its_place() {
        let err = ServerConfig::from_toml(
            r#"
            [[tenants]]
            name = "a"
            api_keys = ["short"]
            max_priority = "urgent"
            tokens_per_minute = -5
            [[tenants]]
            name = "a"
            api_keys = []
            [classes.extreme]
            max_queue_ms = 1
            [classes.high]
            deadline_ms = 0
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "shorter than 8",
            "tenants[0] (\"a\").max_priority: unknown priority \"urgent\"",
            "tokens_per_minute = -5",
            "the name is used twice",
            "api_keys is empty",
            "classes.extreme: unknown class",
            "classes.high.deadline_ms = 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let syntax = ServerConfig::from_toml("[server\nport = 1").unwrap_err().to_string();
        assert!(syntax.contains("line 1"), "{syntax}");
        let unknown = ServerConfig::from_toml("[server]\nmax_bodybytes = 5").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `max_bodybytes`"), "{unknown}");
    }

    #[test]
    fn output_reuse_settings() {
        let cfg = ServerConfig::from_toml(
            "[server]\noutput_cache_mib = 0.5\n[[tenants]]\nname = \"a\"\napi_keys = [\"sk-aaaa-0001\"]\noutput_cache = true\noutput_cache_ttl_secs = 20\n[[tenants]]\nname = \"b\"\napi_keys = [\"sk-bbbb-0001\"]\n",
        )
        .unwrap();
        assert_eq!((cfg.output_reuse, cfg.output_cache_bytes), (true, 524288));
        assert_eq!(cfg.policy.tenants[0].output_cache_ttl, Some(Duration::from_secs(20)));
        assert_eq!(cfg.policy.tenants[1].output_cache_ttl, None, "off unless asked for");
        let open = ServerConfig::from_toml("[server]\noutput_cache = true\noutput_reuse = false\n").unwrap();
        assert_eq!((open.output_reuse, open.policy.tenants[0].output_cache_ttl), (false, Some(Duration::from_secs(300))));
        let err = ServerConfig::from_toml(
            "[server]\noutput_cache = true\noutput_cache_mib = -1\n[[tenants]]\nname = \"a\"\napi_keys = [\"sk-aaaa-0001\"]\noutput_cache_ttl_secs = 5\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "output_cache_mib = -1",
            "server.output_cache applies to the open tenant only",
            "output_cache_ttl_secs needs output_cache = true",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }
}
