//! The engine thread: owns backend, model, KV pool, block manager and scheduler, and runs
//! steps (schedule → plan → forward → sample → emit) while there is work.

mod sample;

use super::stream::EventSender;
use super::{Command, EngineConfig, Metrics, Queued, RequestId, Shared};
use crate::backend::Backend;
use crate::detok::{Detokenizer, StopStrings};
use crate::kv::BlockManager;
use crate::model::Llama;
use crate::plan::BatchPlan;
use crate::request::{Event, FinishReason, Timings, Usage};
use crate::sampler::{Sampler, TokenLogprob};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId, SeqSpec};
use crate::tokenizer::Tokenizer;
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the engine thread is built from (moved into it).
pub(super) struct CoreParts<B: Backend> {
    pub(super) backend: B,
    pub(super) model: Llama<B>,
    pub(super) kv: B::KvPool,
    pub(super) num_blocks: usize,
    pub(super) config: EngineConfig,
    pub(super) tokenizer: Option<Arc<Tokenizer>>,
    pub(super) commands: Receiver<Command>,
    pub(super) shared: Arc<Shared>,
}

impl<B: Backend> CoreParts<B> {
    /// The engine thread's body.
    pub(super) fn run(self) {
        let blocks = BlockManager::new(self.num_blocks, self.config.block_size, self.config.prefix_caching);
        let sched_config = SchedulerConfig {
            max_num_batched_tokens: self.config.max_num_batched_tokens,
            max_num_seqs: self.config.max_num_seqs,
            max_step_tokens_while_decoding: self.config.max_step_tokens_while_decoding,
            aging: self.config.aging,
        };
        let mut core = Core {
            plan: BatchPlan::new(self.config.block_size, self.num_blocks),
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
            requests: HashMap::new(),
            seqs: HashMap::new(),
            next_seq: 0,
            metrics: Metrics { kv_blocks_total: self.num_blocks, ..Metrics::default() },
            fault_injection: self.config.fault_injection,
        };
        core.run();
    }
}

struct RequestState {
    sender: EventSender,
    n: usize,
    /// Choices not finished yet.
    remaining: usize,
    seq_ids: Vec<SeqId>,
    prompt_tokens: usize,
    arrival: Instant,
}

struct SeqState {
    request: RequestId,
    index: usize,
    sampler: Sampler,
    /// Seed the choices forked from this sequence derive theirs from.
    seed: u64,
    detok: Detokenizer,
    stops: StopStrings,
    stop_ids: Arc<[u32]>,
    max_tokens: usize,
    logprobs: Option<usize>,
    num_generated: usize,
    /// Choices still to fork from this sequence once its prompt is computed.
    pending_forks: usize,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    /// Fault injection: panic while sampling this sequence.
    inject_panic: bool,
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
    requests: HashMap<RequestId, RequestState>,
    seqs: HashMap<SeqId, SeqState>,
    next_seq: SeqId,
    metrics: Metrics,
    fault_injection: Option<u32>,
}

impl<B: Backend> Core<B> {
    fn run(&mut self) {
        loop {
            let idle = self.seqs.is_empty();
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
            if !worked && !self.seqs.is_empty() {
                // Nothing could run (e.g. everything waits on a deadline check): wait a little
                // for commands instead of spinning.
                if let Ok(cmd) = self.commands.recv_timeout(Duration::from_millis(2))
                    && !self.handle(cmd)
                {
                    break;
                }
            }
        }
        let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        for id in ids {
            self.finish_seq(id, FinishReason::Error("the engine shut down".into()));
        }
        self.publish();
    }

