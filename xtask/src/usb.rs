//! `cargo xtask usb --device DEV`: writes Bastion's image to a USB stick, as a user installs
//! it on a host (issue "Boot media and fleets", item 1).
//!
//! Before a byte is written the target is inspected through sysfs and the mount table: a
//! partition, a device that is mounted, used as swap or held by another block device (LVM,
//! RAID, dm-crypt), or one smaller than the image is refused outright; one that is not
//! removable or is larger than 256 GiB (likely a system disk, not a stick) is refused unless
//! `--force` is given. The device is then opened with `O_EXCL` (the kernel's own refusal for
//! a block device in use), written in 4 MiB blocks with progress, synced, its page cache
//! dropped, and read back against the image. A regular file is written the same way (what
//! the tests use, besides a loop device).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Larger than this is more likely a system disk than a USB stick.
pub const LARGEST_STICK: u64 = 256 << 30;
const BLOCK: usize = 4 << 20;

/// What a target path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    /// A whole block device.
    Disk,
    /// A partition of the block device named.
    Partition { disk: String },
}

/// What `inspect` found out about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub kind: Kind,
    /// Bytes (a file: 0 if new; it grows).
    pub size: u64,
    pub removable: bool,
    /// Why it is in use: a mount point, swap, a holder device.
    pub in_use: Vec<String>,
    /// Vendor and model, where sysfs has them.
    pub model: String,
}

