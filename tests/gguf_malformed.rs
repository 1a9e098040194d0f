//! Every kind of malformed GGUF file gives a typed error: never a panic, never a read out of
//! bounds. Files are built with `GgufWriter` and then corrupted by patching bytes, located by
//! searching for the (unique) key or tensor name that precedes them.

use ballast::format::gguf::{GgufError, GgufFile, GgufWriter, MetaValue};
use ballast::quant::GgmlType;
use ballast::testing::Rng;

fn s(v: &str) -> MetaValue {
    MetaValue::Str(v.to_owned())
}

fn base() -> GgufWriter {
    GgufWriter::new(3)
        .metadata("general.architecture", s("llama"))
        .metadata("test.flag", MetaValue::Bool(true))
        .metadata("test.count", MetaValue::U32(7))
        .metadata("test.list", MetaValue::Array(vec![s("ab"), s("cd")]))
        .metadata("test.nums", MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(2)]))
        .tensor("alpha", &[4], GgmlType::F32, vec![1; 16])
        .tensor("beta", &[32, 2], GgmlType::Q4_1, vec![2; 40])
}

fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes.to_vec())
}

/// Offset just past the first occurrence of `name` in `bytes`: where a key's value type or a
/// tensor's `n_dims` starts.
fn after(bytes: &[u8], name: &str) -> usize {
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes());
    at.unwrap_or_else(|| panic!("{name} not in file")) + name.len()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of a 1-dim tensor's offset field.
fn tensor_offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    after(bytes, name) + 4 + 8 * n_dims + 4
}

macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        let result = $result.map(|_| ());
        if let Err(e) = &result {
            assert!(!e.to_string().is_empty());
        }
        match result {
            Err($pattern) $(if $guard)? => {}
            other => panic!("expected {}, got {:?}", stringify!($pattern), other),
        }
    };
}

#[test]
fn base_file_is_valid() {
    let file = parse(&base().to_bytes()).unwrap();
    assert_eq!(file.tensors().len(), 2);
    assert_eq!(file.tensor_data(file.tensor("beta").unwrap()), &[2; 40][..]);
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = base().to_bytes();
    for len in 0..bytes.len() {
        let result = parse(&bytes[..len]);
        assert!(result.is_err(), "truncated to {len} bytes parsed");
    }
    assert_err!(parse(&bytes[..10]), GgufError::Truncated { offset: 8, needed: 8, available: 2, .. });
}

#[test]
fn bad_magic_and_versions() {
    let bytes = base().to_bytes();
    let mut bad = bytes.clone();
    bad[0] ^= 0x20;
    assert_err!(parse(&bad), GgufError::BadMagic { found: [0x67, b'G', b'U', b'F'] });
    for version in [0, 1, 4, u32::MAX] {
        let mut bad = bytes.clone();
        put_u32(&mut bad, 4, version);
        assert_err!(parse(&bad), GgufError::UnsupportedVersion { version: v } if v == version);
    }
    let mut bad = bytes.clone();
    put_u32(&mut bad, 4, 3u32.swap_bytes());
    assert_err!(parse(&bad), GgufError::BigEndian { version: 3 });
    // Version 2 has the same layout.
    let mut v2 = bytes;
    put_u32(&mut v2, 4, 2);
    assert_eq!(parse(&v2).unwrap().version(), 2);
}

#[test]
fn unknown_value_types() {
    let bytes = base().to_bytes();
    let mut bad = bytes.clone();
    put_u32(&mut bad, after(&bytes, "test.count"), 13);
    assert_err!(parse(&bad), GgufError::UnknownValueType { key, type_id: 13, .. } if key == "test.count");
    let mut bad = bytes.clone();
    put_u32(&mut bad, after(&bytes, "test.list") + 4, u32::MAX);
    assert_err!(parse(&bad), GgufError::UnknownValueType { type_id: u32::MAX, .. });
    // Even an empty array must name a real element type.
    let empty = GgufWriter::new(3).metadata("e", MetaValue::Array(vec![])).to_bytes();
    let mut bad = empty.clone();
    put_u32(&mut bad, after(&empty, "e") + 4, 42);
    assert_err!(parse(&bad), GgufError::UnknownValueType { type_id: 42, .. });
}

#[test]
fn unknown_tensor_types() {
    let bytes = base().to_bytes();
    for type_id in [4, 16, 23, 39, 1000, u32::MAX] {
        let mut bad = bytes.clone();
        put_u32(&mut bad, after(&bytes, "alpha") + 4 + 8, type_id);
        assert_err!(parse(&bad), GgufError::UnknownTensorType { name, type_id: t } if name == "alpha" && t == type_id);
    }
}

