//! The per-request event channel: the engine pushes, the caller pulls — blocking
//! ([`Iterator`]) or async ([`futures_core::Stream`]). Unbounded: the engine never blocks on a
//! slow reader (a request's events are bounded by its `max_tokens`).

use super::Command;
use crate::request::{Choice, Event};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

pub type RequestId = u64;

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// The engine is done with the request (or gone).
    closed: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The caller dropped or cancelled the stream.
    cancelled: AtomicBool,
}

/// The engine's end. Dropping it closes the stream.
pub(super) struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues `event`; false if the caller has gone (the request should be cancelled).
    pub fn send(&self, event: Event) -> bool {
        if self.shared.cancelled.load(Ordering::Acquire) {
            return false;
        }
        let mut q = self.shared.queue.lock();
        q.events.push_back(event);
        let waker = q.waker.take();
        drop(q);
        // Woken outside the lock: a waker may poll the stream at once.
        if let Some(w) = waker {
            w.wake();
        }
        self.shared.ready.notify_one();
        true
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        self.shared.ready.notify_all();
    }
}

/// The events of one submitted request. Iterate it (blocking) or poll it as a
/// [`futures_core::Stream`]; it ends after the last choice's `Finish`. **Dropping it cancels
/// the request**: the engine frees its KV blocks in its next step.
pub struct RequestStream {
    id: RequestId,
    shared: Arc<Shared>,
    commands: crossbeam_channel::Sender<Command>,
    prompt_ids: Vec<u32>,
}

pub(super) fn channel(id: RequestId, commands: crossbeam_channel::Sender<Command>, prompt_ids: Vec<u32>) -> (EventSender, RequestStream) {
    let shared = Arc::new(Shared::default());
    (EventSender { shared: shared.clone() }, RequestStream { id, shared, commands, prompt_ids })
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The tokenized prompt.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Cancels the request (the same as dropping the stream).
    pub fn cancel(self) {}

    /// The next event if one is queued, without waiting. `None` also when the stream ended.
    pub fn try_next(&mut self) -> Option<Event> {
        self.shared.queue.lock().events.pop_front()
    }

    /// Waits for every event and gathers each choice (index order).
    pub fn collect_output(self) -> Vec<Choice> {
        let mut choices: Vec<Choice> = Vec::new();
        for event in self {
            let index = match &event {
                Event::Token { index, .. } | Event::Finish { index, .. } => *index,
            };
            if choices.len() <= index {
                choices.resize_with(index + 1, Choice::default);
            }
            let c = &mut choices[index];
            match event {
                Event::Token { ids, text, logprobs, .. } => {
                    c.ids.extend(ids);
                    c.text.push_str(&text);
                    c.logprobs.extend(logprobs);
                }
                Event::Finish { reason, usage, timings, .. } => {
                    c.finish = Some(reason);
                    c.usage = usage;
                    c.timings = timings;
                }
            }
        }
        choices
    }
}

impl Iterator for RequestStream {
    type Item = Event;

    /// Blocks until the next event; `None` once the request is over.
    fn next(&mut self) -> Option<Event> {
        let mut q = self.shared.queue.lock();
        loop {
            if let Some(e) = q.events.pop_front() {
                return Some(e);
            }
            if q.closed {
                return None;
            }
            self.shared.ready.wait(&mut q);
        }
    }
}

impl futures_core::Stream for RequestStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut q = self.shared.queue.lock();
        if let Some(e) = q.events.pop_front() {
            return Poll::Ready(Some(e));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::Release);
        if !self.shared.queue.lock().closed {
            // If the engine is gone there is nothing left to cancel.
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}