/// Why a target must not be written; `None` if it may. `force` lifts only the refusals that
/// guard against a wrong guess (not removable, larger than a stick); what would destroy a
/// mounted file system or could not hold the image is refused regardless.
pub fn refusal(t: &Target, image_len: u64, force: bool) -> Option<String> {
    let name = t.path.display();
    if let Kind::Partition { disk } = &t.kind {
        return Some(format!("{name} is a partition; the image is a whole disk: give the device itself (/dev/{disk})"));
    }
    if !t.in_use.is_empty() {
        return Some(format!("{name} is in use ({}); unmount it (or stop using it) first", t.in_use.join(", ")));
    }
    if t.kind == Kind::Disk && t.size < image_len {
        return Some(format!("{name} holds {} bytes, the image needs {image_len}", t.size));
    }
    if force || t.kind == Kind::File {
        return None;
    }
    if !t.removable {
        return Some(format!("{name} is not a removable device (a system disk?); add --force if it really is the stick"));
    }
    if t.size > LARGEST_STICK {
        return Some(format!("{name} is {} GiB, larger than a USB stick is likely to be (256 GiB); add --force if it really is the stick", t.size >> 30));
    }
    None
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Inspects `path`: a regular file (or one that does not exist yet), or a block device
/// through `/sys/dev/block/MAJ:MIN`, `/proc/self/mountinfo` and `/proc/swaps`.
pub fn inspect(path: &Path) -> Result<Target> {
    // Under /dev only devices: a stick that is not plugged in (or a typo) must not become a
    // file in devtmpfs, which would then shadow the device when it appears.
    let in_dev = path.starts_with("/dev");
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && in_dev => {
            bail!("{} does not exist: is the stick plugged in? (`lsblk` lists the disks)", path.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target { path: path.into(), kind: Kind::File, size: 0, removable: false, in_use: Vec::new(), model: String::new() });
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if meta.file_type().is_file() && in_dev {
        bail!("{} is a regular file under /dev, not a device", path.display());
    }
    if meta.file_type().is_file() {
        // A file behind a loop device is that device's storage: writing it under a mounted
        // file system corrupts it just as writing the device would.
        let mut in_use = Vec::new();
        for (loop_name, number) in loops_backed_by(&meta) {
            let Ok(t) = block_target(Path::new(&format!("/dev/{loop_name}")), &number) else { continue };
            in_use.extend(t.in_use.into_iter().map(|u| format!("it backs /dev/{loop_name}: {u}")));
        }
        return Ok(Target { path: path.into(), kind: Kind::File, size: meta.len(), removable: false, in_use, model: String::new() });
    }
    if !meta.file_type().is_block_device() {
        bail!("{} is neither a block device nor a regular file", path.display());
    }
    let rdev = meta.rdev();
    block_target(path, &format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// The loop devices backed by the file `meta` describes, as (name, `MAJ:MIN`). Each attached
/// loop device is asked for its file's device and inode (`LOOP_GET_STATUS64`, loop(4)),
/// which holds whatever path the file was attached by and in whichever mount namespace;
/// where that cannot be asked (no permission to open the device), the path the kernel names
/// in `/sys/block/loopN/loop/backing_file` is followed and compared by device and inode, so
/// another path to the same file matches too.
fn loops_backed_by(meta: &std::fs::Metadata) -> Vec<(String, String)> {
    let me = (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let dir = entry.path();
        let Some(backing) = read_trimmed(&dir.join("loop/backing_file")) else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let same = match loop_backing_id(Path::new(&format!("/dev/{name}"))) {
            Some(id) => id == me,
            None => std::fs::metadata(&backing).is_ok_and(|b| (b.dev(), b.ino()) == (meta.dev(), meta.ino())),
        };
        if let (true, Some(number)) = (same, read_trimmed(&dir.join("dev"))) {
            found.push((name, number));
        }
    }
    found.sort();
    found
}

/// `struct loop_info64` of `<linux/loop.h>` (the `libc` crate does not define it): the
/// backing file's device and inode lead it.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

// The kernel's size for it: 5 × 8 + 4 × 4 + 64 + 64 + 32 + 2 × 8 bytes.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

/// `LOOP_GET_STATUS64` from `<linux/loop.h>`.
const LOOP_GET_STATUS64: libc::c_ulong = 0x4c05;

/// The (major, minor, inode) of the file behind loop device `dev`, from the kernel
/// (`LOOP_GET_STATUS64`); None if the device cannot be opened or has no file.
fn loop_backing_id(dev: &Path) -> Option<(u32, u32, u64)> {
    use std::os::fd::AsRawFd;
    let f = File::open(dev).ok()?;
    // SAFETY: all-zero bytes are a valid LoopInfo64 (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the whole call and `info` is a writable
    // `struct loop_info64`, the argument LOOP_GET_STATUS64 fills.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info as *mut LoopInfo64) };
    (r == 0).then(|| decode_dev(info.device)).map(|(major, minor)| (major, minor, info.inode))
}

/// The kernel's 32-bit device number encoding (`new_encode_dev`, which `LOOP_GET_STATUS64`
/// reports): minor bits 7:0 in 7:0, major in 19:8, minor bits 19:8 in 31:20.
fn decode_dev(d: u64) -> (u32, u32) {
    (((d >> 8) & 0xfff) as u32, ((d & 0xff) | ((d >> 12) & 0xfff00)) as u32)
}

/// A block device by its number (`MAJ:MIN`): a partition, or a whole disk with its size,
/// removability, model and every way it or a partition of it is in use.
fn block_target(path: &Path, number: &str) -> Result<Target> {
    let sys = PathBuf::from(format!("/sys/dev/block/{number}"));
    let sys = std::fs::canonicalize(&sys).with_context(|| format!("{} is a block device sysfs does not know ({})", path.display(), sys.display()))?;
    if sys.join("partition").exists() {
        let disk = sys.parent().and_then(|p| p.file_name()).map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
        return Ok(Target { path: path.into(), kind: Kind::Partition { disk }, size: 0, removable: false, in_use: Vec::new(), model: String::new() });
    }
    let size = read_trimmed(&sys.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
    let removable = read_trimmed(&sys.join("removable")).as_deref() == Some("1");
    let model = [read_trimmed(&sys.join("device/vendor")), read_trimmed(&sys.join("device/model"))].into_iter().flatten().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    // The disk and its partitions: their device numbers and names.
    let mut devs = vec![(number.to_string(), sys.file_name().unwrap().to_string_lossy().into_owned())];
    let mut holders = Vec::new();
    for dir in std::iter::once(sys.clone()).chain(std::fs::read_dir(&sys).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.join("partition").exists())) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if dir != sys {
            if let Some(d) = read_trimmed(&dir.join("dev")) {
                devs.push((d, name.clone()));
            }
        }
        for h in std::fs::read_dir(dir.join("holders")).into_iter().flatten().flatten() {
            holders.push(format!("/dev/{name} is held by {}", h.file_name().to_string_lossy()));
        }
    }
    let mut in_use = mounts_of(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(), &devs);
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for (_, name) in &devs {
        if swaps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(&format!("/dev/{name}"))) {
            in_use.push(format!("/dev/{name} is swap"));
        }
    }
    in_use.extend(holders);
    Ok(Target { path: path.into(), kind: Kind::Disk, size, removable, in_use, model })
}

/// The mounts (from `/proc/self/mountinfo`: field 3 is the device number, field 5 the mount
/// point) of the devices given as ("MAJ:MIN", name).
pub fn mounts_of(mountinfo: &str, devs: &[(String, String)]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (dev, at) = (f.get(2)?, f.get(4)?);
            let (_, name) = devs.iter().find(|(d, _)| d == dev)?;
            Some(format!("/dev/{name} is mounted on {at}"))
        })
        .collect()
}