#[test]
fn absurd_counts_and_lengths() {
    let bytes = base().to_bytes();
    let arch_len = after(&bytes, "general.architecture") - "general.architecture".len() - 8;
    let fields = [
        (8, "tensor count"),
        (16, "metadata count"),
        (arch_len, "metadata key"),
        (after(&bytes, "general.architecture") + 4, "string value"),
        (after(&bytes, "test.list") + 4 + 4, "array count"),
        (after(&bytes, "alpha") - "alpha".len() - 8, "tensor name"),
    ];
    for (at, field) in fields {
        for count in [u64::MAX, u64::MAX / 2 + 1, 1 << 40, bytes.len() as u64] {
            let mut bad = bytes.clone();
            put_u64(&mut bad, at, count);
            assert_err!(parse(&bad), GgufError::CountTooLarge { what, count: c, .. } if what == field && c == count);
        }
    }
    let mut one_more = bytes.clone();
    put_u64(&mut one_more, 8, 3);
    assert!(parse(&one_more).is_err());
}

#[test]
fn bad_dimension_counts_and_shapes() {
    let bytes = base().to_bytes();
    for n_dims in [0, 5, u32::MAX] {
        let mut bad = bytes.clone();
        put_u32(&mut bad, after(&bytes, "alpha"), n_dims);
        assert_err!(parse(&bad), GgufError::BadDimCount { name, n_dims: n } if name == "alpha" && n == n_dims);
    }
    let shapes: [(&[u64], GgmlType); 6] = [
        (&[1 << 40, 1 << 40], GgmlType::F32),
        (&[1 << 32, 1 << 32, 1 << 32], GgmlType::F16),
        (&[4, 0], GgmlType::F32),
        (&[0], GgmlType::F32),
        (&[u64::MAX], GgmlType::F32),
        (&[33, 2], GgmlType::Q4_1),
    ];
    for (dims, dtype) in shapes {
        let file = GgufWriter::new(3).tensor("t", dims, dtype, vec![0; 64]).to_bytes();
        assert_err!(parse(&file), GgufError::BadShape { name, dims: d, .. } if name == "t" && d == dims);
    }
    // i64::MAX elements of F32 overflow the byte size even though the count fits.
    let file = GgufWriter::new(3).tensor("t", &[i64::MAX as u64], GgmlType::F32, vec![0; 4]).to_bytes();
    assert_err!(parse(&file), GgufError::BadShape { .. });
}

#[test]
fn tensor_offsets_misaligned_or_out_of_bounds() {
    let bytes = base().to_bytes();
    let field = tensor_offset_field(&bytes, "beta", 2);
    for offset in [1, 33, u64::MAX] {
        let mut bad = bytes.clone();
        put_u64(&mut bad, field, offset);
        assert_err!(
            parse(&bad),
            GgufError::MisalignedTensor { name, offset: o, alignment: 32 } if name == "beta" && o == offset
        );
    }
    for offset in [64, 1 << 40, !31] {
        let mut bad = bytes.clone();
        put_u64(&mut bad, field, offset);
        assert_err!(
            parse(&bad),
            GgufError::TensorOutOfBounds { name, offset: o, num_bytes: 40, .. } if name == "beta" && o == offset
        );
    }
    // A shape that needs more bytes than the file has.
    let short = GgufWriter::new(3).tensor("t", &[8], GgmlType::F32, vec![0; 16]).to_bytes();
    assert_err!(parse(&short), GgufError::TensorOutOfBounds { num_bytes: 32, data_len: 16, .. });
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let dup_key = base().metadata("test.count", MetaValue::U8(1)).to_bytes();
    assert_err!(parse(&dup_key), GgufError::DuplicateKey { key, .. } if key == "test.count");
    let dup_tensor = base().tensor("alpha", &[4], GgmlType::F32, vec![0; 16]).to_bytes();
    assert_err!(parse(&dup_tensor), GgufError::DuplicateTensor { name, .. } if name == "alpha");
}

#[test]
fn bad_alignment() {
    let with = |v: MetaValue| base().metadata("general.alignment", v).to_bytes();
    for v in [MetaValue::U32(0), MetaValue::U32(3), MetaValue::U32(48), MetaValue::I32(-32), MetaValue::U64(1 << 32)] {
        assert_err!(parse(&with(v.clone())), GgufError::InvalidAlignment { .. });
    }
    assert_err!(
        parse(&with(s("32"))),
        GgufError::MetadataType { key, expected: "u32", found: "str" } if key == "general.alignment"
    );
    // Any integer type that holds a valid alignment is accepted.
    assert_eq!(parse(&with(MetaValue::U64(64))).unwrap().alignment(), 64);
    // The largest u32 power of two (patched in, so the writer does not pad to 2 GiB): the
    // padding runs past the end of this small file.
    let one_tensor = GgufWriter::new(3).metadata("general.alignment", MetaValue::U32(32));
    let mut huge = one_tensor.tensor("t", &[1], GgmlType::F32, vec![0; 4]).to_bytes();
    let at = after(&huge, "general.alignment") + 4;
    put_u32(&mut huge, at, 1 << 31);
    assert_err!(parse(&huge), GgufError::TensorOutOfBounds { data_offset, data_len: 0, .. } if data_offset == 1 << 31);
}

