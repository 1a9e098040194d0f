//! Running sequences through the model: a [`Runner`] owns backend, model, KV pool and block
//! allocator, and generates for a set of prompts together — every step packs the pending
//! tokens of all unfinished sequences (prefill chunks and decode tokens) into one
//! [`BatchPlan`] of at most `max_batch_tokens`.
//!
//! This is the direct, unscheduled path (the CLI's single prompt, the golden tests). The
//! engine drives the same model and plan with a real scheduler.

use crate::backend::{Backend, BackendError};
use crate::kv::{BlockManager, KvDtype, KvError, SeqBlocks};
use crate::model::{HostWeights, Llama, ModelConfig};
use crate::plan::{BatchPlan, LogitsFor, PlanError};
use crate::sampler::{Sampler, SamplingError, SamplingParams};

#[derive(thiserror::Error, Debug)]
pub enum GenerateError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt of {num_tokens} tokens does not fit the context of {max_context} tokens")]
    PromptTooLong { num_tokens: usize, max_context: usize },
}

/// Sizes of a runner's buffers and KV pool.
#[derive(Clone, Copy, Debug)]
pub struct RunnerOptions {
    /// Tokens computed per step at most (longer prompts are prefilled in chunks).
    pub max_batch_tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    pub kv_dtype: KvDtype,
}

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Tokens that end generation (not included in the output).
    pub stop_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenOutput {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

pub struct Runner<B: Backend> {
    backend: B,
    model: Llama<B>,
    kv: B::KvPool,
    blocks: BlockManager,
    plan: BatchPlan,
    logits: Vec<f32>,
}

/// Per-sequence state during [`Runner::generate`].
struct Live {
    tokens: Vec<u32>,
    num_prompt: usize,
    num_cached: usize,
    table: Option<SeqBlocks>,
    sampler: Sampler,
    finish: Option<FinishReason>,
}

impl<B: Backend> Runner<B> {
    pub fn new(backend: B, config: ModelConfig, weights: HostWeights, options: RunnerOptions) -> Result<Runner<B>, GenerateError> {
        let model = Llama::new(&backend, config, weights, options.max_batch_tokens)?;
        let layout = model.kv_layout(options.num_blocks, options.block_size, options.kv_dtype);
        let kv = backend.alloc_kv(&layout)?;
        Ok(Runner {
            blocks: BlockManager::new(options.num_blocks, options.block_size, false),
            plan: BatchPlan::new(options.block_size, options.num_blocks),
            backend,
            model,
            kv,
            logits: Vec::new(),
        })
    }

    pub fn model(&self) -> &Llama<B> {
        &self.model
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Free KV blocks (all of them when nothing runs).
    pub fn num_free_blocks(&self) -> usize {
        self.blocks.num_free()
    }

    fn max_context(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    /// The logits at positions `from..` of `ids` run as one sequence (prefilled in chunks):
    /// `[ids.len() - from, vocab]`.
    pub fn prompt_logits(&mut self, ids: &[u32], from: usize) -> Result<Vec<f32>, GenerateError> {
        self.check_prompt(ids)?;
        let mut table = self.blocks.table(None);
        self.prompt_logits_in(ids, from, &mut table)
    }

    fn prompt_logits_in(&mut self, ids: &[u32], from: usize, table: &mut SeqBlocks) -> Result<Vec<f32>, GenerateError> {
        let mut all = Vec::with_capacity(ids.len().saturating_sub(from) * self.model.config().vocab_size);
        let mut done = 0;
        while done < ids.len() {
            let n = (ids.len() - done).min(self.model.max_batch_tokens());
            table.reserve(done, done + n)?;
            self.plan.clear();
            let tail = (done + n).saturating_sub(from.max(done));
            self.plan.push_seq(&ids[done..done + n], done, table.blocks(), LogitsFor::Tail(tail))?;
            self.model.forward(&self.backend, &self.plan, &mut self.kv, &mut self.logits)?;
            all.extend_from_slice(&self.logits);
            done += n;
        }
        Ok(all)
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<(), GenerateError> {
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if ids.len() >= self.max_context() {
            return Err(GenerateError::PromptTooLong { num_tokens: ids.len(), max_context: self.max_context() });
        }
        Ok(())
    }

    /// Generates for every request, all of them sharing each step. `on_token(i, token,
    /// logits)` sees each new token of request `i` (stop tokens excepted) with the logits it
    /// was chosen from.
    pub fn generate(
        &mut self,
        requests: &[GenRequest],
        mut on_token: impl FnMut(usize, u32, &[f32]),
    ) -> Result<Vec<GenOutput>, GenerateError> {
        let mut live = Vec::with_capacity(requests.len());
        for r in requests {
            self.check_prompt(&r.prompt)?;
            live.push(Live {
                tokens: r.prompt.clone(),
                num_prompt: r.prompt.len(),
                num_cached: 0,
                table: Some(self.blocks.table(None)),
                sampler: Sampler::new(r.params.clone())?,
                finish: (r.max_tokens == 0).then_some(FinishReason::Length),
            });
        }
        self.run(requests, &mut live, &mut on_token)?;
        Ok(live
            .into_iter()
            .map(|l| GenOutput { tokens: l.tokens[l.num_prompt..].to_vec(), finish: l.finish.unwrap_or(FinishReason::Length) })
            .collect())
    }

    fn run(
        &mut self,
        requests: &[GenRequest],
        live: &mut [Live],
        on_token: &mut impl FnMut(usize, u32, &[f32]),
    ) -> Result<(), GenerateError> {
        let vocab = self.model.config().vocab_size;
        let mut stepped: Vec<(usize, usize, bool)> = Vec::with_capacity(live.len());
        while live.iter().any(|l| l.finish.is_none()) {
            self.plan.clear();
            stepped.clear();
            let mut budget = self.model.max_batch_tokens();
            for (i, l) in live.iter_mut().enumerate().filter(|(_, l)| l.finish.is_none()) {
                let n = (l.tokens.len() - l.num_cached).min(budget);
                if n == 0 {
                    break;
                }
                let completes = l.num_cached + n == l.tokens.len();
                let table = l.table.as_mut().expect("unfinished sequences hold a table");
                table.reserve(l.num_cached, l.num_cached + n)?;
                let logits = if completes { LogitsFor::Last } else { LogitsFor::None };
                let new = &l.tokens[l.num_cached..l.num_cached + n];
                self.plan.push_seq(new, l.num_cached, table.blocks(), logits)?;
                stepped.push((i, n, completes));
                budget -= n;
            }
            self.model.forward(&self.backend, &self.plan, &mut self.kv, &mut self.logits)?;
            let mut row = 0;
            for &(i, n, completes) in &stepped {
                let l = &mut live[i];
                l.num_cached += n;
                if !completes {
                    continue;
                }
                let logits = &mut self.logits[row * vocab..(row + 1) * vocab];
                row += 1;
                let token = l.sampler.sample(logits);
                let r = &requests[i];
                if r.stop_ids.contains(&token) {
                    l.finish = Some(FinishReason::Stop);
                } else {
                    on_token(i, token, logits);
                    l.tokens.push(token);
                    let num_generated = l.tokens.len() - l.num_prompt;
                    if num_generated >= r.max_tokens || l.tokens.len() >= self.max_context() {
                        l.finish = Some(FinishReason::Length);
                    }
                }
                if l.finish.is_some() {
                    l.table = None;
                }
            }
        }
        Ok(())
    }
}
