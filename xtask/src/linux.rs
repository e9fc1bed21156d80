//! The Linux guest kit: Debian's cloud kernel and an initramfs built around Debian's static
//! busybox, fetched and made under `target/linux/` without installing anything on the host.
//!
//! - `apt-get download` fetches `linux-image-<version>-cloud-amd64-unsigned` (the newest the
//!   host's package lists know) and `busybox-static` into `target/linux/debs/`; `dpkg-deb -x`
//!   unpacks them into `target/linux/root/`. Nothing is installed.
//! - `target/linux/vmlinuz` is the bzImage; `target/linux/initramfs.cpio.gz` is a gzipped
//!   newc cpio archive ([`Cpio`], written here: the format is a few lines, and the crates
//!   that write it pull in far more than it needs) holding busybox and an `/init` that mounts
//!   proc, sys and devtmpfs, prints [`READY`] with the kernel's uptime, and runs a shell on the
//!   console; and `/bin/tlbstress` (`xtask/guest-tools/tlbstress.c`, built with `cc`), which
//!   checks TLB shootdowns across the guest's CPUs.
//! - Both are made once; `target/linux/KIT` records the kernel package they came from and the
//!   initramfs's contents ([`INITRAMFS_VERSION`]): a kit made before the contents changed gets
//!   a new initramfs.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The line `/init` prints when the guest's userspace is up, followed by
/// `uptime=<seconds> kernel=<release>`.
pub const READY: &str = "bastion-linux: ready";

/// What `/init` does (busybox's shell). `cttyhack` gives the shell the console as its
/// controlling terminal, so Ctrl-C and job control work.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read up idle < /proc/uptime
echo "bastion-linux: ready uptime=$up kernel=$(uname -r)"
exec setsid cttyhack sh
"#;

/// The kernel and initramfs for Linux guests.
#[derive(Debug, Clone)]
pub struct Kit {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// The Debian package the kernel came from.
    pub package: String,
}

/// Where the kit lives: `target/linux/`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target/linux")
}

/// What the initramfs holds, as a version: a kit whose stamp names another gets its initramfs
/// built again (from the packages already unpacked) instead of being used as it is.
const INITRAMFS_VERSION: &str = "initramfs 2: busybox, /init, tlbstress";

/// The C source of `/bin/tlbstress` (see the file): built here with the host's C compiler as
/// a static executable, as no Debian package has such a checker.
const TLBSTRESS_C: &str = include_str!("../guest-tools/tlbstress.c");

/// The kit, fetched and built if it is not there yet.
pub fn fetch(root: &Path) -> Result<Kit> {
    let dir = dir(root);
    let kit = Kit { vmlinuz: dir.join("vmlinuz"), initramfs: dir.join("initramfs.cpio.gz"), package: String::new() };
    let stamp = dir.join("KIT");
    let debs = dir.join("debs");
    let unpacked = dir.join("root");
    if let Ok(text) = std::fs::read_to_string(&stamp) {
        let mut lines = text.lines();
        let package = lines.next().unwrap_or("").trim().to_string();
        if kit.vmlinuz.is_file() && kit.initramfs.is_file() && lines.next() == Some(INITRAMFS_VERSION) {
            return Ok(Kit { package, ..kit });
        }
        if kit.vmlinuz.is_file() && unpacked.join("bin/busybox").is_file() {
            write_initramfs(&dir, &unpacked, &kit)?;
            std::fs::write(&stamp, format!("{package}\n{INITRAMFS_VERSION}\n"))?;
            eprintln!("xtask: Linux guest initramfs rebuilt: {}", kit.initramfs.display());
            return Ok(Kit { package, ..kit });
        }
    }
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let package = newest_cloud_kernel()?;
    eprintln!("xtask: fetching {package} and busybox-static with apt-get download (nothing is installed)");
    let status = Command::new("apt-get")
        .args(["download", &package, "busybox-static"])
        .current_dir(&debs)
        .status()
        .context("cannot run apt-get (the Linux guest kit comes from Debian packages)")?;
    if !status.success() {
        bail!(
            "apt-get download {package} busybox-static failed ({status}): offline, or the package lists are old.\n\
             With network access run `apt-get update` (as root) and try again, or put a bzImage at {} and an \
             initramfs at {} yourself, and a line naming where they came from in {}.",
            kit.vmlinuz.display(),
            kit.initramfs.display(),
            stamp.display()
        );
    }
    for deb in std::fs::read_dir(&debs)?.filter_map(|e| e.ok()).map(|e| e.path()) {
        if deb.extension().is_some_and(|x| x == "deb") {
            let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).status().context("cannot run dpkg-deb")?;
            if !status.success() {
                bail!("dpkg-deb -x {} failed ({status})", deb.display());
            }
        }
    }
    let boot = unpacked.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{package} has no /boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    std::fs::copy(&vmlinuz, &kit.vmlinuz)?;
    write_initramfs(&dir, &unpacked, &kit)?;
    std::fs::write(&stamp, format!("{package}\n{INITRAMFS_VERSION}\n"))?;
    eprintln!("xtask: Linux kit ready: {} and {}", kit.vmlinuz.display(), kit.initramfs.display());
    Ok(Kit { package, ..kit })
}

/// Builds `tlbstress` and writes the gzipped initramfs with busybox from `unpacked`.
fn write_initramfs(dir: &Path, unpacked: &Path, kit: &Kit) -> Result<()> {
    let busybox = std::fs::read(unpacked.join("bin/busybox")).context("busybox-static has no /bin/busybox")?;
    let tlbstress = build_tlbstress(dir)?;
    let cpio = initramfs(&busybox, &tlbstress);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&cpio)?;
    std::fs::write(&kit.initramfs, gz.finish()?)?;
    Ok(())
}

