//! The test guests (`hypervisor/guests`, crate `test-guests`), built from this repository and
//! turned into the flat binaries Bastion loads at guest-physical 0x8000. Each is a Multiboot 1
//! kernel too (boot.s: a header with the address fields, and a 32-bit entry).
//!
//! [`test_guests`] builds them once per test process, in `target/guests/` (a target directory
//! of their own, so the nested cargo never waits on the outer one's lock), and writes
//! `target/guests/bin/<name>.bin` for each name in [`GUESTS`] with `llvm-objcopy -O binary`.
//! What each guest prints and how it ends is documented in its `src/bin/<name>.rs`.

use crate::{llvm_objcopy, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every test guest, by binary name.
pub const GUESTS: [&str; 27] = [
    "modes", "checks", "overrun", "vmx-ud", "halt", "busy", "irqoff", "echo", "crash", "irqecho", "com2", "isolate-a", "isolate-b", "arch", "smphalt", "pit", "worker", "printer", "mmio", "flood", "reboot", "multiboot", "nmi", "ipi", "bench", "spin", "hostile",
];

/// Where the guest image is loaded (and where its first byte, the real-mode entry, runs).
pub const LOAD_ADDRESS: u64 = 0x8000;
/// Upper bound of a guest image: its `.bss` (page tables, statics) starts at 0x70000
/// (`hypervisor/guests/link.ld`), so the image must fit in 0x8000..0x70000.
pub const MAX_IMAGE_SIZE: u64 = 0x7_0000 - LOAD_ADDRESS;

/// Cargo target directory of the guest build.
pub fn guests_target_dir() -> PathBuf {
    workspace_root().join("target").join("guests")
}

/// The folder holding `<name>.bin` for every guest in [`GUESTS`], built once per process.
/// Panics with the build's error if the guests do not build.
pub fn test_guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_guests().unwrap_or_else(|e| panic!("cannot build the test guests: {e}")))
}

/// The flat image of guest `name` (one of [`GUESTS`]), building the guests if needed.
pub fn guest_image(name: &str) -> PathBuf {
    assert!(GUESTS.contains(&name), "unknown test guest `{name}`; the guests are {GUESTS:?}");
    test_guests().join(format!("{name}.bin"))
}

/// Builds the guests (`cargo build -p test-guests --target x86_64-unknown-none --release`)
/// and converts each ELF into `<dir>/<name>.bin`; returns the folder.
pub fn build_guests() -> Result<PathBuf, String> {
    let target_dir = guests_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "test-guests", "--target", "x86_64-unknown-none", "--release"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build -p test-guests --target x86_64-unknown-none --release` failed ({status}); its errors are above"
        ));
    }
    let elf_dir = target_dir.join("x86_64-unknown-none").join("release");
    let out_dir = target_dir.join("bin");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let objcopy = llvm_objcopy()?;
    for name in GUESTS {
        let elf = elf_dir.join(name);
        let bin = out_dir.join(format!("{name}.bin"));
        // Written beside and renamed, so another test process never reads a half-written
        // image (test binaries run in parallel and all build the guests).
        let tmp = out_dir.join(format!("{name}.bin.tmp-{}", std::process::id()));
        let status = Command::new(&objcopy)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&tmp)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", objcopy.display()))?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("llvm-objcopy -O binary {} failed ({status})", elf.display()));
        }
        std::fs::rename(&tmp, &bin)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), bin.display()))?;
    }
    Ok(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The images are what the guest ABI loads: each ELF is linked at 0x8000 without
    /// run-time relocations, so its flat copy is the program; the copy starts with the
    /// executable segment at 0x8000 (whose first byte is `_start`, link.ld checks that), and
    /// is small enough to sit below the guests' .bss.
    #[test]
    fn guests_build_into_flat_images_that_fit() {
        let dir = test_guests();
        let elf_dir = guests_target_dir().join("x86_64-unknown-none").join("release");
        for name in GUESTS {
            let elf = std::fs::read(elf_dir.join(name)).unwrap();
            assert_eq!(&elf[..5], b"\x7fELF\x02", "{name}: not an ELF64");
            // e_type: ET_EXEC, not ET_DYN (linked with --no-pie): a PIE would need its
            // R_X86_64_RELATIVE relocations applied, and nothing applies them.
            assert_eq!(u16_at(&elf, 16), 2, "{name}: not ET_EXEC");
            assert_eq!(u64_at(&elf, 24), LOAD_ADDRESS, "{name}: e_entry is not the load address");

            let bin = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
            assert_eq!(dir.join(format!("{name}.bin")), guest_image(name));
            assert!(!bin.is_empty() && bin[0] != 0, "{name}.bin is empty or starts with 0");
            assert!(
                bin.len() as u64 <= MAX_IMAGE_SIZE,
                "{name}.bin is {:#x} bytes, more than the {MAX_IMAGE_SIZE:#x} that fit below .bss",
                bin.len()
            );
            // Program headers: the segment at 0x8000 is executable and is where the flat
            // image starts; every other segment with file contents lies inside the image.
            let (phoff, phentsize, phnum) = (u64_at(&elf, 32) as usize, u16_at(&elf, 54) as usize, u16_at(&elf, 56));
            let mut found_entry_segment = false;
            for i in 0..phnum as usize {
                let ph = &elf[phoff + i * phentsize..][..phentsize];
                let (p_type, p_flags) = (u32::from_le_bytes(ph[0..4].try_into().unwrap()), ph[4]);
                let (offset, vaddr, filesz) = (u64_at(ph, 8) as usize, u64_at(ph, 16), u64_at(ph, 32));
                if p_type != 1 || filesz == 0 {
                    continue; // not PT_LOAD, or nothing in the file (.bss)
                }
                assert!(
                    vaddr >= LOAD_ADDRESS && vaddr + filesz <= LOAD_ADDRESS + bin.len() as u64,
                    "{name}: segment at {vaddr:#x} ({filesz:#x} bytes) is outside the flat image"
                );
                let at = (vaddr - LOAD_ADDRESS) as usize;
                assert_eq!(
                    &bin[at..at + filesz as usize],
                    &elf[offset..offset + filesz as usize],
                    "{name}: {vaddr:#x}"
                );
                if vaddr == LOAD_ADDRESS {
                    assert!(p_flags & 1 != 0, "{name}: the segment at the load address is not executable");
                    found_entry_segment = true;
                }
            }
            assert!(found_entry_segment, "{name}: no segment at {LOAD_ADDRESS:#x}");
        }
    }
}

/// A `[[guest]]` table for a test config: guest `name` running the test guest `image`
/// (`guests/<image>.bin` in the bundle) with 4 MiB, plus `extra` keys (whole lines).
pub fn config_entry(name: &str, image: &str, extra: &str) -> String {
    format!("\n[[guest]]\nname = \"{name}\"\nkernel = \"guests/{image}.bin\"\nmemory_mib = 4\n{extra}")
}

/// A test image for `config` with the named test guests packed as `guests/<name>.bin`.
pub fn image_with_guests(test: &str, config: &str, images: &[&str]) -> crate::TestImage {
    let paths: Vec<(String, PathBuf)> = images.iter().map(|g| (format!("guests/{g}.bin"), guest_image(g))).collect();
    let files: Vec<(&str, &Path)> = paths.iter().map(|(d, p)| (d.as_str(), p.as_path())).collect();
    crate::image_with_files(test, config, &files)
}
