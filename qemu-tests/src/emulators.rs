//! Emulator command lines (QEMU, Bochs), the packages that provide them, and KVM detection.
//! Measured facts behind each choice are in `shared/notes/emulators.md`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where Bastion boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// QEMU, legacy BIOS (SeaBIOS), AMD SVM with NPT under TCG.
    QemuBios,
    /// QEMU, UEFI (OVMF), AMD SVM with NPT under TCG.
    QemuUefi,
    /// Bochs with an Intel CPU model (VMX with EPT, VPID, unrestricted guest).
    BochsIntel,
    /// Bochs with an AMD CPU model (SVM with NPT, nRIP save).
    BochsAmd,
}

impl Platform {
    pub const ALL: [Platform; 4] = [Platform::QemuBios, Platform::QemuUefi, Platform::BochsIntel, Platform::BochsAmd];

    pub fn name(self) -> &'static str {
        match self {
            Platform::QemuBios => "qemu-bios",
            Platform::QemuUefi => "qemu-uefi",
            Platform::BochsIntel => "bochs-intel",
            Platform::BochsAmd => "bochs-amd",
        }
    }

    pub fn is_qemu(self) -> bool {
        matches!(self, Platform::QemuBios | Platform::QemuUefi)
    }

    /// A generous deadline for a boot to the exit line (measured: QEMU BIOS ~1 s, UEFI ~6 s,
    /// Bochs ~9 s on a 2-core machine; parallel tests share the cores).
    pub fn boot_timeout(self) -> Duration {
        Duration::from_secs(if self.is_qemu() { 90 } else { 180 })
    }

    fn bochs_cpu_model(self) -> &'static str {
        match self {
            Platform::BochsAmd => "ryzen",
            _ => "corei7_skylake_x",
        }
    }
}

/// Knobs for one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub smp: u32,
    pub memory_mib: u32,
    /// Use KVM (QEMU only). `None`: use it when [`kvm_usable`] says so.
    pub kvm: Option<bool>,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Let a test type on the serial console ([`crate::Emulator::send`]): QEMU reads COM1
    /// input from its stdin; Bochs serves COM1 on a local TCP socket the harness connects to
    /// (its output still streams through port 0xE9).
    pub interactive: bool,
    /// Attach a second UART (COM2, 0x2F8) whose output goes to this file.
    pub com2_file: Option<std::path::PathBuf>,
    /// Attach the image as a USB mass-storage disk (QEMU): an xHCI controller with a
    /// `usb-storage` device first in the boot order, as a stick in a host's USB port; the
    /// firmware (SeaBIOS, OVMF) boots it with its own USB driver.
    pub usb: bool,
    /// Boot over the network: the image is a PXE folder that QEMU's built-in DHCP and TFTP
    /// server (user networking) serves to a virtio NIC first in the boot order; OVMF's own
    /// network stack loads the bootloader from it (UEFI), the NIC's iPXE ROM loads PXELINUX,
    /// which boots the BIOS image through MEMDISK (BIOS).
    pub pxe: bool,
    /// A machine without COM1 (QEMU): `-serial none`, so Bastion's console is its screen;
    /// the harness reads the log from QEMU's debug console on port 0xE9 instead, which
    /// Bastion mirrors everything to when it finds one.
    pub no_com1: bool,
    /// PXE boot from a real network instead of QEMU's built-in server: QEMU runs inside this
    /// network namespace with its NIC on this tap device and MAC (the fleet test's dnsmasq
    /// serves it).
    pub tap: Option<Tap>,
}

/// A NIC on a tap device inside a network namespace.
#[derive(Debug, Clone)]
pub struct Tap {
    pub netns: String,
    pub ifname: String,
    pub mac: String,
}

impl RunOptions {
    /// 2 CPUs and 256 MiB, no KVM (so runs compare across hosts), not interactive: the
    /// machine of the multi-guest tests.
    pub const SMP2: RunOptions =
        RunOptions { smp: 2, memory_mib: 256, kvm: Some(false), qemu_args: Vec::new(), interactive: false, com2_file: None, usb: false, pxe: false, no_com1: false, tap: None };
}

/// QEMU's debug log (`-d cpu_reset,guest_errors`) in the run directory.
pub const QEMU_DEBUG_LOG: &str = "qemu-debug.log";

/// QEMU's monitor socket in the run directory.
pub const QEMU_MONITOR_SOCKET: &str = "qemu-monitor.sock";

