//! # ballast
//!
//! An LLM inference runtime for operators who cannot afford an outage. This crate is the
//! library; the `ballast` binary is a thin command line over it.
//!
//! ## One request's journey (what exists today)
//!
//! 1. **Load** — [`model::load`] reads a GGUF file ([`format::gguf`], zero-copy over memmap2)
//!    or an HF checkpoint (safetensors, optionally quantized on load) into a
//!    [`model::ModelConfig`] and host weights whose matrices keep their quantized blocks
//!    ([`quant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
//! 2. **Tokenize** — [`tokenizer::Tokenizer`] from the GGUF metadata or `tokenizer.json`;
//!    [`chat_template::ChatTemplate`] renders conversations with minijinja.
//! 3. **Plan** — each step's tokens, from every sequence, are flattened once into a
//!    [`plan::BatchPlan`]: token ids, positions, KV slot of each token, block tables.
//! 4. **Forward** — [`model::Llama`] runs the plan against the [`backend::Backend`] trait;
//!    K/V are read and written through block tables in a paged pool ([`kv`]) whose layout
//!    every backend shares. [`backend::cpu`] is the reference and embedded default.
//! 5. **Sample** — [`sampler::Sampler`] picks tokens (greedy or seeded temperature/top-k/top-p);
//!    [`detok::Detokenizer`] turns them into text deltas that never split a character.
//!
//! [`generate::Runner`] drives steps 3–5 for a set of prompts sharing every step; the
//! continuous-batching engine with priorities and prefix reuse is the next layer up.
//!
//! ## Example
//!
//! ```no_run
//! use ballast::backend::cpu::{CpuBackend, Precision};
//! use ballast::generate::{GenRequest, Runner, RunnerOptions};
//! use ballast::kv::KvDtype;
//! use ballast::model::{self, LoadOptions};
//! use ballast::sampler::SamplingParams;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), LoadOptions::default(), &mut |_, _| {})?;
//! let tokenizer = loaded.tokenizer.expect("GGUF files carry their tokenizer");
//! let prompt = tokenizer.encode("The capital of France is", true)?;
//! let backend = CpuBackend::new(CpuBackend::default_threads(), Precision::Int16)?;
//! let options = RunnerOptions { max_batch_tokens: 256, block_size: 16, num_blocks: 64, kv_dtype: KvDtype::F16 };
//! let mut runner = Runner::new(backend, loaded.config, loaded.weights, options)?;
//! let request = GenRequest { prompt, params: SamplingParams::greedy(), max_tokens: 16, stop_ids: loaded.info.eos_token_ids };
//! let out = runner.generate(&[request], |_, _, _| {})?;
//! println!("{}", tokenizer.decode(&out[0].tokens, true)?);
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod chat_template;
pub mod detok;
pub mod engine;
pub mod fetch;
pub mod format;
pub mod generate;
pub mod kv;
pub mod model;
pub mod plan;
pub mod quant;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
