//! Reads the real SmolLM2-135M-Instruct Q4_1 GGUF and checks what we know about it.
//!
//! The model comes from `BALLAST_TEST_MODEL`, else the manifest's default in `models/`,
//! fetched if absent (see `tests/common`): the test never skips.

mod common;

use std::time::Instant;

use ballast::format::gguf::GgufFile;
use ballast::quant::GgmlType;
use common::model_path;

#[test]
fn smollm2_135m_q4_1() {
    let path = model_path();
    let start = Instant::now();
    let file = GgufFile::open(&path).unwrap();
    eprintln!("parsed {} in {:?}", path.display(), start.elapsed());

    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.tensors().len(), 272);
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(file.get_u32("llama.block_count").unwrap(), Some(30));
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0], "<|endoftext|>");
    let token_types = file.get_i32_array("tokenizer.ggml.token_type").unwrap().unwrap();
    assert_eq!(token_types.len(), 49152);
    assert_eq!(file.get_str_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 48900);

    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dtype, embd.dims.as_slice()), (GgmlType::Q8_0, &[576, 49152][..]));
    assert_eq!(embd.num_bytes, 49152 * 576 / 32 * 34);
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dtype, q.dims.as_slice()), (GgmlType::Q4_1, &[576, 576][..]));
    assert_eq!((q.row_len(), q.num_rows()), (576, 576));
    assert_eq!(file.tensor_data(q).len(), 576 * 576 / 32 * 20);

    // Every tensor's view lies inside the map and keeps it alive after the file is dropped.
    let views: Vec<_> = file.tensors().iter().map(|t| file.tensor_bytes(t)).collect();
    let last = file.tensors().last().unwrap().num_bytes;
    drop(file);
    assert_eq!(views.last().unwrap().len(), last);
}

/// Reading the file into (huge-page) memory gives the same tensors as mapping it.
#[test]
fn resident_and_mapped_files_hold_the_same_bytes() {
    let path = model_path();
    let (mapped, resident) = (GgufFile::open(&path).unwrap(), GgufFile::open_resident(&path).unwrap());
    assert_eq!(mapped.tensors().len(), resident.tensors().len());
    for (a, b) in mapped.tensors().iter().zip(resident.tensors()) {
        assert_eq!(a.name, b.name);
        assert!(mapped.tensor_data(a)[..] == resident.tensor_data(b)[..], "{}", a.name);
    }
}
