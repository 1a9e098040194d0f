//! The parser: a bounded cursor over the file and the readers for each section (header,
//! metadata, tensor infos), ending with the data-section bounds check.
//!
//! Every read goes through [`Cursor`], which returns `Truncated` instead of reading past the
//! end, and every length or count is checked against the bytes left *before* anything is
//! allocated for it (`count * min_encoded_size <= remaining`), so a hostile header can make
//! the parser allocate at most a small multiple of the file's size.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::value::{MetaValue, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufError, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_NAME_LEN, TensorInfo};
use crate::quant::GgmlType;

const MAGIC: [u8; 4] = *b"GGUF";
/// Smallest possible key/value pair: empty key (u64 length), value type, one-byte value.
const MIN_KV_SIZE: usize = 8 + 4 + 1;
/// Smallest possible tensor info: empty name, `n_dims`, one dim, type, offset.
const MIN_TENSOR_INFO_SIZE: usize = 8 + 4 + 8 + 4 + 8;

/// Everything before the data section, validated.
pub(super) struct Header {
    pub version: u32,
    pub alignment: usize,
    /// Absolute offset of the data section (may equal or exceed the file length only when
    /// there are no tensors).
    pub data_offset: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub metadata_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

/// Parses and validates a whole GGUF file held in `buf`.
pub(super) fn parse(buf: &[u8]) -> Result<Header, GgufError> {
    let mut cur = Cursor { buf, pos: 0 };
    let version = read_preamble(&mut cur)?;
    let num_tensors = cur.count("tensor count", MIN_TENSOR_INFO_SIZE)?;
    let num_kv = cur.count("metadata count", MIN_KV_SIZE)?;
    let (metadata, metadata_index) = read_metadata(&mut cur, num_kv)?;
    let alignment = alignment(&metadata, &metadata_index)?;
    let (tensors, tensor_index) = read_tensor_infos(&mut cur, num_tensors, alignment)?;
    let data_offset =
        (cur.pos as u64).checked_next_multiple_of(alignment as u64).ok_or(GgufError::InvalidAlignment { value: alignment.to_string() })?;
    check_tensor_bounds(&tensors, data_offset, buf.len() as u64)?;
    Ok(Header { version, alignment, data_offset, metadata, metadata_index, tensors, tensor_index })
}

/// A read position in the file that never moves past its end. Invariant: `pos <= buf.len()`.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, needed: u64, what: &'static str) -> GgufError {
        GgufError::Truncated { offset: self.pos as u64, needed, available: self.remaining() as u64, what }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let rest = &self.buf[self.pos..];
        let bytes = rest.get(..n).ok_or_else(|| self.truncated(n as u64, what))?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let rest = &self.buf[self.pos..];
        let (head, _) = rest.split_first_chunk::<N>().ok_or_else(|| self.truncated(N as u64, what))?;
        self.pos += N;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a u64 count of items each at least `min_size` bytes long, and checks that many
    /// could fit in the rest of the file, so callers may allocate `count` slots.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, GgufError> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let needed = count.checked_mul(min_size as u64);
        match needed {
            Some(needed) if needed <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(GgufError::CountTooLarge { what, count, offset, available: self.remaining() as u64 }),
        }
    }

    /// A `gguf_string`: u64 byte length, then that many bytes of UTF-8.
    fn string(&mut self, what: &'static str, max_len: usize) -> Result<String, GgufError> {
        let offset = self.pos as u64;
        let len = self.count(what, 1)?;
        if len > max_len {
            return Err(GgufError::StringTooLong { what, len: len as u64, max: max_len as u64, offset });
        }
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(GgufError::InvalidUtf8 { what, offset: start + e.valid_up_to() as u64 }),
        }
    }
}

/// Magic and version. Version 1 used 32-bit counts and lengths, so it cannot be read with the
/// v2/v3 layout; v3 differs from v2 only by allowing big-endian files, which we reject.
fn read_preamble(cur: &mut Cursor) -> Result<u32, GgufError> {
    let magic = cur.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        v if matches!(v.swap_bytes(), 2 | 3) => Err(GgufError::BigEndian { version: v.swap_bytes() }),
        v => Err(GgufError::UnsupportedVersion { version: v }),
    }
}

