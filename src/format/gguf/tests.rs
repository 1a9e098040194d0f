//! Round trips through the writer and reader, typed getters, display, and tensor views.
//! Malformed files are tested in `tests/gguf_malformed.rs`.

use super::*;

fn s(v: &str) -> MetaValue {
    MetaValue::Str(v.to_owned())
}

fn every_scalar() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.f32", MetaValue::F32(1e-5)),
        ("t.bool_true", MetaValue::Bool(true)),
        ("t.bool_false", MetaValue::Bool(false)),
        ("t.str", s("héllo ✓")),
        ("t.empty_str", s("")),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f64", MetaValue::F64(-2.5e300)),
    ]
}

fn every_array() -> Vec<(&'static str, MetaValue)> {
    let arr = MetaValue::Array;
    vec![
        ("a.empty", arr(vec![])),
        ("a.u8", arr(vec![MetaValue::U8(1), MetaValue::U8(2)])),
        ("a.i32", arr(vec![MetaValue::I32(-1), MetaValue::I32(7)])),
        ("a.f32", arr(vec![MetaValue::F32(0.5), MetaValue::F32(-0.25)])),
        ("a.bool", arr(vec![MetaValue::Bool(true), MetaValue::Bool(false)])),
        ("a.str", arr(vec![s("a"), s(""), s("ccc")])),
        ("a.u64", arr(vec![MetaValue::U64(9)])),
        ("a.f64", arr(vec![MetaValue::F64(1.0)])),
        // Nested arrays each carry their own element type, including empty ones.
        ("a.nested", arr(vec![arr(vec![MetaValue::U16(3)]), arr(vec![s("x")]), arr(vec![])])),
        ("a.deep", arr(vec![arr(vec![arr(vec![arr(vec![MetaValue::I8(-1)])])])])),
        ("a.empty_of_empty", arr(vec![arr(vec![]), arr(vec![])])),
    ]
}

