use super::*;

#[test]
fn builtin_manifest_parses_and_pins_every_part() {
    let m = Manifest::builtin();
    let d = m.default_model();
    assert_eq!(d.file, "SmolLM2-135M-Instruct.Q4_1.gguf");
    for model in &m.models {
        assert_eq!(model.sha256.len(), 64, "{}", model.name);
        assert!(!model.parts.is_empty(), "{}", model.name);
        for part in &model.parts {
            assert_eq!(part.wheel_sha256.len(), 64, "{} {}", model.name, part.requirement);
            assert!(part.wheel_sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(part.requirement.contains("=="), "{}", part.requirement);
        }
        assert_eq!(m.models.iter().filter(|o| o.name == model.name).count(), 1, "duplicate {}", model.name);
    }
    for name in ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"] {
        assert!(m.get(name).is_ok(), "{name}");
    }
    assert_eq!(m.get("qwen2.5-coder-1.5b").unwrap().parts.len(), 22);
    let err = m.get("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("qwen2.5-coder-0.5b"), "{err}");
}

#[test]
fn verify_reports_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"abc").unwrap();
    let mut model = Manifest::builtin().default_model().clone();
    model.size = 3;
    let err = verify(&model, &path).unwrap_err();
    assert!(matches!(err, FetchError::Verify { what: "sha256", .. }), "{err}");
    model.sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into();
    verify(&model, &path).unwrap();
}

#[test]
fn resolve_takes_paths_as_they_are_and_names_what_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(resolve(Some(dir.path())).unwrap(), dir.path());
    let err = resolve(Some(Path::new("no-such-model"))).unwrap_err().to_string();
    assert!(err.contains("no-such-model") && err.contains("smollm2-135m-instruct-q4_1"), "{err}");
    let err = resolve(Some(Path::new("models/missing.gguf"))).unwrap_err().to_string();
    assert!(err.contains("No such file") && err.contains("models/missing.gguf"), "{err}");
}
