//! Bastion's host-side tools: validate `bastion.toml`, pack the boot bundle, and turn a kernel
//! ELF and a bundle into bootable BIOS and UEFI disk images (and a PXE/TFTP folder) with the
//! `bootloader` crate.
//!
//! The bundle is a ustar archive that the bootloader loads as its ramdisk; the kernel reads it
//! with `bastion_core::bundle`, and this crate validates the configuration with the very same
//! `bastion_core::config` code before packing, so a bundle that `boot` accepts is one the
//! hypervisor accepts.

pub mod fleet;
pub mod stage2;

use anyhow::{bail, Context, Result};
use bastion_core::bundle::{Bundle, CONFIG_FILE};
use bastion_core::config::{Config, ImageFitError};
use bastion_core::loader::{self, bzimage::BzImageError, multiboot::MultibootError, LoadError};
use bootloader::{BootConfig, DiskImageBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Reads and validates a configuration file and every guest's files: each must exist, and the
/// guest's image must load ([`bastion_core::loader::prepare`], the very rule the hypervisor
/// applies at boot: a flat image fits, a bzImage parses and its kernel, initrd and command line
/// fit the guest's RAM). Errors name the file, line and field, and the guest
/// (`bastion.toml:9:1: guest[1].kernel: guest `web`: ...`). On the host every guest must be
/// valid (the hypervisor would skip an invalid one, but a tool should not ship it).
pub fn validate_config(path: &Path) -> Result<Config> {
    Ok(load(path)?.config)
}

/// A validated configuration with its text and the guest files (kernels, initrds) it names.
struct Loaded {
    config: Config,
    text: String,
    /// (path in the bundle, contents), each file once.
    files: Vec<(String, Vec<u8>)>,
}

/// Reads `name` (relative to `base`) into `files` unless it is there already (two guests may
/// share a file; it is read and packed once), and returns its index.
fn read_once(
    files: &mut Vec<(String, Vec<u8>)>,
    base: &Path,
    name: &str,
    what: &str,
) -> Result<usize, String> {
    if let Some(i) = files.iter().position(|(n, _)| n == name) {
        return Ok(i);
    }
    let path = base.join(name);
    let data =
        std::fs::read(&path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    files.push((name.to_string(), data));
    Ok(files.len() - 1)
}

/// The config field a loader refusal is about.
fn field_of(e: &LoadError) -> &'static str {
    match e {
        LoadError::BzImage(BzImageError::InitrdEmpty | BzImageError::InitrdDoesNotFit { .. })
        | LoadError::MissingInitrd => "initrd",
        LoadError::BzImage(
            BzImageError::CmdlineTooLong { .. }
            | BzImageError::CmdlineTooLongForBuffer { .. }
            | BzImageError::CmdlineHasNul { .. },
        ) => "cmdline",
        LoadError::Multiboot(MultibootError::CmdlineHasNul { what: "command line" }) => "cmdline",
        LoadError::Multiboot(MultibootError::CmdlineHasNul { .. } | MultibootError::NoRoomFor { what: "a module", .. })
        | LoadError::MissingModule => "modules",
        LoadError::Memory(_) => "memory_mib",
        _ => "kernel",
    }
}

fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let file = path.display().to_string();
    let config = Config::parse(&file, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !config.guest_errors.is_empty() {
        let all: Vec<String> = config.guest_errors.iter().map(|e| e.to_string()).collect();
        bail!("{}", all.join("\n"));
    }
    // Guest files are read relative to the config file's folder.
    let base = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut errors = Vec::new();
    for g in &config.guests {
        let mut error = |field: &str, problem: String| {
            errors.push(
                Config::guest_error(
                    &file,
                    &text,
                    &g.name,
                    field,
                    format!("guest `{}`: {problem}", g.name),
                )
                .to_string(),
            );
        };
        let kernel = match read_once(&mut files, base, &g.kernel, "kernel") {
            Ok(i) => i,
            Err(e) => {
                error("kernel", e);
                continue;
            }
        };
        let initrd = match g.initrd.as_deref().map(|name| read_once(&mut files, base, name, "initrd")) {
            None => None,
            Some(Ok(i)) => Some(i),
            Some(Err(e)) => {
                error("initrd", e);
                continue;
            }
        };
        let mut modules = Vec::new();
        for (i, m) in g.modules.iter().enumerate() {
            match read_once(&mut files, base, &m.path, "module") {
                Ok(f) => modules.push(f),
                Err(e) => error("modules", format!("module {i}: {e}")),
            }
        }
        if modules.len() != g.modules.len() {
            continue;
        }
        let name = |i: usize| base.join(&files[i].0).display().to_string();
        let module_data: Vec<&[u8]> = modules.iter().map(|&i| files[i].1.as_slice()).collect();
        if let Err(e) = loader::prepare(g, &files[kernel].1, initrd.map(|i| files[i].1.as_slice()), &module_data) {
            let problem = match &e {
                LoadError::Flat(ImageFitError::Empty) => format!("kernel {} is empty", name(kernel)),
                LoadError::Flat(e) => format!("kernel {} does not fit the guest: {e}", name(kernel)),
                e if field_of(e) == "initrd" => format!("initrd {}: {e}", name(initrd.unwrap_or(kernel))),
                e if field_of(e) != "kernel" => format!("{e}"),
                e => format!("kernel {}: {e}", name(kernel)),
            };
            error(field_of(&e), problem);
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(Loaded { config, text, files })
}

/// Builds the bundle for the configuration at `config_path` and returns its bytes: the config
/// as `bastion.toml`, and every guest kernel at the path the config gives (read relative to
/// the config file's folder). The configuration and the kernels are validated first
/// ([`validate_config`]); an invalid one is refused.
pub fn bundle_bytes(config_path: &Path) -> Result<Vec<u8>> {
    let loaded = load(config_path)?;
    let mut refs: Vec<(&str, &[u8])> = vec![(CONFIG_FILE, loaded.text.as_bytes())];
    refs.extend(loaded.files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    let bytes = pack(&refs)?;
    // Read it back with the kernel's reader: what we ship must be what the kernel accepts.
    Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("internal error: packed bundle does not parse: {e}"))?;
    Ok(bytes)
}

/// Packs files into a ustar archive (the bundle format).
pub fn pack(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0); // reproducible bundles
        h.set_cksum();
        b.append_data(&mut h, name, *data).with_context(|| format!("cannot add {name} to the bundle"))?;
    }
    Ok(b.into_inner()?)
}

/// Where `llvm-objcopy` from the `llvm-tools-preview` component lives.
pub fn llvm_objcopy() -> Result<PathBuf> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc to find the sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let host = Command::new("rustc").args(["-vV"]).output().context("cannot run rustc -vV")?;
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap_or_else(|| "x86_64-unknown-linux-gnu".into());
    let p = sysroot.join("lib/rustlib").join(host).join("bin/llvm-objcopy");
    if !p.exists() {
        bail!("{} not found: run `rustup component add llvm-tools-preview`", p.display());
    }
    Ok(p)
}

