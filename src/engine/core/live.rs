//! The one owner of what the engine thread knows about its requests and their choices (a
//! request with `n > 1` has several, each a sequence of the scheduler, which owns their
//! tokens and blocks). Every choice belongs to exactly one live request, and a request lives
//! until its last choice has ended.

use crate::detok::{Detokenizer, StopStrings};
use crate::engine::RequestId;
use crate::engine::stream::EventSender;
use crate::sampler::Sampler;
use crate::scheduler::SeqId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct RequestState {
    pub(super) sender: EventSender,
    pub(super) n: usize,
    /// Choices not ended yet (those still to fork included).
    pub(super) remaining: usize,
    /// Every choice it has had, ended ones included.
    pub(super) choices: Vec<SeqId>,
    pub(super) prompt_tokens: usize,
    pub(super) arrival: Instant,
}

/// One choice of a request, generating.
pub(super) struct Choice {
    pub(super) request: RequestId,
    /// The request's class ([`crate::request::Priority::rank`]), for the counters.
    pub(super) class: usize,
    pub(super) index: usize,
    pub(super) sampler: Sampler,
    /// Seed the choices forked from this one derive theirs from.
    pub(super) seed: u64,
    pub(super) detok: Detokenizer,
    pub(super) stops: StopStrings,
    pub(super) stop_ids: Arc<[u32]>,
    pub(super) max_tokens: usize,
    pub(super) logprobs: Option<usize>,
    pub(super) num_generated: usize,
    /// Choices still to fork from this one once its prompt is computed.
    pub(super) pending_forks: usize,
    pub(super) first_scheduled: Option<Instant>,
    pub(super) first_token: Option<Instant>,
    /// Fault injection: panic while sampling this choice.
    pub(super) inject_panic: bool,
    /// What the scheduler reported when it ended the sequence itself (deadline, memory).
    pub(super) retired: Option<crate::scheduler::Ended>,
    /// The output's constraint, when the request has one ([`crate::constraint`]).
    pub(super) matcher: Option<Box<llguidance::Matcher>>,
    /// The matcher's mask for this step's token, computed beside the forward pass
    /// (`Err`: the matcher failed).
    pub(super) premask: Option<Result<llguidance::toktrie::SimpleVob, String>>,
}

#[derive(Default)]
pub(super) struct Live {
    requests: HashMap<RequestId, RequestState>,
    choices: HashMap<SeqId, Choice>,
    next: SeqId,
}

impl Live {
    pub(super) fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    /// A new request with its first choice; returns the choice's sequence id.
    pub(super) fn add(&mut self, id: RequestId, mut request: RequestState, first: Choice) -> SeqId {
        let seq = self.next_id();
        request.choices.push(seq);
        self.requests.insert(id, request);
        self.choices.insert(seq, first);
        seq
    }

    /// The `i`-th choice forked from `parent` (same sampler settings, its own derived seed and
    /// stream); returns its sequence id.
    pub(super) fn fork(&mut self, parent: SeqId, i: usize) -> SeqId {
        let child = self.next_id();
        let p = &self.choices[&parent];
        let seed = p.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let state = Choice {
            request: p.request,
            class: p.class,
            index: i,
            sampler: p.sampler.fork(seed),
            seed,
            detok: p.detok.clone(),
            stops: p.stops.clone(),
            stop_ids: p.stop_ids.clone(),
            max_tokens: p.max_tokens,
            logprobs: p.logprobs,
            num_generated: 0,
            pending_forks: 0,
            first_scheduled: p.first_scheduled,
            first_token: None,
            inject_panic: p.inject_panic,
            retired: None,
            matcher: p.matcher.as_ref().map(|m| Box::new(m.deep_clone())),
            premask: None,
        };
        self.requests.get_mut(&state.request).expect("a live choice's request is live").choices.push(child);
        self.choices.insert(child, state);
        child
    }

    fn next_id(&mut self) -> SeqId {
        self.next += 1;
        self.next - 1
    }

    /// The matchers of the constrained choices among `ids`, to compute their masks together.
    pub(super) fn matchers_mut(&mut self, ids: &[SeqId]) -> Vec<(SeqId, &mut llguidance::Matcher)> {
        self.choices.iter_mut().filter(|(id, _)| ids.contains(id)).filter_map(|(id, c)| Some((*id, c.matcher.as_deref_mut()?))).collect()
    }

    pub(super) fn get(&self, id: SeqId) -> Option<&Choice> {
        self.choices.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: SeqId) -> Option<&mut Choice> {
        self.choices.get_mut(&id)
    }

    /// A choice and its request.
    pub(super) fn with_request(&mut self, id: SeqId) -> Option<(&mut Choice, &RequestState)> {
        let choice = self.choices.get_mut(&id)?;
        let request = self.requests.get(&choice.request).expect("a live choice's request is live");
        Some((choice, request))
    }

    /// The live choices of a request.
    pub(super) fn choices_of(&self, request: RequestId) -> Vec<SeqId> {
        let all = self.requests.get(&request).map_or(&[][..], |r| &r.choices[..]);
        all.iter().copied().filter(|c| self.choices.contains_key(c)).collect()
    }

    pub(super) fn all(&self) -> Vec<SeqId> {
        self.choices.keys().copied().collect()
    }

    /// Removes a choice, handing it over with its request; the request goes once its last
    /// choice has (see [`Self::close`]).
    pub(super) fn take(&mut self, id: SeqId) -> Option<(Choice, &mut RequestState)> {
        let choice = self.choices.remove(&id)?;
        let request = self.requests.get_mut(&choice.request).expect("a live choice's request is live");
        Some((choice, request))
    }

    /// Forgets a request whose choices have all ended.
    pub(super) fn close(&mut self, request: RequestId) {
        if self.requests.get(&request).is_some_and(|r| r.remaining == 0) {
            self.requests.remove(&request);
        }
    }
}
