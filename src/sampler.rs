//! Choosing the next token from a row of logits, per sequence.
//!
//! Order of processing (as vLLM and llama.cpp): repetition / presence / frequency penalties on
//! the logits, then greedy (`temperature == 0`) or: top-k, softmax at `temperature`, min-p,
//! top-p, and a draw from a seeded ChaCha stream, so a seed reproduces its output exactly and
//! no sequence's draws depend on another's. [`logprobs`] reports the model's own distribution
//! (before any of this), as vLLM does by default.
//!
//! A sampler keeps its candidate buffer between calls: choosing a token allocates nothing
//! beyond its penalty counts.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number ≥ 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("{name} must be in [-2, 2], got {value}")]
    Penalty { name: &'static str, value: f32 },
}

/// How to pick tokens. `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens seen in the prompt or output
    /// (1 = off; HF / vLLM semantics).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted from a generated token's logit per time it was generated.
    pub frequency_penalty: f32,
    /// Seed of the random stream; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
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
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplingError::MinP(self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        for (name, value) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(SamplingError::Penalty { name, value });
            }
        }
        Ok(())
    }

    fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// The log-probability of a chosen token and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first (ties by id).
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `chosen`, with the `top` most likely tokens. NaN logits count
/// as impossible.
pub fn logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|x| !x.is_nan()).map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { (x as f64 - log_z) as f32 };
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, x)| !x.is_nan()).map(|(i, &x)| (i as u32, x)).collect();
        let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if top < all.len() {
            all.select_nth_unstable_by(top - 1, by);
            all.truncate(top);
        }
        all.sort_unstable_by(by);
        best = all.into_iter().map(|(i, x)| (i, lp(x))).collect();
    }
    let logprob = logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |&x| lp(x));
    TokenLogprob { id: chosen, logprob, top: best }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// (logit, token id) of the tokens still in play.
    candidates: Vec<(f32, u32)>,
    /// Generated tokens and how often (for presence / frequency penalties).
    generated: std::collections::HashMap<u32, u32>,
    /// Prompt tokens (for the repetition penalty; empty unless it is on).
    prompt: std::collections::HashSet<u32>,
}

/// The index of the largest logit (the first one on ties); NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest number in sixteen lanes (a vector loop: `f32::max` passes NaN over), then
    // the first index holding it — two streaming passes instead of a compare-and-branch per
    // element (a 262k-entry vocabulary costs a few percent of a small model's step otherwise).
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = l.max(x);
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    match logits.iter().position(|&x| x == max) {
        Some(i) => i as u32,
        // Every entry NaN: the last index, as the GPU kernel does.
        None => logits.len().saturating_sub(1) as u32,
    }
}

/// [`argmax`] as one compare per element: the reference it is tested against.
#[cfg(test)]
fn argmax_plain(logits: &[f32]) -> u32 {
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
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
            generated: Default::default(),
            prompt: Default::default(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Tells the sampler the prompt (the repetition penalty looks at it).
    pub fn set_prompt(&mut self, prompt: &[u32]) {
        if self.params.repetition_penalty != 1.0 {
            self.prompt = prompt.iter().copied().collect();
        }
    }

    /// Records a token that was generated (the penalties look at it). [`Self::sample`] does
    /// this itself; call it for tokens chosen elsewhere.
    /// Whether this sampler always picks the raw logits' argmax (greedy, no penalties), so a
    /// backend may pick it on the device ([`crate::backend::Backend::argmax`]).
    pub fn is_plain_greedy(&self) -> bool {
        (self.params.temperature == 0.0 || self.params.top_k == 1) && !self.params.has_penalties()
    }

    pub fn observe(&mut self, token: u32) {
        if self.params.has_penalties() {
            *self.generated.entry(token).or_insert(0) += 1;
        }
    }

    /// A sampler with these params and state but its own random stream (`seed`), for the
    /// `i`-th of n > 1 choices.
    pub fn fork(&self, seed: u64) -> Sampler {
        Sampler {
            params: self.params.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
            generated: self.generated.clone(),
            prompt: self.prompt.clone(),
        }
    }

    /// Applies the penalties to `logits` in place (touching only seen tokens; a token in
    /// both prompt and output gets the repetition penalty once).
    fn penalize(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let output_only = self.generated.keys().filter(|t| !self.prompt.contains(t));
            for &t in self.prompt.iter().chain(output_only) {
                if let Some(x) = logits.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                }
            }
        }
        for (&t, &n) in &self.generated {
            if let Some(x) = logits.get_mut(t as usize) {
                *x -= p.presence_penalty + p.frequency_penalty * n as f32;
            }
        }
    }

    /// Picks the next token from `logits` (one row, vocabulary-sized; the penalties are
    /// applied to it in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        if self.params.has_penalties() {
            self.penalize(logits);
        }
        let token = self.choose(logits);
        self.observe(token);
        token
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
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
        // Only truncation needs the order: plain temperature sampling walks the candidates in
        // id order (the same distribution, without sorting the vocabulary every token).
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        let truncates = p.min_p > 0.0 || p.top_p < 1.0;
        if truncates {
            c.sort_unstable_by(by_logit);
        }
        let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.0));
        let mut total = 0.0f64;
        for cand in c.iter_mut() {
            cand.0 = ((cand.0 - max) / p.temperature).exp();
            total += cand.0 as f64;
        }
        if p.min_p > 0.0 {
            // Sorted: c[0] is the most likely (weight 1): keep weights ≥ min_p.
            let keep = c.iter().position(|x| x.0 < p.min_p).unwrap_or(c.len()).max(1);
            c.truncate(keep);
            total = c.iter().map(|x| x.0 as f64).sum();
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
mod tests;
