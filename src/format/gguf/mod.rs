//! GGUF files (versions 2 and 3): metadata, tensor infos, and zero-copy tensor data.
//!
//! Layout (all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default 32),
//! then the data section. Each tensor's offset is relative to the data section.
//!
//! [`GgufFile::open`] maps the file read-only and parses everything before the data section
//! once (module `read`); [`GgufFile::open_resident`] reads it into anonymous memory backed by
//! huge pages where the OS allows; [`GgufFile::from_bytes`] runs the same parser over an
//! owned buffer.
//!
//! Invariants of a `GgufFile` (checked at open, relied on afterwards):
//! - Metadata keys and tensor names are unique and valid UTF-8; every value is fully decoded.
//! - `alignment()` is a nonzero power of two, and every tensor offset is a multiple of it.
//! - Every tensor has 1 to 4 nonzero dims, a supported [`GgmlType`], a row length that is a
//!   whole number of blocks, an element count and byte size that fit a u64, and its bytes lie
//!   inside the file. So `tensor_data` never fails for a `TensorInfo` from this file.
//!
//! Malformed input of any kind gives a [`GgufError`], never a panic: reads are bounds-checked,
//! arithmetic is checked, counts are bounded by the bytes left before allocating, and array
//! nesting is limited to [`MAX_ARRAY_DEPTH`]. Metadata can still take up to ~32× its size in
//! memory (each element of a u8 array becomes a `MetaValue`).
//!
//! ```
//! use ballast::format::gguf::{GgufFile, GgufWriter, MetaValue};
//! use ballast::quant::GgmlType;
//!
//! let bytes = GgufWriter::new(3)
//!     .metadata("general.architecture", MetaValue::Str("llama".into()))
//!     .tensor("norm.weight", &[4], GgmlType::F32, vec![0u8; 16])
//!     .to_bytes();
//! let file = GgufFile::from_bytes(bytes).unwrap();
//! assert_eq!(file.get_str("general.architecture").unwrap(), Some("llama"));
//! let norm = file.tensor("norm.weight").unwrap();
//! assert_eq!(file.tensor_data(norm).len(), 16);
//! ```

mod error;
mod read;
#[cfg(test)]
mod tests;
mod value;
mod write;

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

pub use error::GgufError;
pub use value::{MetaValue, ValueType};
pub use write::GgufWriter;

use super::bytes::{Bytes, TensorBytes};
use crate::quant::GgmlType;

/// The metadata key holding the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Deepest nesting of arrays accepted (a top-level array is depth 1).
pub const MAX_ARRAY_DEPTH: usize = 16;
/// Longest metadata key or tensor name accepted, in bytes (the spec's limit for keys).
pub const MAX_NAME_LEN: usize = 65535;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// A parsed GGUF file over its bytes (a read-only map or an owned buffer).
pub struct GgufFile {
    bytes: Bytes,
    header: read::Header,
}

/// One tensor's shape, type and location, as validated at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Relative to the start of the data section; a multiple of the file's alignment.
    pub offset: u64,
    pub num_bytes: usize,
}

impl TensorInfo {
    pub fn num_elements(&self) -> u64 {
        // Cannot overflow for infos from a file (checked at open); saturate for others.
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Product of `dims[1..]`: the number of rows of `row_len` elements.
    pub fn num_rows(&self) -> u64 {
        self.dims.iter().skip(1).fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// `dims[0]`: elements per row.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(0)
    }
}

/// Why a metadata value does not convert to what a getter asked for.
enum Mismatch {
    /// The value's type is not one the getter accepts.
    Type,
    /// The type is acceptable but the value does not fit.
    Range,
}

fn int_as<T: TryFrom<i128>>(value: &MetaValue) -> Result<T, Mismatch> {
    let int = value.as_int().ok_or(Mismatch::Type)?;
    T::try_from(int).map_err(|_| Mismatch::Range)
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io_error = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only. Like every mmap-based loader we accept that another
        // process truncating or rewriting the file while it is mapped is undefined behaviour;
        // model files are not modified in place while being served.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        GgufFile::parse(Bytes::from_mmap(Arc::new(map)))
    }

