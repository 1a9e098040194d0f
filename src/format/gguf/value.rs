//! GGUF metadata values: the type table ([`ValueType`]), the decoded value ([`MetaValue`]),
//! lossless conversions between numeric types, and the short display form `ballast inspect`
//! prints.

use std::fmt::{self, Write};

/// A metadata value type with its GGUF id (`gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type for a GGUF id, or `None` for an id the format does not define.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        const BY_ID: [ValueType; 13] = [U8, I8, U16, I16, U32, I32, F32, Bool, Str, Array, U64, I64, F64];
        BY_ID.get(id as usize).copied()
    }

    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::Str => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::Str => "str",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// The name of an array of this element type, for error messages.
    pub fn array_name(self) -> &'static str {
        match self {
            ValueType::U8 => "array of u8",
            ValueType::I8 => "array of i8",
            ValueType::U16 => "array of u16",
            ValueType::I16 => "array of i16",
            ValueType::U32 => "array of u32",
            ValueType::I32 => "array of i32",
            ValueType::F32 => "array of f32",
            ValueType::Bool => "array of bool",
            ValueType::Str => "array of str",
            ValueType::Array => "array of array",
            ValueType::U64 => "array of u64",
            ValueType::I64 => "array of i64",
            ValueType::F64 => "array of f64",
        }
    }

    /// The fewest bytes one encoded value of this type can take: its size for fixed-size
    /// types, the length prefix for strings, element type + count for arrays. The reader
    /// bounds every count by `count * min_encoded_size <= remaining bytes` before allocating.
    pub fn min_encoded_size(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::Str => 8,
            ValueType::Array => 4 + 8,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded metadata value. Arrays read from a file are homogeneous (one element type per
/// array, though nested arrays may each have their own).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::Str(_) => ValueType::Str,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// `"u32"`, `"str"`, `"array"`, ...
    pub fn type_name(&self) -> &'static str {
        self.value_type().name()
    }

    /// `"array of str"` for arrays (element type of the first element; `"array"` when empty),
    /// the plain type name otherwise. Used in type-mismatch errors.
    pub fn detailed_type_name(&self) -> &'static str {
        match self {
            MetaValue::Array(items) => items.first().map_or("array", |v| v.value_type().array_name()),
            other => other.type_name(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Any integer type, widened losslessly (`i128` holds every `u64` and `i64`).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer type whose value fits in a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer type whose value fits in a `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_int().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer type whose value fits in an `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_int().and_then(|v| i32::try_from(v).ok())
    }

    /// Floats, and integers converted to the nearest `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    /// Floats and integers, rounded to the nearest `f32` (exact for `F32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }
}

/// Strings longer than this many characters are cut in the display form.
const DISPLAY_MAX_CHARS: usize = 64;
/// Arrays longer than this are abbreviated to their length, type and first few elements.
const DISPLAY_MAX_ITEMS: usize = 4;
/// Elements shown of an abbreviated array.
const DISPLAY_HEAD_ITEMS: usize = 3;

/// Short human form: scalars as themselves, strings quoted and cut after 64 characters, long
/// arrays as `[49152 × str: "<|endoftext|>", "<|im_start|>", "<|im_end|>", …]`.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::Str(s) => display_str(f, s),
            MetaValue::Array(items) => display_array(f, items),
        }
    }
}

fn display_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let cut = s.char_indices().nth(DISPLAY_MAX_CHARS).map(|(i, _)| i);
    f.write_char('"')?;
    for c in s[..cut.unwrap_or(s.len())].chars() {
        // Escapes as Rust does, except `'`, which needs none inside double quotes.
        match c {
            '\'' => f.write_char(c)?,
            _ => write!(f, "{}", c.escape_debug())?,
        }
    }
    f.write_str(if cut.is_some() { "…\"" } else { "\"" })
}

fn display_array(f: &mut fmt::Formatter<'_>, items: &[MetaValue]) -> fmt::Result {
    let abbreviated = items.len() > DISPLAY_MAX_ITEMS;
    let shown = if abbreviated { &items[..DISPLAY_HEAD_ITEMS] } else { items };
    f.write_str("[")?;
    if abbreviated {
        write!(f, "{} × {}: ", items.len(), items[0].type_name())?;
    }
    for (i, item) in shown.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str(if abbreviated { ", …]" } else { "]" })
}
