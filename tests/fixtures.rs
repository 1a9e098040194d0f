//! The tiny HF checkpoints of tests/data/fixtures against the logits and greedy continuations
//! transformers computed from them: plain Llama, Llama-3 rope scaling in two shards, Qwen2
//! with qkv bias and tied embeddings.

mod common;

use ballast::backend::cpu::Precision;
use ballast::kv::KvDtype;
use ballast::model::LoadOptions;
use ballast::quant::GgmlType;
use common::*;
use std::path::Path;

const FIXTURES: [&str; 3] = ["tiny-llama", "tiny-llama3-rope-sharded", "tiny-qwen2"];

fn cases(dir: &Path) -> Vec<(Vec<u32>, Vec<u32>)> {
    let expected = read_json(&dir.join("expected.json"));
    expected["cases"].as_array().unwrap().iter().map(|c| (ids(&c["prompt_ids"]), ids(&c["greedy_16"]))).collect()
}

/// max |a - b| / max |b|
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let max_diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    max_diff / b.iter().map(|y| y.abs()).fold(0.0, f32::max)
}

fn check_fixture(name: &str, precision: Precision, quantize: Option<GgmlType>, tolerance: f32, exact_greedy: bool) {
    let dir = data_dir().join("fixtures").join(name);
    let load = || load_dir(&dir, LoadOptions { quantize, ..LoadOptions::default() });
    let mut teacher = teacher(load(), precision, KvDtype::F32, 256, 64);
    let engine = cpu_engine(load(), precision, KvDtype::F32, 64, 16);
    for (i, (prompt, greedy)) in cases(&dir).iter().enumerate() {
        let logits = teacher.prompt_logits(prompt, 0).unwrap();
        let err = relative_error(&logits, &expected_logits(&dir, i));
        assert!(err <= tolerance, "{name} case {i}: relative error {err} > {tolerance}");
        let out = run_together(&engine, vec![greedy_request(prompt, 16)]).remove(0);
        if exact_greedy {
            assert_eq!(&out.ids, greedy, "{name} case {i}: greedy continuation");
        } else {
            assert_eq!(out.ids.len(), 16);
        }
    }
}

#[test]
fn bf16_checkpoints_match_transformers() {
    for name in FIXTURES {
        check_fixture(name, Precision::Int16, None, 1e-3, true);
        check_fixture(name, Precision::Reference, None, 1e-3, true);
    }
}

#[test]
fn quantized_on_load_checkpoints_stay_close() {
    for name in FIXTURES {
        check_fixture(name, Precision::Reference, Some(GgmlType::Q8_0), 2e-2, false);
        check_fixture(name, Precision::Int16, Some(GgmlType::Q8_0), 3e-2, false);
        check_fixture(name, Precision::Int16, Some(GgmlType::Q4_1), 2e-1, false);
    }
}