/// The local port Bochs serves COM1 on for interactive runs, written into the run directory
/// so the harness can find it.
pub const BOCHS_COM1_PORT_FILE: &str = "com1.port";

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { smp: 1, memory_mib: 256, kvm: Some(false), qemu_args: Vec::new(), interactive: false, com2_file: None, usb: false, pxe: false, no_com1: false, tap: None }
    }
}

/// True when this host can really run KVM guests: the CPU advertises VMX or SVM to us and
/// /dev/kvm opens. (On our CI machines /dev/kvm exists but is a PVM backend whose CPUs have
/// neither flag; QEMU with it prints nothing, so it must not be used.)
pub fn kvm_usable() -> bool {
    if let Some(v) = std::env::var_os("BASTION_KVM") {
        return v == "1";
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_virt && std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const BOCHS_VGA: &str = "/usr/share/bochs/VGABIOS-lgpl-latest";
const BOCHS_SDL: &str = "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_sdl2_gui.so.0.0.0";

/// A Debian package and a file that proves it is installed.
pub struct Requirement {
    pub package: &'static str,
    pub probe: &'static str,
}

/// What a platform needs from the host.
pub fn requirements(platform: Platform) -> Vec<Requirement> {
    let r = |package, probe| Requirement { package, probe };
    match platform {
        Platform::QemuBios => vec![r("qemu-system-x86", "/usr/bin/qemu-system-x86_64")],
        Platform::QemuUefi => vec![r("qemu-system-x86", "/usr/bin/qemu-system-x86_64"), r("ovmf", OVMF_CODE)],
        Platform::BochsIntel | Platform::BochsAmd => vec![
            r("bochs", "/usr/bin/bochs"),
            r("bochsbios", BOCHS_BIOS),
            r("vgabios", BOCHS_VGA),
            r("bochs-sdl", BOCHS_SDL),
        ],
    }
}

/// PXELINUX and MEMDISK, which a BIOS PXE boot chains through (`boot::Syslinux`): the
/// packages and a file of each. Written here again because xtask links this library and not
/// `boot` (whose build compiles the bootloader's stages); a unit test checks they are `boot`'s.
pub const SYSLINUX_PACKAGES: [&str; 2] = ["pxelinux", "syslinux-common"];
const SYSLINUX_PROBES: [&str; 2] = ["/usr/lib/PXELINUX/pxelinux.0", "/usr/lib/syslinux/memdisk"];

/// The syslinux packages that are missing: a BIOS PXE folder needs them when it is built.
pub fn missing_syslinux() -> Vec<&'static str> {
    SYSLINUX_PACKAGES.into_iter().zip(SYSLINUX_PROBES).filter(|(_, probe)| !Path::new(probe).exists()).map(|(p, _)| p).collect()
}

/// Tools the emulator tests use besides the emulators: dnsmasq (`dnsmasq-base`, the binary
/// without a system service), the fleet test's DHCP and TFTP server, and PXELINUX and MEMDISK
/// for the BIOS PXE boots.
pub fn missing_test_tools() -> Vec<&'static str> {
    let mut v = missing_syslinux();
    if !Path::new("/usr/sbin/dnsmasq").exists() {
        v.push("dnsmasq-base");
    }
    v
}

/// Packages missing for the given platforms, deduplicated.
pub fn missing_packages(platforms: &[Platform]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for p in platforms {
        for r in requirements(*p) {
            if !Path::new(r.probe).exists() && !v.contains(&r.package) {
                v.push(r.package);
            }
        }
    }
    v
}

/// The exact command that installs `packages`.
pub fn install_command(packages: &[&str]) -> String {
    format!("sudo apt-get update && sudo apt-get install -y {}", packages.join(" "))
}

/// Builds the command that boots `image` on `platform`, with the serial console on stdout.
/// Files the emulator needs (Bochs config, padded disk, UEFI variable store) go to `run_dir`.
pub fn emulator_command(platform: Platform, image: &Path, run_dir: &Path, opts: &RunOptions) -> Result<Command, String> {
    let missing = missing_packages(&[platform]);
    if !missing.is_empty() {
        return Err(format!(
            "{} needs packages that are not installed: {}\ninstall them with:\n  {}",
            platform.name(),
            missing.join(" "),
            install_command(&missing)
        ));
    }
    if platform.is_qemu() {
        qemu_command(platform, Medium::Disk(image), run_dir, opts)
    } else {
        bochs_command(platform, image, run_dir, opts)
    }
}