    /// False on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(q) => self.accept(*q),
            Command::Cancel(id) => self.cancel(id),
            Command::Shutdown => return false,
        }
        true
    }

    fn accept(&mut self, a: Queued) {
        self.metrics.requests_submitted += 1;
        let seq_id = self.next_seq;
        self.next_seq += 1;
        let r = &a.request;
        let seed = r.sampling.seed.unwrap_or_else(random_seed);
        let mut sampling = r.sampling.clone();
        sampling.seed = Some(seed);
        let mut sampler = Sampler::new(sampling).expect("validated at submission");
        sampler.set_prompt(&a.prompt);
        self.seqs.insert(
            seq_id,
            SeqState {
                request: a.id,
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
            },
        );
        self.scheduler.add(SeqSpec {
            id: seq_id,
            priority: r.priority,
            arrival: a.arrival,
            prompt: a.prompt.clone(),
            salt: r.cache_salt.clone(),
            deadline: r.deadline,
            extra_slots: r.n - 1,
        });
        self.requests.insert(
            a.id,
            RequestState {
                sender: a.sender,
                n: r.n,
                remaining: r.n,
                seq_ids: vec![seq_id],
                prompt_tokens: a.prompt.len(),
                arrival: a.arrival,
            },
        );
    }

    /// Ends every remaining choice of a request with an error.
    fn fail_request(&mut self, id: RequestId, message: String) {
        let seqs = self.requests.get(&id).map(|r| r.seq_ids.clone()).unwrap_or_default();
        for seq in seqs {
            self.finish_seq(seq, FinishReason::Error(message.clone()));
        }
    }

    /// Drops every sequence of a request whose caller has gone; its blocks are free now.
    fn cancel(&mut self, id: RequestId) {
        let Some(req) = self.requests.remove(&id) else { return };
        for seq in req.seq_ids {
            if self.seqs.remove(&seq).is_some() {
                self.scheduler.remove(seq);
            }
        }
        self.metrics.finished.cancelled += req.remaining as u64;
    }

    fn step(&mut self) -> bool {
        let now = Instant::now();
        let out = self.scheduler.schedule(now);
        for e in &out.expired {
            self.finish_ended(e, FinishReason::Deadline);
        }
        for e in &out.out_of_memory {
            self.finish_ended(e, FinishReason::Length);
        }
        if out.scheduled.is_empty() {
            return false;
        }
        for s in &out.scheduled {
            if let Some(st) = self.seqs.get_mut(&s.id) {
                st.first_scheduled.get_or_insert(now);
            }
        }
        let on_device = match self.forward(&out) {
            Ok(on_device) => on_device,
            Err(e) => {
                tracing::error!("step failed: {e}");
                for s in &out.scheduled {
                    self.finish_seq(s.id, FinishReason::Error(e.to_string()));
                }
                return true;
            }
        };
        let elapsed = now.elapsed().as_secs_f64();
        let num_tokens = out.num_tokens();
        if num_tokens >= 32 {
            self.scheduler.set_prefill_rate(num_tokens as f64 / elapsed.max(1e-9));
        }
        self.metrics.steps += 1;
        self.metrics.tokens_computed += num_tokens as u64;
        self.scheduler.complete_step(&out);
        let vocab = self.model.config().vocab_size;
        for (row, s) in out.scheduled.iter().filter(|s| s.sample).enumerate() {
            let range = row * vocab..(row + 1) * vocab;
            if !self.seqs.contains_key(&s.id) {
                continue;
            }
            // A panic in one request's sampling or detokenizing fails that request only.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match on_device {
                true => self.on_greedy_token(s.id, self.greedy[row]),
                false => self.on_logits(s.id, range),
            }));
            if let Err(panic) = result {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!("request failed with an internal error (contained): {what}");
                if let Some(req) = self.seqs.get(&s.id).map(|st| st.request) {
                    self.fail_request(req, format!("internal error: {what}"));
                }
            }
        }
        true
    }

    fn on_token(&mut self, id: SeqId, token: u32, lp: Option<TokenLogprob>) {
        let max_context = self.model.config().max_position_embeddings;
        let st = self.seqs.get_mut(&id).expect("live sequence");
        assert!(!st.inject_panic, "injected fault (fault_injection is set)");
        st.num_generated += 1;
        st.first_token.get_or_insert_with(Instant::now);
        self.metrics.tokens_generated += 1;
        // A stop token is reported (ids, usage) but adds no text and is never computed.
        let is_stop = st.stop_ids.contains(&token);
        let mut finish = if is_stop {
            Some(FinishReason::Stop)
        } else {
            self.scheduler.append_token(id, token);
            let length = st.num_generated >= st.max_tokens || self.scheduler.tokens(id).len() >= max_context;
            length.then_some(FinishReason::Length)
        };
        let ids = vec![token];
        let mut text = String::new();
        if let Some(tok) = &self.tokenizer {
            let mut delta = if is_stop { String::new() } else { st.detok.push(tok, token).unwrap_or_default() };
            if finish.is_some() {
                delta += &st.detok.flush(tok).unwrap_or_default();
            }
            let (released, stopped) = st.stops.push(&delta);
            text = released;
            if stopped {
                finish = Some(FinishReason::Stop);
            } else if finish.is_some() {
                text += &st.stops.flush();
            }
        }
        let logprobs = lp.into_iter().collect();
        let (index, request) = (st.index, st.request);
        let req = self.requests.get(&request).expect("live request");
        let delivered = req.sender.send(Event::Token { index, ids, text, logprobs });
        if !delivered {
            self.cancel(request);
        } else if let Some(reason) = finish {
            self.finish_seq(id, reason);
        }
    }

    /// A sequence the scheduler removed itself.
    fn finish_ended(&mut self, e: &crate::scheduler::Ended, reason: FinishReason) {
        self.finish_with(e.id, reason, e.num_cached_prompt, e.num_preemptions);
    }

    /// Ends one choice: frees its blocks, sends its `Finish` (and those of choices that will
    /// now never fork from it), and closes the stream after the last.
    fn finish_seq(&mut self, id: SeqId, reason: FinishReason) {
        let cached = self.scheduler.num_cached_prompt(id);
        let preemptions = self.scheduler.num_preemptions_of(id);
        self.finish_with(id, reason, cached, preemptions);
    }

    fn finish_with(&mut self, id: SeqId, reason: FinishReason, cached_tokens: usize, preemptions: u32) {
        let Some(mut st) = self.seqs.remove(&id) else { return };
        self.scheduler.remove(id);
        let Some(req) = self.requests.get_mut(&st.request) else { return };
        // Text held back (a partial character, a possible stop string) is released unless the
        // choice stopped on a stop string (then the tail was dropped already) or was cancelled.
        if !matches!(reason, FinishReason::Stop | FinishReason::Cancelled)
            && let Some(tok) = &self.tokenizer
        {
            let tail = st.detok.flush(tok).unwrap_or_default();
            let (mut text, _) = st.stops.push(&tail);
            text += &st.stops.flush();
            if !text.is_empty() {
                req.sender.send(Event::Token { index: st.index, ids: Vec::new(), text, logprobs: Vec::new() });
            }
        }
        let now = Instant::now();
        let usage = Usage { prompt_tokens: req.prompt_tokens, completion_tokens: st.num_generated, cached_tokens };
        let timings = Timings {
            queued: st.first_scheduled.unwrap_or(now) - req.arrival,
            time_to_first_token: st.first_token.map(|t| t - req.arrival),
            decode: st.first_token.map_or(Duration::ZERO, |t| now - t),
            preemptions,
        };
        let counter = match reason {
            FinishReason::Stop => &mut self.metrics.finished.stop,
            FinishReason::Length => &mut self.metrics.finished.length,
            FinishReason::Cancelled => &mut self.metrics.finished.cancelled,
            FinishReason::Deadline => &mut self.metrics.finished.deadline,
            FinishReason::Error(_) => &mut self.metrics.finished.error,
        };
        *counter += 1 + st.pending_forks as u64;
        let never_forked = req.n - st.pending_forks..req.n;
        for index in std::iter::once(st.index).chain(never_forked) {
            let usage = if index == st.index { usage } else { Usage { completion_tokens: 0, ..usage } };
            req.sender.send(Event::Finish { index, reason: reason.clone(), usage, timings });
        }
        req.remaining -= 1 + st.pending_forks;
        if req.remaining == 0 {
            self.requests.remove(&st.request);
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
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
