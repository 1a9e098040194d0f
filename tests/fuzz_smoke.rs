//! The fuzz targets (`ballast::fuzzing`, also run by cargo-fuzz via `fuzz/run`) on stable, in
//! bounded time: every checked-in corpus file, then seeded mutations of them (bit flips, byte
//! overwrites, truncations, splices, duplications) and random inputs. Passing means no input
//! panicked, hung or exhausted memory.

mod common;

use ballast::fuzzing;
use common::Rng;
use std::path::Path;
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "empty corpus for {target}");
    seeds
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'%', 0][rng.below(8)];
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let (a, b) = (rng.below(d.len() + 1), rng.below(other.len() + 1));
                d.splice(a..a, other[b..].iter().copied().take(64));
            }
            4 if !d.is_empty() => {
                let a = rng.below(d.len());
                let chunk: Vec<u8> = d[a..(a + 16).min(d.len())].to_vec();
                for _ in 0..rng.below(8) {
                    d.splice(a..a, chunk.iter().copied());
                }
            }
            5 if d.len() >= 8 => {
                // Overwrite a little-endian integer with an extreme value (counts, lengths).
                let i = rng.below(d.len() - 7);
                let v = [u64::MAX, u64::MAX / 2, 1 << 40, 0, 1 << 31][rng.below(5)];
                d[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => d.extend((0..rng.below(32)).map(|_| rng.next_u64() as u8)),
        }
    }
    d
}

/// Runs `f` over the corpus and `n` generated inputs; each input must finish within a second.
fn run(target: &str, n: usize, f: impl Fn(&[u8])) {
    let seeds = corpus(target);
    let mut rng = Rng::new(0xF022 ^ (target.len() as u64 * 0x9E37_79B9));
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let inputs = seeds.clone().into_iter().chain(
        (0..n).map(|i| if i % 10 == 0 { (0..rng.below(256)).map(|_| rng.next_u64() as u8).collect() } else { mutate(&mut rng, &seeds) }),
    );
    for input in inputs {
        let t = Instant::now();
        f(&input);
        slowest = slowest.max(t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(1), "{target}: one input took {:?}: {:?}", t.elapsed(), &input[..input.len().min(64)]);
    }
    eprintln!("{target}: {} inputs in {:?} (slowest {slowest:?})", seeds.len() + n, start.elapsed());
}

#[test]
fn gguf() {
    run("gguf", 200_000, fuzzing::gguf);
}

#[test]
fn hf_config() {
    run("hf_config", 200_000, fuzzing::hf_config);
}

#[test]
fn safetensors_header() {
    run("safetensors_header", 200_000, fuzzing::safetensors_header);
}

#[test]
fn request_json() {
    run("request_json", 200_000, fuzzing::request_json);
}

#[test]
fn chat_template() {
    run("chat_template", 20_000, fuzzing::chat_template);
}

#[test]
fn tokenizer() {
    let file = ballast::format::gguf::GgufFile::open(&common::model_path()).unwrap();
    let tok = ballast::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    run("tokenizer", 20_000, |d| fuzzing::tokenizer(&tok, d));
}

#[test]
fn json_schema() {
    let file = ballast::format::gguf::GgufFile::open(&common::model_path()).unwrap();
    let tok = ballast::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let eos = [tok.special().eos.as_ref().unwrap().0];
    let grammars = ballast::constraint::Grammars::new(&tok, tok.vocab_size(), &eos).unwrap();
    run("json_schema", 3_000, |d| fuzzing::json_schema(&grammars, d));
}

#[test]
fn tool_calls() {
    run("tool_calls", 100_000, fuzzing::tool_calls);
}