/// A Multiboot 1 kernel for QEMU to boot by itself (`-kernel`), with no hypervisor under it:
/// the test guests run bare this way, on the same emulated CPU as under Bastion.
#[derive(Debug, Clone)]
pub struct BareKernel<'a> {
    pub kernel: &'a Path,
    /// QEMU hands the kernel "<kernel path> <cmdline>" as its command line.
    pub cmdline: &'a str,
    /// Module files and their command lines (QEMU passes "<path> <cmdline>").
    pub modules: &'a [(&'a Path, &'a str)],
}

/// Builds the command that boots `kernel` bare under QEMU (SeaBIOS, `-kernel`), with the
/// same CPU model, debug-exit device and console as [`emulator_command`] gives QEMU.
pub fn bare_command(kernel: &BareKernel, run_dir: &Path, opts: &RunOptions) -> Result<Command, String> {
    let missing = missing_packages(&[Platform::QemuBios]);
    if !missing.is_empty() {
        return Err(format!("QEMU is not installed; install it with:\n  {}", install_command(&missing)));
    }
    qemu_command(Platform::QemuBios, Medium::Kernel(kernel), run_dir, opts)
}

/// What QEMU boots: Bastion's disk image, or a Multiboot kernel through its own loader.
enum Medium<'a> {
    Disk(&'a Path),
    Kernel(&'a BareKernel<'a>),
}

