//! The Kubernetes manifests in deploy/k8s/ pass offline validation against the real schemas
//! (scripts/validate-k8s: Kubernetes 1.32's, and the CRDs' kept in deploy/k8s/crds/), fit
//! ballast (its flags, its configuration, its model names), and the validator is not
//! vacuous: each kind of mistake makes it fail.

mod common;

use common::python;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs the validator: (success, output).
fn validate(files: &[PathBuf], extract: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("scripts/validate-k8s"));
    if let Some(e) = extract {
        cmd.arg("--extract-config").arg(e);
    }
    let out = cmd.args(files).output().expect("run scripts/validate-k8s");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_manifests_validate_and_fit_ballast() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ballast.toml");
    let (ok, out) = validate(&manifests(), Some(&config));
    assert!(ok, "{out}");
    for kind in [
        "Deployment ballast",
        "Service ballast",
        "InferencePool ballast",
        "InferenceObjective high",
        "HTTPRoute ballast",
        "Role vllm-router",
    ] {
        assert!(out.contains(&format!(": {kind}")), "{kind} was not validated:\n{out}");
    }
    // The ConfigMap's configuration is one ballast accepts.
    let check = Command::new(env!("CARGO_BIN_EXE_ballast")).arg("check-config").arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // Every flag the Deployment passes exists, and the model it fetches is in the manifest.
    let text = std::fs::read_to_string(root().join("deploy/k8s/ballast.yaml")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_ballast")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("- --")).collect();
    assert!(flags.len() >= 8, "{flags:?}");
    for flag in flags {
        assert!(help.contains(&format!("--{flag}")), "ballast serve has no --{flag}");
    }
    let models = std::fs::read_to_string(root().join("models/manifest.json")).unwrap();
    assert!(text.contains("args: [\"fetch\", \"qwen2.5-coder-1.5b\"]") && models.contains("\"qwen2.5-coder-1.5b\""));
}

#[test]
fn each_kind_of_mistake_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mistakes = [
        ("ballast.yaml", "containerPort: 8080", "containerPort: \"8080\"", "a port given as a string"),
        ("ballast.yaml", "  replicas: 3", "  replica: 3", "an unknown Deployment field"),
        ("ballast.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", "a grace period shorter than the drain"),
        ("ballast.yaml", "path: /ready", "path: /health", "readiness on /health"),
        ("inference-gateway.yaml", "failureMode: FailOpen", "failureMode: Sometimes", "an enum value the CRD does not have"),
        ("inference-gateway.yaml", "  priority: 20", "  priority: 20\n  weight: 3", "an unknown InferenceObjective field"),
        ("inference-gateway.yaml", "    - number: 8080", "    - number: 8000", "a pool on the wrong port"),
        ("inference-gateway.yaml", "  name: low\n", "  name: batch\n", "an objective that is not a class"),
        ("vllm-router.yaml", "- --service-discovery-port\n            - \"8080\"\n", "", "discovery on the default port 80"),
        ("vllm-router.yaml", "kind: Role\n", "kind: Rolle\n", "an unknown kind"),
    ];
    for (file, from, to, what) in mistakes {
        let files: Vec<PathBuf> = manifests()
            .into_iter()
            .map(|p| {
                let mut text = std::fs::read_to_string(&p).unwrap();
                if p.file_name().unwrap() == file {
                    assert!(text.contains(from), "{file} no longer contains {from:?}");
                    text = text.replacen(from, to, 1);
                }
                let copy = dir.path().join(p.file_name().unwrap());
                std::fs::write(&copy, text).unwrap();
                copy
            })
            .collect();
        let (ok, out) = validate(&files, None);
        assert!(!ok, "{what} passed validation:\n{out}");
        assert!(out.contains("FAIL"), "{what}: {out}");
    }
}
