//! Teacher forcing: the logits a model computes at every position of a given token sequence,
//! through the same batched, paged forward pass the engine runs (prefilled in chunks of at
//! most `max_batch_tokens`). The reference tests compare these against transformers' and
//! the goldens' logits; generation itself is the engine's alone ([`crate::engine`]).

use crate::backend::{Backend, BackendError};
use crate::kv::{BlockManager, KvDtype, KvError, SeqBlocks};
use crate::model::{HostWeights, Llama, ModelConfig};
use crate::plan::{BatchPlan, LogitsFor, PlanError};

#[derive(thiserror::Error, Debug)]
pub enum TeacherError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt of {num_tokens} tokens does not fit the context of {max_context} tokens")]
    PromptTooLong { num_tokens: usize, max_context: usize },
}

/// Sizes of the buffers and the KV pool.
#[derive(Clone, Copy, Debug)]
pub struct TeacherOptions {
    /// Tokens computed per forward pass at most (longer sequences run in chunks).
    pub max_batch_tokens: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    pub kv_dtype: KvDtype,
}

/// A model with its own KV pool, run teacher-forced.
pub struct TeacherForced<B: Backend> {
    backend: B,
    model: Llama<B>,
    kv: B::KvPool,
    blocks: BlockManager,
    plan: BatchPlan,
    logits: Vec<f32>,
}

impl<B: Backend> TeacherForced<B> {
    pub fn new(backend: B, config: ModelConfig, weights: HostWeights, options: TeacherOptions) -> Result<TeacherForced<B>, TeacherError> {
        let model = Llama::new(&backend, config, weights, options.max_batch_tokens)?;
        let layout = model.kv_layout(options.num_blocks, options.block_size, options.kv_dtype);
        let kv = backend.alloc_kv(&layout)?;
        Ok(TeacherForced {
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
    pub fn prompt_logits(&mut self, ids: &[u32], from: usize) -> Result<Vec<f32>, TeacherError> {
        self.check_prompt(ids)?;
        let mut table = self.blocks.table(None);
        self.prompt_logits_in(ids, from, &mut table)
    }

    fn prompt_logits_in(&mut self, ids: &[u32], from: usize, table: &mut SeqBlocks) -> Result<Vec<f32>, TeacherError> {
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

    fn check_prompt(&self, ids: &[u32]) -> Result<(), TeacherError> {
        if ids.is_empty() {
            return Err(TeacherError::EmptyPrompt);
        }
        if ids.len() >= self.max_context() {
            return Err(TeacherError::PromptTooLong { num_tokens: ids.len(), max_context: self.max_context() });
        }
        Ok(())
    }
}
