//! Everything that can be wrong with a GGUF file, or with a metadata lookup on a valid one.

use std::path::PathBuf;

use crate::quant::GgmlType;

/// A GGUF read failure. Offsets are absolute byte offsets into the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("file truncated: {what} at offset {offset} needs {needed} bytes, only {available} left")]
    Truncated { offset: u64, needed: u64, available: u64, what: &'static str },

    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version} (ballast reads versions 2 and 3)")]
    UnsupportedVersion { version: u32 },

    #[error("big-endian GGUF (version {version}) is not supported")]
    BigEndian { version: u32 },

    #[error("{what} {count} at offset {offset} cannot fit in the {available} bytes left in the file")]
    CountTooLarge { what: &'static str, count: u64, offset: u64, available: u64 },

    #[error("{what} at offset {offset} is {len} bytes long, more than the limit of {max}")]
    StringTooLong { what: &'static str, len: u64, max: u64, offset: u64 },

    #[error("{what} is not valid UTF-8 (bad byte at offset {offset})")]
    InvalidUtf8 { what: &'static str, offset: u64 },

    #[error("metadata {key}: unknown value type {type_id} at offset {offset}")]
    UnknownValueType { key: String, type_id: u32, offset: u64 },

    #[error("metadata {key}: bool at offset {offset} is {value}, expected 0 or 1")]
    InvalidBool { key: String, value: u8, offset: u64 },

    #[error("metadata {key}: arrays nested more than {max} deep at offset {offset}")]
    NestingTooDeep { key: String, max: usize, offset: u64 },

    #[error("metadata key {key} appears twice (second at offset {offset})")]
    DuplicateKey { key: String, offset: u64 },

    #[error("general.alignment is {value}, expected a nonzero power of two that fits a u32")]
    InvalidAlignment { value: String },

    #[error("tensor {name}: {n_dims} dimensions, expected 1 to 4")]
    BadDimCount { name: String, n_dims: u32 },

    #[error("tensor {name}: {} is not supported (supported: {})", describe_type(*type_id), supported_types())]
    UnknownTensorType { name: String, type_id: u32 },

    #[error("tensor {name}: shape {dims:?} of {dtype} is invalid: {problem}")]
    BadShape { name: String, dims: Vec<u64>, dtype: GgmlType, problem: &'static str },

    #[error("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { name: String, offset: u64, alignment: usize },

    #[error(
        "tensor {name}: bytes {offset}..+{num_bytes} of the data section (at offset {data_offset}) \
         lie outside its {data_len} bytes"
    )]
    TensorOutOfBounds { name: String, offset: u64, num_bytes: u64, data_offset: u64, data_len: u64 },

    #[error("tensor name {name} appears twice (second at offset {offset})")]
    DuplicateTensor { name: String, offset: u64 },

    #[error("metadata {key} is {found}, expected {expected}")]
    MetadataType { key: String, expected: &'static str, found: &'static str },

    #[error("metadata {key}: value {value} does not fit {expected}")]
    MetadataRange { key: String, expected: &'static str, value: String },
}

/// A ggml type id as a name where ggml has one (`IQ4_XS (ggml type 23)`).
fn describe_type(type_id: u32) -> String {
    const NAMES: [(u32, &str); 17] = [
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    match NAMES.iter().find(|(id, _)| *id == type_id) {
        Some((_, name)) => format!("{name} (ggml type {type_id})"),
        None => format!("ggml type {type_id} (unknown)"),
    }
}

fn supported_types() -> String {
    crate::quant::GgmlType::ALL
        .iter()
        .filter(|t| !matches!(t, crate::quant::GgmlType::Q8_1 | crate::quant::GgmlType::Q8K))
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}
