//! Greedy and seeded sampling, truncation (top-k, top-p, min-p), penalties, logprobs, forks.

use super::*;

#[test]
fn greedy_takes_the_first_maximum_and_ignores_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    assert_eq!(argmax(&[f32::NAN, 0.5, 0.1]), 1);
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&mut [0.0, 0.0, 2.0]), 2);
}

/// The two-pass argmax against the one-compare-per-element reference: lengths around the
/// lane count, ties, NaN anywhere (also every entry), infinities, empty.
#[test]
fn argmax_matches_its_plain_twin() {
    let mut rng = crate::quant::test_util::Rng::new(91);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0];
    for len in [0, 1, 2, 15, 16, 17, 31, 33, 100, 1000] {
        for trial in 0..50 {
            let mut x = rng.floats(len, 4.0);
            // Coarse values make ties; specials go in at random places.
            if trial % 2 == 0 {
                x.iter_mut().for_each(|v| *v = v.round());
            }
            for _ in 0..trial % 4 {
                if len > 0 {
                    x[rng.below(len)] = specials[rng.below(specials.len())];
                }
            }
            if trial == 49 {
                x.iter_mut().for_each(|v| *v = f32::NAN);
            }
            assert_eq!(argmax(&x), argmax_plain(&x), "{x:?}");
        }
    }
}

#[test]
fn same_seed_same_tokens_and_top_k_bounds_choices() {
    let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
    let params = SamplingParams { temperature: 1.5, top_k: 5, seed: Some(7), ..Default::default() };
    let run = || {
        let mut s = Sampler::new(params.clone()).unwrap();
        (0..200).map(|_| s.sample(&mut logits.clone())).collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run());
    let mut top5: Vec<u32> = (0..100).collect();
    top5.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
    assert!(a.iter().all(|t| top5[..5].contains(t)));
    assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
}

/// Temperature sampling draws each token with its softmax probability, whether or not
/// the candidates are sorted first (top-p sorts; plain temperature does not).
#[test]
fn draws_follow_the_softmax() {
    let logits = [0.5f32, 2.0, -1.0, 1.0, 1.5];
    let t = 0.8f64;
    let w: Vec<f64> = logits.iter().map(|&x| ((x as f64 - 2.0) / t).exp()).collect();
    let total: f64 = w.iter().sum();
    for top_p in [1.0, 0.9999] {
        let params = SamplingParams { temperature: t as f32, top_p, seed: Some(3), ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        let mut counts = [0usize; 5];
        let n = 40_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone()) as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let (got, want) = (c as f64 / n as f64, w[i] / total);
            assert!((got - want).abs() < 0.01, "top_p {top_p} token {i}: {got} vs {want}");
        }
    }
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    // One token holds ~97% of the mass: top_p 0.9 must always pick it.
    let logits = [10.0, 6.0, 5.0, 4.5];
    let params = SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(1), ..Default::default() };
    let mut s = Sampler::new(params).unwrap();
    assert!((0..100).all(|_| s.sample(&mut logits.clone()) == 0));
}

#[test]
fn invalid_params_are_errors() {
    let bad_t = SamplingParams { temperature: -1.0, ..Default::default() };
    assert_eq!(Sampler::new(bad_t).err(), Some(SamplingError::Temperature(-1.0)));
    let bad_p = SamplingParams { top_p: 0.0, ..Default::default() };
    assert_eq!(Sampler::new(bad_p).err(), Some(SamplingError::TopP(0.0)));
}

#[test]
fn min_p_drops_the_unlikely_tail() {
    // Probabilities ~ 0.66, 0.24, 0.09, 0.004: min_p 0.2 keeps only the first two.
    let logits = [3.0, 2.0, 1.0, -2.0];
    let params = SamplingParams { temperature: 1.0, min_p: 0.2, seed: Some(3), ..Default::default() };
    let mut s = Sampler::new(params).unwrap();
    let picks: std::collections::HashSet<u32> = (0..500).map(|_| s.sample(&mut logits.clone())).collect();
    assert_eq!(picks, [0, 1].into_iter().collect());
}

#[test]
fn penalties_follow_openai_and_hf_semantics() {
    let params = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
    let mut s = Sampler::new(params).unwrap();
    s.observe(1);
    s.observe(1);
    let mut logits = [1.0, 1.0, 0.9];
    s.penalize(&mut logits);
    assert_eq!(logits, [1.0, 1.0 - 0.5 - 0.5, 0.9]);

    let params = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
    let mut s = Sampler::new(params).unwrap();
    s.set_prompt(&[0, 1]);
    s.observe(1);
    s.observe(3);
    let mut logits = [4.0, -1.0, 5.0, 3.0];
    s.penalize(&mut logits);
    assert_eq!(logits, [2.0, -2.0, 5.0, 1.5], "each seen token once; positive divided, negative multiplied");
    // Greedy with a penalty avoids the repeated token.
    let mut logits = [4.0, -1.0, 3.0, 3.0];
    assert_eq!(s.sample(&mut logits), 2);
}

#[test]
fn logprobs_are_a_normalized_log_softmax() {
    let logits = [1.0f32, 3.0, 2.0, f32::NAN];
    let lp = logprobs(&logits, 2, 2);
    let z: f64 = [1.0f64, 3.0, 2.0].iter().map(|x| x.exp()).sum();
    assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
    assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    let total: f64 = (0..3).map(|i| (logprobs(&logits, i, 0).logprob as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-6);
    assert_eq!(logprobs(&logits, 3, 0).logprob, f32::NEG_INFINITY);
}

#[test]
fn forks_draw_independently_but_reproducibly() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).cos()).collect();
    let params = SamplingParams { temperature: 1.0, seed: Some(11), ..Default::default() };
    let base = Sampler::new(params).unwrap();
    let draw = |mut s: Sampler| (0..50).map(|_| s.sample(&mut logits.clone())).collect::<Vec<_>>();
    assert_eq!(draw(base.fork(1)), draw(base.fork(1)));
    assert_ne!(draw(base.fork(1)), draw(base.fork(2)));
}
