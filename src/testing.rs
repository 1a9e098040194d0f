//! The one deterministic generator of the project's tests, fuzz smoke runs and benchmarks
//! (xorshift64*): tiny, seeded, and the same on every machine, so a failure replays exactly.
//! Not for anything that needs unpredictability.

/// xorshift64* over a seed mixed by the golden ratio (any seed, zero included, is fine).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-scale, scale)`.
    pub fn float(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.float(scale)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn ranges_hold_and_seeds_replay() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(0);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let (u, f, k) = (a.unit(), a.float(3.0), a.range(5, 12));
            assert!((0.0..1.0).contains(&u) && (-3.0..3.0).contains(&f) && (5..12).contains(&k));
            seen[k - 5] = true;
            b.unit();
            b.float(3.0);
            b.range(5, 12);
        }
        assert!(seen.iter().all(|&s| s), "every value of a small range comes up");
        assert_eq!((a.below(0), a.range(4, 4)), (0, 4));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