#[test]
fn invalid_bool_and_utf8() {
    let bytes = base().to_bytes();
    let mut bad = bytes.clone();
    bad[after(&bytes, "test.flag") + 4] = 2;
    assert_err!(parse(&bad), GgufError::InvalidBool { key, value: 2, .. } if key == "test.flag");
    let cases = [("general.architecture", 0, "metadata key"), ("llama", 0, "string value"), ("cd", 1, "string value")];
    for (text, index, what) in cases {
        let mut bad = bytes.clone();
        let at = after(&bytes, text) - text.len() + index;
        bad[at] = 0xFF;
        assert_err!(parse(&bad), GgufError::InvalidUtf8 { what: w, offset } if w == what && offset == at as u64);
    }
    let mut bad = bytes.clone();
    bad[after(&bytes, "alpha") - 1] = 0xC3; // a lead byte without its continuation
    assert_err!(parse(&bad), GgufError::InvalidUtf8 { what: "tensor name", .. });
}

#[test]
fn long_names_are_rejected() {
    let long = "k".repeat(65536);
    let file = GgufWriter::new(3).metadata(long.as_str(), MetaValue::U8(0)).to_bytes();
    assert_err!(parse(&file), GgufError::StringTooLong { what: "metadata key", len: 65536, .. });
    let file = GgufWriter::new(3).tensor(long, &[1], GgmlType::F32, vec![0; 4]).to_bytes();
    assert_err!(parse(&file), GgufError::StringTooLong { what: "tensor name", .. });
}

fn nested(depth: usize) -> MetaValue {
    (0..depth).fold(MetaValue::U8(1), |inner, _| MetaValue::Array(vec![inner]))
}

#[test]
fn array_nesting_is_limited() {
    let ok = GgufWriter::new(3).metadata("n", nested(16)).to_bytes();
    assert_eq!(parse(&ok).unwrap().get("n"), Some(&nested(16)));
    let deep = GgufWriter::new(3).metadata("n", nested(17)).to_bytes();
    assert_err!(parse(&deep), GgufError::NestingTooDeep { key, max: 16, .. } if key == "n");
    // A million levels, written by hand: must fail without overflowing the stack.
    let mut raw = GgufWriter::new(3).metadata("n", MetaValue::Array(vec![])).to_bytes();
    raw.truncate(raw.len() - 12);
    for _ in 0..1_000_000 {
        raw.extend_from_slice(&9u32.to_le_bytes());
        raw.extend_from_slice(&1u64.to_le_bytes());
    }
    assert_err!(parse(&raw), GgufError::NestingTooDeep { .. });
}

#[test]
fn open_reports_io_errors_and_maps_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    assert_err!(GgufFile::open(&missing), GgufError::Io { path, .. } if path == missing);
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_err!(GgufFile::open(&empty), GgufError::Truncated { offset: 0, what: "magic", .. });
    let valid = dir.path().join("valid.gguf");
    std::fs::write(&valid, base().to_bytes()).unwrap();
    let file = GgufFile::open(&valid).unwrap();
    let view = file.tensor_bytes(file.tensor("alpha").unwrap());
    drop(file);
    assert_eq!(&*view, &[1; 16][..]);
}

/// Random byte edits, field-sized extreme values and truncations of a valid file: every
/// result is either an error or a file whose every accessor works.
#[test]
fn random_corruptions_never_panic() {
    let nested_meta = MetaValue::Array(vec![nested(3), nested(2)]);
    let bytes = base().metadata("test.nested", nested_meta).to_bytes();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let extremes = [0, 1, 2, 5, 9, 13, 31, 32, 255, u32::MAX as u64, i64::MAX as u64, u64::MAX];
    let mut num_ok = 0;
    for _ in 0..20_000 {
        let mut bad = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            if rng.below(2) == 0 {
                let at = rng.below(bad.len());
                bad[at] = rng.next_u64() as u8;
            } else {
                let at = rng.below(bad.len() - 8);
                put_u64(&mut bad, at, extremes[rng.below(extremes.len())]);
            }
        }
        if rng.below(4) == 0 {
            bad.truncate(rng.below(bad.len()));
        }
        if let Ok(file) = parse(&bad) {
            num_ok += 1;
            for t in file.tensors() {
                assert_eq!(file.tensor_data(t).len(), t.num_bytes);
            }
            for (key, value) in file.metadata() {
                let _ = (value.to_string(), file.get_u32(key), file.get_str_array(key));
            }
        }
    }
    // Some edits (tensor data, string contents) leave a valid file: the test reaches both paths.
    assert!(num_ok > 0);
}
