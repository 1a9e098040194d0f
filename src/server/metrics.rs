//! Prometheus metrics: the gauges Kubernetes' Gateway API Inference Extension reads, under
//! vLLM's names, and ballast's own counters and histograms by priority class.

use crate::admission::{Level, Policy, RejectReason, Signals};
use crate::engine::Metrics as EngineMetrics;
use crate::request::Priority;
use crate::speculative::SpecCounts;
use parking_lot::Mutex;
use std::fmt::Write;
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (b, c) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the server counts, by class (indexed by [`Priority::rank`]).
#[derive(Debug, Default)]
struct Counters {
    admitted: [u64; 4],
    degraded: [u64; 4],
    /// `[class][reason]` in [`RejectReason::ALL`] order.
    rejected: [[u64; RejectReason::ALL.len()]; 4],
    /// `[class][finish]`: stop, length, cancelled, deadline, error.
    finished: [[u64; 5]; 4],
    prompt_tokens: [u64; 4],
    completion_tokens: [u64; 4],
    ttft: [Histogram; 4],
    inter_token: [Histogram; 4],
    e2e: [Histogram; 4],
    queue: [Histogram; 4],
    config_reloads: u64,
    config_reload_failures: u64,
    /// Unknown request fields ignored, by name (at most [`MAX_IGNORED_NAMES`] names, then
    /// `other`: clients choose these names).
    ignored_fields: std::collections::BTreeMap<String, u64>,
    /// Generation requests by (tenant, class rank, how served: miss, coalesced, cached).
    reuse: std::collections::BTreeMap<(String, u8, &'static str), u64>,
}

const MAX_IGNORED_NAMES: usize = 32;

const FINISH_NAMES: [&str; 5] = ["stop", "length", "cancelled", "deadline", "error"];

/// The server's metrics registry.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    c: Mutex<Counters>,
}

/// One finished choice, as the metrics see it.
pub struct Finished {
    pub priority: Priority,
    pub finish: &'static str,
    pub completion_tokens: usize,
    pub ttft: Option<Duration>,
    pub queue: Duration,
    pub decode: Duration,
    pub e2e: Duration,
}

impl ServerMetrics {
    pub fn admitted(&self, p: Priority, prompt_tokens: usize, degraded: bool) {
        let mut c = self.c.lock();
        let i = p.rank() as usize;
        c.admitted[i] += 1;
        c.degraded[i] += degraded as u64;
        c.prompt_tokens[i] += prompt_tokens as u64;
    }

    pub fn rejected(&self, p: Priority, reason: RejectReason) {
        let k = RejectReason::ALL.iter().position(|r| *r == reason).expect("listed");
        self.c.lock().rejected[p.rank() as usize][k] += 1;
    }

    pub fn finished(&self, f: Finished) {
        let mut c = self.c.lock();
        let i = f.priority.rank() as usize;
        if let Some(k) = FINISH_NAMES.iter().position(|n| *n == f.finish) {
            c.finished[i][k] += 1;
        }
        c.completion_tokens[i] += f.completion_tokens as u64;
        if let Some(t) = f.ttft {
            c.ttft[i].observe(t.as_secs_f64());
        }
        if f.completion_tokens > 1 {
            c.inter_token[i].observe(f.decode.as_secs_f64() / (f.completion_tokens - 1) as f64);
        }
        c.queue[i].observe(f.queue.as_secs_f64());
        c.e2e[i].observe(f.e2e.as_secs_f64());
    }

    /// Unknown fields a request carried and the server ignored; each name is logged once.
    /// (admitted, degraded, shed by the ladder) so far, by class rank.
    pub fn class_counts(&self) -> [(u64, u64, u64); 4] {
        let c = self.c.lock();
        let shed = RejectReason::ALL.iter().position(|r| *r == RejectReason::Overload).expect("listed");
        std::array::from_fn(|i| (c.admitted[i], c.degraded[i], c.rejected[i][shed]))
    }

    /// A generation request admitted, and how its output was produced.
    pub fn reused(&self, tenant: &str, p: Priority, how: super::reuse::Reuse) {
        *self.c.lock().reuse.entry((tenant.to_string(), p.rank(), how.name())).or_insert(0) += 1;
    }

