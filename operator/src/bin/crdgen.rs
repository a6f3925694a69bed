//! Writes the CRD YAML generated from the Rust types into a directory
//! (default `crds/`), or prints it with `--stdout`.

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Directory to write `<plural>.yaml` files into.
    #[arg(default_value = "crds")]
    out_dir: std::path::PathBuf,
    #[arg(long)]
    stdout: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (file, yaml) in weir_operator::crd::rendered()? {
        if args.stdout {
            print!("---\n{yaml}");
        } else {
            std::fs::write(args.out_dir.join(&file), yaml)?;
        }
    }
    Ok(())
}
