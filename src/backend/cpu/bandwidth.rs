//! The machine's memory read bandwidth, measured: a streaming-read probe for the roofline
//! `ballast bench --offline` reports (decode at one token a step reads every weight once, so
//! its speed is bounded by this number divided by the weight bytes).

use std::time::Instant;

/// Bytes read per second by `threads` threads each streaming through its share of a
/// `bytes`-byte buffer (in huge pages where the kernel gives them, like the weights), best of
/// `repeats` passes. Make `bytes` several times the last-level cache so that the reads come
/// from memory.
pub fn read_bandwidth(threads: usize, bytes: usize, repeats: usize) -> std::io::Result<f64> {
    let threads = threads.max(1);
    let words = (bytes / 8).next_multiple_of(8 * threads);
    let mut region = memmap2::MmapMut::map_anon(words * 8)?;
    // Advice only (as for the weights); then touch every page so no fault is timed.
    let _ = region.advise(memmap2::Advice::HugePage);
    let buf: &mut [u64] = bytemuck::cast_slice_mut(&mut region[..]);
    for (i, w) in buf.iter_mut().enumerate() {
        *w = i as u64;
    }
    let buf: &[u64] = buf;
    let per_thread = words / threads;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for part in buf.chunks(per_thread) {
                scope.spawn(move || std::hint::black_box(xor_all(part)));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok((words * 8) as f64 / best)
}

/// Reads every word of `words` (eight independent lanes, so the loads are not serialised
/// behind one dependency chain).
fn xor_all(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for chunk in words.chunks_exact(8) {
        for (a, w) in acc.iter_mut().zip(chunk) {
            *a ^= w;
        }
    }
    acc.iter().fold(0, |x, a| x ^ a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_plausible_rate() {
        let rate = super::read_bandwidth(2, 8 << 20, 2).unwrap();
        // Anything from a slow VM to cache speed: a number, and not an absurd one.
        assert!(rate > 1e8 && rate < 1e13, "{rate} B/s");
    }
}