    pub fn ignored_fields(&self, names: &[String]) {
        let mut c = self.c.lock();
        for name in names {
            let known = c.ignored_fields.len();
            let key = super::http::header_token(name);
            let key = if c.ignored_fields.contains_key(&key) || known < MAX_IGNORED_NAMES { key } else { "other".to_string() };
            let n = c.ignored_fields.entry(key.clone()).or_insert(0);
            if *n == 0 {
                tracing::info!("ignoring the unknown request field {key:?} (strict_fields = true makes it a 400)");
            }
            *n += 1;
        }
    }

    pub fn config_reload(&self, ok: bool) {
        let mut c = self.c.lock();
        if ok {
            c.config_reloads += 1;
        } else {
            c.config_reload_failures += 1;
        }
    }

    /// The Prometheus text exposition.
    /// `policy` says each refusal's status (shedding's is configurable).
    pub fn render(
        &self,
        model: &str,
        e: &EngineMetrics,
        block_size: usize,
        signals: &Signals,
        levels: [Level; 4],
        policy: &Policy,
    ) -> String {
        let mut o = String::new();
        let c = self.c.lock();
        let m = format!("model_name=\"{}\"", model.replace('"', "'"));
        let class = |p: Priority| format!("{m},priority=\"{}\"", p.name());
        // What the Gateway API Inference Extension's endpoint picker reads (vLLM's names).
        let waiting: usize = e.waiting.iter().sum();
        gauge(&mut o, "vllm:num_requests_waiting", "Requests waiting to be scheduled.", &[(m.clone(), waiting as f64)]);
        gauge(&mut o, "vllm:num_requests_running", "Requests running in the engine.", &[(m.clone(), e.running as f64)]);
        let usage = if e.kv_blocks_total == 0 { 0.0 } else { e.kv_blocks_used as f64 / e.kv_blocks_total as f64 };
        gauge(&mut o, "vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).", &[(m.clone(), usage)]);
        let info = format!("{m},block_size=\"{block_size}\",num_gpu_blocks=\"{}\"", e.kv_blocks_total);
        gauge(&mut o, "vllm:cache_config_info", "KV-cache configuration.", &[(info, 1.0)]);

        let per_class = |f: &dyn Fn(Priority) -> f64| Priority::ALL.iter().map(|&p| (class(p), f(p))).collect::<Vec<_>>();
        gauge(
            &mut o,
            "ballast_queue_depth",
            "Requests waiting in the engine, by class.",
            &per_class(&|p| e.waiting[p.rank() as usize] as f64),
        );
        gauge(
            &mut o,
            "ballast_estimated_queue_wait_seconds",
            "Estimated wait before a new request starts, by class.",
            &per_class(&|p| signals.queue_wait(p).as_secs_f64()),
        );
        gauge(
            &mut o,
            "ballast_overload_level",
            "Overload ladder level by class: 0 normal, 1 degrade, 2 shed.",
            &per_class(&|p| levels[p.rank() as usize] as u8 as f64),
        );
        gauge(
            &mut o,
            "ballast_estimated_time_to_drain_seconds",
            "Time to finish all queued and running work at the drain rate.",
            &[(m.clone(), signals.time_to_drain().as_secs_f64())],
        );
        gauge(
            &mut o,
            "ballast_drain_rate_requests_per_second",
            "Requests finished per second, recently.",
            &[(m.clone(), signals.drain_rate)],
        );
        gauge(&mut o, "ballast_kv_blocks_used", "KV blocks in use.", &[(m.clone(), e.kv_blocks_used as f64)]);
        gauge(&mut o, "ballast_kv_blocks_total", "KV blocks in the pool.", &[(m.clone(), e.kv_blocks_total as f64)]);
        gauge(
            &mut o,
            "ballast_prefix_cache_hit_rate",
            "Fraction of looked-up prompt tokens found in the prefix cache.",
            &[(m.clone(), e.prefix_cache_hit_rate())],
        );
        counter(
            &mut o,
            "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            &[(m.clone(), e.prefix_cache.queried_tokens as f64)],
        );
        counter(&mut o, "vllm:prefix_cache_hits_total", "Of those, tokens found cached.", &[(m.clone(), e.prefix_cache.hit_tokens as f64)]);

        counter(
            &mut o,
            "ballast_requests_admitted_total",
            "Requests admitted, by class.",
            &per_class(&|p| c.admitted[p.rank() as usize] as f64),
        );
        counter(
            &mut o,
            "ballast_requests_degraded_total",
            "Requests admitted with degraded limits, by class.",
            &per_class(&|p| c.degraded[p.rank() as usize] as f64),
        );
        let mut rows = Vec::new();
        for p in Priority::ALL {
            for (k, r) in RejectReason::ALL.iter().enumerate() {
                rows.push((
                    format!("{},reason=\"{}\",status=\"{}\"", class(p), r.name(), policy.status(*r)),
                    c.rejected[p.rank() as usize][k] as f64,
                ));
            }
        }
        counter(&mut o, "ballast_requests_rejected_total", "Requests refused at admission, by class and reason.", &rows);
        let mut rows = Vec::new();
        for p in Priority::ALL {
            for (k, f) in FINISH_NAMES.iter().enumerate() {
                rows.push((format!("{},finish_reason=\"{f}\"", class(p)), c.finished[p.rank() as usize][k] as f64));
            }
        }
        counter(&mut o, "ballast_requests_finished_total", "Choices finished, by class and finish reason.", &rows);
        counter(
            &mut o,
            "ballast_preemptions_total",
            "Sequences preempted by the scheduler, by the preempted sequence's class.",
            &per_class(&|p| e.preemptions_by_class[p.rank() as usize] as f64),
        );
        counter(
            &mut o,
            "ballast_prompt_tokens_total",
            "Prompt tokens admitted, by class.",
            &per_class(&|p| c.prompt_tokens[p.rank() as usize] as f64),
        );
        counter(
            &mut o,
            "ballast_generation_tokens_total",
            "Tokens generated, by class.",
            &per_class(&|p| c.completion_tokens[p.rank() as usize] as f64),
        );
        counter(&mut o, "vllm:prompt_tokens_total", "Prompt tokens computed.", &[(m.clone(), e.prompt_tokens_computed() as f64)]);
        counter(&mut o, "vllm:generation_tokens_total", "Tokens generated.", &[(m.clone(), e.tokens_generated as f64)]);
        for (name, help, f) in [
            ("ballast_spec_decode_draft_tokens_total", "Drafted tokens verified, by class.", (|c| c.drafted) as fn(&SpecCounts) -> u64),
            ("ballast_spec_decode_accepted_tokens_total", "Drafted tokens the model chose, by class.", |c| c.accepted),
            ("ballast_spec_decode_withheld_total", "Decode steps without a draft because of load, by class.", |c| c.withheld),
        ] {
            counter(&mut o, name, help, &per_class(&|p| f(&e.speculative[p.rank() as usize]) as f64));
        }
        let rate = per_class(&|p| e.speculative[p.rank() as usize].acceptance_rate());
        gauge(&mut o, "ballast_spec_decode_acceptance_rate", "Accepted over drafted tokens, by class.", &rate);
        let all: SpecCounts = e.speculative.into_iter().sum();
        counter(&mut o, "vllm:spec_decode_num_draft_tokens_total", "Drafted tokens verified.", &[(m.clone(), all.drafted as f64)]);
        counter(&mut o, "vllm:spec_decode_num_accepted_tokens_total", "Drafted tokens accepted.", &[(m.clone(), all.accepted as f64)]);
        counter(&mut o, "ballast_config_reloads_total", "Configuration reloads that took effect.", &[(m.clone(), c.config_reloads as f64)]);
        let rows: Vec<(String, f64)> = c.ignored_fields.iter().map(|(k, n)| (format!("{m},field=\"{k}\""), *n as f64)).collect();
        counter(&mut o, "ballast_ignored_fields_total", "Unknown request fields ignored, by name.", &rows);
        let rows: Vec<(String, f64)> = c
            .reuse
            .iter()
            .map(|((tenant, rank, how), n)| {
                let class = Priority::ALL[*rank as usize].name();
                (format!("{m},tenant=\"{}\",priority=\"{class}\",reuse=\"{how}\"", tenant.replace('"', "'")), *n as f64)
            })
            .collect();
        counter(
            &mut o,
            "ballast_output_reuse_total",
            "Generation requests admitted, by tenant, class and how their output was produced (miss: computed; coalesced: attached to an identical request in flight; cached: a completed output).",
            &rows,
        );
        counter(
            &mut o,
            "ballast_config_reload_failures_total",
            "Configuration reloads rejected (the running one stayed).",
            &[(m.clone(), c.config_reload_failures as f64)],
        );

        for (name, help, h) in [
            ("ballast_time_to_first_token_seconds", "Arrival to first token, by class.", &c.ttft),
            ("ballast_inter_token_latency_seconds", "Mean time between tokens of a request, by class.", &c.inter_token),
            ("ballast_e2e_request_latency_seconds", "Arrival to finish, by class.", &c.e2e),
            ("ballast_queue_time_seconds", "Arrival to first scheduled step, by class.", &c.queue),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
            for p in Priority::ALL {
                let hist = &h[p.rank() as usize];
                let l = class(p);
                for (b, n) in BUCKETS.iter().zip(hist.counts) {
                    let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {n}");
                }
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", hist.count);
                let _ = writeln!(o, "{name}_sum{{{l}}} {}", hist.sum);
                let _ = writeln!(o, "{name}_count{{{l}}} {}", hist.count);
            }
        }
        o
    }
}