/// Writes a copy of the kernel ELF without debug information (BIOS stage 2 loads a large debug
/// ELF very slowly: 12 s against 2.5 s measured on QEMU).
pub fn strip_kernel(kernel: &Path, out: &Path) -> Result<()> {
    let status = Command::new(llvm_objcopy()?)
        .arg("--strip-debug")
        .arg(kernel)
        .arg(out)
        .status()
        .context("cannot run llvm-objcopy")?;
    if !status.success() {
        bail!("llvm-objcopy --strip-debug {} failed", kernel.display());
    }
    Ok(())
}

/// What images to create.
#[derive(Debug, Default, Clone)]
pub struct ImageRequest {
    pub bios: Option<PathBuf>,
    pub uefi: Option<PathBuf>,
    /// A TFTP folder for PXE boot: UEFI always, BIOS where PXELINUX and MEMDISK are installed
    /// ([`Syslinux`]).
    pub pxe: Option<PathBuf>,
}

/// What [`create_images`] made beyond what was asked, and what it could not do.
#[derive(Debug, Default)]
pub struct ImageReport {
    /// The PXE folder boots BIOS hosts too.
    pub pxe_bios: bool,
    /// Warnings for the user: what was not done and why.
    pub notes: Vec<String>,
}

/// Debian's PXELINUX (package `pxelinux`) and MEMDISK (`syslinux-common`), through which a
/// BIOS host boots Bastion's disk image over the network: the host's PXE ROM loads
/// `pxelinux.0` by DHCP's boot file name, PXELINUX reads `pxelinux.cfg/default` and loads
/// MEMDISK with the image as its initrd, and MEMDISK makes the image a BIOS hard disk (INT 13h)
/// that the BIOS boots like any other. Chosen because it works with every PXE ROM (a real
/// host's, not only iPXE), needs nothing but TFTP, and comes from the syslinux project, the
/// standard for exactly this; iPXE's `sanboot` needs an HTTP/iSCSI server and reads the image
/// a sector per request (measured: it stalls).
#[derive(Debug, Clone)]
pub struct Syslinux {
    pub pxelinux: PathBuf,
    pub ldlinux: PathBuf,
    pub memdisk: PathBuf,
}