type Metadata = (Vec<(String, MetaValue)>, HashMap<String, usize>);

fn read_metadata(cur: &mut Cursor, num_kv: usize) -> Result<Metadata, GgufError> {
    let mut metadata = Vec::with_capacity(num_kv);
    let mut index = HashMap::with_capacity(num_kv);
    for _ in 0..num_kv {
        let key_offset = cur.pos as u64;
        let key = cur.string("metadata key", MAX_NAME_LEN)?;
        match index.entry(key) {
            Entry::Occupied(e) => {
                return Err(GgufError::DuplicateKey { key: e.key().clone(), offset: key_offset });
            }
            Entry::Vacant(e) => {
                let type_offset = cur.pos as u64;
                let type_id = cur.u32("metadata value type")?;
                let ty = value_type(type_id, e.key(), type_offset)?;
                let value = read_value(cur, ty, e.key(), 0)?;
                metadata.push((e.key().clone(), value));
                e.insert(metadata.len() - 1);
            }
        }
    }
    Ok((metadata, index))
}

fn value_type(type_id: u32, key: &str, offset: u64) -> Result<ValueType, GgufError> {
    ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType { key: key.to_owned(), type_id, offset })
}

/// One value of type `ty`; `depth` is the number of arrays it is nested in.
fn read_value(cur: &mut Cursor, ty: ValueType, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
    Ok(match ty {
        ValueType::U8 => MetaValue::U8(cur.u8("u8 value")?),
        ValueType::I8 => MetaValue::I8(i8::from_le_bytes(cur.array("i8 value")?)),
        ValueType::U16 => MetaValue::U16(u16::from_le_bytes(cur.array("u16 value")?)),
        ValueType::I16 => MetaValue::I16(i16::from_le_bytes(cur.array("i16 value")?)),
        ValueType::U32 => MetaValue::U32(cur.u32("u32 value")?),
        ValueType::I32 => MetaValue::I32(i32::from_le_bytes(cur.array("i32 value")?)),
        ValueType::F32 => MetaValue::F32(f32::from_le_bytes(cur.array("f32 value")?)),
        ValueType::U64 => MetaValue::U64(cur.u64("u64 value")?),
        ValueType::I64 => MetaValue::I64(i64::from_le_bytes(cur.array("i64 value")?)),
        ValueType::F64 => MetaValue::F64(f64::from_le_bytes(cur.array("f64 value")?)),
        ValueType::Bool => {
            let offset = cur.pos as u64;
            match cur.u8("bool value")? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                value => return Err(GgufError::InvalidBool { key: key.to_owned(), value, offset }),
            }
        }
        ValueType::Str => MetaValue::Str(cur.string("string value", usize::MAX)?),
        ValueType::Array => MetaValue::Array(read_array(cur, key, depth + 1)?),
    })
}

/// An array at nesting `depth` (1 for a top-level array): element type, count, elements.
fn read_array(cur: &mut Cursor, key: &str, depth: usize) -> Result<Vec<MetaValue>, GgufError> {
    let offset = cur.pos as u64;
    // Bounded so a file of nested empty arrays cannot overflow the stack.
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep { key: key.to_owned(), max: MAX_ARRAY_DEPTH, offset });
    }
    let elem = value_type(cur.u32("array element type")?, key, offset)?;
    let count = cur.count("array count", elem.min_encoded_size())?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(read_value(cur, elem, key, depth)?);
    }
    Ok(items)
}

/// `general.alignment`: an integer that fits a u32 and is a nonzero power of two.
fn alignment(metadata: &[(String, MetaValue)], index: &HashMap<String, usize>) -> Result<usize, GgufError> {
    let Some(&i) = index.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let value = &metadata[i].1;
    if value.as_int().is_none() {
        let found = value.detailed_type_name();
        return Err(GgufError::MetadataType { key: ALIGNMENT_KEY.to_owned(), expected: "u32", found });
    }
    match value.as_u32() {
        Some(a) if a.is_power_of_two() => Ok(a as usize),
        _ => Err(GgufError::InvalidAlignment { value: value.to_string() }),
    }
}

