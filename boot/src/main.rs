//! `boot`: Bastion's host CLI. See `boot help`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

const USAGE: &str = "\
usage:
  boot validate CONFIG                       check a bastion.toml; errors name file, line, field
  boot bundle --config CONFIG --out FILE     validate and pack the boot bundle (ustar)
  boot image --kernel ELF --config CONFIG --out DIR [--bios] [--uefi] [--pxe]
                                             bundle + stripped kernel + images (default: --bios --uefi)
";

fn main() {
    if let Err(e) = run() {
        eprintln!("boot: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        print!("{USAGE}");
        return Ok(());
    };
    let opt = |name: &str| -> Option<PathBuf> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from)
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    match cmd.as_str() {
        "validate" => {
            let path = args.get(1).map(PathBuf::from).context("validate needs a CONFIG path")?;
            boot::validate_config(&path)?;
            println!("{}: OK", path.display());
        }
        "bundle" => {
            let config = opt("--config").context("bundle needs --config CONFIG")?;
            let out = opt("--out").context("bundle needs --out FILE")?;
            let bytes = boot::bundle_bytes(&config)?;
            std::fs::write(&out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", out.display());
        }
        "image" => {
            let kernel = opt("--kernel").context("image needs --kernel ELF")?;
            let config = opt("--config").context("image needs --config CONFIG")?;
            let out = opt("--out").context("image needs --out DIR")?;
            let (mut bios, mut uefi, pxe) = (flag("--bios"), flag("--uefi"), flag("--pxe"));
            if !bios && !uefi && !pxe {
                (bios, uefi) = (true, true);
            }
            let a = boot::build_all(&kernel, &config, &out, bios, uefi, pxe)?;
            for p in [a.bios, a.uefi, a.pxe].into_iter().flatten() {
                println!("{}", p.display());
            }
        }
        "help" | "--help" | "-h" => print!("{USAGE}"),
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
    Ok(())
}
