//! `ballast serve` and `ballast check-config`.

use super::generate::EngineArgs;
use super::load::ModelArgs;
use anyhow::Context;
use ballast::server::config::ServerConfig;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at startup).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Tenants, limits and overload targets (TOML; see `ballast check-config`). Without it
    /// the server has one open tenant. SIGHUP reloads it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model id clients use (default: the model file's name without extension).
    #[arg(long)]
    served_model_name: Option<String>,
    /// A lighter model (GGUF or HF directory) loaded beside the main one: degraded text and
    /// chat requests are routed to it instead of being capped. Its KV cache gets a quarter of
    /// --kv-cache-mib.
    #[arg(long, value_name = "PATH")]
    fallback_model: Option<PathBuf>,
    /// Publish KV-cache events (blocks cached and evicted, vLLM's wire format) on a ZMQ PUB
    /// socket at this endpoint, e.g. `tcp://*:5557` (port 0: any free port, printed at
    /// startup), for prefix-aware routers (vllm-router `kv_aware`, llm-d).
    #[arg(long, value_name = "ENDPOINT")]
    kv_events_endpoint: Option<String>,
    /// The topic (first frame) of every KV-event message.
    #[arg(long, default_value = "", requires = "kv_events_endpoint")]
    kv_events_topic: String,
    /// A ZMQ ROUTER endpoint where subscribers that lost KV-event messages ask for them again
    /// (vLLM's replay protocol), e.g. `tcp://*:5558`.
    #[arg(long, value_name = "ENDPOINT", requires = "kv_events_endpoint")]
    kv_events_replay_endpoint: Option<String>,
    /// KV-event messages kept for replay.
    #[arg(long, default_value_t = 10_000, requires = "kv_events_replay_endpoint")]
    kv_events_buffer_steps: usize,
}

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// The TOML file to validate.
    file: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => ServerConfig::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?,
        None => ServerConfig::default(),
    };
    let loaded = args.model.load()?;
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        let stem = loaded.info.path.file_stem().map(|s| s.to_string_lossy().into_owned());
        stem.filter(|s| !s.is_empty()).unwrap_or_else(|| loaded.info.name.clone())
    });
    let mut engine_config = args.engine.config(&args.model);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ballast-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let kv_events = match &args.kv_events_endpoint {
        None => None,
        Some(endpoint) => {
            let replay = args.kv_events_replay_endpoint.as_deref();
            let bind =
                ballast::server::kv_events::KvEventPublisher::bind(endpoint, &args.kv_events_topic, replay, args.kv_events_buffer_steps);
            let (publisher, sockets) = runtime.block_on(bind)?;
            tracing::info!("KV-cache events on {} (topic {:?})", publisher.bound, publisher.topic);
            if let Some((_, bound)) = &publisher.replay {
                eprintln!("kv events replay on {bound}");
            }
            eprintln!("kv events on {}", publisher.bound);
            engine_config.kv_events = Some(publisher.sink());
            runtime.spawn(publisher.run(sockets, engine_config.block_size));
            Some(publisher)
        }
    };
    let fallback = match &args.fallback_model {
        None => None,
        Some(path) => {
            // The fallback runs alone: the draft model is the main model's.
            let model_args = ModelArgs { model: Some(path.clone()), draft_model: None, ..args.model.clone() };
            let loaded = model_args.load()?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "fallback".into());
            // The fallback's blocks are another model's: never published.
            let config = ballast::engine::EngineConfig {
                kv_cache_bytes: engine_config.kv_cache_bytes / 4,
                kv_events: None,
                speculative: None,
                ..engine_config.clone()
            };
            let engine = model_args.start_engine(loaded, config).context("starting the fallback model")?;
            let name = if stem == name { format!("{stem}-fallback") } else { stem };
            tracing::info!("fallback model {name} for degraded requests");
            Some((engine, name))
        }
    };
    let engine = args.model.start_engine(loaded, engine_config)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        tracing::info!("serving {name} on http://{addr} ({} KV tokens)", engine.kv_capacity());
        eprintln!("listening on http://{addr}");
        let state = ballast::server::State::new(engine, name, config, fallback, kv_events);
        ballast::server::serve(state, listener, args.config).await.context("serving")
    })?;
    if args.kv_events_endpoint.is_some() {
        // Lets the publisher send the engine's last AllBlocksCleared.
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(100)).await });
    }
    tracing::info!("stopped");
    Ok(())
}

pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    match ServerConfig::load(&args.file) {
        Ok(c) => {
            println!(
                "{}: ok — {} tenant(s), {} API key(s){}",
                args.file.display(),
                c.policy.tenants.len(),
                c.policy.keys.len(),
                if c.policy.requires_keys() { "" } else { " (open: no key needed)" }
            );
            Ok(())
        }
        Err(e) => {
            let n = e.0.len();
            anyhow::bail!("{}: {n} problem(s):\n  {}", args.file.display(), e.0.join("\n  "))
        }
    }
}