    /// Reads `path` into anonymous memory and parses it. On Linux the memory is advised for
    /// transparent huge pages: decode streams every weight once per token, and with 4 KiB
    /// pages of a file mapping a 100 MB model costs ~25k TLB misses per token (decode was
    /// ~15% faster this way on the CI-class machine). The price against [`GgufFile::open`]:
    /// the load copies the file, and the memory is not shared with other processes.
    pub fn open_resident(path: &Path) -> Result<GgufFile, GgufError> {
        let io_error = |source| GgufError::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let len = usize::try_from(len).map_err(|_| io_error(std::io::Error::other("file larger than the address space")))?;
        if len == 0 {
            return GgufFile::from_bytes(Vec::new()); // an empty file: the parser's error
        }
        let mut memory = memmap2::MmapMut::map_anon(len).map_err(io_error)?;
        #[cfg(target_os = "linux")]
        // Advice only: without transparent huge pages the memory works the same, in 4 KiB pages.
        let _ = memory.advise(memmap2::Advice::HugePage);
        std::io::Read::read_exact(&mut file, &mut memory).map_err(io_error)?;
        let map = memory.make_read_only().map_err(io_error)?;
        GgufFile::parse(Bytes::from_mmap(Arc::new(map)))
    }

    /// Parses an owned buffer (copied once into aligned storage; see [`Bytes::from_vec`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Bytes::from_vec(bytes))
    }

    fn parse(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let header = read::parse(&bytes)?;
        Ok(GgufFile { bytes, header })
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn alignment(&self) -> usize {
        self.header.alignment
    }

    /// Absolute offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// All of the file's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let &i = self.header.metadata_index.get(key)?;
        Some(&self.header.metadata[i].1)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get_as(key, "str", |v| v.as_str().ok_or(Mismatch::Type))
    }

    /// Any integer type with a non-negative value.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_as(key, "u64", int_as)
    }

    /// Any integer type whose value fits a u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_as(key, "u32", int_as)
    }

    /// `F32`, `F64` (rounded) or any integer type (converted).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get_as(key, "f32", |v| v.as_f32().ok_or(Mismatch::Type))
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get_as(key, "bool", |v| v.as_bool().ok_or(Mismatch::Type))
    }

    /// An array of strings (borrowed; one `Vec` allocation).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.get_array_as(key, "array of str", |v| v.as_str().ok_or(Mismatch::Type))
    }

    /// An array of numbers, each converted as by [`GgufFile::get_f32`].
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.get_array_as(key, "array of f32", |v| v.as_f32().ok_or(Mismatch::Type))
    }

    /// An array of any integer type whose every element fits an i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.get_array_as(key, "array of i32", int_as)
    }

    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'a MetaValue) -> Result<T, Mismatch>,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        convert(value).map(Some).map_err(|m| mismatch_error(m, key, expected, value, value))
    }

    fn get_array_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'a MetaValue) -> Result<T, Mismatch>,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let error = |m, item| mismatch_error(m, key, expected, value, item);
        let items = value.as_array().ok_or_else(|| error(Mismatch::Type, value))?;
        let converted = items.iter().map(|item| convert(item).map_err(|m| error(m, item)));
        converted.collect::<Result<Vec<T>, _>>().map(Some)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let &i = self.header.tensor_index.get(name)?;
        Some(&self.header.tensors[i])
    }

    /// The tensor's bytes, borrowed from the file.
    ///
    /// # Panics
    /// If `t` did not come from this file and its range lies outside it.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[self.tensor_range(t)]
    }

    /// The tensor's bytes as an owned view that keeps the file's bytes alive on its own.
    ///
    /// # Panics
    /// As [`GgufFile::tensor_data`].
    pub fn tensor_bytes(&self, t: &TensorInfo) -> TensorBytes {
        let range = self.tensor_range(t);
        self.bytes.slice(range).unwrap_or_else(|| panic!("tensor {} is not from this file", t.name))
    }

    fn tensor_range(&self, t: &TensorInfo) -> Range<usize> {
        let start = self.header.data_offset.checked_add(t.offset).and_then(|s| usize::try_from(s).ok());
        let range = start.and_then(|s| Some(s..s.checked_add(t.num_bytes)?));
        match range {
            Some(range) if range.end <= self.bytes.len() => range,
            _ => panic!("tensor {} is not from this file: its bytes lie outside it", t.name),
        }
    }
}

fn mismatch_error(m: Mismatch, key: &str, expected: &'static str, value: &MetaValue, item: &MetaValue) -> GgufError {
    let key = key.to_owned();
    match m {
        Mismatch::Type => GgufError::MetadataType { key, expected, found: value.detailed_type_name() },
        Mismatch::Range => GgufError::MetadataRange { key, expected, value: item.to_string() },
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version())
            .field("num_metadata", &self.metadata().len())
            .field("num_tensors", &self.tensors().len())
            .field("num_bytes", &self.bytes.len())
            .finish()
    }
}
