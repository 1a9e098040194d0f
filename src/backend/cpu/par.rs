//! Parallel-write helper: lets pool tasks write disjoint, non-contiguous parts of one output.

use std::marker::PhantomData;

/// A mutable slice shared by tasks that each write a disjoint set of elements.
///
/// Soundness rests on the caller: no two tasks may touch the same element, and nothing reads
/// the slice while tasks write it. Every use site states why its index sets are disjoint.
pub struct SharedOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only access disjoint elements (the contract of `slice`), so sharing the
// pointer across threads is equivalent to handing each thread its own `&mut` sub-slice.
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub fn new(out: &'a mut [T]) -> SharedOut<'a, T> {
        SharedOut { ptr: out.as_mut_ptr(), len: out.len(), _borrow: PhantomData }
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// No other live reference (from any thread) may overlap this range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start, "SharedOut range out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Splits `n` items into chunks so that every worker gets several (load balance) but no
/// chunk is smaller than `min_chunk` (overhead).
pub fn chunk_len(n: usize, num_threads: usize, min_chunk: usize) -> usize {
    let target_chunks = num_threads.max(1) * 4;
    n.div_ceil(target_chunks).max(min_chunk).max(1)
}
