//! Multiboot kernels (issue "SMP guests and multiboot kernels").
//!
//! The `multiboot` test guest, loaded with `format = "multiboot"` (Multiboot 1, its header's
//! address fields), starts in 32-bit protected mode with EAX = 0x2BADB002 and EBX = the boot
//! information (Multiboot spec 3.2) and sees its command line and two modules exactly as the
//! config gives them, its memory as the guest's e820 map says, and "Bastion" as the boot
//! loader (spec 3.3). The same file given as `multiboot2` (its Multiboot 2 header's address,
//! entry address and information request tags) starts with EAX = 0x36D76289 and sees its own
//! command line and module in the boot information's tags (Multiboot 2 spec 3.2, 3.6); a
//! copy whose Multiboot 2 header has a bad checksum is refused by name while the others run.
//! Beside them, the `ipi` guest (4 vCPUs)
//! starts its application processors with INIT-SIPI-SIPI, as a PC kernel does, and checks
//! that fixed IPIs (physical and logical destination, self and broadcast shorthands) and NMIs
//! between its vCPUs each arrive once, at their destination (SDM Vol. 3A 9.4.4, 11.6.1).
//!
//! The same two files boot bare under QEMU (`-kernel`, its own Multiboot loader) and say the
//! same, which is what lets benchmarks compare one binary bare and under Bastion.

use bastion_core::exit::ExitStatus;
use qemu_tests::guests::guest_image;
use qemu_tests::{image_with_bundle, BareKernel, Emulator, Platform, RunOptions};

const CMDLINE: &str = "hello multiboot world --x=1";
const MODULES: [(&str, &str, Option<&str>); 2] = [("mods/alpha.txt", "first module, A", Some("alpha one")), ("mods/beta.txt", "beta!", None)];
const MB2_CMDLINE: &str = "two --tags";
/// Path, contents, command line of the Multiboot 2 guest's module.
const MB2_MODULE: (&str, &str, &str) = ("mods/gamma.txt", "gamma, by tag", "gamma cmd");

