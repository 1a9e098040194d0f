//! The default path (what a user gets: 8-bit activations with integer dot products, f16 KV
//! cache) generating freely — all golden prompts batched together — against the reference.
//!
//! Asserted: on average over the prompts the greedy continuations agree with the reference
//! for at least as many tokens as llama.cpp's (as the goldens record them), counting a
//! continuation that reaches the reference's EOS as a full match.

mod common;

use ballast::backend::cpu::Precision;
use ballast::kv::KvDtype;
use common::*;

fn llama_cpp_agreement(case: &serde_json::Value) -> usize {
    let l = &case["llama_cpp"];
    if l["match_until_ref_eos"].as_bool() == Some(true) {
        return 48;
    }
    l["first_divergence"].as_u64().map_or(48, |d| d as usize)
}

#[test]
fn default_path_agrees_with_the_reference_at_least_as_well_as_llama_cpp() {
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    let cases = golden["cases"].as_array().unwrap();
    let loaded = load_model();
    let engine = cpu_engine(loaded, Precision::Int16, KvDtype::F16, 512, 256);
    let outputs = run_together(&engine, cases.iter().map(|c| greedy_request(&ids(&c["prompt_ids"]), 48)).collect());
    let (mut ours_total, mut peer_total) = (0, 0);
    for (case, out) in cases.iter().zip(&outputs) {
        let reference = ids(&case["greedy"]["ids"]);
        let eos = case["greedy"]["eos_index"].as_u64().map(|e| e as usize);
        assert_eq!(out.ids.len(), 48);
        let ours = agreement(&out.ids, &reference, eos);
        let peer = llama_cpp_agreement(case);
        eprintln!("{:<20} ours {ours:>2}  llama.cpp {peer:>2}", case["id"].as_str().unwrap());
        ours_total += ours;
        peer_total += peer;
    }
    let n = cases.len() as f64;
    eprintln!("mean agreement: ours {:.2}, llama.cpp {:.2}", ours_total as f64 / n, peer_total as f64 / n);
    assert!(ours_total >= peer_total, "ours {ours_total} < llama.cpp {peer_total} tokens in all");
}

#[test]
fn default_path_step0_logprobs_track_the_reference() {
    let golden = read_json(&data_dir().join("goldens/public/generation.json"));
    let loaded = load_model();
    let vocab = loaded.config.vocab_size;
    let mut teacher = teacher(loaded, Precision::Int16, KvDtype::F16, 1024, 512);
    let mut worst = 0.0f32;
    for case in golden["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let logits = teacher.prompt_logits(&prompt, prompt.len() - 1).unwrap();
        let row = &logits[..vocab];
        let lse = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let lse = lse + row.iter().map(|&x| (x - lse).exp()).sum::<f32>().ln();
        let top5 = &case["top5"][0];
        let ref_lse = top5["logsumexp"].as_f64().unwrap() as f32;
        for (&t, &l) in ids(&top5["ids"]).iter().zip(&floats(&top5["logits"])) {
            let diff = ((row[t as usize] - lse) - (l - ref_lse)).abs();
            worst = worst.max(diff);
        }
        if floats(&case["greedy"]["margins"])[0] > 0.5 {
            assert_eq!(argmax(row), ids(&top5["ids"])[0], "case {}", case["id"]);
        }
    }
    eprintln!("worst step-0 top-5 log-prob difference: {worst:.4}");
    assert!(worst < 0.6, "log-probs drift {worst} from the reference");
}