fn read_tensor_infos(
    cur: &mut Cursor,
    num_tensors: usize,
    alignment: usize,
) -> Result<(Vec<TensorInfo>, HashMap<String, usize>), GgufError> {
    // Checked again: the metadata has used up some of the bytes the header count was checked
    // against, and this is where the allocation happens.
    if num_tensors.saturating_mul(MIN_TENSOR_INFO_SIZE) > cur.remaining() {
        let available = cur.remaining() as u64;
        let (what, count, offset) = ("tensor count", num_tensors as u64, cur.pos as u64);
        return Err(GgufError::CountTooLarge { what, count, offset, available });
    }
    let mut tensors = Vec::with_capacity(num_tensors);
    let mut index = HashMap::with_capacity(num_tensors);
    for _ in 0..num_tensors {
        let info_offset = cur.pos as u64;
        let info = read_tensor_info(cur, alignment)?;
        match index.entry(info.name.clone()) {
            Entry::Occupied(_) => {
                return Err(GgufError::DuplicateTensor { name: info.name, offset: info_offset });
            }
            Entry::Vacant(e) => e.insert(tensors.len()),
        };
        tensors.push(info);
    }
    Ok((tensors, index))
}

fn read_tensor_info(cur: &mut Cursor, alignment: usize) -> Result<TensorInfo, GgufError> {
    let name = cur.string("tensor name", MAX_NAME_LEN)?;
    let n_dims = cur.u32("tensor dimension count")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadDimCount { name, n_dims });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64("tensor dimension")?);
    }
    let type_id = cur.u32("tensor type")?;
    let offset = cur.u64("tensor offset")?;
    let Some(dtype) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType { name, type_id });
    };
    let num_bytes = match tensor_num_bytes(&dims, dtype) {
        Ok(n) => n,
        Err(problem) => return Err(GgufError::BadShape { name, dims, dtype, problem }),
    };
    if offset % alignment as u64 != 0 {
        return Err(GgufError::MisalignedTensor { name, offset, alignment });
    }
    // Fits: `check_tensor_bounds` later requires `num_bytes <= file length`, a usize.
    let num_bytes = usize::try_from(num_bytes).unwrap_or(usize::MAX);
    Ok(TensorInfo { name, dims, dtype, offset, num_bytes })
}

/// Bytes of a tensor of shape `dims` (innermost first), or what is wrong with the shape.
fn tensor_num_bytes(dims: &[u64], dtype: GgmlType) -> Result<u64, &'static str> {
    // ggml stores dims as int64_t; a zero dim is an empty tensor no model uses.
    if dims.iter().any(|&d| d == 0 || d > i64::MAX as u64) {
        return Err("a dimension is zero or larger than i64::MAX");
    }
    if !dims[0].is_multiple_of(dtype.block_size() as u64) {
        return Err("the row length is not a multiple of the type's block size");
    }
    // The element count bounds `TensorInfo::num_elements`, so it must not overflow either.
    let overflow = "the element count or byte size overflows u64";
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or(overflow)?;
    let row_bytes = dtype.row_bytes(dims[0]).ok_or(overflow)?;
    dims[1..].iter().try_fold(row_bytes, |acc, &d| acc.checked_mul(d)).ok_or(overflow)
}

fn check_tensor_bounds(tensors: &[TensorInfo], data_offset: u64, file_len: u64) -> Result<(), GgufError> {
    let data_len = file_len.saturating_sub(data_offset);
    for t in tensors {
        let end = t.offset.checked_add(t.num_bytes as u64);
        if end.is_none_or(|end| end > data_len) {
            let (name, offset, num_bytes) = (t.name.clone(), t.offset, t.num_bytes as u64);
            return Err(GgufError::TensorOutOfBounds { name, offset, num_bytes, data_offset, data_len });
        }
    }
    Ok(())
}
