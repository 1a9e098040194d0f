//! Command-line definitions and dispatch (the binary's side; `anyhow` lives only here).

mod bench;
mod devtools;
mod fetch;
mod generate;
mod inspect;
mod load;
mod serve;

use clap::{Parser, Subcommand};

/// ballast: an LLM inference runtime that stays up under pressure.
#[derive(Parser, Debug)]
#[command(name = "ballast", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BALLAST_GIT_COMMIT"), ")"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (one per line, with each request's id); the
    /// filter is `$BALLAST_LOG` (default `ballast=info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt or a chat message (streamed to stdout), or from a JSONL
    /// file of requests run concurrently through the engine.
    Generate(Box<generate::GenerateArgs>),
    /// Serve an OpenAI-compatible HTTP API with priorities, tenants and overload shedding.
    Serve(Box<serve::ServeArgs>),
    /// Load-test an OpenAI-compatible server: throughput, TTFT and inter-token latency per class.
    Bench(Box<bench::BenchArgs>),
    /// Validate a server configuration file and explain each problem.
    CheckConfig(serve::CheckConfigArgs),
    /// Print a model file's metadata and tensor table.
    Inspect(inspect::InspectArgs),
    /// Download the models of models/manifest.json (default: the default model) and verify them.
    Fetch(fetch::FetchArgs),
    /// Benchmark the GPU kernels: achieved bandwidth against a device-to-device copy.
    BenchGpu(devtools::BenchGpuArgs),
    /// Write a GGUF model of a real shape with random Q4_1 weights (for benchmarks).
    MakeModel(devtools::MakeModelArgs),
}

pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ballast=info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_target(false).init(),
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(false).init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::CheckConfig(args) => serve::check_config(args),
        Command::Bench(args) => bench::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::BenchGpu(args) => devtools::bench_gpu(args),
        Command::MakeModel(args) => devtools::make_model(args),
    }
}