/// Compiles `guest-tools/tlbstress.c` into a static x86_64 Linux executable with `cc` (the C
/// compiler Rust already links host programs with; static linking needs `libc6-dev`).
fn build_tlbstress(dir: &Path) -> Result<Vec<u8>> {
    let src = dir.join("tlbstress.c");
    let out = dir.join("tlbstress");
    std::fs::write(&src, TLBSTRESS_C)?;
    let status = Command::new("cc")
        .args(["-static", "-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("cannot run cc, which builds the Linux guests' tlbstress tool (Debian: apt-get install gcc libc6-dev)")?;
    if !status.success() {
        bail!("cc -static -pthread {} failed ({status}); static linking needs libc6-dev", src.display());
    }
    std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
}

/// The newest `linux-image-<version>-cloud-amd64-unsigned` the package lists know; as root,
/// with no such package known (a fresh machine has empty lists), after an `apt-get update`.
fn newest_cloud_kernel() -> Result<String> {
    if let Ok(p) = search_cloud_kernel() {
        return Ok(p);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("xtask: no cloud kernel in the package lists; running apt-get update");
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
    }
    search_cloud_kernel()
}

fn search_cloud_kernel() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-[0-9].*-cloud-amd64-unsigned$"])
        .output()
        .context("cannot run apt-cache (the Linux guest kit comes from Debian packages)")?;
    newest(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        "apt-cache knows no linux-image-*-cloud-amd64-unsigned package: run `apt-get update` (as root, with network \
         access) on a Debian host"
            .to_string()
    })
}

/// Picks the highest version among `apt-cache search` lines (`<package> - <description>`):
/// versions compare number by number (6.1.0-10 is newer than 6.1.0-9).
fn newest(search: &str) -> Option<String> {
    let key = |name: &str| -> Vec<u64> { name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect() };
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("linux-image-") && n.ends_with("-cloud-amd64-unsigned"))
        .max_by_key(|n| key(n))
        .map(str::to_string)
}

/// The initramfs: busybox, `/init`, the mount points, and `/dev/console` (the kernel opens it
/// for init's standard streams before devtmpfs is mounted).
pub fn initramfs(busybox: &[u8], tlbstress: &[u8]) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "root"] {
        c.dir(d);
    }
    c.char_device("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.file("bin/tlbstress", 0o755, tlbstress);
    c.file("init", 0o755, INIT.as_bytes());
    c.finish()
}

/// A "newc" cpio archive (the SVR4 format without checksums that the kernel's initramfs
/// unpacker reads; Documentation/driver-api/early-userspace/buffer-format.rst): per entry a
/// 110-byte ASCII header `070701` + 13 eight-digit hex fields, the NUL-terminated name padded
/// to a multiple of 4 bytes (header included), the data padded likewise, and a final entry
/// named `TRAILER!!!`.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | 0o600, 1, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdev major, rdev minor, data).
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            let at = total - a.len();
            assert_eq!(at % 4, 0, "every header starts 4-byte aligned");
            assert_eq!(&a[..6], b"070701", "newc magic");
            let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, size, major, minor, namesize) = (field(1), field(6) as usize, field(9), field(10), field(11) as usize);
            let name = std::str::from_utf8(&a[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(a[110 + namesize - 1], 0, "names end in NUL");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = a[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, major, minor, data));
        }
    }

    #[test]
    fn newc_entries_read_back_with_their_modes_devices_and_data() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.char_device("dev/console", 5, 1);
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.file("odd", 0o644, b"abcde");
        let entries = parse(&c.finish());
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0], ("bin".into(), 0o040755, 0, 0, vec![]));
        assert_eq!(entries[1], ("dev/console".into(), 0o020600, 5, 1, vec![]));
        assert_eq!(entries[2], ("init".into(), 0o100755, 0, 0, b"#!/bin/sh\n".to_vec()));
        assert_eq!(entries[3].4, b"abcde", "data of a length that needs padding");
    }

    #[test]
    fn the_initramfs_holds_busybox_tlbstress_an_executable_init_and_the_console() {
        let entries = parse(&initramfs(b"BUSYBOX", b"TLBSTRESS"));
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("no {n}")).clone();
        assert_eq!(find("bin/busybox").4, b"BUSYBOX");
        let tlbstress = find("bin/tlbstress");
        assert_eq!((tlbstress.1, tlbstress.4), (0o100755, b"TLBSTRESS".to_vec()));
        let init = find("init");
        assert_eq!(init.1, 0o100755);
        let script = String::from_utf8(init.4).unwrap();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.contains("mount -t devtmpfs") && script.contains("mount -t proc") && script.contains(READY));
        assert_eq!(find("dev/console").2, 5);
        for d in ["proc", "sys", "dev", "bin"] {
            assert_eq!(find(d).1 & S_IFDIR, S_IFDIR, "{d}");
        }
    }

    #[test]
    fn the_newest_cloud_kernel_wins_by_numbers_not_text() {
        let search = "linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                      linux-image-6.1.0-10-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                      linux-image-6.1.0-10-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
                      linux-image-5.10.0-30-cloud-amd64-unsigned - Linux 5.10\n";
        assert_eq!(newest(search).as_deref(), Some("linux-image-6.1.0-10-cloud-amd64-unsigned"));
        assert_eq!(newest(""), None);
        assert_eq!(newest("linux-image-6.1.0-10-amd64-unsigned - generic\n"), None);
    }
}
