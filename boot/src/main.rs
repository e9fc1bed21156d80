//! `boot`: Bastion's host CLI. See `boot help`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

const USAGE: &str = "\
usage:
  boot validate CONFIG                       check a bastion.toml and its guest kernels;
                                             errors name file, line, field and guest
  boot bundle --config CONFIG --out FILE     validate and pack the boot bundle (ustar)
  boot image --kernel ELF (--config CONFIG | --bundle FILE) --out DIR [--bios] [--uefi] [--pxe]
                                             bundle + stripped kernel + images (default: --bios --uefi);
                                             --bundle takes a packed bundle as it is; --pxe: a TFTP
                                             folder for UEFI and (with PXELINUX and MEMDISK installed:
                                             apt-get install pxelinux syslinux-common) BIOS hosts
  boot fleet --kernel ELF --out DIR --interface IF --range START,END --host MAC=CONFIG...
                                             one PXE folder per host (DIR/tftp/<mac>/) and
                                             DIR/dnsmasq.conf, which serves each host its own
";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("boot: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some(cmd) = args.first() else {
        print!("{USAGE}");
        return Ok(());
    };
    // Options of each command: those that take a value, then flags.
    let (valued, flags): (&[&str], &[&str]) = match cmd.as_str() {
        "validate" => (&[], &[]),
        "bundle" => (&["--config", "--out"], &[]),
        "image" => (&["--kernel", "--config", "--bundle", "--out"], &["--bios", "--uefi", "--pxe"]),
        "fleet" => (&["--kernel", "--out", "--interface", "--range", "--host"], &[]),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            return Ok(());
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    };
    let mut values: Vec<(&str, PathBuf)> = Vec::new();
    let mut set: Vec<&str> = Vec::new();
    let mut positional: Vec<PathBuf> = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        if let Some(&name) = valued.iter().find(|&&v| v == a) {
            let v = rest.next().with_context(|| format!("{name} needs a value\n{USAGE}"))?;
            values.push((name, PathBuf::from(v)));
        } else if let Some(&name) = flags.iter().find(|&&f| f == a) {
            set.push(name);
        } else if a.starts_with('-') {
            bail!("`{cmd}` has no option `{a}`\n{USAGE}");
        } else {
            positional.push(PathBuf::from(a));
        }
    }
    let opt = |name: &str| values.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let flag = |name: &str| set.contains(&name);
    if cmd != "validate" && !positional.is_empty() {
        bail!("`{cmd}` takes no argument `{}`\n{USAGE}", positional[0].display());
    }
    match cmd.as_str() {
        "validate" => {
            let [path] = positional.as_slice() else { bail!("validate needs one CONFIG path\n{USAGE}") };
            boot::validate_config(path)?;
            println!("{}: OK", path.display());
        }
        "bundle" => {
            let config = opt("--config").context("bundle needs --config CONFIG")?;
            let out = opt("--out").context("bundle needs --out FILE")?;
            let bytes = boot::bundle_bytes(&config)?;
            std::fs::write(&out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", out.display());
        }
        "fleet" => {
            let kernel = opt("--kernel").context("fleet needs --kernel ELF")?;
            let out = opt("--out").context("fleet needs --out DIR")?;
            let text = |name: &str| opt(name).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let net = boot::fleet::Network { interface: text("--interface"), range: text("--range") };
            let hosts = values
                .iter()
                .filter(|(n, _)| *n == "--host")
                .map(|(_, v)| boot::fleet::parse_host(&v.to_string_lossy()))
                .collect::<Result<Vec<_>>>()?;
            let fleet = boot::fleet::build(&kernel, &out, &net, &hosts)?;
            for n in &fleet.notes {
                eprintln!("boot: note: {n}");
            }
            if !fleet.bios {
                eprintln!("boot: note: BIOS hosts get no boot file from this fleet's dnsmasq.conf (UEFI only)");
            }
            println!("{}", fleet.conf.display());
        }
        _ => {
            let kernel = opt("--kernel").context("image needs --kernel ELF")?;
            let out = opt("--out").context("image needs --out DIR")?;
            let (mut bios, mut uefi, pxe) = (flag("--bios"), flag("--uefi"), flag("--pxe"));
            if !bios && !uefi && !pxe {
                (bios, uefi) = (true, true);
            }
            let a = match (opt("--config"), opt("--bundle")) {
                (Some(config), None) => boot::build_all(&kernel, &config, &out, bios, uefi, pxe)?,
                (None, Some(bundle)) => boot::build_from_bundle(&kernel, &bundle, &out, bios, uefi, pxe)?,
                _ => bail!("image needs one of --config CONFIG and --bundle FILE"),
            };
            for n in &a.report.notes {
                eprintln!("boot: note: {n}");
            }
            for p in [a.bios, a.uefi, a.pxe].into_iter().flatten() {
                println!("{}", p.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: &[&str]) -> Result<()> {
        run(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn validate_checks_guest_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bastion.toml");
        std::fs::write(&cfg, "[[guest]]\nname = \"web\"\nkernel = \"web.bin\"\n").unwrap();
        let e = format!("{:#}", run_with(&["validate", cfg.to_str().unwrap()]).unwrap_err());
        assert!(e.contains("bastion.toml:3:1: guest[0].kernel: guest `web`: cannot read kernel"), "{e}");
        std::fs::write(dir.path().join("web.bin"), [0xf4u8]).unwrap();
        run_with(&["validate", cfg.to_str().unwrap()]).unwrap();
    }

    #[test]
    fn bundle_packs_and_bad_usage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bastion.toml");
        std::fs::write(&cfg, "[hypervisor]\n").unwrap();
        let out = dir.path().join("b.tar");
        run_with(&["bundle", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
        for (args, msg) in [
            (&["bundle", "--config"][..], "--config needs a value"),
            (&["bundle", "--config", "x", "--ouf", "y"], "`bundle` has no option `--ouf`"),
            (&["validate"], "validate needs one CONFIG path"),
            (&["image", "--kernel", "k", "--out", "o"], "one of --config CONFIG and --bundle FILE"),
            (&["image", "--kernel", "k", "--out", "o", "--config", "c", "--bundle", "b"], "one of --config"),
            (&["bundel"], "unknown command `bundel`"),
        ] {
            let e = format!("{:#}", run_with(args).unwrap_err());
            assert!(e.contains(msg), "{args:?}: {e}");
        }
    }
}