/// The packages [`Syslinux`] comes from.
pub const SYSLINUX_PACKAGES: [&str; 2] = ["pxelinux", "syslinux-common"];

impl Syslinux {
    /// Where Debian installs them.
    pub fn debian() -> Syslinux {
        Syslinux {
            pxelinux: "/usr/lib/PXELINUX/pxelinux.0".into(),
            ldlinux: "/usr/lib/syslinux/modules/bios/ldlinux.c32".into(),
            memdisk: "/usr/lib/syslinux/memdisk".into(),
        }
    }

    /// The files that are missing.
    pub fn missing(&self) -> Vec<&Path> {
        [&self.pxelinux, &self.ldlinux, &self.memdisk].into_iter().map(|p| p.as_path()).filter(|p| !p.is_file()).collect()
    }
}

/// PXELINUX's configuration: boot the image through MEMDISK as a hard disk, at once (no prompt).
pub const PXELINUX_CFG: &str = "\
# Bastion: MEMDISK serves the BIOS disk image as a hard disk (INT 13h) and the BIOS boots it.
DEFAULT bastion
PROMPT 0
LABEL bastion
  KERNEL memdisk
  INITRD bastion-bios.img
  APPEND harddisk
";

/// The image's name in the PXE folder (the one [`PXELINUX_CFG`] names).
pub const PXE_BIOS_IMAGE: &str = "bastion-bios.img";