fn qemu_command(platform: Platform, medium: Medium, run_dir: &Path, opts: &RunOptions) -> Result<Command, String> {
    let mut c = match &opts.tap {
        Some(t) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &t.netns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    let kvm = opts.kvm.unwrap_or_else(kvm_usable);
    if kvm {
        c.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        // TCG emulates SVM only with NPT requested explicitly (CPUID 0x8000000A EDX).
        c.args(["-cpu", "qemu64,+svm,+npt"]);
    }
    c.arg("-m").arg(opts.memory_mib.to_string());
    c.arg("-smp").arg(opts.smp.to_string());
    if platform == Platform::QemuUefi {
        let vars = run_dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("cannot copy {OVMF_VARS}: {e}"))?;
        c.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        c.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    match medium {
        Medium::Disk(folder) if opts.pxe => {
            // UEFI: the bootloader crate's PXE application, `bootloader`, which OVMF's own
            // network stack fetches by DHCP's boot file name over TFTP (`romfile=` keeps iPXE
            // out). BIOS: PXELINUX, which the NIC's iPXE ROM (Debian's ipxe-qemu) loads and
            // which boots the BIOS image through MEMDISK (`boot::Syslinux`).
            let (bootfile, rom) = if platform == Platform::QemuUefi {
                ("bootloader", ",romfile=")
            } else {
                if opts.tap.is_none() && !folder.join("pxelinux.0").is_file() {
                    return Err(format!(
                        "{} has no BIOS network boot (pxelinux.0): install PXELINUX and MEMDISK ({}) and build again",
                        folder.display(),
                        install_command(&SYSLINUX_PACKAGES)
                    ));
                }
                ("pxelinux.0", "")
            };
            match &opts.tap {
                // The fleet test's dnsmasq names the boot file.
                Some(t) => {
                    c.arg("-netdev").arg(format!("tap,id=net0,ifname={},script=no,downscript=no", t.ifname));
                    c.arg("-device").arg(format!("virtio-net-pci,netdev=net0,mac={},bootindex=0{rom}", t.mac));
                }
                None => {
                    c.arg("-netdev").arg(format!("user,id=net0,tftp={},bootfile={bootfile}", folder.display()));
                    c.arg("-device").arg(format!("virtio-net-pci,netdev=net0,bootindex=0{rom}"));
                }
            }
        }
        Medium::Disk(image) if opts.usb => {
            c.arg("-drive").arg(format!("if=none,id=stick,format=raw,file={}", image.display()));
            c.args(["-device", "qemu-xhci,id=xhci", "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]);
        }
        Medium::Disk(image) => {
            c.arg("-drive").arg(format!("format=raw,file={}", image.display()));
        }
        Medium::Kernel(k) => {
            c.arg("-kernel").arg(k.kernel).arg("-append").arg(k.cmdline);
            // -initrd lists a Multiboot kernel's modules, comma-separated (a comma inside a
            // name is doubled), each "<path> <cmdline>".
            let modules: Vec<String> = k.modules.iter().map(|(p, c)| format!("{} {c}", p.display()).trim_end().replace(',', ",,")).collect();
            if !modules.is_empty() {
                c.arg("-initrd").arg(modules.join(","));
            }
        }
    }
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    if opts.no_com1 {
        c.args(["-serial", "none", "-debugcon", "stdio"]);
    } else {
        c.args(["-serial", "stdio"]);
    }
    c.args(["-display", "none", "-no-reboot"]);
    // A machine reset ends QEMU with status 0 and no exit line (-no-reboot): QEMU notes why
    // ("Triple fault") and the CPUs' registers at reset in this log, which the harness shows
    // when an emulator ends unexpectedly.
    c.arg("-d").arg("cpu_reset,guest_errors").arg("-D").arg(run_dir.join(QEMU_DEBUG_LOG));
    // The QEMU monitor on a socket in the run directory: on a hang the harness asks it where
    // the CPUs are (`info registers`).
    c.arg("-monitor").arg(format!("unix:{},server,nowait", run_dir.join(QEMU_MONITOR_SOCKET).display()));
    if let Some(f) = &opts.com2_file {
        c.arg("-serial").arg(format!("file:{}", f.display()));
    }
    c.args(&opts.qemu_args);
    // For chasing a rare failure by hand, e.g. BASTION_QEMU_EXTRA="-action shutdown=pause"
    // keeps a reset machine for the monitor's `info registers` instead of ending QEMU.
    if let Ok(extra) = std::env::var("BASTION_QEMU_EXTRA") {
        c.args(extra.split_whitespace());
    }
    Ok(c)
}

/// Bochs geometry: 16 heads, 63 sectors; the image is padded to whole cylinders.
const CYLINDER_BYTES: u64 = 16 * 63 * 512;

fn bochs_command(platform: Platform, image: &Path, run_dir: &Path, opts: &RunOptions) -> Result<Command, String> {
    // Bochs wants a disk of whole cylinders and writes a lock file beside it: use a padded copy.
    let disk = run_dir.join("disk.img");
    let mut data = std::fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let cylinders = (data.len() as u64).div_ceil(CYLINDER_BYTES);
    data.resize((cylinders * CYLINDER_BYTES) as usize, 0);
    std::fs::write(&disk, data).map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let _ = std::fs::remove_file(run_dir.join("disk.img.lock"));
    // Interactive: COM1 becomes a TCP server on a free loopback port (found by binding port 0).
    let com1 = if opts.interactive {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        std::fs::write(run_dir.join(BOCHS_COM1_PORT_FILE), port.to_string()).map_err(|e| e.to_string())?;
        format!("mode=socket-server, dev=127.0.0.1:{port}")
    } else {
        format!("mode=file, dev={}", run_dir.join("com1.txt").display())
    };
    let com2 = match &opts.com2_file {
        Some(f) => format!("com2: enabled=1, mode=file, dev={}\n", f.display()),
        None => String::new(),
    };
    let rc = format!(
        "megs: {megs}\n\
         cpu: model={model}, count={smp}, ips=200000000, reset_on_triple_fault=0, ignore_bad_msrs=0\n\
         romimage: file={BOCHS_BIOS}\n\
         vgaromimage: file={BOCHS_VGA}\n\
         vga: extension=vbe\n\
         display_library: sdl2\n\
         ata0-master: type=disk, path={disk}, mode=flat, cylinders={cylinders}, heads=16, spt=63\n\
         boot: disk\n\
         com1: enabled=1, {com1}\n\
         {com2}\
         port_e9_hack: enabled=1\n\
         clock: sync=none\n\
         panic: action=fatal\n\
         speaker: enabled=0\n\
         mouse: enabled=0\n\
         log: {log}\n",
        megs = opts.memory_mib.min(2048),
        model = platform.bochs_cpu_model(),
        smp = opts.smp,
        disk = disk.display(),
        log = run_dir.join("bochs.log").display(),
    );
    let rc_path = run_dir.join("bochsrc");
    std::fs::write(&rc_path, rc).map_err(|e| e.to_string())?;
    // The Debian build includes the debugger, which stops at the first instruction: feed it
    // a "continue" command.
    let cont = run_dir.join("debugger.rc");
    std::fs::write(&cont, "c\n").map_err(|e| e.to_string())?;
    let mut c = Command::new("bochs");
    c.arg("-q").arg("-f").arg(rc_path).arg("-rc").arg(cont);
    // Debian has no headless display library; SDL2 with the dummy driver draws nowhere.
    c.env("SDL_VIDEODRIVER", "dummy");
    c.current_dir(run_dir);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syslinux_packages_and_files_are_the_ones_boot_copies() {
        assert_eq!(SYSLINUX_PACKAGES, boot::SYSLINUX_PACKAGES);
        let debian = boot::Syslinux::debian();
        // pxelinux.0 comes with `pxelinux`, memdisk with `syslinux-common`.
        assert_eq!(SYSLINUX_PROBES.map(Path::new), [debian.pxelinux.as_path(), debian.memdisk.as_path()]);
    }

    #[test]
    fn qemu_command_has_debug_exit_svm_npt_and_smp() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions { smp: 4, ..RunOptions::default() };
        let Ok(c) = qemu_command(Platform::QemuBios, Medium::Disk(Path::new("/x.img")), dir.path(), &opts) else { panic!() };
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-cpu qemu64,+svm,+npt"), "{joined}");
        assert!(joined.contains("isa-debug-exit,iobase=0xf4"), "{joined}");
        assert!(joined.contains("-smp 4"), "{joined}");
        assert!(joined.contains("format=raw,file=/x.img"), "{joined}");
        assert!(!joined.contains("pflash"), "BIOS boot must not load OVMF: {joined}");
    }

    #[test]
    fn a_usb_run_attaches_the_image_as_a_usb_stick_first_in_the_boot_order() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions { usb: true, ..RunOptions::default() };
        let Ok(c) = qemu_command(Platform::QemuBios, Medium::Disk(Path::new("/x.img")), dir.path(), &opts) else { panic!() };
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-drive if=none,id=stick,format=raw,file=/x.img"), "{joined}");
        assert!(joined.contains("-device qemu-xhci,id=xhci -device usb-storage,bus=xhci.0,drive=stick,bootindex=0"), "{joined}");
        assert_eq!(args.iter().filter(|a| a.contains("/x.img")).count(), 1, "the image only as the stick: {joined}");
    }

    #[test]
    fn a_pxe_run_serves_the_folder_over_tftp_to_a_virtio_nic() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions { pxe: true, ..RunOptions::default() };
        let Ok(c) = qemu_command(Platform::QemuUefi, Medium::Disk(Path::new("/x/pxe")), dir.path(), &opts) else { panic!() };
        let joined = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        assert!(joined.contains("-netdev user,id=net0,tftp=/x/pxe,bootfile=bootloader"), "{joined}");
        assert!(joined.contains("-device virtio-net-pci,netdev=net0,bootindex=0,romfile="), "{joined}");
        assert!(!joined.contains("format=raw,file=/x/pxe"), "no disk: {joined}");
        // BIOS: the NIC keeps its iPXE ROM, which fetches PXELINUX; a folder without it is
        // refused with what to install.
        let e = qemu_command(Platform::QemuBios, Medium::Disk(Path::new("/x/pxe")), dir.path(), &opts).unwrap_err();
        assert!(e.contains("/x/pxe has no BIOS network boot (pxelinux.0)") && e.contains("apt-get install -y pxelinux syslinux-common"), "{e}");
        let folder = dir.path().join("pxe");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("pxelinux.0"), "").unwrap();
        let Ok(c) = qemu_command(Platform::QemuBios, Medium::Disk(&folder), dir.path(), &opts) else { panic!() };
        let joined = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        assert!(joined.contains(&format!("-netdev user,id=net0,tftp={},bootfile=pxelinux.0", folder.display())), "{joined}");
        assert!(joined.contains("-device virtio-net-pci,netdev=net0,bootindex=0 "), "{joined}");
        assert!(!joined.contains("romfile"), "{joined}");
    }

    #[test]
    fn bochs_disk_is_padded_to_whole_cylinders() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("in.img");
        std::fs::write(&img, vec![1u8; 1_000_000]).unwrap();
        let opts = RunOptions { smp: 2, ..RunOptions::default() };
        bochs_command(Platform::BochsAmd, &img, dir.path(), &opts).unwrap();
        let len = std::fs::metadata(dir.path().join("disk.img")).unwrap().len();
        assert_eq!(len % CYLINDER_BYTES, 0);
        assert!(len >= 1_000_000);
        let rc = std::fs::read_to_string(dir.path().join("bochsrc")).unwrap();
        assert!(rc.contains("model=ryzen, count=2"), "{rc}");
        assert!(rc.contains(&format!("cylinders={}", len / CYLINDER_BYTES)), "{rc}");
    }

    #[test]
    fn install_command_names_every_package() {
        assert_eq!(install_command(&["bochs", "vgabios"]), "sudo apt-get update && sudo apt-get install -y bochs vgabios");
    }
}