/// What alert rules compare against: each class's configured targets, and when the process
/// started (a change is a restart).
pub fn targets(o: &mut String, model: &str, policy: &Policy, started_unix: u64) {
    let m = format!("model_name=\"{}\"", model.replace('"', "'"));
    let rows = |f: &dyn Fn(&crate::admission::ClassTargets) -> Option<Duration>| {
        Priority::ALL
            .iter()
            .filter_map(|&p| f(&policy.classes[p.rank() as usize]).map(|d| (format!("{m},priority=\"{}\"", p.name()), d.as_secs_f64())))
            .collect::<Vec<_>>()
    };
    gauge(
        o,
        "ballast_ttft_target_seconds",
        "Each class's configured time-to-first-token target (classes with one).",
        &rows(&|c| c.ttft_target),
    );
    gauge(
        o,
        "ballast_max_queue_seconds",
        "Each class's configured estimated-wait limit (above it, new requests are shed).",
        &rows(&|c| c.max_queue),
    );
    gauge(o, "ballast_start_time_seconds", "When this process started (Unix time).", &[(m, started_unix as f64)]);
}

/// The completed-output cache and the computations identical requests can attach to.
pub fn output_cache(o: &mut String, model: &str, entries: usize, bytes: usize, evictions: u64, in_flight: usize) {
    let m = format!("model_name=\"{}\"", model.replace('"', "'"));
    gauge(o, "ballast_output_cache_entries", "Completed outputs kept for reuse.", &[(m.clone(), entries as f64)]);
    gauge(o, "ballast_output_cache_bytes", "Memory of the completed outputs kept (approximate).", &[(m.clone(), bytes as f64)]);
    counter(o, "ballast_output_cache_evictions_total", "Completed outputs dropped to make room.", &[(m.clone(), evictions as f64)]);
    gauge(
        o,
        "ballast_output_reuse_in_flight",
        "Deterministic computations in flight that identical requests attach to.",
        &[(m, in_flight as f64)],
    );
}

/// The KV-cache event publisher's counters (present only while it runs).
pub fn kv_events(o: &mut String, model: &str, published: u64, dropped: u64) {
    let m = format!("model_name=\"{}\"", model.replace('"', "'"));
    counter(
        o,
        "ballast_kv_event_batches_published_total",
        "KV-cache event batches sent on the ZMQ socket.",
        &[(m.clone(), published as f64)],
    );
    counter(
        o,
        "ballast_kv_event_batches_dropped_total",
        "KV-cache event batches dropped because the publisher's queue was full (each leaves a gap in seq).",
        &[(m, dropped as f64)],
    );
}

fn series(o: &mut String, kind: &str, name: &str, help: &str, rows: &[(String, f64)]) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(o, "{name}{{{labels}}} {v}");
    }
}

fn gauge(o: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    series(o, "gauge", name, help, rows);
}

fn counter(o: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    series(o, "counter", name, help, rows);
}