/// Applies [`stage2::patch_bios_image`] to the BIOS image at `path`.
fn fix_bios_image(path: &Path) -> Result<std::result::Result<stage2::Patched, stage2::NotPatched>> {
    let mut img = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let r = stage2::patch_bios_image(&mut img);
    if let Ok(stage2::Patched::Now { .. }) = r {
        std::fs::write(path, &img).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(r)
}

/// Builds the requested images from a (stripped) kernel and a bundle file. Every BIOS image
/// gets [`stage2`]'s fix (it is what lets MEMDISK boot it); one that cannot be fixed is still
/// made, with a note, but no BIOS PXE folder is made from it.
pub fn create_images(kernel: &Path, bundle: &Path, req: &ImageRequest) -> Result<ImageReport> {
    create_images_with(kernel, bundle, req, &Syslinux::debian())
}

/// [`create_images`] with PXELINUX and MEMDISK taken from `syslinux`.
pub fn create_images_with(kernel: &Path, bundle: &Path, req: &ImageRequest, syslinux: &Syslinux) -> Result<ImageReport> {
    let mut report = ImageReport::default();
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    builder.set_ramdisk(bundle.to_path_buf());
    let mut cfg = BootConfig::default();
    // The bootloader logs at Trace by default and floods the serial line; its framebuffer
    // logger is slow under emulation. Bastion prints its own banner.
    cfg.log_level = bootloader_boot_config::LevelFilter::Warn;
    cfg.frame_buffer_logging = false;
    cfg.serial_logging = true;
    builder.set_boot_config(&cfg);
    let bios_image = |p: &Path| -> Result<std::result::Result<stage2::Patched, stage2::NotPatched>> {
        builder.create_bios_image(p).with_context(|| format!("cannot create BIOS image {}", p.display()))?;
        fix_bios_image(p)
    };
    let mut fixed_bios = None;
    if let Some(p) = &req.bios {
        match bios_image(p)? {
            Ok(_) => fixed_bios = Some(p),
            Err(why) => report.notes.push(format!("{}: the bootloader's stage 2 was not fixed ({why}): it boots from a disk or stick, not over the network through MEMDISK", p.display())),
        }
    }
    if let Some(p) = &req.uefi {
        builder.create_uefi_image(p).with_context(|| format!("cannot create UEFI image {}", p.display()))?;
    }
    if let Some(p) = &req.pxe {
        builder.create_uefi_tftp_folder(p).with_context(|| format!("cannot create PXE folder {}", p.display()))?;
        // A BIOS half from an earlier build must not outlive this one (a stale image served).
        for name in ["pxelinux.0", "ldlinux.c32", "memdisk", PXE_BIOS_IMAGE, "pxelinux.cfg/default"] {
            match std::fs::remove_file(p.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", p.join(name).display()));
                }
                _ => {}
            }
        }
        let missing = syslinux.missing();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|m| m.display().to_string()).collect();
            report.notes.push(format!(
                "{}: UEFI only, no BIOS network boot: {} not found (install: sudo apt-get install {})",
                p.display(),
                list.join(", "),
                SYSLINUX_PACKAGES.join(" ")
            ));
        } else {
            let img = p.join(PXE_BIOS_IMAGE);
            // The disk image made above is the same one (same kernel and bundle).
            let made = match fixed_bios {
                Some(b) => std::fs::copy(b, &img).map(|_| Ok(stage2::Patched::Already)).with_context(|| format!("cannot copy {} into {}", b.display(), p.display()))?,
                None => bios_image(&img)?,
            };
            match made {
                Err(why) => {
                    std::fs::remove_file(&img).with_context(|| format!("cannot remove {}", img.display()))?;
                    report.notes.push(format!("{}: UEFI only, no BIOS network boot: the bootloader's stage 2 cannot be fixed for MEMDISK ({why})", p.display()));
                }
                Ok(_) => {
                    for (from, name) in [(&syslinux.pxelinux, "pxelinux.0"), (&syslinux.ldlinux, "ldlinux.c32"), (&syslinux.memdisk, "memdisk")] {
                        std::fs::copy(from, p.join(name)).with_context(|| format!("cannot copy {} into {}", from.display(), p.display()))?;
                    }
                    let cfg_dir = p.join("pxelinux.cfg");
                    std::fs::create_dir_all(&cfg_dir).with_context(|| format!("cannot create {}", cfg_dir.display()))?;
                    std::fs::write(cfg_dir.join("default"), PXELINUX_CFG).with_context(|| format!("cannot write {}", cfg_dir.display()))?;
                    report.pxe_bios = true;
                }
            }
        }
    }
    Ok(report)
}

/// What [`build_all`] and [`build_from_bundle`] wrote into their output folder:
/// `bundle.tar`, `bastion.elf` (the stripped kernel), and the requested images
/// (`bastion-bios.img`, `bastion-uefi.img`, `pxe/`).
pub struct Artifacts {
    pub bundle: PathBuf,
    pub kernel: PathBuf,
    pub bios: Option<PathBuf>,
    pub uefi: Option<PathBuf>,
    pub pxe: Option<PathBuf>,
    /// See [`ImageReport`].
    pub report: ImageReport,
}

/// Everything at once: validate the config and its guest kernels, pack the bundle, strip the
/// kernel, make images, all in `out_dir` (see [`Artifacts`]).
pub fn build_all(kernel: &Path, config: &Path, out_dir: &Path, bios: bool, uefi: bool, pxe: bool) -> Result<Artifacts> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let bundle = out_dir.join("bundle.tar");
    std::fs::write(&bundle, bundle_bytes(config)?).with_context(|| format!("cannot write {}", bundle.display()))?;
    build_from_bundle(kernel, &bundle, out_dir, bios, uefi, pxe)
}

