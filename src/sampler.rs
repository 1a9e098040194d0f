//! Choosing the next token from a row of logits: greedy, or temperature with top-k / top-p
//! filtering, from a seeded ChaCha stream so a seed reproduces its output exactly.
//!
//! A sampler keeps its candidate buffer between calls: choosing a token allocates nothing.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number ≥ 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
}

/// How to pick tokens. `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Seed of the random stream; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: None }
    }
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams::default()
    }

    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// (logit, token id) of the tokens still in play.
    candidates: Vec<(f32, u32)>,
}

/// The index of the largest logit (the first one on ties); NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplingError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map(|d| d.as_nanos() as u64).unwrap_or(0) ^ std::process::id() as u64
        });
        Ok(Sampler { params, rng: ChaCha8Rng::seed_from_u64(seed), candidates: Vec::new() })
    }

    /// Picks the next token from `logits` (one row, vocabulary-sized).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, x)| !x.is_nan()).map(|(i, &x)| (x, i as u32)));
        if c.is_empty() {
            return 0;
        }
        // Highest logit first; ties by id so the order never depends on the sort algorithm.
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        let max = c[0].0;
        let mut total = 0.0f64;
        for cand in c.iter_mut() {
            cand.0 = ((cand.0 - max) / p.temperature).exp();
            total += cand.0 as f64;
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0f64;
            let keep = c.iter().position(|x| {
                mass += x.0 as f64 / total;
                mass >= p.top_p as f64
            });
            if let Some(k) = keep {
                c.truncate(k + 1);
                total = c.iter().map(|x| x.0 as f64).sum();
            }
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0f64;
        for &(w, id) in c.iter() {
            acc += w as f64;
            if u < acc {
                return id;
            }
        }
        c[c.len() - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.1]), 1);
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.0, 0.0, 2.0]), 2);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_bounds_choices() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams { temperature: 1.5, top_k: 5, top_p: 1.0, seed: Some(7) };
        let run = || {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut top5: Vec<u32> = (0..100).collect();
        top5.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        assert!(a.iter().all(|t| top5[..5].contains(t)));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds ~97% of the mass: top_p 0.9 must always pick it.
        let logits = [10.0, 6.0, 5.0, 4.5];
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9, seed: Some(1) };
        let mut s = Sampler::new(params).unwrap();
        assert!((0..100).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn invalid_params_are_errors() {
        let bad_t = SamplingParams { temperature: -1.0, ..Default::default() };
        assert_eq!(Sampler::new(bad_t).err(), Some(SamplingError::Temperature(-1.0)));
        let bad_p = SamplingParams { top_p: 0.0, ..Default::default() };
        assert_eq!(Sampler::new(bad_p).err(), Some(SamplingError::TopP(0.0)));
    }
}