fn multiboot_guest_sees_its_boot_information(p: Platform) {
    let mut cfg = format!(
        "[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"mb\"\nformat = \"multiboot\"\nkernel = \"guests/multiboot.bin\"\nmemory_mib = 4\ncmdline = \"{CMDLINE}\"\nmodules = ["
    );
    for (i, (path, _, cmdline)) in MODULES.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        match cmdline {
            Some(c) => cfg += &format!("{sep}{{ path = \"{path}\", cmdline = \"{c}\" }}"),
            None => cfg += &format!("{sep}{{ path = \"{path}\" }}"),
        }
    }
    cfg += &format!("]\n\n[[guest]]\nname = \"mbtwo\"\nformat = \"multiboot2\"\nkernel = \"guests/multiboot.bin\"\nmemory_mib = 6\ncmdline = \"{MB2_CMDLINE}\"\n");
    cfg += &format!("modules = [{{ path = \"{}\", cmdline = \"{}\" }}]\n", MB2_MODULE.0, MB2_MODULE.2);
    cfg += "\n[[guest]]\nname = \"mbbad\"\nformat = \"multiboot2\"\nkernel = \"guests/bad-mb2.bin\"\nmemory_mib = 4\n";
    cfg += "\n[[guest]]\nname = \"ipi\"\nformat = \"multiboot\"\nkernel = \"guests/ipi.bin\"\nmemory_mib = 4\nvcpus = 4\n";
    let kernel = std::fs::read(guest_image("multiboot")).unwrap();
    let ipi = std::fs::read(guest_image("ipi")).unwrap();
    // The Multiboot 2 header (8-byte aligned in the first 32 KiB, spec 3.1.1) with its
    // checksum off by one.
    let mut bad = kernel.clone();
    let at = (0..bad.len().min(32 * 1024)).step_by(8).find(|&i| bad[i..i + 4] == 0xE852_50D6u32.to_le_bytes()).expect("the multiboot guest has a Multiboot 2 header");
    bad[at + 12] ^= 1;
    // Packed without `boot`'s validation, which would refuse the bad guest: the hypervisor
    // must refuse it itself.
    let mut files: Vec<(&str, &[u8])> = vec![("bastion.toml", cfg.as_bytes()), ("guests/multiboot.bin", &kernel), ("guests/bad-mb2.bin", &bad), ("guests/ipi.bin", &ipi)];
    files.extend(MODULES.iter().map(|(path, body, _)| (*path, body.as_bytes())));
    files.push((MB2_MODULE.0, MB2_MODULE.1.as_bytes()));
    let bundle = boot::pack(&files).unwrap();
    let img = image_with_bundle(&format!("multiboot-{}", p.name()), &bundle);
    let mut emu = Emulator::start(p, &img, &RunOptions::default());
    let out = emu.expect_exit(p.boot_timeout() * 2).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();
    let has = |line: &str| assert!(text.lines().any(|l| l.contains(line)), "no `{line}`:\n{text}");
    has("[mb] multiboot: magic 0x2badb002");
    has("[mb] multiboot: loader [Bastion]");
    has(&format!("[mb] multiboot: cmdline [{CMDLINE}]"));
    // 4 MiB: 639 KiB below the EBDA at 0x9FC00, 3 MiB from 1 MiB; the e820 map has those
    // two RAM ranges and the reserved legacy area between them.
    has("[mb] multiboot: memory lower 639 KiB upper 3072 KiB");
    has("[mb] multiboot: mmap 3 entries, 3711 KiB available");
    has("[mb] multiboot: modules 2");
    for (i, (_, body, cmdline)) in MODULES.iter().enumerate() {
        has(&format!("[mb] multiboot: module {i} cmdline [{}] {} bytes [{body}]", cmdline.unwrap_or(""), body.len()));
    }
    has("guest mb: stopped: test exit: PASS");
    has("[mbtwo] multiboot: magic 0x36d76289");
    has("[mbtwo] multiboot: loader [Bastion]");
    has(&format!("[mbtwo] multiboot: cmdline [{MB2_CMDLINE}]"));
    // 6 MiB: 639 KiB low, 5 MiB from 1 MiB, the same three e820 entries.
    has("[mbtwo] multiboot: memory lower 639 KiB upper 5120 KiB");
    has("[mbtwo] multiboot: mmap 3 entries, 5759 KiB available");
    has("[mbtwo] multiboot: modules 1");
    has(&format!("[mbtwo] multiboot: module 0 cmdline [{}] {} bytes [{}]", MB2_MODULE.2, MB2_MODULE.1.len(), MB2_MODULE.1));
    has("guest mbtwo: stopped: test exit: PASS");
    has(&format!("guest mbbad: cannot start: multiboot: the Multiboot2 header at {at:#x} has a bad checksum"));
    // The guest table printed once the guests have started gives the reason too.
    let row = text.lines().find(|l| l.starts_with("mbbad ")).unwrap_or_else(|| panic!("no guest table row for mbbad:\n{text}"));
    assert!(row.contains("crashed") && row.contains(&format!("could not start: multiboot: the Multiboot2 header at {at:#x} has a bad checksum")), "{row}");
    ipi_says_every_ipi_arrived_once(&text, "[ipi] ");
    has("guest ipi: stopped: test exit: PASS");
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(out.status, ExitStatus::Pass, "{text}");
}

#[test]
fn multiboot_guest_sees_its_boot_information_under_svm_on_qemu() {
    multiboot_guest_sees_its_boot_information(Platform::QemuBios);
}

#[test]
fn multiboot_guest_sees_its_boot_information_under_vmx_on_bochs_intel() {
    multiboot_guest_sees_its_boot_information(Platform::BochsIntel);
}

/// What the `ipi` guest prints when its 4 vCPUs started and every IPI arrived once; each
/// line starts with `prefix`.
fn ipi_says_every_ipi_arrived_once(text: &str, prefix: &str) {
    let has = |line: &str| assert!(text.lines().any(|l| l.contains(&format!("{prefix}ipi: {line}"))), "no `{prefix}ipi: {line}`:\n{text}");
    has("MADT lists 4 processors");
    for ap in 1..4 {
        has(&format!("vcpu {ap} started in real mode with CS 0a00"));
    }
    has("3 application processors started");
    for v in 0..4 {
        has(&format!("vcpu {v} took fixed 3 nmi 3 self 1 logical {} all 1", u32::from(v != 0)));
    }
    has("PASS");
}

