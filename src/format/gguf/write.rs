//! Writing GGUF files: used by tests to build valid files (and, by patching the result, every
//! kind of malformed one), and by tools that convert models.
//!
//! The writer writes what it is given: it does not check that a tensor's bytes match its shape,
//! that keys are unique, or that the version is one the reader accepts. That is deliberate (tests
//! build bad files with it); [`GgufFile::from_bytes`](super::GgufFile::from_bytes) is the check.

use super::value::{MetaValue, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use crate::quant::GgmlType;

/// Element type written for an empty array (the reader returns an empty array for any type).
const EMPTY_ARRAY_TYPE: ValueType = ValueType::U8;

/// Builds a GGUF file in memory.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    /// ggml order, innermost first.
    dims: Vec<u64>,
    dtype: GgmlType,
    bytes: Vec<u8>,
}

impl GgufWriter {
    /// An empty file of format `version` (2 or 3 for a file the reader accepts).
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter { version, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Appends a key/value pair. Setting `general.alignment` to a nonzero power of two that
    /// fits a u32 also sets the padding the writer uses; otherwise it pads to 32 bytes.
    ///
    /// # Panics
    /// If `value` is or contains an array whose elements are not all of one type: GGUF stores
    /// one element type per array, so such an array has no encoding.
    pub fn metadata(mut self, key: impl Into<String>, value: MetaValue) -> GgufWriter {
        let key = key.into();
        assert!(is_encodable(&value), "metadata {key}: array elements must all have one type");
        self.metadata.push((key, value));
        self
    }

    /// Appends a tensor with shape `dims` (innermost first) and data `bytes` (copied).
    pub fn tensor(mut self, name: impl Into<String>, dims: &[u64], dtype: GgmlType, bytes: impl AsRef<[u8]>) -> GgufWriter {
        let (name, dims, bytes) = (name.into(), dims.to_vec(), bytes.as_ref().to_vec());
        self.tensors.push(PendingTensor { name, dims, dtype, bytes });
        self
    }

    /// The alignment the file will be padded to.
    pub fn alignment(&self) -> usize {
        let set = self.metadata.iter().rev().find(|(k, _)| k == ALIGNMENT_KEY);
        match set.and_then(|(_, v)| v.as_u32()) {
            Some(a) if a.is_power_of_two() => a as usize,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// The encoded file: header, metadata, tensor infos, padding, then each tensor's data at
    /// the next aligned offset. No padding follows the last tensor.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, value.value_type().id());
            put_value(&mut out, value);
        }
        let mut data_len: usize = 0;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let offset = data_len.next_multiple_of(alignment);
            data_len = offset + t.bytes.len();
            offsets.push(offset);
            put_tensor_info(&mut out, t, offset as u64);
        }
        let data_start = out.len().next_multiple_of(alignment);
        for (t, offset) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + offset, 0);
            out.extend_from_slice(&t.bytes);
        }
        out
    }
}

fn is_encodable(value: &MetaValue) -> bool {
    match value {
        MetaValue::Array(items) => {
            let first = items.first().map(MetaValue::value_type);
            items.iter().all(|v| Some(v.value_type()) == first && is_encodable(v))
        }
        _ => true,
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The value's encoding, without its type id.
fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => put_u32(out, *v),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::U64(v) => put_u64(out, *v),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(items) => {
            let elem = items.first().map_or(EMPTY_ARRAY_TYPE, MetaValue::value_type);
            put_u32(out, elem.id());
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
    }
}

fn put_tensor_info(out: &mut Vec<u8>, t: &PendingTensor, offset: u64) {
    put_str(out, &t.name);
    put_u32(out, t.dims.len() as u32);
    for &d in &t.dims {
        put_u64(out, d);
    }
    put_u32(out, t.dtype.id());
    put_u64(out, offset);
}
