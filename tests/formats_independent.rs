//! Every quantized format dequantizes exactly as llama.cpp's own Python package (`gguf`, an
//! implementation independent of ours, pip-installed by the test tooling) decodes it: on
//! rows our quantizers write, on random block bytes (every bit of every field exercised),
//! and on the real tensors of Qwen2.5-Coder-0.5B Q4_K_M (Q5_0, Q4_K, Q6_K, Q8_0).

mod common;

use ballast::format::gguf::{GgufFile, GgufWriter};
use ballast::quant::{self, GgmlType};
use common::python;
use std::path::Path;
use std::process::Command;

/// Byte offsets of the f16 fields in each quantized block (random bytes there are replaced
/// by finite values: NaN compares unequal to itself).
fn f16_fields(dtype: GgmlType) -> &'static [usize] {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        other => panic!("{other} is not a file format under test"),
    }
}

/// Runs `tests/gguf_dequant.py` on `requests` (`(tensor, rows)`) and returns the values.
fn gguf_py(path: &Path, requests: &[(String, usize)]) -> Vec<f32> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_dequant.py");
    let status = Command::new(python())
        .arg(script)
        .arg(path)
        .arg(out.path())
        .args(requests.iter().map(|(name, rows)| format!("{name}:{rows}")))
        .status()
        .expect("the test tooling's python runs");
    assert!(status.success(), "gguf_dequant.py failed (scripts/test-tooling installs the `gguf` package)");
    bytemuck::pod_collect_to_vec(&std::fs::read(out.path()).unwrap())
}

/// Ours, row by row, for the same requests.
fn ours(file: &GgufFile, requests: &[(String, usize)]) -> Vec<f32> {
    let mut all = Vec::new();
    for (name, rows) in requests {
        let t = file.tensor(name).unwrap();
        let cols = t.row_len() as usize;
        let row_bytes = t.dtype.row_bytes(cols as u64).unwrap() as usize;
        let data = file.tensor_data(t);
        for r in 0..*rows {
            let mut out = vec![0f32; cols];
            quant::dequantize_row(t.dtype, &data[r * row_bytes..(r + 1) * row_bytes], &mut out).unwrap();
            all.extend(out);
        }
    }
    all
}

fn assert_bit_identical(what: &str, ours: &[f32], theirs: &[f32], requests: &[(String, usize)]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: value counts");
    let mismatches: Vec<usize> = (0..ours.len()).filter(|&i| ours[i].to_bits() != theirs[i].to_bits()).collect();
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {} values differ from gguf-py, first at {} ({} vs {}); tensors {requests:?}",
        mismatches.len(),
        ours.len(),
        mismatches[0],
        ours[mismatches[0]],
        theirs[mismatches[0]]
    );
}

#[test]
fn every_format_decodes_as_gguf_py_decodes_it() {
    let types = GgmlType::FILE_QUANTS;
    let (rows, cols) = (8usize, 768usize);
    let mut rng = common::Rng::new(77);
    let mut writer = GgufWriter::new(3);
    let mut requests = Vec::new();
    for dtype in types {
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let mut data = vec![0u8; rows * row_bytes];
        for (r, row) in data.chunks_exact_mut(row_bytes).enumerate() {
            if r < rows / 2 {
                let x: Vec<f32> = (0..cols).map(|_| rng.float(1.0) * 3.0).collect();
                quant::quantize_row(dtype, &x, row).unwrap();
            } else {
                row.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                for block in row.chunks_exact_mut(dtype.type_size()) {
                    for &at in f16_fields(dtype) {
                        let v = half::f16::from_f32(rng.float(1.0) * 2.0);
                        block[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let name = format!("t.{}", dtype.name());
        writer = writer.tensor(&name, &[cols as u64, rows as u64], dtype, data);
        requests.push((name, rows));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("formats.gguf");
    std::fs::write(&path, writer.to_bytes()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_bit_identical("made-up tensors", &ours(&file, &requests), &gguf_py(&path, &requests), &requests);
}

#[test]
fn real_qwen_0_5b_tensors_decode_as_gguf_py_decodes_them() {
    let path = common::real_model_path("qwen2.5-coder-0.5b");
    let file = GgufFile::open(&path).unwrap();
    // The first tensor of each type in the file, its first 64 rows.
    let mut requests: Vec<(String, usize)> = Vec::new();
    let mut seen = Vec::new();
    for t in file.tensors() {
        if !seen.contains(&t.dtype) {
            seen.push(t.dtype);
            requests.push((t.name.clone(), 64.min(t.num_rows() as usize)));
        }
    }
    for dtype in [GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
        assert!(seen.contains(&dtype), "the 0.5B holds {dtype} tensors (found {seen:?})");
    }
    assert_bit_identical("qwen2.5-coder-0.5b", &ours(&file, &requests), &gguf_py(&path, &requests), &requests);
}
