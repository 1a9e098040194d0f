//! The `ballast` binary end to end: generation on the real model, `inspect`, and bad input
//! answered with one clear error line and a non-zero exit — never a panic.

mod common;

use ballast::format::gguf::{GgufWriter, MetaValue};
use ballast::quant::GgmlType;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn ballast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast")).args(args).env("BALLAST_LOG", "warn").output().expect("run ballast")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure: non-zero exit, an `error:` line naming the problem, no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains("error:") && err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn generate_json_reproduces_the_golden_greedy_prefix() {
    let model = model_path();
    let out =
        ballast(&["generate", "--model", model.to_str().unwrap(), "--prompt", "The capital of France is", "--max-tokens", "4", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(ids(&v["prompt_ids"]), vec![504, 3575, 282, 4649, 314]);
    let output = ids(&v["output_ids"]);
    assert_eq!(output.len(), 4);
    assert_eq!(output[0], 7042, "greedy first token is ` Paris`");
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"));
}

#[test]
fn generate_chat_streams_text_and_stops_at_end_of_turn() {
    let model = model_path();
    let out = ballast(&["generate", "--model", model.to_str().unwrap(), "--chat", "What is the capital of France?", "--max-tokens", "40"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(!text.contains("<|im_end|>"), "stop token leaked: {text}");
}

#[test]
fn seeded_sampling_is_reproducible_from_the_command_line() {
    let model = model_path();
    let run = || {
        let out = ballast(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "12",
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--seed",
            "42",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(run(), run());
}

#[test]
fn inspect_prints_metadata_and_tensors() {
    let model = model_path();
    let out = ballast(&["inspect", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["GGUF v3", "general.architecture", "llama", "token_embd.weight", "Q8_0", "blk.29.ffn_down.weight", "272 tensors"] {
        assert!(text.contains(needle), "inspect output lacks {needle}");
    }
    let fixture = data_dir().join("fixtures/tiny-qwen2");
    let out = ballast(&["inspect", fixture.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout).unwrap().contains("model.layers.1.self_attn.q_proj.bias"));
}

fn write_gguf(dir: &Path, name: &str, bytes: Vec<u8>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_models_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |model: &str| ballast(&["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"]);

    assert_clean_failure(&generate("/nonexistent/model.gguf"), "No such file");

    let text = write_gguf(dir.path(), "notes.gguf", b"just some text, not a model".to_vec());
    assert_clean_failure(&generate(&text), "magic");

    let gpt2 = GgufWriter::new(3).metadata("general.architecture", MetaValue::Str("gpt2".into())).to_bytes();
    assert_clean_failure(&generate(&write_gguf(dir.path(), "gpt2.gguf", gpt2)), "unsupported architecture `gpt2`");

    let mut unknown_type = GgufWriter::new(3)
        .metadata("general.architecture", MetaValue::Str("llama".into()))
        .tensor("token_embd.weight", &[32, 2], GgmlType::F32, [0u8; 256])
        .to_bytes();
    // Patch the tensor's type id (F32 = 0) to one ballast does not know (IQ2_XXS = 16).
    let pos = unknown_type.windows(17).position(|w| w == b"token_embd.weight").unwrap() + 17 + 4 + 16;
    unknown_type[pos..pos + 4].copy_from_slice(&16u32.to_le_bytes());
    let iq2 = generate(&write_gguf(dir.path(), "iq2.gguf", unknown_type));
    assert_clean_failure(&iq2, "token_embd.weight: IQ2_XXS (ggml type 16) is not supported");

    // HF directories: malformed config.json, then a truncated safetensors file.
    let hf = tempfile::tempdir().unwrap();
    let fixture = data_dir().join("fixtures/tiny-llama");
    std::fs::write(hf.path().join("config.json"), b"{\"hidden_size\": ").unwrap();
    assert_clean_failure(&generate(hf.path().to_str().unwrap()), "config.json");
    std::fs::copy(fixture.join("config.json"), hf.path().join("config.json")).unwrap();
    let weights = std::fs::read(fixture.join("model.safetensors")).unwrap();
    std::fs::write(hf.path().join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert_clean_failure(&generate(hf.path().to_str().unwrap()), "safetensors");
    // An HF Gemma 3 checkpoint (only its GGUF files run) says so.
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gemma3_text".into();
    std::fs::write(hf.path().join("config.json"), config.to_string()).unwrap();
    assert_clean_failure(&generate(hf.path().to_str().unwrap()), "`gemma3_text` runs from GGUF files");

    let empty_dir = tempfile::tempdir().unwrap();
    assert_clean_failure(&generate(empty_dir.path().to_str().unwrap()), "not a GGUF file or an HF model directory");

    // A draft model must share the model's tokenizer; a missing one is named.
    let qwen = real_model_path("qwen2.5-coder-0.5b");
    let smol = model_path();
    let with_draft = |draft: &str| {
        ballast(&["generate", "--model", smol.to_str().unwrap(), "--draft-model", draft, "--prompt", "hi", "--max-tokens", "1"])
    };
    assert_clean_failure(
        &with_draft(qwen.to_str().unwrap()),
        "the draft model's tokenizer has 151936 tokens, the model's 49152: they must match",
    );
    assert_clean_failure(&with_draft("/nonexistent/draft.gguf"), "loading the draft model");
}

#[test]
fn bad_arguments_fail_cleanly() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let out = ballast(&["generate", "--model", m, "--prompt", "hi", "--temperature", "-1"]);
    assert_clean_failure(&out, "temperature");
    let out = ballast(&["generate", "--model", m]);
    assert!(!out.status.success() && stderr(&out).contains("--prompt"), "{}", stderr(&out));
    let out = ballast(&["generate", "--model", m, "--prompt", ""]);
    assert_clean_failure(&out, "empty");
}

#[test]
fn prompts_file_runs_concurrently_and_prints_in_input_order() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let lines = [
        r#"{"prompt": "The capital of France is", "max_tokens": 4}"#,
        r#"{"chat": "Count from one to five.", "max_tokens": 30, "priority": "low"}"#,
        "",
        r#"{"chat": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}], "max_tokens": 8, "priority": "critical"}"#,
        r#"{"prompt": "1, 2, 3,", "max_tokens": 20, "stop": [" 6"], "logprobs": 2}"#,
        r#"{"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0.9, "seed": 3, "n": 2}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = ballast(&["generate", "--model", m, "--prompts-file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(rows.len(), 5, "one line per request, blank lines skipped");
    assert_eq!(ids(&rows[0]["prompt_ids"]), vec![504, 3575, 282, 4649, 314], "input order");
    assert_eq!(ids(&rows[0]["output_ids"])[0], 7042);
    assert_eq!(rows[3]["finish_reason"], "stop");
    assert!(rows[3]["text"].as_str().unwrap().ends_with(" 4, 5,"), "{}", rows[3]["text"]);
    assert_eq!(rows[3]["logprobs"].as_array().unwrap().len(), ids(&rows[3]["output_ids"]).len());
    assert_eq!(rows[4]["choices"].as_array().unwrap().len(), 2);

    // Each line gives what the same request gives alone (batch invariance through the CLI).
    let alone = ballast(&["generate", "--model", m, "--chat", "Count from one to five.", "--max-tokens", "30", "--json"]);
    assert!(alone.status.success(), "{}", stderr(&alone));
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).unwrap();
    assert_eq!(alone["output_ids"], rows[1]["output_ids"]);
}

#[test]
fn bad_prompts_files_fail_with_the_line_number() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |content: &str| {
        let file = dir.path().join("p.jsonl");
        std::fs::write(&file, content).unwrap();
        ballast(&["generate", "--model", m, "--prompts-file", file.to_str().unwrap()])
    };
    assert_clean_failure(&run("{\"prompt\": \"ok\"}\n{not json}\n"), "p.jsonl:2");
    assert_clean_failure(&run("{\"prompt\": \"ok\", \"temprature\": 1}\n"), "p.jsonl:1");
    assert_clean_failure(&run("{\"max_tokens\": 3}\n"), "exactly one of");
    assert_clean_failure(&run("{\"prompt\": \"x\", \"top_p\": 7}\n"), "top_p");
    assert_clean_failure(&run("{\"prompt\": \"x\", \"priority\": \"urgent\"}\n"), "p.jsonl:1");
    assert_clean_failure(&run("{\"prompt\": \"x\", \"n\": 100}\n"), "n must be");
    let missing = ballast(&["generate", "--model", m, "--prompts-file", "/nonexistent/p.jsonl"]);
    assert_clean_failure(&missing, "/nonexistent/p.jsonl");
}

#[test]
fn bench_offline_reports_prompt_and_output_rates() {
    let model = model_path();
    let out = ballast(&[
        "bench",
        "--offline",
        "--model",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "8",
        "--max-tokens",
        "4",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["prompt_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["output_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["concurrency"], 2);
    let out = ballast(&["bench"]);
    assert!(!out.status.success() && stderr(&out).contains("<URL>"), "a URL (or --offline) is required");
}

/// `--device`: `auto` says where it runs; a GPU that is not there is a clear error. On a
/// machine with a GPU (and a CUDA build) `auto` must take it instead.
#[test]
fn device_selection_falls_back_or_fails_clearly() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["generate", "--model", m, "--prompt", "Hi", "--max-tokens", "2", "--device", device])
            .env("BALLAST_LOG", "info")
            .output()
            .expect("run ballast")
    };
    #[cfg(feature = "cuda")]
    let gpus = ballast::backend::gpu::cuda::device_count().unwrap_or(0);
    #[cfg(not(feature = "cuda"))]
    let gpus = 0;
    let auto = run("auto");
    assert!(auto.status.success(), "{}", stderr(&auto));
    if gpus > 0 {
        assert!(stderr(&auto).contains("running on cuda:0"), "{}", stderr(&auto));
    } else {
        assert!(stderr(&auto).contains("backend: cpu"), "{}", stderr(&auto));
        #[cfg(feature = "cuda")]
        assert!(stderr(&auto).contains("running on the CPU"), "the fallback is logged: {}", stderr(&auto));
        let cuda = run("cuda");
        #[cfg(feature = "cuda")]
        assert_clean_failure(&cuda, "CUDA");
        #[cfg(not(feature = "cuda"))]
        assert_clean_failure(&cuda, "built without CUDA");
    }
    assert_clean_failure(&run(&format!("cuda:{}", gpus + 7)), "CUDA");
    let bad = run("tpu");
    assert!(!bad.status.success() && stderr(&bad).contains("unknown device"), "{}", stderr(&bad));
}

/// `make-model` writes a loadable random model (the 8B benchmark model's code path at a tiny
/// shape), and `bench --offline` runs it; `bench-gpu` runs its whole code path on the
/// emulated device.
#[test]
fn make_model_and_the_gpu_kernel_bench_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let p = path.to_str().unwrap();
    let out = ballast(&["make-model", "--shape", "tiny", "--out", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ballast(&[
        "bench",
        "--offline",
        "--device",
        "cpu",
        "--model",
        p,
        "--concurrency",
        "2",
        "--prompt-tokens",
        "8",
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(v["output_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // Speculation compared over alternating phases: both engines up, outputs checked equal.
    let out = ballast(&[
        "bench",
        "--offline",
        "--device",
        "cpu",
        "--model",
        p,
        "--concurrency",
        "1",
        "--prompt-tokens",
        "8",
        "--max-tokens",
        "6",
        "--workload",
        "echo",
        "--ngram-draft",
        "--spec-repeat",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("best of 2 alternating decode phases"), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(v["speculative_speedup"].as_f64().unwrap() > 0.0, "{v}");
    let bench = ballast(&["bench-gpu", "--device", "emulated", "--json"]);
    #[cfg(feature = "cuda")]
    {
        assert!(bench.status.success(), "{}", stderr(&bench));
        let v: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
        let kernels = v["kernels"].as_array().unwrap();
        assert_eq!(kernels.len(), 18, "{v}");
        assert!(kernels.iter().all(|k| k["gb_per_s"].as_f64().unwrap() > 0.0), "{v}");
    }
    #[cfg(not(feature = "cuda"))]
    assert_clean_failure(&bench, "built without CUDA");
}