/// Writes `image` to `dev` (a block device opened exclusively, or a file) in 4 MiB blocks,
/// calling `progress(done, total)` after each, then syncs it to the medium.
pub fn write(image: &Path, dev: &Path, block_device: bool, mut progress: impl FnMut(u64, u64)) -> Result<()> {
    let mut src = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let total = src.metadata()?.len();
    let mut opts = OpenOptions::new();
    opts.write(true);
    if block_device {
        // O_EXCL on a block device: the kernel refuses (EBUSY) one that is mounted or held.
        opts.custom_flags(libc::O_EXCL);
    } else {
        opts.create(true).truncate(true);
    }
    let mut dst = opts.open(dev).with_context(|| format!("cannot open {} for writing", dev.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).with_context(|| format!("writing {} at byte {done}", dev.display()))?;
        done += n as u64;
        progress(done, total);
    }
    dst.sync_all().with_context(|| format!("cannot sync {}", dev.display()))?;
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads `image.len()` bytes back from `dev` (its page cache dropped first, so they come from
/// the medium) and compares; the error names the first byte that differs.
pub fn verify(image: &Path, dev: &Path) -> Result<()> {
    let mut want = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let mut got = File::open(dev).with_context(|| format!("cannot open {} to read it back", dev.display()))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: an advisory call on an open descriptor; it only drops clean cached pages.
        unsafe { libc::posix_fadvise(got.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut at = 0u64;
    loop {
        let n = read_full(&mut want, &mut a)?;
        if n == 0 {
            return Ok(());
        }
        let m = read_full(&mut got, &mut b[..n])?;
        if let Some(i) = (0..m).find(|&i| a[i] != b[i]) {
            bail!("read back {}: byte {} is {:#04x}, the image has {:#04x}", dev.display(), at + i as u64, b[i], a[i]);
        }
        if m < n {
            bail!("read back {}: it ends at byte {}, the image is longer", dev.display(), at + m as u64);
        }
        at += n as u64;
    }
}

/// Inspects, refuses or writes, then verifies; prints what it does.
pub fn write_stick(image: &Path, device: &Path, force: bool) -> Result<()> {
    let len = std::fs::metadata(image).with_context(|| format!("cannot read {}", image.display()))?.len();
    let t = inspect(device)?;
    if let Some(why) = refusal(&t, len, force) {
        bail!("refusing to write {}: {why}", device.display());
    }
    let what = match t.kind {
        Kind::File => "a file".to_string(),
        _ => format!("{}{} MiB{}", if t.model.is_empty() { String::new() } else { format!("{}, ", t.model) }, t.size >> 20, if t.removable { ", removable" } else { "" }),
    };
    eprintln!("usb: writing {} ({} MiB) to {} ({what})", image.display(), len.div_ceil(1 << 20), device.display());
    let mut last = 0;
    write(image, device, t.kind == Kind::Disk, |done, total| {
        let pct = done * 100 / total.max(1);
        if pct != last || done == total {
            last = pct;
            eprint!("\rusb: {} of {} MiB ({pct} %)", done >> 20, total.div_ceil(1 << 20));
        }
    })?;
    eprintln!("\nusb: synced; reading it back");
    verify(image, device)?;
    eprintln!("usb: {} verified: {len} bytes as in the image", device.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: u64, removable: bool) -> Target {
        Target { path: "/dev/sdx".into(), kind: Kind::Disk, size, removable, in_use: Vec::new(), model: "ACME Stick".into() }
    }

    #[test]
    fn a_stick_is_written_and_what_looks_like_a_system_disk_needs_force() {
        let img = 48 << 20;
        assert_eq!(refusal(&disk(16 << 30, true), img, false), None);
        // Exactly 256 GiB is still a stick; one byte more is not.
        assert_eq!(refusal(&disk(256 << 30, true), img, false), None);
        let big = refusal(&disk((256 << 30) + 512, true), img, false).unwrap();
        assert!(big.contains("larger than a USB stick") && big.contains("--force"), "{big}");
        assert_eq!(refusal(&disk((256 << 30) + 512, true), img, true), None);
        let fixed = refusal(&disk(16 << 30, false), img, false).unwrap();
        assert!(fixed.contains("not a removable device") && fixed.contains("--force"), "{fixed}");
        assert_eq!(refusal(&disk(16 << 30, false), img, true), None);
    }

    #[test]
    fn in_use_partitions_and_too_small_are_refused_even_with_force() {
        let img = 48 << 20;
        let mut t = disk(16 << 30, true);
        t.in_use = vec!["/dev/sdx1 is mounted on /media/stick".into()];
        let r = refusal(&t, img, true).unwrap();
        assert!(r.contains("in use (/dev/sdx1 is mounted on /media/stick)") && r.contains("unmount"), "{r}");
        let part = Target { kind: Kind::Partition { disk: "sdx".into() }, ..disk(0, true) };
        assert!(refusal(&part, img, true).unwrap().contains("give the device itself (/dev/sdx)"));
        let small = refusal(&disk(img - 512, true), img, true).unwrap();
        assert!(small.contains(&format!("holds {} bytes, the image needs {img}", img - 512)), "{small}");
        assert_eq!(refusal(&disk(img, true), img, false), None);
        // A file is always written (it grows); size and removability do not apply.
        let file = Target { kind: Kind::File, ..disk(0, false) };
        assert_eq!(refusal(&file, img, false), None);
    }

    #[test]
    fn under_dev_only_an_existing_block_device_is_a_target() {
        let e = inspect(Path::new("/dev/bastion-no-such-stick")).unwrap_err().to_string();
        assert!(e.contains("does not exist: is the stick plugged in?"), "{e}");
        // A character device (or anything not a block device or file) is refused everywhere.
        let e = inspect(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("neither a block device nor a regular file"), "{e}");
        // Elsewhere a missing path is a new file.
        let t = inspect(&scratch("new-file")).unwrap();
        assert_eq!((t.kind, t.size), (Kind::File, 0));
    }

    #[test]
    fn mounts_are_found_by_device_number_in_mountinfo() {
        // proc(5): mountinfo fields are ID, parent ID, major:minor, root, mount point, ...
        let info = "22 1 8:0 / / rw - ext4 /dev/sda rw\n36 22 8:17 / /media/stick rw - vfat /dev/sdb1 rw\n37 22 0:5 / /dev rw - devtmpfs udev rw\n";
        let devs = [("8:16".to_string(), "sdb".to_string()), ("8:17".to_string(), "sdb1".to_string())];
        assert_eq!(mounts_of(info, &devs), ["/dev/sdb1 is mounted on /media/stick"]);
        assert!(mounts_of(info, &devs[..1]).is_empty());
    }

    #[test]
    fn a_loop_devices_file_is_named_in_the_kernels_device_number_encoding() {
        // new_encode_dev: minor bits 7:0 in 7:0, major in 19:8, minor bits 19:8 in 31:20.
        assert_eq!(decode_dev(0x0803), (8, 3));
        assert_eq!(decode_dev(0x0103_4521), (0x345, 0x1021));
        assert_eq!(decode_dev(0xfff0_0000), (0, 0xfff00));
        assert_eq!(decode_dev(0x000f_ff00), (0xfff, 0));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = qemu_tests::workspace_root().join("target/tmp/usb-test");
        std::fs::create_dir_all(&d).unwrap();
        d.join(format!("{name}-{}", std::process::id()))
    }

    /// An "image" of `len` bytes that is not all one value (so a misplaced block shows).
    fn image(name: &str, len: usize) -> PathBuf {
        let p = scratch(name);
        std::fs::write(&p, (0..len).map(|i| (i * 7 + i / 4096) as u8).collect::<Vec<u8>>()).unwrap();
        p
    }

    #[test]
    fn a_file_is_written_with_progress_and_read_back_and_a_changed_byte_is_named() {
        let img = image("img", 9 << 20 | 123);
        let out = scratch("out");
        std::fs::write(&out, vec![0xffu8; 20 << 20]).unwrap();
        let mut seen = Vec::new();
        write(&img, &out, false, |d, t| seen.push((d, t))).unwrap();
        let len = (9 << 20 | 123) as u64;
        assert_eq!(seen, [(4 << 20, len), (8 << 20, len), (len, len)]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap(), "a file is truncated to the image");
        verify(&img, &out).unwrap();
        let mut bytes = std::fs::read(&out).unwrap();
        bytes[5_000_000] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        let e = verify(&img, &out).unwrap_err().to_string();
        assert!(e.contains("byte 5000000 is"), "{e}");
        bytes.truncate(1000);
        std::fs::write(&out, &bytes).unwrap();
        let e = verify(&img, &out).unwrap_err().to_string();
        assert!(e.contains("it ends at byte 1000"), "{e}");
        write_stick(&img, &out, false).unwrap();
        verify(&img, &out).unwrap();
        for p in [img, out] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// A loop device over a file, unmounted and detached when dropped (also when the test
    /// fails).
    struct Loop {
        dev: String,
        mnt: PathBuf,
        /// Files the test made (backing file, images, the partition's node): removed too.
        files: Vec<PathBuf>,
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.mnt).stderr(std::process::Stdio::null()).status();
            let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).status();
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir(&self.mnt);
        }
    }

    /// Loop devices need root: false (and a note) without it.
    fn as_root() -> bool {
        // SAFETY: no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: loop devices need root");
        }
        root
    }

    /// Makes an ext2 file system on `dev` and mounts it on `mnt`; false if this host cannot.
    fn format_and_mount(dev: &str, mnt: &Path) -> bool {
        std::fs::create_dir_all(mnt).unwrap();
        sh(&format!("mkfs.ext2 -q -F {dev} >/dev/null 2>&1 && mount {dev} {}", mnt.display()))
    }

    fn sh(c: &str) -> bool {
        std::process::Command::new("sh").arg("-c").arg(c).status().is_ok_and(|s| s.success())
    }

    fn attach(backing: &Path) -> Option<String> {
        let o = std::process::Command::new("losetup").args(["--find", "--show", "--partscan"]).arg(backing).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    #[test]
    fn a_loop_device_is_refused_as_fixed_then_written_with_force_and_refused_once_mounted() {
        if !as_root() {
            return;
        }
        let backing = scratch("loop");
        std::fs::write(&backing, vec![0u8; 16 << 20]).unwrap();
        let Some(dev) = attach(&backing) else {
            eprintln!("skipped: losetup cannot attach a loop device here");
            return;
        };
        let guard = Loop { dev: dev.clone(), mnt: scratch("mnt"), files: vec![backing.clone(), scratch("loop-img"), scratch("loop-big"), scratch("part")] };
        let dev_path = PathBuf::from(&dev);
        let t = inspect(&dev_path).unwrap();
        assert_eq!((t.kind.clone(), t.size, t.removable), (Kind::Disk, 16 << 20, false), "{t:?}");
        assert!(t.in_use.is_empty(), "{t:?}");
        // Attached but not in use, its file is a file like any other.
        assert_eq!(inspect(&backing).unwrap().in_use, Vec::<String>::new());
        let img = image("loop-img", 1 << 20);
        let e = write_stick(&img, &dev_path, false).unwrap_err().to_string();
        assert!(e.contains("not a removable device"), "{e}");
        write_stick(&img, &dev_path, true).unwrap();
        // Too small for an image of 17 MiB, even with --force.
        let big = image("loop-big", 17 << 20);
        let e = write_stick(&big, &dev_path, true).unwrap_err().to_string();
        assert!(e.contains(&format!("holds {} bytes", 16 << 20)), "{e}");
        // A partition: an MBR with one entry (type 0x83, LBA 2048, 8 MiB), added to the
        // kernel's view with partx.
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&16384u32.to_le_bytes());
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        std::fs::OpenOptions::new().write(true).open(&dev_path).unwrap().write_all(&mbr).unwrap();
        let _ = std::process::Command::new("partx").args(["-a", &dev]).stderr(std::process::Stdio::null()).status();
        let mut part = PathBuf::from(format!("{dev}p1"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let name = format!("{}p1", dev.trim_start_matches("/dev/"));
        if let (false, Some(num)) = (part.exists(), read_trimmed(&PathBuf::from(format!("/sys/class/block/{name}/dev")))) {
            // No udev here to make the node: make one from the kernel's device number.
            part = scratch("part");
            let _ = std::fs::remove_file(&part);
            let (major, minor) = num.split_once(':').unwrap();
            let _ = std::process::Command::new("mknod").arg(&part).args(["b", major, minor]).status();
        }
        if part.exists() {
            let e = write_stick(&img, &part, true).unwrap_err().to_string();
            assert!(e.contains(&format!("is a partition; the image is a whole disk: give the device itself ({dev})")), "{e}");
        } else {
            eprintln!("skipped the partition case: partx could not add {dev}'s partition");
        }
        // Mounted: a file system on the whole device, mounted; --force does not help.
        if !format_and_mount(&dev, &guard.mnt) {
            eprintln!("skipped the mounted case: cannot format or mount {dev} here");
            return;
        }
        let e = write_stick(&img, &dev_path, true).unwrap_err().to_string();
        assert!(e.contains(&format!("{dev} is mounted on {}", guard.mnt.display())), "{e}");
        // So is the file behind it, by any path to it.
        let link = scratch("loop-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&backing, &link).unwrap();
        for file in [&backing, &link] {
            let e = write_stick(&img, file, true).unwrap_err().to_string();
            assert!(e.contains(&format!("it backs {dev}: {dev} is mounted on {}", guard.mnt.display())), "{e}");
        }
        let _ = std::fs::remove_file(&link);
        drop(guard);
    }

    #[test]
    fn a_file_behind_a_mounted_loop_device_is_refused_when_the_kernels_path_to_it_is_hidden() {
        if !as_root() {
            return;
        }
        // The file sits in a folder of its own, with a second name (a hard link) outside it.
        let dir = scratch("hidden");
        std::fs::create_dir_all(&dir).unwrap();
        let backing = dir.join("loop");
        std::fs::write(&backing, vec![0u8; 8 << 20]).unwrap();
        let other = scratch("hidden-link");
        let _ = std::fs::remove_file(&other);
        std::fs::hard_link(&backing, &other).unwrap();
        let Some(dev) = attach(&backing) else {
            eprintln!("skipped: losetup cannot attach a loop device here");
            return;
        };
        let guard = Loop { dev: dev.clone(), mnt: scratch("hidden-mnt"), files: vec![backing.clone(), other.clone(), scratch("hidden-img")] };
        if !format_and_mount(&dev, &guard.mnt) {
            eprintln!("skipped: cannot format or mount {dev} here");
            return;
        }
        // A file system mounted over the folder hides the path sysfs gives for the file (as
        // another mount namespace would): only the loop device itself can still name it.
        if !sh(&format!("mount -t tmpfs none {}", dir.display())) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let hidden = std::fs::metadata(&backing).is_err();
        let e = write_stick(&image("hidden-img", 1 << 20), &other, true).map_err(|e| e.to_string());
        let _ = std::process::Command::new("umount").arg(&dir).status();
        assert!(hidden, "the tmpfs did not hide {}", backing.display());
        let e = e.unwrap_err();
        assert!(e.contains(&format!("it backs {dev}: {dev} is mounted on {}", guard.mnt.display())), "{e}");
        drop(guard);
        let _ = std::fs::remove_dir(&dir);
    }
}
