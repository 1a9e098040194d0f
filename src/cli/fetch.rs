use anyhow::Context;
use ballast::fetch::{self, Manifest};

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Model names from models/manifest.json (default: the manifest's default model).
    names: Vec<String>,
    /// Fetch every model in the manifest.
    #[arg(long)]
    all: bool,
    /// Re-check the sha256 of models already present (and fetch them again if it fails).
    #[arg(long)]
    verify: bool,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let manifest = Manifest::builtin();
    let dir = fetch::models_dir();
    let models: Vec<_> = if args.all {
        manifest.models.iter().collect()
    } else if args.names.is_empty() {
        vec![manifest.default_model()]
    } else {
        args.names.iter().map(|n| manifest.get(n)).collect::<Result<_, _>>()?
    };
    for model in models {
        let path = dir.join(&model.file);
        if args.verify && path.is_file() && fetch::verify(model, &path).is_err() {
            eprintln!("{}: checksum mismatch, fetching again", path.display());
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        let path = fetch::ensure(model, &dir)?;
        println!("{}  {}", model.name, path.display());
    }
    Ok(())
}
