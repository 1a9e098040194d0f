//! The engine thread: owns backend, model, KV pool, block manager, scheduler and the live
//! requests, takes commands, and runs steps while there is work. A step is four named parts:
//! draft (`speculate.rs`, when speculative decoding is on) → schedule → retire (what the
//! scheduler gave up on) → block copies → a draft model's tokens (`draft_model.rs`) → forward
//! (`forward.rs`) → sample, verify drafts and emit (`emit.rs`, where [`Core::end`] is the one
//! way a choice ends). Per-request and
//! per-choice state has one owner, [`live::Live`].

mod draft_model;
mod emit;
mod forward;
mod live;
mod speculate;

use super::{Command, EngineConfig, Metrics, Queued, Shared};
use crate::backend::{Backend, BackendError};
use crate::detok::{Detokenizer, StopStrings};
use crate::kv::{BlockManager, KvEvent, KvEventSink, WindowGroups};
use crate::model::Llama;
use crate::plan::BatchPlan;
use crate::request::FinishReason;
use crate::sampler::Sampler;
use crate::scheduler::{Scheduler, SchedulerConfig, SeqSpec, StepOutput};
use crate::tokenizer::Tokenizer;
use crossbeam_channel::Receiver;
use live::{Choice, Live, RequestState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the engine thread is built from (moved into it).
pub(super) struct CoreParts<B: Backend> {
    pub(super) backend: B,
    /// A draft model and its KV pool (as many blocks as `kv`).
    pub(super) draft: Option<(Llama<B>, B::KvPool)>,
    pub(super) model: Llama<B>,
    pub(super) kv: B::KvPool,
    pub(super) num_blocks: usize,
    /// The local layers keep only their window's pages (`kv` is a pool of pages).
    pub(super) window: Option<WindowGroups>,
    pub(super) config: EngineConfig,
    pub(super) tokenizer: Option<Arc<Tokenizer>>,
    pub(super) commands: Receiver<Command>,
    pub(super) shared: Arc<Shared>,
}

impl<B: Backend> CoreParts<B> {
    /// The engine thread's body.
    pub(super) fn run(self) {
        let blocks = BlockManager::with_window(self.num_blocks, self.config.block_size, self.config.prefix_caching, self.window);
        if let Some(sink) = &self.config.kv_events {
            blocks.record_events();
            // Whatever an earlier process on this endpoint announced is gone.
            sink.send(vec![KvEvent::Cleared], B::KV_MEDIUM);
        }
        let sched_config = SchedulerConfig {
            max_num_batched_tokens: self.config.max_num_batched_tokens,
            max_num_seqs: self.config.max_num_seqs,
            max_step_tokens_while_decoding: self.config.max_step_tokens_while_decoding,
            aging: self.config.aging,
        };
        let mut core = Core {
            plan: BatchPlan::with_window(self.config.block_size, self.num_blocks, self.window),
            scheduler: Scheduler::new(sched_config, blocks.clone()),
            blocks,
            backend: self.backend,
            model: self.model,
            kv: self.kv,
            tokenizer: self.tokenizer,
            commands: self.commands,
            shared: self.shared,
            logits: Vec::new(),
            greedy: Vec::new(),
            scratch: Vec::new(),
            live: Live::default(),
            metrics: Metrics { kv_blocks_total: self.num_blocks, ..Metrics::default() },
            fault_injection: self.config.fault_injection,
            kv_events: self.config.kv_events,
            speculative: self.config.speculative,
            draft_model: self
                .draft
                .map(|(model, kv)| draft_model::DraftModel::new(model, kv, BatchPlan::new(self.config.block_size, self.num_blocks))),
        };
        core.run();
    }
}

struct Core<B: Backend> {
    backend: B,
    model: Llama<B>,
    kv: B::KvPool,
    blocks: BlockManager,
    scheduler: Scheduler,
    plan: BatchPlan,
    logits: Vec<f32>,
    /// This step's tokens when the backend picked them (every sampled sequence greedy).
    greedy: Vec<u32>,
    scratch: Vec<f32>,
    tokenizer: Option<Arc<Tokenizer>>,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    live: Live,
    metrics: Metrics,
    fault_injection: Option<u32>,
    kv_events: Option<KvEventSink>,
    speculative: Option<crate::speculative::SpeculativeConfig>,
    draft_model: Option<draft_model::DraftModel<B>>,
}

impl<B: Backend> Core<B> {
    fn run(&mut self) {
        loop {
            let idle = self.live.is_empty();
            // Block for work when idle; otherwise take what has arrived and run a step.
            let first = if idle {
                match self.commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            } else {
                None
            };
            let mut disconnected = false;
            if let Some(cmd) = first {
                disconnected |= !self.handle(cmd);
            }
            while !disconnected {
                match self.commands.try_recv() {
                    Ok(cmd) => disconnected |= !self.handle(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if disconnected {
                break;
            }
            let worked = self.step();
            self.publish();
            if !worked && !self.live.is_empty() {
                // Nothing could run (e.g. everything waits on a deadline check): wait a little
                // for commands instead of spinning.
                if let Ok(cmd) = self.commands.recv_timeout(Duration::from_millis(2))
                    && !self.handle(cmd)
                {
                    break;
                }
            }
        }
        for id in self.live.all() {
            self.end(id, FinishReason::Error("the engine shut down".into()));
        }
        self.publish();
        if let Some(sink) = &self.kv_events {
            sink.send(vec![KvEvent::Cleared], B::KV_MEDIUM);
        }
    }

    /// False on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(q) => self.accept(*q),
            Command::Cancel(id) => self.end_request(id, FinishReason::Cancelled),
            Command::Shutdown => return false,
        }
        true
    }

    /// A new request: its first choice goes to the scheduler (the others fork from it once
    /// its prompt is computed).
    fn accept(&mut self, a: Queued) {
        self.metrics.requests_submitted += 1;
        self.metrics.accepted_by_class[a.request.priority.rank() as usize] += 1;
        let r = &a.request;
        let seed = r.sampling.seed.unwrap_or_else(random_seed);
        let mut sampling = r.sampling.clone();
        sampling.seed = Some(seed);
        let mut sampler = Sampler::new(sampling).expect("validated at submission");
        sampler.set_prompt(&a.prompt);
        let first = Choice {
            request: a.id,
            class: r.priority.rank() as usize,
            index: 0,
            sampler,
            seed,
            detok: Detokenizer::new(r.skip_special_tokens),
            stops: StopStrings::new(&r.stop),
            stop_ids: a.stop_ids.into(),
            max_tokens: a.max_tokens,
            logprobs: r.logprobs,
            num_generated: 0,
            pending_forks: r.n - 1,
            first_scheduled: None,
            first_token: None,
            inject_panic: self.fault_injection.is_some_and(|t| a.prompt.contains(&t)),
            retired: None,
            matcher: a.matcher,
            premask: None,
        };
        let request = RequestState {
            sender: a.sender,
            n: r.n,
            remaining: r.n,
            choices: Vec::new(),
            prompt_tokens: a.prompt.len(),
            arrival: a.arrival,
        };
        let (priority, salt, deadline, extra_slots) = (r.priority, r.cache_salt.clone(), r.deadline, r.n - 1);
        let id = self.live.add(a.id, request, first);
        self.scheduler.add(SeqSpec { id, priority, arrival: a.arrival, prompt: a.prompt, salt, deadline, extra_slots });
    }

    /// One step; false when nothing could run.
    fn step(&mut self) -> bool {
        let now = Instant::now();
        self.propose_drafts(now);
        let out = self.scheduler.schedule(now);
        self.retire(&out);
        if out.scheduled.is_empty() {
            return false;
        }
        for s in &out.scheduled {
            if let Some(c) = self.live.get_mut(s.id) {
                c.first_scheduled.get_or_insert(now);
            }
        }
        match self.copy_blocks().and_then(|()| self.fill_drafts(&out)).and_then(|()| self.forward(&out)) {
            Ok(picked) => {
                self.account(&out, now);
                self.sample_and_emit(&out, picked);
            }
            Err(e) => self.fail(&out, e),
        }
        true
    }

    /// Copy-on-write copies the scheduler asked for, in the target's pool and the draft's.
    fn copy_blocks(&mut self) -> Result<(), BackendError> {
        let copies = self.blocks.take_copies();
        if !copies.is_empty() {
            self.backend.copy_blocks(&mut self.kv, &copies)?;
            if let Some(d) = self.draft_model.as_mut() {
                self.backend.copy_blocks(&mut d.kv, &copies)?;
            }
        }
        Ok(())
    }

    /// Ends the sequences the scheduler removed on its own: past their deadline before they
    /// started, or out of KV memory with nothing left to preempt.
    fn retire(&mut self, out: &StepOutput) {
        for (ended, reason) in
            out.expired.iter().map(|e| (e, FinishReason::Deadline)).chain(out.out_of_memory.iter().map(|e| (e, FinishReason::Length)))
        {
            if let Some(c) = self.live.get_mut(ended.id) {
                c.retired = Some(*ended);
            }
            self.end(ended.id, reason);
        }
    }

    /// The step ran: the scheduler commits it; the prefill rate and the counters follow.
    fn account(&mut self, out: &StepOutput, started: Instant) {
        let num_tokens = out.num_tokens();
        if num_tokens >= 32 {
            self.scheduler.set_prefill_rate(num_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9));
        }
        self.metrics.steps += 1;
        self.metrics.tokens_computed += num_tokens as u64;
        self.scheduler.complete_step(out);
    }

    /// The step failed on the backend: every sequence in it ends with the error.
    fn fail(&mut self, out: &StepOutput, e: BackendError) {
        tracing::error!("step failed: {e}");
        for s in &out.scheduled {
            self.end(s.id, FinishReason::Error(e.to_string()));
        }
    }

    fn publish(&mut self) {
        let m = &mut self.metrics;
        m.waiting = self.scheduler.waiting_by_class();
        m.running = self.scheduler.num_running();
        m.kv_blocks_used = self.blocks.num_used();
        m.prefix_cache = self.blocks.stats();
        m.preemptions = self.scheduler.num_preemptions();
        m.preemptions_by_class = self.scheduler.preemptions_by_class();
        self.shared.metrics.lock().clone_from(m);
        if let Some(sink) = &self.kv_events {
            sink.send(self.blocks.take_events(), B::KV_MEDIUM);
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