/// The same `multiboot` and `ipi` files boot bare under QEMU's own Multiboot loader
/// (SeaBIOS, `-kernel`, 4 CPUs) and report what QEMU gave them: QEMU's loader name, the
/// kernel path before the command line, the modules with their files' paths.
#[test]
fn the_multiboot_test_guests_boot_bare_under_qemu() {
    let dir = qemu_tests::work_dir("multiboot-bare");
    let mods: Vec<(std::path::PathBuf, &str)> = MODULES
        .iter()
        .map(|(path, body, cmdline)| {
            let file = dir.join(path.rsplit('/').next().unwrap());
            std::fs::write(&file, body).unwrap();
            (file, cmdline.unwrap_or(""))
        })
        .collect();
    let modules: Vec<(&std::path::Path, &str)> = mods.iter().map(|(p, c)| (p.as_path(), *c)).collect();
    let kernel = guest_image("multiboot");
    let k = BareKernel { kernel: &kernel, cmdline: CMDLINE, modules: &modules };
    let mut emu = Emulator::start_bare(&k, &dir.join("multiboot"), &RunOptions::default());
    let code = emu.expect_bare_exit(Platform::QemuBios.boot_timeout()).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();
    let has = |line: &str| assert!(text.lines().any(|l| l == line), "no `{line}`:\n{text}");
    has("multiboot: magic 0x2badb002");
    has("multiboot: loader [qemu]");
    has(&format!("multiboot: cmdline [{} {CMDLINE}]", kernel.display()));
    has("multiboot: modules 2");
    for (i, ((file, cmdline), (_, body, _))) in mods.iter().zip(MODULES).enumerate() {
        let c = format!("{} {cmdline}", file.display());
        has(&format!("multiboot: module {i} cmdline [{}] {} bytes [{body}]", c.trim_end(), body.len()));
    }
    assert_eq!(code, 0, "{text}");

    let kernel = guest_image("ipi");
    let k = BareKernel { kernel: &kernel, cmdline: "", modules: &[] };
    let opts = RunOptions { smp: 4, ..RunOptions::default() };
    let mut emu = Emulator::start_bare(&k, &dir.join("ipi"), &opts);
    let code = emu.expect_bare_exit(Platform::QemuBios.boot_timeout()).unwrap_or_else(|e| panic!("{e}"));
    let text = emu.transcript();
    ipi_says_every_ipi_arrived_once(&text, "");
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(code, 0, "{text}");
}

/// A machine that triple-faults (SDM Vol. 3A 6.15, interrupt 8: a fault while delivering a
/// double fault shuts the processor down; QEMU resets the machine) leaves nothing on the
/// console. The harness keeps QEMU paused at the reset and reports what the machine still
/// holds: for each CPU, its CR3, RIP and IDT base and the walk of its page tables in memory
/// for RIP and the IDT (here the `crash` test kernel, bare: its identity map in 2 MiB pages
/// from CR3 0x70000, and an IDT of limit 0 at address 0, SDM Vol. 3A 6.10).
#[test]
fn a_machine_reset_is_reported_with_each_cpus_page_walks() {
    let dir = qemu_tests::work_dir("multiboot-reset");
    let kernel = guest_image("crash");
    let k = BareKernel { kernel: &kernel, cmdline: "", modules: &[] };
    let mut emu = Emulator::start_bare(&k, &dir.join("crash"), &RunOptions::default());
    let err = emu.expect_bare_exit(Platform::QemuBios.boot_timeout()).expect_err("a triple fault is not a test exit").to_string();
    assert!(err.contains("crash: triple faulting now"), "{err}");
    assert!(err.contains("the machine reset (QEMU: Triple fault)"), "{err}");
    assert!(err.contains("CPU 0: CR3 0x70000 RIP 0x"), "{err}");
    assert!(err.contains("IDT base 0x0 CR2 0x0\n"), "{err}");
    // Entries as in memory, with the accessed and dirty bits the CPU set (0x20, 0x40).
    let walk = |what: &str| err.lines().find(|l| l.starts_with(&format!("  {what}: "))).unwrap_or_else(|| panic!("no {what} walk:\n{err}"));
    for what in ["RIP", "IDT"] {
        let w = walk(what);
        assert!(w.contains(": PML4[0x0]=0x71") && w.contains(" PDPT[0x0]=0x72") && w.contains(" PD[0x0]=0x"), "{err}");
    }
    assert!(walk("IDT").ends_with(" -> 0x0"), "{err}");
    assert!(walk("IDT vector 8 (#DF)").ends_with(" -> 0x80"), "{err}");
    // Its last exception was no page fault on a mapped gate: not an emulator fault.
    assert!(!err.contains("emulator fault"), "{err}");
    let saved = std::fs::read_to_string(dir.join("crash/run-bare/host-reset.txt")).unwrap();
    assert!(saved.contains("info registers -a") && saved.contains("Triple fault"), "{saved}");
}
