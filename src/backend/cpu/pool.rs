//! The CPU backend's worker pool: persistent threads that spin briefly between ops.
//!
//! A forward pass of a small model is hundreds of short parallel ops (a 135M model at batch 1
//! runs about 300 per token, most under 50 µs). A pool that parks its workers on a futex after
//! each op pays a wake-up per op, several microseconds each, and that dominated decode with
//! rayon. Here the caller publishes a job by bumping an epoch; workers that saw the previous
//! job are still spinning on it and start within nanoseconds. Tasks are claimed from a shared
//! atomic counter, so uneven tasks balance themselves. A worker that sees no job for
//! [`SPIN`] parks on a condition variable, so an idle engine costs nothing.
//!
//! Workers *join* a job; the caller waits only for those that joined. When the caller has
//! run out of tasks it closes the job, and a worker that arrives later (descheduled because
//! the machine is busy, or still waking) skips it. So a busy machine slows a job down to the
//! caller's own speed but never makes it wait for a thread that is not running. Joining and
//! closing are one atomic word (`state`), so the two cannot race.
//!
//! The caller runs tasks too: a pool of `n` threads spawns `n - 1` workers. A panic in a task
//! is caught where it happens and re-raised on the caller's thread once every worker that
//! joined is done, so the job's borrows never outlive the call.

use parking_lot::{Condvar, Mutex};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins (then yields) before it parks.
const SPIN: Duration = Duration::from_micros(300);

const EPOCH_SHIFT: u32 = 32;
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

/// A job as the workers see it: the task function with its lifetime erased, and the count.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    num_tasks: usize,
}

struct Shared {
    /// `epoch << 32 | CLOSED? | joined workers`: the epoch is bumped once per job.
    state: AtomicU64,
    /// The current job. Written only while no worker can be reading it (see `run`).
    job: Mutex<Option<Job>>,
    /// The next unclaimed task index of the current job.
    next: AtomicUsize,
    /// Joined workers that have finished the current job.
    done: AtomicU64,
    /// Set when a task panicked; the payload is kept for the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Parking: workers wait here once they have spun for `SPIN`.
    sleep: Mutex<()>,
    wake: Condvar,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
}

// SAFETY: the raw job pointer is only dereferenced by a worker between joining its epoch and
// the `done` increment that retires it; `for_each` keeps the referent alive for that span.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: callers on different threads take turns.
    caller: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `num_threads` threads, the caller included.
    pub fn new(num_threads: usize, name: &str) -> std::io::Result<ThreadPool> {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            panic: Mutex::new(None),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut pool = ThreadPool { shared, workers: Vec::new(), caller: Mutex::new(()) };
        for i in 1..num_threads.max(1) {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || worker(&shared))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads that run tasks, the caller included.
    pub fn num_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..num_tasks` across the pool and returns when all are
    /// done. Which thread runs which task is not fixed; `f` must not depend on it.
    pub fn for_each(&self, num_tasks: usize, f: impl Fn(usize) + Sync) {
        if num_tasks <= 1 || self.workers.is_empty() {
            (0..num_tasks).for_each(f);
            return;
        }
        let _turn = self.caller.lock();
        let s = &*self.shared;
        let f: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only for this
        // epoch, after joining it, and this function does not return before every worker
        // that joined has bumped `done`, after its last use.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        *s.job.lock() = Some(Job { f, num_tasks });
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        let epoch = s.state.load(Ordering::Relaxed) >> EPOCH_SHIFT;
        s.state.store((epoch + 1) << EPOCH_SHIFT, Ordering::SeqCst); // SeqCst: pairs with `sleepers`
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock();
            s.wake.notify_all();
        }
        run_tasks(s, f, num_tasks);
        let joined = s.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED;
        let mut waited = 0u32;
        while s.done.load(Ordering::Acquire) < joined {
            backoff(&mut waited);
        }
        *s.job.lock() = None;
        if let Some(payload) = s.panic.lock().take() {
            resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.sleep.lock();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Claims and runs tasks until none are left, catching a panic so the job always completes.
fn run_tasks(s: &Shared, f: *const (dyn Fn(usize) + Sync), num_tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= num_tasks {
            return;
        }
        // SAFETY: see `Shared`: the job is live until this thread reports done.
        let f = unsafe { &*f };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            s.next.store(num_tasks, Ordering::Relaxed); // abandon the rest of the job
            s.panic.lock().get_or_insert(payload);
            return;
        }
    }
}

/// Busy-waits a little, then yields the core: for waits expected to be microseconds.
fn backoff(waited: &mut u32) {
    *waited += 1;
    if *waited < 1 << 12 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        if join_next(s, &mut seen) {
            let job = *s.job.lock();
            if let Some(Job { f, num_tasks }) = job {
                run_tasks(s, f, num_tasks);
            }
            s.done.fetch_add(1, Ordering::Release);
        } else if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Waits for a job newer than `seen` (spin, then yield, then park) and joins it. Returns
/// false if the job was closed before this worker got to it, or on shutdown.
fn join_next(s: &Shared, seen: &mut u64) -> bool {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        let state = s.state.load(Ordering::Acquire);
        let epoch = state >> EPOCH_SHIFT;
        if epoch != *seen {
            if state & CLOSED != 0 {
                *seen = epoch;
                return false;
            }
            if s.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                *seen = epoch;
                return true;
            }
            continue;
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        polls += 1;
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
        } else if start.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            let mut g = s.sleep.lock();
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.state.load(Ordering::SeqCst) >> EPOCH_SHIFT == *seen && !s.shutdown.load(Ordering::SeqCst) {
                s.wake.wait(&mut g);
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = ThreadPool::new(3, "test").unwrap();
        for n in [0, 1, 2, 5, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{n} tasks");
        }
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = ThreadPool::new(2, "test").unwrap();
        std::thread::sleep(SPIN * 4);
        let sum = AtomicUsize::new(0);
        pool.for_each(100, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2, "test").unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(50, |i| {
                if i == 7 {
                    panic!("task 7");
                }
            })
        }));
        let msg = r.unwrap_err().downcast::<&str>().map(|s| *s).unwrap_or("");
        assert_eq!(msg, "task 7");
        let count = AtomicUsize::new(0);
        pool.for_each(10, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
