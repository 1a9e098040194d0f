//! Sample and emit: each sampled row becomes a token (forking a request's other choices off
//! its first once the prompt is computed), the token becomes text through the detokenizer and
//! the stop strings, and an event on the request's stream. [`Core::end`] is the one way a
//! choice ends, whatever the reason.

use super::Core;
use super::forward::Picked;
use crate::backend::Backend;
use crate::engine::RequestId;
use crate::request::{Event, FinishReason, Timings, Usage};
use crate::sampler::{TokenLogprob, logprobs};
use crate::scheduler::{SeqId, StepOutput};
use std::time::{Duration, Instant};

impl<B: Backend> Core<B> {
    /// Every sampled row of the step, in order; a sequence with a draft keeps the drafted
    /// tokens its rows chose, in order, up to the first it did not (see
    /// [`crate::speculative`]). A panic in one request's sampling or detokenizing fails that
    /// request only.
    pub(super) fn sample_and_emit(&mut self, out: &StepOutput, picked: Picked) {
        let vocab = self.model.config().vocab_size;
        let mut first_row = 0;
        for s in out.scheduled.iter().filter(|s| s.sample) {
            let rows = first_row..first_row + 1 + s.draft;
            first_row = rows.end;
            let Some(class) = self.live.get(s.id).map(|c| c.class) else { continue };
            let draft = self.scheduler.draft(s.id)[..s.draft].to_vec();
            // Drafted tokens the model judged (its token at their row), and of those the ones
            // it chose. Rows after the choice ended are void, not judged: a client that leaves
            // mid-draft does not count as wrong drafts.
            let (mut judged, mut accepted) = (0, 0);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for (i, row) in rows.enumerate() {
                    let token = match picked {
                        Picked::Tokens => self.on_greedy_token(s.id, self.greedy[row]),
                        Picked::Logits => self.on_logits(s.id, row * vocab..(row + 1) * vocab),
                    };
                    // The row after the draft, or a choice that ended before it had a token.
                    let (Some(&drafted), Some(token)) = (draft.get(i), token) else { break };
                    judged += 1;
                    if drafted != token {
                        break; // the model chose otherwise: the rest of the rows are void
                    }
                    accepted += 1;
                    if self.live.get(s.id).is_none() {
                        break; // ended on this token (its stop, its length, a failed delivery)
                    }
                    self.scheduler.accept_drafted(s.id);
                }
            }));
            self.scheduler.end_draft(s.id);
            if s.draft > 0 {
                let counts = &mut self.metrics.speculative[class];
                counts.drafted += judged;
                counts.accepted += accepted;
            }
            if let Err(panic) = result {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!("request failed with an internal error (contained): {what}");
                if let Some(request) = self.live.get(s.id).map(|c| c.request) {
                    self.end_request(request, FinishReason::Error(format!("internal error: {what}")));
                }
            }
        }
    }

    /// A greedy choice's token, picked by the backend.
    fn on_greedy_token(&mut self, id: SeqId, token: u32) -> Option<u32> {
        self.live.get_mut(id).expect("checked").sampler.observe(token);
        self.on_token(id, token, None, false);
        Some(token)
    }

    /// A choice's logits are ready (`self.logits[range]`): fork the request's pending choices
    /// off it, then each samples from its own copy (penalties edit the row in place). Returns
    /// the choice's own token (`None`: it ended before it had one).
    fn on_logits(&mut self, id: SeqId, range: std::ops::Range<usize>) -> Option<u32> {
        let forks = std::mem::take(&mut self.live.get_mut(id).expect("checked").pending_forks);
        let mut choices = vec![id];
        let mut own = None;
        for i in 1..=forks {
            let child = self.live.fork(id, i);
            self.scheduler.fork(id, child);
            choices.push(child);
        }
        for choice in choices {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.logits[range.clone()]);
            // A failed delivery ends the whole request, siblings included.
            let Some(c) = self.live.get_mut(choice) else { continue };
            let top = c.logprobs;
            let raw = top.map(|_| self.scratch.clone());
            let premask = c.premask.take();
            if let Some(m) = c.matcher.as_mut()
                && let Err(e) = match premask {
                    Some(mask) => mask.map(|allowed| crate::constraint::apply_mask(&allowed, &mut self.scratch)),
                    None => crate::constraint::mask(m, &mut self.scratch),
                }
            {
                let request = c.request;
                self.end_request(request, FinishReason::Error(format!("constrained decoding failed: {e}")));
                continue;
            }
            let token = c.sampler.sample(&mut self.scratch);
            let lp = match (top, raw) {
                (Some(k), Some(raw)) => Some(logprobs(&raw, token, k)),
                _ => None,
            };
            // The constraint takes the token (an end-of-sequence token ends the choice anyway);
            // a complete grammar stops the choice.
            let mut complete = false;
            if let Some(m) = c.matcher.as_mut()
                && !c.stop_ids.contains(&token)
            {
                if let Err(e) = m.consume_token(token) {
                    let request = c.request;
                    self.end_request(request, FinishReason::Error(format!("constrained decoding failed: {e}")));
                    continue;
                }
                complete = m.is_stopped();
            }
            if choice == id {
                own = Some(token);
            }
            self.on_token(choice, token, lp, complete);
        }
        own
    }

    /// A choice's new token: appended (unless it is a stop token, which is reported but adds no
    /// text and is never computed), turned into text, sent; the choice ends on a stop token, a
    /// stop string, its length or the model's context.
    /// `complete`: the choice's constraint is satisfied and admits nothing more (a stop).
    fn on_token(&mut self, id: SeqId, token: u32, lp: Option<TokenLogprob>, complete: bool) {
        let max_context = self.model.config().max_position_embeddings;
        let (c, request) = self.live.with_request(id).expect("live choice");
        assert!(!c.inject_panic, "injected fault (fault_injection is set)");
        c.num_generated += 1;
        c.first_token.get_or_insert_with(Instant::now);
        self.metrics.tokens_generated += 1;
        let is_stop = c.stop_ids.contains(&token);
        let mut finish = if is_stop {
            Some(FinishReason::Stop)
        } else {
            self.scheduler.append_token(id, token);
            let length = c.num_generated >= c.max_tokens || self.scheduler.tokens(id).len() >= max_context;
            if complete { Some(FinishReason::Stop) } else { length.then_some(FinishReason::Length) }
        };
        let mut text = String::new();
        if let Some(tok) = &self.tokenizer {
            let mut delta = if is_stop { String::new() } else { c.detok.push(tok, token).unwrap_or_default() };
            if finish.is_some() {
                delta += &c.detok.flush(tok).unwrap_or_default();
            }
            let (released, stopped) = c.stops.push(&delta);
            text = released;
            if stopped {
                finish = Some(FinishReason::Stop);
            } else if finish.is_some() {
                text += &c.stops.flush();
            }
        }
        let event = Event::Token { index: c.index, ids: vec![token], text, logprobs: lp.into_iter().collect() };
        let owner = c.request;
        if !request.sender.send(event) {
            // The caller has gone.
            self.end_request(owner, FinishReason::Cancelled);
        } else if let Some(reason) = finish {
            self.end(id, reason);
        }
    }

    /// Ends every live choice of a request.
    pub(super) fn end_request(&mut self, request: RequestId, reason: FinishReason) {
        for choice in self.live.choices_of(request) {
            self.end(choice, reason.clone());
        }
    }

    /// Ends one choice, whatever the reason (its stop, its length, a cancelled or failed
    /// request, a missed deadline, no memory, shutdown): frees its blocks, releases the text it
    /// held back (unless it stopped on a stop string or was cancelled), sends its `Finish` and
    /// those of the choices that will now never fork from it, counts it, and forgets the
    /// request after its last choice. A choice that has already ended is left alone.
    pub(super) fn end(&mut self, id: SeqId, reason: FinishReason) {
        let stats = self.scheduler.take(id);
        let Some((mut c, req)) = self.live.take(id) else { return };
        let stats = stats.or(c.retired);
        let (cached_tokens, preemptions) = stats.map_or((0, 0), |e| (e.num_cached_prompt, e.num_preemptions));
        if !matches!(reason, FinishReason::Stop | FinishReason::Cancelled)
            && let Some(tok) = &self.tokenizer
        {
            let tail = c.detok.flush(tok).unwrap_or_default();
            let (mut text, _) = c.stops.push(&tail);
            text += &c.stops.flush();
            if !text.is_empty() {
                req.sender.send(Event::Token { index: c.index, ids: Vec::new(), text, logprobs: Vec::new() });
            }
        }
        let now = Instant::now();
        let usage = Usage { prompt_tokens: req.prompt_tokens, completion_tokens: c.num_generated, cached_tokens };
        let timings = Timings {
            queued: c.first_scheduled.unwrap_or(now) - req.arrival,
            time_to_first_token: c.first_token.map(|t| t - req.arrival),
            decode: c.first_token.map_or(Duration::ZERO, |t| now - t),
            preemptions,
        };
        let counter = match reason {
            FinishReason::Stop => &mut self.metrics.finished.stop,
            FinishReason::Length => &mut self.metrics.finished.length,
            FinishReason::Cancelled => &mut self.metrics.finished.cancelled,
            FinishReason::Deadline => &mut self.metrics.finished.deadline,
            FinishReason::Error(_) => &mut self.metrics.finished.error,
        };
        *counter += 1 + c.pending_forks as u64;
        let never_forked = req.n - c.pending_forks..req.n;
        for index in std::iter::once(c.index).chain(never_forked) {
            let usage = if index == c.index { usage } else { Usage { completion_tokens: 0, ..usage } };
            req.sender.send(Event::Finish { index, reason: reason.clone(), usage, timings });
        }
        req.remaining -= 1 + c.pending_forks;
        self.live.close(c.request);
    }
}