fn writer_with(version: u32, pairs: &[(&'static str, MetaValue)]) -> GgufWriter {
    pairs.iter().fold(GgufWriter::new(version), |w, (k, v)| w.metadata(*k, v.clone()))
}

#[test]
fn every_value_type_round_trips_in_v2_and_v3() {
    let pairs: Vec<_> = every_scalar().into_iter().chain(every_array()).collect();
    for version in [2, 3] {
        let bytes = writer_with(version, &pairs).tensor("w", &[2], GgmlType::F32, vec![0; 8]).to_bytes();
        let file = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.alignment(), DEFAULT_ALIGNMENT);
        let expected: Vec<(String, MetaValue)> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(file.metadata(), &expected[..]);
        for (k, v) in &pairs {
            assert_eq!(file.get(k), Some(v), "{k}");
        }
        assert_eq!(file.get("missing"), None);
    }
}

#[test]
fn file_without_tensors_or_metadata() {
    let file = GgufFile::from_bytes(GgufWriter::new(3).to_bytes()).unwrap();
    assert!(file.metadata().is_empty() && file.tensors().is_empty());
    // Exactly the 24-byte header: the data section would start past the end, which is fine
    // with nothing in it.
    assert_eq!(file.bytes().len(), 24);
}

#[test]
fn tensors_are_aligned_and_viewed_zero_copy() {
    let q4_1 = GgmlType::Q4_1;
    let q_bytes: Vec<u8> = (0..2 * 20).map(|i| i as u8).collect();
    let f_bytes: Vec<u8> = (0..12u8).collect();
    let file = GgufFile::from_bytes(
        GgufWriter::new(3)
            .metadata("general.alignment", MetaValue::U32(64))
            .tensor("f", &[3], GgmlType::F32, f_bytes.clone())
            .tensor("q", &[32, 2], q4_1, q_bytes.clone())
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    let q = file.tensor("q").unwrap();
    assert_eq!((q.dtype, q.offset, q.num_bytes), (q4_1, 64, 40));
    assert_eq!((q.row_len(), q.num_rows(), q.num_elements()), (32, 2, 64));
    assert_eq!(file.tensor_data(q), &q_bytes[..]);
    assert_eq!(file.tensor_data(file.tensor("f").unwrap()), &f_bytes[..]);
    assert_eq!(file.tensors().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["f", "q"]);
    assert!(file.tensor("nope").is_none());
    // Tensor data starts aligned in memory as well as in the file.
    assert_eq!(file.tensor_data(q).as_ptr() as usize % 64, 0);
}

#[test]
fn tensor_bytes_outlive_the_file() {
    let data: Vec<u8> = (0..34).collect();
    let file = GgufFile::from_bytes(GgufWriter::new(3).tensor("e", &[32], GgmlType::Q8_0, data.clone()).to_bytes());
    let file = file.unwrap();
    let view = file.tensor_bytes(&file.tensors()[0]);
    let copy = view.clone();
    drop(file);
    assert_eq!(&*view, &data[..]);
    assert_eq!(&*copy, &data[..]);
}

#[test]
fn activation_side_types_are_valid_tensor_types() {
    let file = GgufFile::from_bytes(
        GgufWriter::new(3)
            .tensor("a", &[32], GgmlType::Q8_1, vec![0; 36])
            .tensor("b", &[256, 2], GgmlType::Q8K, vec![0; 2 * 292])
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(file.tensor("b").unwrap().num_bytes, 584);
}

#[test]
fn every_supported_ggml_type_round_trips() {
    for dtype in GgmlType::ALL {
        let row = dtype.block_size() as u64;
        let num_bytes = dtype.type_size() * 3;
        let bytes = GgufWriter::new(3).tensor("t", &[row, 1, 3, 1], dtype, vec![7; num_bytes]).to_bytes();
        let file = GgufFile::from_bytes(bytes).unwrap();
        let t = &file.tensors()[0];
        assert_eq!((t.dtype, t.num_bytes, t.dims.as_slice()), (dtype, num_bytes, &[row, 1, 3, 1][..]));
    }
}

fn getter_file() -> GgufFile {
    let arr = MetaValue::Array;
    let bytes = writer_with(
        3,
        &[
            ("u8", MetaValue::U8(7)),
            ("neg", MetaValue::I64(-3)),
            ("big", MetaValue::U64(1 << 40)),
            ("f64", MetaValue::F64(0.5)),
            ("name", s("llama")),
            ("flag", MetaValue::Bool(true)),
            ("tokens", arr(vec![s("a"), s("b")])),
            ("types", arr(vec![MetaValue::U8(1), MetaValue::U8(3)])),
            ("wide", arr(vec![MetaValue::I64(1), MetaValue::I64(1 << 33)])),
            ("scores", arr(vec![MetaValue::F32(-1.5), MetaValue::F32(2.0)])),
            ("int_scores", arr(vec![MetaValue::I32(-3), MetaValue::I32(2)])),
        ],
    )
    .to_bytes();
    GgufFile::from_bytes(bytes).unwrap()
}

#[test]
fn typed_getters_convert_within_range() {
    let f = getter_file();
    assert_eq!(f.get_u32("u8").unwrap(), Some(7));
    assert_eq!(f.get_u64("u8").unwrap(), Some(7));
    assert_eq!(f.get_u64("big").unwrap(), Some(1 << 40));
    assert_eq!(f.get_f32("u8").unwrap(), Some(7.0));
    assert_eq!(f.get_f32("f64").unwrap(), Some(0.5));
    assert_eq!(f.get_str("name").unwrap(), Some("llama"));
    assert_eq!(f.get_bool("flag").unwrap(), Some(true));
    assert_eq!(f.get_str_array("tokens").unwrap(), Some(vec!["a", "b"]));
    assert_eq!(f.get_i32_array("types").unwrap(), Some(vec![1, 3]));
    assert_eq!(f.get_f32_array("scores").unwrap(), Some(vec![-1.5, 2.0]));
    assert_eq!(f.get_f32_array("int_scores").unwrap(), Some(vec![-3.0, 2.0]));
    for absent in [f.get_u32("x").unwrap().is_none(), f.get_str_array("x").unwrap().is_none()] {
        assert!(absent);
    }
}

#[test]
fn typed_getters_report_wrong_types_and_ranges() {
    let f = getter_file();
    let type_error = |r: Result<(), GgufError>| match r {
        Err(GgufError::MetadataType { key, expected, found }) => format!("{key}:{expected}:{found}"),
        other => panic!("expected a type error, got {other:?}"),
    };
    assert_eq!(type_error(f.get_u32("name").map(drop)), "name:u32:str");
    assert_eq!(type_error(f.get_str("u8").map(drop)), "u8:str:u8");
    assert_eq!(type_error(f.get_bool("u8").map(drop)), "u8:bool:u8");
    assert_eq!(type_error(f.get_f32("tokens").map(drop)), "tokens:f32:array of str");
    assert_eq!(type_error(f.get_str_array("name").map(drop)), "name:array of str:str");
    assert_eq!(type_error(f.get_i32_array("tokens").map(drop)), "tokens:array of i32:array of str");
    assert_eq!(type_error(f.get_str_array("types").map(drop)), "types:array of str:array of u8");
    let range_error = |r: Result<(), GgufError>| match r {
        Err(GgufError::MetadataRange { key, expected, value }) => format!("{key}:{expected}:{value}"),
        other => panic!("expected a range error, got {other:?}"),
    };
    assert_eq!(range_error(f.get_u64("neg").map(drop)), "neg:u64:-3");
    assert_eq!(range_error(f.get_u32("big").map(drop)), "big:u32:1099511627776");
    assert_eq!(range_error(f.get_i32_array("wide").map(drop)), "wide:array of i32:8589934592");
}

#[test]
fn display_is_short() {
    let tokens: Vec<MetaValue> = (0..49152).map(|i| s(&format!("t{i}"))).collect();
    assert_eq!(MetaValue::Array(tokens).to_string(), r#"[49152 × str: "t0", "t1", "t2", …]"#);
    let ints = MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-2)]);
    assert_eq!(ints.to_string(), "[1, -2]");
    assert_eq!(MetaValue::Array(vec![]).to_string(), "[]");
    assert_eq!(s("a\"b\n'").to_string(), r#""a\"b\n'""#);
    let long = s(&"é".repeat(100)).to_string();
    assert_eq!(long, format!("\"{}…\"", "é".repeat(64)));
    assert_eq!(MetaValue::F32(0.5).to_string(), "0.5");
    assert_eq!(MetaValue::Bool(false).to_string(), "false");
    let nested = MetaValue::Array(vec![ints.clone(); 5]);
    assert_eq!(nested.to_string(), "[5 × array: [1, -2], [1, -2], [1, -2], …]");
}

#[test]
fn value_type_table_is_consistent() {
    for id in 0..13 {
        let ty = ValueType::from_id(id).unwrap();
        assert_eq!(ty.id(), id);
    }
    assert_eq!(ValueType::from_id(13), None);
    assert_eq!(ValueType::from_id(u32::MAX), None);
    for (_, v) in every_scalar().into_iter().chain(every_array()) {
        assert_eq!(v.type_name(), v.value_type().name());
    }
}

#[test]
#[should_panic(expected = "array elements must all have one type")]
fn writer_rejects_mixed_arrays() {
    let _ = GgufWriter::new(3).metadata("mixed", MetaValue::Array(vec![MetaValue::U8(1), s("x")]));
}

#[test]
fn writer_pads_to_its_alignment_key() {
    let w = GgufWriter::new(3).metadata("general.alignment", MetaValue::U32(128));
    assert_eq!(w.alignment(), 128);
    let file = GgufFile::from_bytes(w.tensor("t", &[1], GgmlType::F32, vec![0; 4]).to_bytes()).unwrap();
    assert_eq!(file.data_offset() % 128, 0);
    // An invalid setting falls back to the default padding (and the reader rejects the file).
    assert_eq!(GgufWriter::new(3).metadata("general.alignment", MetaValue::U32(3)).alignment(), 32);
}