/// Like [`build_all`] around an existing bundle file, taken as it is (tests use it for
/// corrupt bundles). The bundle is copied to `out_dir/bundle.tar` unless it is that file.
pub fn build_from_bundle(kernel: &Path, bundle: &Path, out_dir: &Path, bios: bool, uefi: bool, pxe: bool) -> Result<Artifacts> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_bundle = out_dir.join("bundle.tar");
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if !same(bundle, &out_bundle) {
        std::fs::copy(bundle, &out_bundle).with_context(|| format!("cannot copy bundle {}", bundle.display()))?;
    }
    let stripped = out_dir.join("bastion.elf");
    strip_kernel(kernel, &stripped)?;
    let req = ImageRequest {
        bios: bios.then(|| out_dir.join("bastion-bios.img")),
        uefi: uefi.then(|| out_dir.join("bastion-uefi.img")),
        pxe: pxe.then(|| out_dir.join("pxe")),
    };
    let report = create_images(&stripped, &out_bundle, &req)?;
    Ok(Artifacts { bundle: out_bundle, kernel: stripped, bios: req.bios, uefi: req.uefi, pxe: req.pxe, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_of_a_valid_config_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("b.toml");
        std::fs::write(&cfg, "[hypervisor]\nlog_level = \"debug\"\n").unwrap();
        let bytes = bundle_bytes(&cfg).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.config_text().unwrap(), "[hypervisor]\nlog_level = \"debug\"\n");
    }

    #[test]
    fn invalid_config_is_refused_with_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, "[hypervisor]\nshutdown = \"later\"\n").unwrap();
        let e = bundle_bytes(&cfg).unwrap_err().to_string();
        assert!(e.contains("bad.toml:2:"), "{e}");
        assert!(e.contains("hypervisor.shutdown"), "{e}");
    }

    #[test]
    fn guest_kernels_are_packed_at_their_config_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("g")).unwrap();
        std::fs::write(dir.path().join("g/a.bin"), [0xf4u8; 3]).unwrap();
        let cfg = dir.path().join("b.toml");
        std::fs::write(&cfg, "[[guest]]\nname = \"a\"\nkernel = \"g/a.bin\"\n[[guest]]\nname = \"b\"\nkernel = \"g/a.bin\"\n").unwrap();
        let bytes = bundle_bytes(&cfg).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.file("g/a.bin").unwrap(), [0xf4; 3]);
        assert_eq!(b.files().count(), 2, "a shared image is packed once");
    }

    #[test]
    fn missing_guest_kernel_and_invalid_guest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("b.toml");
        std::fs::write(&cfg, "[[guest]]\nname = \"a\"\nkernel = \"nope.bin\"\n").unwrap();
        let e = format!("{:#}", bundle_bytes(&cfg).unwrap_err());
        assert!(e.contains("guest `a`") && e.contains("nope.bin"), "{e}");
        std::fs::write(&cfg, "[[guest]]\nname = \"a\"\n").unwrap();
        let e = format!("{:#}", bundle_bytes(&cfg).unwrap_err());
        assert!(e.contains("b.toml:1:1: guest[0].kernel: missing field `kernel`"), "{e}");
    }

    /// A config with one guest `web` (4 MiB of RAM) whose kernel is `kernel`, written with
    /// `data` unless it is `None`; returns the folder and the config path.
    fn web_guest(data: Option<&[u8]>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bastion.toml");
        std::fs::write(&cfg, "[hypervisor]\n\n[[guest]]\nname = \"ok\"\nkernel = \"ok.bin\"\n\n[[guest]]\nname = \"web\"\nmemory_mib = 4\nkernel = \"guests/web.bin\"\n").unwrap();
        std::fs::write(dir.path().join("ok.bin"), [0xf4u8]).unwrap();
        if let Some(data) = data {
            std::fs::create_dir(dir.path().join("guests")).unwrap();
            std::fs::write(dir.path().join("guests/web.bin"), data).unwrap();
        }
        (dir, cfg)
    }

    /// The error for a bad kernel, from `validate_config` and `bundle_bytes` alike: located at
    /// the guest's `kernel` line, naming the guest and its index.
    fn kernel_error(data: Option<&[u8]>) -> String {
        let (_dir, cfg) = web_guest(data);
        let e = format!("{:#}", validate_config(&cfg).unwrap_err());
        assert_eq!(e, format!("{:#}", bundle_bytes(&cfg).unwrap_err()));
        assert!(e.starts_with(&format!("{}:10:1: guest[1].kernel: guest `web`: ", cfg.display())), "{e}");
        assert!(!e.contains("guest `ok`"), "{e}");
        e
    }

    /// The smallest file `bastion_core::loader::bzimage::parse` accepts: a boot protocol 2.15
    /// header (boot.rst offsets) for a relocatable 64-bit kernel with 4 setup sectors and
    /// `kernel` bytes of protected-mode code that needs 4 MiB at 16 MiB.
    fn bzimage(kernel: usize) -> Vec<u8> {
        let mut v = vec![0u8; 5 * 512 + kernel];
        let mut put = |at: usize, b: &[u8]| v[at..at + b.len()].copy_from_slice(b);
        put(0x1F1, &[4]);
        put(0x1F4, &((kernel / 16) as u32).to_le_bytes());
        put(0x1FE, &0xAA55u16.to_le_bytes());
        put(0x200, &[0xEB, 0x6A]);
        put(0x202, b"HdrS");
        put(0x206, &0x020Fu16.to_le_bytes());
        put(0x211, &[1]); // LOADED_HIGH
        put(0x22C, &0x7FFF_FFFFu32.to_le_bytes());
        put(0x230, &0x20_0000u32.to_le_bytes());
        put(0x234, &[1]);
        put(0x236, &3u16.to_le_bytes()); // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
        put(0x238, &255u32.to_le_bytes());
        put(0x258, &0x100_0000u64.to_le_bytes());
        put(0x260, &0x40_0000u32.to_le_bytes());
        v
    }

    /// Writes `linux.toml` with guest `tux` (`extra` keys appended) and the given files.
    fn linux_guest(extra: &str, files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("linux.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[guest]]\nname = \"tux\"\nformat = \"bzimage\"\nkernel = \"vmlinuz\"\n{extra}"
            ),
        )
        .unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        (dir, cfg)
    }

    /// A bzImage guest is checked with the hypervisor's own loader: its kernel and initrd are
    /// packed; what cannot boot is refused at the field it is about.
    #[test]
    fn bzimage_guests_are_checked_by_the_loader_and_packed_with_their_initrd() {
        let k = bzimage(4096);
        let (_d, cfg) = linux_guest(
            "memory_mib = 64\ninitrd = \"initrd.gz\"\ncmdline = \"console=ttyS0\"\n",
            &[("vmlinuz", &k), ("initrd.gz", &[7; 100])],
        );
        let b = bundle_bytes(&cfg).unwrap();
        let b = Bundle::parse(&b).unwrap();
        assert_eq!(
            (b.file("vmlinuz").unwrap(), b.file("initrd.gz").unwrap()),
            (&k[..], &[7u8; 100][..])
        );
        let err = |extra: &str, files: &[(&str, &[u8])]| {
            let (_d, cfg) = linux_guest(extra, files);
            format!("{:#}", validate_config(&cfg).unwrap_err())
        };
        let e = err(
            "memory_mib = 64\ninitrd = \"nope.gz\"\n",
            &[("vmlinuz", &k)],
        );
        assert!(
            e.contains("linux.toml:6:1: guest[0].initrd: guest `tux`: cannot read initrd")
                && e.contains("nope.gz"),
            "{e}"
        );
        let e = err(
            "memory_mib = 64\ninitrd = \"i\"\n",
            &[("vmlinuz", &k), ("i", &[])],
        );
        assert!(
            e.contains("guest[0].initrd: guest `tux`: initrd ")
                && e.ends_with("bzImage: the initrd is empty"),
            "{e}"
        );
        let e = err(
            &format!("memory_mib = 64\ncmdline = \"{}\"\n", "x".repeat(300)),
            &[("vmlinuz", &k)],
        );
        assert!(e.contains("linux.toml:6:1: guest[0].cmdline: guest `tux`: bzImage: the command line is 300 bytes") && e.contains("longer than the kernel's cmdline_size of 255"), "{e}");
        let e = err("memory_mib = 64\n", &[("vmlinuz", &[0x90; 8192])]);
        assert!(
            e.contains("guest[0].kernel: guest `tux`: kernel ") && e.contains("not a bzImage"),
            "{e}"
        );
        let e = err("memory_mib = 16\n", &[("vmlinuz", &k)]);
        assert!(
            e.contains("guest[0].kernel: ")
                && e.contains("the kernel does not fit")
                && e.contains("at least 20 MiB"),
            "{e}"
        );
    }

    /// A Multiboot 1 "a.out kludge" kernel of `len` bytes: loaded at 1 MiB, entered at its start.
    fn multiboot_kernel(len: usize) -> Vec<u8> {
        let mut v = vec![0x90u8; len];
        let (magic, flags) = (0x1BAD_B002u32, 1u32 << 16);
        let fields = [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags), 0x10_0000, 0x10_0000, 0, 0, 0x10_0000];
        for (i, w) in fields.iter().enumerate() {
            v[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        v
    }

    /// A multiboot guest's modules are packed with its kernel; one that cannot be read or
    /// does not fit is refused at `modules`, naming the guest and the module.
    #[test]
    fn multiboot_guests_are_packed_with_their_modules() {
        let k = multiboot_kernel(4096);
        let write = |extra: &str, files: &[(&str, &[u8])]| {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("mb.toml");
            std::fs::write(&cfg, format!("[[guest]]\nname = \"mb\"\nformat = \"multiboot\"\nkernel = \"k.elf\"\n{extra}")).unwrap();
            for (name, data) in files {
                std::fs::write(dir.path().join(name), data).unwrap();
            }
            (dir, cfg)
        };
        let (_d, cfg) = write("memory_mib = 4\nmodules = [{ path = \"m1\", cmdline = \"one\" }, { path = \"m2\" }]\n", &[("k.elf", &k), ("m1", &[1; 10]), ("m2", &[2; 20])]);
        let b = bundle_bytes(&cfg).unwrap();
        let b = Bundle::parse(&b).unwrap();
        assert_eq!((b.file("k.elf").unwrap(), b.file("m1").unwrap(), b.file("m2").unwrap()), (&k[..], &[1u8; 10][..], &[2u8; 20][..]));
        let err = |extra: &str, files: &[(&str, &[u8])]| {
            let (_d, cfg) = write(extra, files);
            format!("{:#}", validate_config(&cfg).unwrap_err())
        };
        let e = err("modules = [{ path = \"gone\" }]\n", &[("k.elf", &k)]);
        assert!(e.contains("mb.toml:5:1: guest[0].modules: guest `mb`: module 0: cannot read module") && e.contains("gone"), "{e}");
        let e = err("memory_mib = 2\nmodules = [{ path = \"big\" }]\n", &[("k.elf", &k), ("big", &vec![0; 2 << 20])]);
        assert!(e.contains("guest[0].modules: guest `mb`: multiboot: no room for a module (2097152 bytes)"), "{e}");
        let e = err("", &[("k.elf", &[0x90; 4096])]);
        assert!(e.contains("guest[0].kernel: guest `mb`: kernel ") && e.contains("no Multiboot header"), "{e}");
    }

    #[test]
    fn missing_guest_kernel_names_the_guest() {
        let e = kernel_error(None);
        assert!(e.contains("cannot read kernel") && e.contains("guests/web.bin"), "{e}");
    }

    #[test]
    fn empty_guest_kernel_names_the_guest() {
        let e = kernel_error(Some(&[]));
        assert!(e.ends_with("guests/web.bin is empty"), "{e}");
    }

    #[test]
    fn guest_kernel_too_large_for_its_guest_names_the_guest() {
        // 4 MiB of RAM, and a flat image loaded at 0x8000 of 4 MiB.
        let e = kernel_error(Some(&vec![0x90u8; 4 << 20]));
        assert!(e.contains("does not fit the guest") && e.contains("past the guest's 4 MiB of RAM"), "{e}");
        // Within RAM but past 640 KiB, where the hypervisor stops loading a flat image.
        let e = kernel_error(Some(&vec![0x90u8; 0x9_8001]));
        assert!(e.contains("past the end of conventional memory") && e.contains("at most 622592 bytes fit"), "{e}");
        // The most that fits.
        let (_dir, cfg) = web_guest(Some(&vec![0x90u8; 0x9_8000]));
        validate_config(&cfg).unwrap();
    }

    #[test]
    fn every_bad_kernel_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("b.toml");
        std::fs::write(dir.path().join("e.bin"), []).unwrap();
        std::fs::write(&cfg, "[[guest]]\nname = \"a\"\nkernel = \"x.bin\"\n[[guest]]\nname = \"b\"\nkernel = \"e.bin\"\n").unwrap();
        let e = format!("{:#}", validate_config(&cfg).unwrap_err());
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(lines[0].contains("b.toml:3:1: guest[0].kernel: guest `a`: cannot read kernel"), "{e}");
        assert!(lines[1].contains("b.toml:6:1: guest[1].kernel: guest `b`: kernel") && lines[1].ends_with("is empty"), "{e}");
    }

    #[test]
    fn missing_config_file_is_named() {
        let e = validate_config(Path::new("/nonexistent/bastion.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/bastion.toml"), "{e:#}");
    }

    /// Stand-ins for PXELINUX, ldlinux.c32 and MEMDISK (only copied, never run here).
    fn fake_syslinux(dir: &Path) -> Syslinux {
        let s = Syslinux { pxelinux: dir.join("pxelinux.0"), ldlinux: dir.join("ldlinux.c32"), memdisk: dir.join("memdisk") };
        for (p, what) in [(&s.pxelinux, "pxelinux"), (&s.ldlinux, "ldlinux"), (&s.memdisk, "memdisk")] {
            std::fs::write(p, what).unwrap();
        }
        s
    }

    #[test]
    fn bios_images_carry_the_stage_2_fix_and_the_pxe_folder_boots_bios_through_memdisk() {
        // The real stage 2 that this build of the pinned bootloader makes: the fix must find
        // exactly the code it knows (another toolchain's stage 2 would fail here first).
        let dir = tempfile::tempdir().unwrap();
        let (kernel, bundle) = (dir.path().join("kernel"), dir.path().join("bundle.tar"));
        std::fs::write(&kernel, [0x7f, b'E', b'L', b'F']).unwrap();
        std::fs::write(&bundle, [0u8; 1024]).unwrap();
        let sys = fake_syslinux(dir.path());
        let req = ImageRequest { bios: Some(dir.path().join("b.img")), uefi: None, pxe: Some(dir.path().join("pxe")) };
        let report = create_images_with(&kernel, &bundle, &req, &sys).unwrap();
        assert!(report.pxe_bios && report.notes.is_empty(), "{report:?}");
        for img in [dir.path().join("b.img"), dir.path().join("pxe").join(PXE_BIOS_IMAGE)] {
            let mut bytes = std::fs::read(&img).unwrap();
            assert_eq!(stage2::patch_bios_image(&mut bytes), Ok(stage2::Patched::Already), "{}", img.display());
        }
        let pxe = dir.path().join("pxe");
        for (name, body) in [("pxelinux.0", "pxelinux"), ("ldlinux.c32", "ldlinux"), ("memdisk", "memdisk")] {
            assert_eq!(std::fs::read_to_string(pxe.join(name)).unwrap(), body);
        }
        let cfg = std::fs::read_to_string(pxe.join("pxelinux.cfg/default")).unwrap();
        assert!(cfg.contains("KERNEL memdisk") && cfg.contains(&format!("INITRD {PXE_BIOS_IMAGE}")) && cfg.contains("APPEND harddisk"), "{cfg}");
        // The UEFI half is there as before.
        assert!(pxe.join("bootloader").is_file() && pxe.join("kernel-x86_64").is_file(), "UEFI PXE files");

        // Without MEMDISK: a UEFI-only folder, and a note that says what to install; a BIOS
        // half left by an earlier build is gone (pxe2 is made twice).
        let req = ImageRequest { bios: None, uefi: None, pxe: Some(dir.path().join("pxe2")) };
        assert!(create_images_with(&kernel, &bundle, &req, &sys).unwrap().pxe_bios);
        std::fs::remove_file(&sys.memdisk).unwrap();
        let report = create_images_with(&kernel, &bundle, &req, &sys).unwrap();
        assert!(!report.pxe_bios);
        let note = report.notes.join("\n");
        assert!(note.contains("no BIOS network boot") && note.contains("memdisk not found") && note.contains("apt-get install pxelinux syslinux-common"), "{note}");
        for name in [PXE_BIOS_IMAGE, "pxelinux.0", "ldlinux.c32", "memdisk", "pxelinux.cfg/default"] {
            assert!(!dir.path().join("pxe2").join(name).exists(), "{name} left behind");
        }
        assert!(dir.path().join("pxe2/bootloader").is_file());
        // A PXE folder alone makes (and fixes) its own BIOS image.
        std::fs::write(&sys.memdisk, "memdisk").unwrap();
        let req = ImageRequest { bios: None, uefi: None, pxe: Some(dir.path().join("pxe3")) };
        assert!(create_images_with(&kernel, &bundle, &req, &sys).unwrap().pxe_bios);
        let mut bytes = std::fs::read(dir.path().join("pxe3").join(PXE_BIOS_IMAGE)).unwrap();
        assert_eq!(stage2::patch_bios_image(&mut bytes), Ok(stage2::Patched::Already));
    }

}
