//! `ballast inspect`: what is inside a model file.

use anyhow::Context;
use ballast::format::gguf::GgufFile;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A GGUF file, an HF checkpoint directory, or a model name from models/manifest.json
    /// (fetched if absent).
    path: PathBuf,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let path = ballast::fetch::resolve(Some(&args.path))?;
    if path.is_dir() { inspect_hf(&path, &mut out) } else { inspect_gguf(&path, &mut out) }
}

fn inspect_gguf(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let file = GgufFile::open(path)?;
    writeln!(out, "{}: GGUF v{}, alignment {}", path.display(), file.version(), file.alignment())?;
    writeln!(out, "\nmetadata ({} keys):", file.metadata().len())?;
    for (key, value) in file.metadata() {
        writeln!(out, "  {key:<44} {:<6} {value}", value.type_name())?;
    }
    writeln!(out, "\ntensors ({}):", file.tensors().len())?;
    writeln!(out, "  {:<32} {:<6} {:<20} {:>12} {:>12}", "name", "type", "dims", "offset", "bytes")?;
    let mut total = 0u64;
    for t in file.tensors() {
        let dims = format!("{:?}", t.dims);
        writeln!(out, "  {:<32} {:<6} {:<20} {:>12} {:>12}", t.name, t.dtype.name(), dims, t.offset, t.num_bytes)?;
        total += t.num_bytes as u64;
    }
    writeln!(out, "\n{} tensors, {:.1} MiB of weights", file.tensors().len(), total as f64 / (1 << 20) as f64)?;
    Ok(())
}

fn inspect_hf(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    writeln!(out, "{}: HF checkpoint\n\nconfig.json:\n{}", dir.display(), config.trim_end())?;
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    for shard in shards {
        let file = std::fs::File::open(&shard)?;
        // SAFETY: read-only map of a file we only read.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| anyhow::anyhow!("{}: {e}", shard.display()))?;
        let mut tensors: Vec<_> = meta.tensors().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        writeln!(out, "\n{} ({} tensors):", shard.display(), tensors.len())?;
        for (name, info) in tensors {
            writeln!(out, "  {name:<52} {:<5} {:?}", format!("{:?}", info.dtype), info.shape)?;
        }
    }
    Ok(())
}
