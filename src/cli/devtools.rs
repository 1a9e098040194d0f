//! `ballast bench-gpu` (the GPU kernels against the device's copy bandwidth) and
//! `ballast make-model` (random-weight GGUF models of real shapes, for benchmarks: nothing is
//! downloaded).

use anyhow::Context;
use ballast::format::gguf::{GgufWriter, MetaValue};
use ballast::quant::GgmlType;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchGpuArgs {
    /// `cuda`, `cuda:N`, or `emulated` (the host emulation at 1/64 of the shapes: checks the
    /// benchmark runs, measures nothing about GPUs).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn bench_gpu(args: BenchGpuArgs) -> anyhow::Result<()> {
    let (table, json) = ballast::backend::gpu_kernel_bench(&args.device)?;
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MakeModelArgs {
    /// The shape: `llama3-8b` (32 layers, hidden 4096, 32/8 heads, MLP 14336, vocab 128256)
    /// or `tiny` (2 layers, hidden 256: for tests).
    #[arg(long, default_value = "llama3-8b", value_parser = ["llama3-8b", "tiny"])]
    shape: String,
    /// Output GGUF file. Weights have random quants and scales (norms f32 ones); the
    /// vocabulary is placeholders (text encodes to byte tokens). Built in memory (about twice
    /// its size).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Type of the weight matrices.
    #[arg(long = "type", default_value = "q4_1",
          value_parser = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])]
    dtype: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Shape {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
}

pub fn make_model(args: MakeModelArgs) -> anyhow::Result<()> {
    let s = match args.shape.as_str() {
        "tiny" => Shape { layers: 2, hidden: 256, heads: 8, kv_heads: 2, ffn: 512, vocab: 1024 },
        _ => Shape { layers: 32, hidden: 4096, heads: 32, kv_heads: 8, ffn: 14336, vocab: 128256 },
    };
    let head_dim = s.hidden / s.heads;
    let kv_dim = s.kv_heads * head_dim;
    let mut seed = args.seed;
    let dtype = GgmlType::from_name(&args.dtype).context("a quantized type")?;
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut w = GgufWriter::new(3)
        .metadata("general.architecture", MetaValue::Str("llama".into()))
        .metadata("general.name", MetaValue::Str(format!("random {} ({dtype})", args.shape)))
        .metadata("llama.block_count", u(s.layers))
        .metadata("llama.embedding_length", u(s.hidden))
        .metadata("llama.feed_forward_length", u(s.ffn))
        .metadata("llama.attention.head_count", u(s.heads))
        .metadata("llama.attention.head_count_kv", u(s.kv_heads))
        .metadata("llama.context_length", u(8192))
        .metadata("llama.vocab_size", u(s.vocab))
        .metadata("llama.rope.freq_base", MetaValue::F32(500000.0))
        .metadata("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5));
    // A SentencePiece-style vocabulary of the right size: <unk>, <s>, </s>, the 256 byte
    // tokens, then placeholder pieces (text encodes to bytes; benchmarks use token ids).
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    tokens.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    tokens.extend((tokens.len()..s.vocab).map(|i| format!("\u{2581}t{i}")));
    let types: Vec<MetaValue> = (0..s.vocab)
        .map(|i| {
            MetaValue::I32(match i {
                0 => 2,
                1 | 2 => 3,
                3..=258 => 6,
                _ => 1,
            })
        })
        .collect();
    w = w
        .metadata("tokenizer.ggml.model", MetaValue::Str("llama".into()))
        .metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens.into_iter().map(MetaValue::Str).collect()))
        .metadata("tokenizer.ggml.scores", MetaValue::Array(vec![MetaValue::F32(0.0); s.vocab]))
        .metadata("tokenizer.ggml.token_type", MetaValue::Array(types))
        .metadata("tokenizer.ggml.bos_token_id", u(1))
        .metadata("tokenizer.ggml.eos_token_id", u(2));
    let ones: Vec<u8> = (0..s.hidden).flat_map(|_| 1f32.to_le_bytes()).collect();
    let mut matrix = |w: GgufWriter, name: String, rows: usize, cols: usize| {
        {
            // Small scales so activations stay finite; every matrix its own stream.
            seed += 1;
            let t = dtype.fallback_for_row(cols as u64);
            w.tensor(name, &[cols as u64, rows as u64], t, ballast::quant::random_blocks(t, rows * cols, 0.06, seed))
        }
    };
    w = matrix(w, "token_embd.weight".into(), s.vocab, s.hidden);
    w = matrix(w, "output.weight".into(), s.vocab, s.hidden);
    w = w.tensor("output_norm.weight", &[s.hidden as u64], GgmlType::F32, &ones);
    for i in 0..s.layers {
        w = w.tensor(format!("blk.{i}.attn_norm.weight"), &[s.hidden as u64], GgmlType::F32, &ones);
        w = w.tensor(format!("blk.{i}.ffn_norm.weight"), &[s.hidden as u64], GgmlType::F32, &ones);
        w = matrix(w, format!("blk.{i}.attn_q.weight"), s.hidden, s.hidden);
        w = matrix(w, format!("blk.{i}.attn_k.weight"), kv_dim, s.hidden);
        w = matrix(w, format!("blk.{i}.attn_v.weight"), kv_dim, s.hidden);
        w = matrix(w, format!("blk.{i}.attn_output.weight"), s.hidden, s.hidden);
        w = matrix(w, format!("blk.{i}.ffn_gate.weight"), s.ffn, s.hidden);
        w = matrix(w, format!("blk.{i}.ffn_up.weight"), s.ffn, s.hidden);
        w = matrix(w, format!("blk.{i}.ffn_down.weight"), s.hidden, s.ffn);
    }
    std::fs::write(&args.out, w.to_bytes()).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} layers, hidden {}, vocab {})", args.out.display(), s.layers, s.hidden, s.vocab);
    Ok(())
}
