//! `ballast serve`: an OpenAI-compatible HTTP server (axum on tokio) over the engine, with
//! tenants and the overload ladder ([`crate::admission`]), Prometheus metrics ([`metrics`]),
//! graceful drain on SIGTERM/SIGINT and configuration reload on SIGHUP.

pub mod config;
mod http;
pub mod kv_events;
mod response;
pub mod reuse;
mod tool_calls;
mod validate;

pub use validate::validate_body;
pub mod metrics;
pub mod openai;

use crate::admission::{Admission, Observed, Signals};
use crate::engine::Engine;
use config::ServerConfig;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every handler shares.
pub struct State {
    pub engine: Engine,
    /// The id clients must use in `model` (when they send one).
    pub model_name: String,
    /// The configuration in force. A request takes one snapshot when it arrives and keeps it
    /// to the end; admission holds the same snapshot's policy (both swap under its lock).
    config: Mutex<Arc<ServerConfig>>,
    pub admission: Mutex<Admission>,
    /// Drain rate and recent TTFTs: the ladder's own measurements.
    pub observed: Observed,
    pub metrics: metrics::ServerMetrics,
    started_unix: u64,
    /// A lighter model that degraded requests are routed to, and its id.
    pub fallback: Option<(Engine, String)>,
    /// The KV-cache event publisher, when `--kv-events-endpoint` is set.
    pub kv_events: Option<kv_events::KvEventPublisher>,
    /// Identical deterministic requests computed once: those in flight, and completed outputs.
    pub reuse: Arc<reuse::Registry>,
    /// The newest error answers, for the status page.
    pub recent_errors: Mutex<std::collections::VecDeque<http::status::RecentError>>,
}

impl State {
    pub fn new(
        engine: Engine,
        model_name: String,
        config: ServerConfig,
        fallback: Option<(Engine, String)>,
        kv_events: Option<kv_events::KvEventPublisher>,
    ) -> Arc<State> {
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let reuse = reuse::Registry::new(config.output_cache_bytes);
        Arc::new(State {
            reuse,
            recent_errors: Default::default(),
            engine,
            model_name,
            admission: Mutex::new(Admission::new(config.policy.clone(), Instant::now())),
            config: Mutex::new(Arc::new(config)),
            observed: Observed::default(),
            metrics: Default::default(),
            started_unix,
            fallback,
            kv_events,
        })
    }

    /// The id of the model that answers: the fallback's when `fallback`, else the main one's.
    pub fn served_model(&self, fallback: bool) -> &str {
        match &self.fallback {
            Some((_, name)) if fallback => name,
            _ => &self.model_name,
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.lock().clone()
    }

    /// Swaps in a new configuration: admission's policy and the server's snapshot together.
    pub fn reload(&self, config: ServerConfig) {
        let mut admission = self.admission.lock();
        admission.reload(config.policy.clone(), Instant::now());
        self.reuse.set_capacity(config.output_cache_bytes);
        *self.config.lock() = Arc::new(config);
    }

    /// The ladder's inputs, now.
    pub fn signals(&self) -> Signals {
        Signals::from_engine(&self.engine.metrics(), &self.observed)
    }
}

/// Serves until SIGTERM/SIGINT, then drains: readiness drops, new requests get 503, in-flight
/// ones may finish for the configured drain timeout, the rest end with an error finish.
/// SIGHUP reloads `config_path` (an invalid file is logged and counted; the running
/// configuration stays).
pub async fn serve(state: Arc<State>, listener: tokio::net::TcpListener, config_path: Option<PathBuf>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let reload_state = state.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&reload_state, config_path.as_deref());
        }
    });
    let drain_state = state.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        let timeout = {
            let mut a = drain_state.admission.lock();
            a.set_draining();
            a.policy().drain_timeout
        };
        let start = Instant::now();
        while drain_state.admission.lock().in_flight() > 0 && start.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = drain_state.admission.lock().in_flight();
        if left > 0 {
            tracing::warn!("drain timeout: ending {left} requests still in flight");
        }
        // Ends whatever is still running (its streams finish with an error) so connections close.
        drain_state.engine.shutdown();
        if let Some((fallback, _)) = &drain_state.fallback {
            fallback.shutdown();
        }
    };
    let (max_connections, read_timeout) = {
        let c = state.config();
        (c.max_connections, c.read_timeout)
    };
    let service = hyper_util::service::TowerToHyperService::new(http::router(state));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Slow clients: the request head must arrive within the read timeout (bodies are bounded
    // in the handlers).
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(read_timeout).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tokio::spawn(refuse_connection(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone()));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    // Let open connections finish their last responses (the engine has ended every stream).
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("closing connections that did not finish"),
    }
    Ok(())
}

/// Over the connection limit: a 503 with Retry-After, then close.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"message":"too many open connections","type":"overloaded_error","param":null,"code":503}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn reload(state: &State, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no --config file to reload");
        return;
    };
    match ServerConfig::load(path) {
        Ok(cfg) => {
            state.reload(cfg);
            state.metrics.config_reload(true);
            tracing::info!("SIGHUP: reloaded {}", path.display());
        }
        Err(e) => {
            state.metrics.config_reload(false);
            tracing::error!("SIGHUP: {} rejected, the running configuration stays:\n{e}", path.display());
        }
    }
}
