//! The plain reference path (f32 activations against dequantized weights, f32 KV cache)
//! against the float32 transformers reference, teacher-forced: the golden prompt plus the
//! reference's own greedy tokens run as one sequence, so every position is compared in the
//! reference's exact context.
//!
//! Asserted at every position: the same greedy token wherever the reference's top-1 margin
//! exceeds 0.01; at the 8 steps with top-5 logits: the same top-1 and each logit within 2e-2.

mod common;

use ballast::backend::cpu::Precision;
use ballast::kv::KvDtype;
use common::*;

#[test]
fn reference_path_matches_the_float32_reference() {
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    let cases = golden["cases"].as_array().unwrap();
    let loaded = load_model();
    let vocab = loaded.config.vocab_size;
    let mut teacher = teacher(loaded, Precision::Reference, KvDtype::F32, 1024, 256);
    let (mut failures, mut num_compared, mut max_diff) = (Vec::new(), 0, 0.0f32);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let greedy = ids(&case["greedy"]["ids"]);
        let margins = floats(&case["greedy"]["margins"]);
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&greedy[..greedy.len() - 1]);
        let logits = teacher.prompt_logits(&tokens, prompt.len() - 1).unwrap();
        assert_eq!(logits.len(), greedy.len() * vocab);
        for (step, row) in logits.chunks(vocab).enumerate() {
            let top1 = argmax(row);
            if margins[step] > 0.01 && top1 != greedy[step] {
                failures.push(format!("{id} step {step}: got {top1}, reference {} (margin {})", greedy[step], margins[step]));
            }
        }
        for top5 in case["top5"].as_array().unwrap() {
            let step = top5["step"].as_u64().unwrap() as usize;
            let row = &logits[step * vocab..(step + 1) * vocab];
            let (top_ids, top_logits) = (ids(&top5["ids"]), floats(&top5["logits"]));
            if argmax(row) != top_ids[0] {
                failures.push(format!("{id} step {step}: top-1 {} vs reference {}", argmax(row), top_ids[0]));
            }
            for (&t, &expected) in top_ids.iter().zip(&top_logits) {
                let diff = (row[t as usize] - expected).abs();
                max_diff = max_diff.max(diff);
                num_compared += 1;
                if diff > 2e-2 {
                    failures.push(format!("{id} step {step} token {t}: logit {} vs {expected}", row[t as usize]));
                }
            }
        }
    }
    eprintln!("{} cases, {num_compared} golden logits, max |diff| {max_diff:.5}", cases.len());
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(teacher.num_free_blocks(), 1024usize.div_ceil(16) + 1, "KV blocks returned");
}
