//! `cargo xtask`: build, run, test and benchmark Bastion. `cargo xtask --help` lists commands.
//!
//! xtask links neither `boot` nor anything else that needs the `bootloader` crate (whose build
//! needs the `rust-src` component): it must compile on a fresh toolchain, then add what the
//! toolchain lacks, and only then build the `boot` CLI, the kernel and the images.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use qemu_tests::emulators::{install_command, kvm_usable, missing_packages};
use qemu_tests::{Platform, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod console_bench;
mod cpu_bench;
mod fuzz;
mod hostile_bench;
mod linux;
mod linux_bench;
mod mutants;
mod usb;

/// Bastion's developer commands.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", arg_required_else_help = true)]
#[command(about = "Bastion's developer commands: build, boot, test and benchmark the hypervisor")]
#[command(after_help = "Every command first adds what the Rust toolchain lacks (rust-src, llvm-tools-preview, \
the x86_64-unknown-none target) with rustup; run, test and bench also install missing emulator \
packages with apt-get when run as root.")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel, the bundle and the BIOS and UEFI images
    Build(BuildArgs),
    /// Build, then boot in QEMU (default) or Bochs with the serial console on this terminal
    /// (Ctrl-C quits)
    Run(RunArgs),
    /// Fetch the Linux guest kit (Debian packages, under target/linux), run the host unit tests
    /// and each fuzz target for a few seconds, then the emulator tests (qemu-tests)
    Test(TestArgs),
    /// Measure boot time on every platform, the scheduler's fairness, Bastion's own memory, the
    /// console's cost and a Linux guest against the same kernel on bare QEMU
    Bench(BenchArgs),
    /// Build the libFuzzer targets (hypervisor/core/fuzz) and run each, or one, for a while
    Fuzz(FuzzArgs),
    /// Mutation testing of bastion-core with cargo-mutants: every mutant of the files given (or
    /// of the whole crate), or of the lines changed since a git revision, and the share each
    /// file's unit tests catch
    Mutants(MutantsArgs),
    /// Build, then write the BIOS (or, with --uefi, the UEFI) image to a USB stick and read it
    /// back: refuses a partition, a device in use or too small, and (unless --force) one that
    /// is not removable or is larger than 256 GiB
    Usb(UsbArgs),
    /// Fetch Debian's cloud kernel and busybox (apt-get download, nothing installed) and build
    /// the initramfs for Linux guests, under target/linux/
    FetchLinux,
}

#[derive(Args)]
struct BuildArgs {
    /// The configuration to pack [default: boot/configs/default.toml]. A built-in config (one in
    /// boot/configs) is staged under the output folder beside the test guests and, if it names
    /// them, the Linux kit; any other is packed as it is
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the kernel, bundle and images go [default: target/bastion]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Boot the UEFI image (QEMU with OVMF) instead of the BIOS one
    #[arg(long, conflicts_with = "bochs")]
    uefi: bool,
    /// Boot in Bochs instead of QEMU
    #[arg(long)]
    bochs: bool,
    /// Attach the image as a USB stick (QEMU's xHCI controller and usb-storage) instead of a
    /// disk, BIOS or (with --uefi) UEFI
    #[arg(long, conflicts_with = "bochs")]
    usb: bool,
    /// Boot over the network from QEMU's built-in DHCP and TFTP server, which serves the PXE
    /// folder: BIOS through PXELINUX and MEMDISK, or (with --uefi) OVMF's network boot
    #[arg(long, conflicts_with_all = ["bochs", "usb"])]
    pxe: bool,
    /// The CPU's vendor: intel (VT-x; Bochs unless KVM is used) or amd (AMD-V)
    #[arg(long, value_enum)]
    cpu: Option<Cpu>,
    /// Number of CPUs
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=255))]
    smp: u32,
    /// Memory in MiB
    #[arg(long, value_name = "MIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    memory: u32,
    /// Do not use KVM even where the host offers it (see BASTION_KVM in the README)
    #[arg(long)]
    no_kvm: bool,
}

#[derive(Args)]
struct UsbArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// The stick: a whole block device (e.g. /dev/sdb), or a file to write the image into
    #[arg(long, value_name = "DEV")]
    device: PathBuf,
    /// Write the UEFI image instead of the BIOS one
    #[arg(long)]
    uefi: bool,
    /// Write to a device that is not removable or is larger than 256 GiB
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Cpu {
    Intel,
    Amd,
}

#[derive(Args)]
struct TestArgs {
    /// Run only the host unit tests and the brief fuzz runs (no emulators)
    #[arg(long)]
    host_only: bool,
    /// Run only these emulator test files of qemu-tests/tests (names without `.rs`)
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Args)]
struct FuzzArgs {
    /// The target to run [default: every one in turn]
    #[arg(value_name = "TARGET")]
    target: Option<String>,
    /// Seconds each target runs
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    time: u64,
    /// Stop each target after this many executions, if that comes first
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    runs: Option<u64>,
    /// Build with AddressSanitizer (cargo-fuzz's default; about half as fast)
    #[arg(long)]
    asan: bool,
}

#[derive(Args)]
struct MutantsArgs {
    /// Files of hypervisor/core/src (e.g. vm/cpuid.rs) [default: every file of the crate]
    #[arg(value_name = "FILE")]
    files: Vec<String>,
    /// Only the mutants in lines changed since this git revision
    #[arg(long, value_name = "BASE")]
    diff: Option<String>,
    /// Mutants built and tested at once
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Seconds a mutant's tests may run before it counts as a timeout (not caught)
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    timeout: u32,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure
    #[arg(value_enum, default_value_t = Bench::All)]
    what: Bench,
    /// Boots per platform for the boot-time figures
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// How long the fairness run lasts, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 6000, value_parser = clap::value_parser!(u64).range(1..))]
    fair_ms: u64,
    /// Operations the hostile guest runs in `bench hostile`
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
}

/// The benchmarks `cargo xtask bench` knows.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// Every benchmark below, in one invocation so ratios between them are meaningful
    All,
    /// Wall time from emulator start to Bastion's "boot complete" line, on every platform
    Boot,
    /// CPU shares of 4 identical busy guests on 2 CPUs (max/min ratio)
    Fairness,
    /// Bastion's own memory on 2 CPUs with no guests, and what each of 4 guests of 4 MiB adds
    /// beyond its RAM
    Memory,
    /// What the console costs guests, by their own progress: a CPU-bound guest beside one
    /// that floods the console, and 16 guests printing a line a second (QEMU and Bochs Intel)
    Console,
    /// The `bench` Multiboot guest bare under QEMU and under Bastion (TCG, AMD-V): CPU work
    /// (integer loop, 8 MiB walk, sieve) and the cost of exits (CPUID, port I/O, hypercall,
    /// self IPI, IPI to another vCPU)
    Cpu,
    /// Debian's Linux as a Bastion guest against the same kernel booted by QEMU itself (TCG,
    /// AMD-V): boot and firmware time, shell work timed by the guest, exits of the idle guest
    Linux,
    /// The `hostile` guest's operations (1,000,000 by default, `--ops`) on QEMU (TCG, AMD-V)
    /// beside a canary counting CPU work, and the canary's rate there over its rate alone
    Hostile,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // First what the toolchain lacks: everything after this compiles crates that need it.
    ensure_toolchain()?;
    match cli.command {
        Cmd::Build(args) => build(&args).map(|_| ()),
        Cmd::Run(args) => run_emulator(&args),
        Cmd::Usb(args) => {
            // Refused before the build if it would be refused after it.
            let t = usb::inspect(&args.device)?;
            if let Some(why) = usb::refusal(&t, 0, args.force) {
                bail!("refusing to write {}: {why}", args.device.display());
            }
            let a = build(&args.build)?;
            usb::write_stick(if args.uefi { &a.uefi } else { &a.bios }, &args.device, args.force)
        }
        Cmd::Test(args) => test(&args),
        Cmd::Bench(args) => bench(&args),
        Cmd::Mutants(args) => mutants::mutants(&root(), &args.files, args.diff.as_deref(), args.jobs, args.timeout),
        Cmd::Fuzz(args) => fuzz::fuzz(&root(), args.target.as_deref(), args.time, args.runs, args.asan),
        Cmd::FetchLinux => linux::fetch(&root()).map(|k| println!("{}\n{}\n({})", k.vmlinuz.display(), k.initramfs.display(), k.package)),
    }
}

fn root() -> PathBuf {
    qemu_tests::workspace_root()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// What `rust-toolchain.toml` asks of the toolchain. rustup installs these with a toolchain it
/// installs, but never adds them to a toolchain that is already there.
const COMPONENTS: [&str; 2] = ["rust-src", "llvm-tools-preview"];
const TARGET: &str = "x86_64-unknown-none";

/// Adds the components and target the toolchain lacks with rustup (run in the workspace, so
/// it acts on the toolchain `rust-toolchain.toml` selects); without rustup, or if it fails,
/// stops with the commands to run.
fn ensure_toolchain() -> Result<()> {
    let manual = format!("  rustup component add {}\n  rustup target add {TARGET}", COMPONENTS.join(" "));
    let (components, targets) = match (rustup_list("component"), rustup_list("target")) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(e), _) | (_, Err(e)) => bail!(
            "cannot ask rustup what the toolchain has ({e:#}); Bastion needs the components {} and the \
             {TARGET} target:\n{manual}",
            COMPONENTS.join(", ")
        ),
    };
    let missing: Vec<&str> = COMPONENTS.iter().copied().filter(|c| !component_listed(c, &components)).collect();
    let mut steps: Vec<Vec<&str>> = Vec::new();
    if !missing.is_empty() {
        steps.push([&["component", "add"][..], &missing].concat());
    }
    if !targets.iter().any(|t| t == TARGET) {
        steps.push(vec!["target", "add", TARGET]);
    }
    for step in &steps {
        eprintln!("xtask: the toolchain lacks what Bastion needs; running `rustup {}`", step.join(" "));
        let ok = rustup().args(step).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            bail!("`rustup {}` failed; add what the toolchain lacks with:\n{manual}", step.join(" "));
        }
    }
    Ok(())
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.current_dir(root());
    c
}

/// `rustup component|target list --installed`, one name a line.
fn rustup_list(what: &str) -> Result<Vec<String>> {
    let out = rustup().args([what, "list", "--installed"]).output().context("cannot run rustup")?;
    if !out.status.success() {
        bail!("`rustup {what} list --installed` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect())
}

/// Whether `component` is in rustup's installed list, where a host component is listed with
/// its target (`llvm-tools-x86_64-unknown-linux-gnu`) and `llvm-tools-preview` has been renamed
/// `llvm-tools`.
fn component_listed(component: &str, installed: &[String]) -> bool {
    let base = component.strip_suffix("-preview").unwrap_or(component);
    installed.iter().any(|l| l == component || l == base || l.starts_with(&format!("{component}-")) || l.starts_with(&format!("{base}-")))
}

/// Builds the `boot` CLI and makes the harness (and every test process started from here) use
/// it, so it is built once.
fn prepare_boot_cli() -> Result<PathBuf> {
    let boot = qemu_tests::build_boot_cli().map_err(anyhow::Error::msg)?;
    // Set while xtask is still single-threaded.
    std::env::set_var("BASTION_BOOT", &boot);
    Ok(boot)
}

/// What `cargo xtask build` writes (the `boot image` layout).
struct Artifacts {
    kernel: PathBuf,
    bundle: PathBuf,
    bios: PathBuf,
    uefi: PathBuf,
    /// The PXE folder (what a TFTP server serves): UEFI, and BIOS through PXELINUX and MEMDISK.
    pxe: PathBuf,
}

fn build(args: &BuildArgs) -> Result<Artifacts> {
    prepare_boot_cli()?;
    let out = args.out.clone().unwrap_or_else(|| root().join("target/bastion"));
    let config = config_to_pack(args.config.as_deref(), &out)?;
    // Validate (config and guest kernels) before the slower kernel build: a config error
    // should come first.
    qemu_tests::run_boot(["validate".as_ref(), config.as_os_str()]).map_err(anyhow::Error::msg)?;
    let kernel = qemu_tests::build_kernel().map_err(anyhow::Error::msg)?;
    qemu_tests::run_boot([
        "image".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--bios".as_ref(),
        "--uefi".as_ref(),
        "--pxe".as_ref(),
    ])
    .map_err(anyhow::Error::msg)?;
    let a = Artifacts {
        kernel: out.join("bastion.elf"),
        bundle: out.join("bundle.tar"),
        bios: out.join("bastion-bios.img"),
        uefi: out.join("bastion-uefi.img"),
        pxe: out.join("pxe"),
    };
    println!("kernel: {}", a.kernel.display());
    println!("bundle: {}", a.bundle.display());
    for p in [&a.bios, &a.uefi, &a.pxe] {
        println!("image:  {}", p.display());
    }
    Ok(a)
}

/// Where the built-in configs live, in the repository.
const BUILTIN_CONFIGS: &str = "boot/configs";

/// The config to pack: `given`, or the built-in default. A built-in config names files this
/// repository makes (the test guests, the Linux kit), so it is staged beside them
/// ([`stage_builtin_config`]); any other config is the user's, with the user's files, and is
/// packed as it is.
fn config_to_pack(given: Option<&Path>, out: &Path) -> Result<PathBuf> {
    let configs = root().join(BUILTIN_CONFIGS);
    let config = given.map_or_else(|| configs.join("default.toml"), Path::to_path_buf);
    // A config that cannot be found is not built in: `boot validate` reports it.
    let stem = match (std::fs::canonicalize(&configs), std::fs::canonicalize(&config)) {
        (Ok(configs), Ok(config)) => builtin_stem(&configs, &config),
        _ => None,
    };
    match stem {
        Some(stem) => stage_builtin_config(&config, &stem, out),
        None => Ok(config),
    }
}

/// The name a built-in config is staged under (its file stem) when `config` is a `.toml` file
/// directly in `configs`; both paths canonical.
fn builtin_stem(configs: &Path, config: &Path) -> Option<String> {
    if config.parent()? != configs || config.extension()? != "toml" {
        return None;
    }
    config.file_stem()?.to_str().map(str::to_string)
}

/// Whether the config text names files of the Linux kit: a guest kernel or initrd under
/// `linux/`. A config that does not parse names nothing (`boot validate` reports it).
fn names_linux_kit(text: &str) -> bool {
    let Ok(config) = bastion_core::config::Config::parse("config", text) else { return false };
    let in_kit = |p: &str| p.split('/').find(|c| *c != ".") == Some("linux");
    config.guests.iter().any(|g| in_kit(&g.kernel) || g.initrd.as_deref().is_some_and(in_kit))
}

/// Stages a built-in config in `<out>/<stem>/` as `bastion.toml`, so its relative paths
/// resolve: the test guests built and copied to `guests/`, and, when it names `linux/` files,
/// the Linux kit (fetched once into target/linux/, [`linux::fetch`]) linked or copied to
/// `linux/`.
fn stage_builtin_config(config: &Path, stem: &str, out: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read config {}", config.display()))?;
    let stage = out.join(stem);
    let guests_dir = stage.join("guests");
    std::fs::create_dir_all(&guests_dir)?;
    let built = qemu_tests::guests::build_guests().map_err(anyhow::Error::msg)?;
    for g in qemu_tests::guests::GUESTS {
        std::fs::copy(built.join(format!("{g}.bin")), guests_dir.join(format!("{g}.bin")))?;
    }
    if names_linux_kit(&text) {
        let kit = linux::fetch(&root()).with_context(|| format!("{} runs Linux guests, which need the Linux kit", config.display()))?;
        let linux_dir = stage.join("linux");
        std::fs::create_dir_all(&linux_dir)?;
        for file in [&kit.vmlinuz, &kit.initramfs] {
            link_or_copy(file, &linux_dir.join(file.file_name().context("a kit file has no name")?))?;
        }
        eprintln!(
            "xtask: {} runs Linux guests ({}); each prints `{}` when its shell is up (without KVM, allow a \
             minute or two: the BIOS alone takes about a minute to load the image)",
            config.display(),
            kit.package,
            linux::READY
        );
    }
    let staged = stage.join("bastion.toml");
    std::fs::write(&staged, text)?;
    Ok(staged)
}

/// Makes `to` a hard link to `from` (the kit is large), or a copy where linking fails (another
/// file system).
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("cannot replace {}", to.display())),
        _ => {}
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Installs missing emulator packages when we are root on a Debian-like system; otherwise
/// stops with the exact command to run.
fn ensure_packages(platforms: &[Platform]) -> Result<()> {
    ensure_missing(|| missing_packages(platforms))
}

/// [`ensure_packages`] for the emulators and the tools the emulator tests use besides them
/// (dnsmasq, the fleet test's PXE server; PXELINUX and MEMDISK, BIOS network boot).
fn ensure_test_packages() -> Result<()> {
    ensure_missing(|| {
        let mut m = missing_packages(&Platform::ALL);
        m.extend(qemu_tests::emulators::missing_test_tools());
        m
    })
}

fn ensure_missing(missing_now: impl Fn() -> Vec<&'static str>) -> Result<()> {
    let missing = missing_now();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing packages: {}\ninstall them with:\n  {}", missing.join(" "), install_command(&missing));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let ok = |mut c: Command| c.env("DEBIAN_FRONTEND", "noninteractive").status().map(|s| s.success()).unwrap_or(false);
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing);
    if !ok(update) || !ok(install) {
        bail!("apt-get could not install {}; try:\n  {}", missing.join(" "), install_command(&missing));
    }
    let still = missing_now();
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(" "));
    }
    Ok(())
}

fn run_emulator(args: &RunArgs) -> Result<()> {
    let mut bochs = args.bochs;
    let kvm = !args.no_kvm && kvm_usable();
    if args.cpu == Some(Cpu::Intel) && !bochs && !kvm {
        eprintln!("xtask: QEMU without KVM (TCG) cannot emulate Intel VT-x; using Bochs for --cpu intel");
        bochs = true;
    }
    if bochs && (args.usb || args.pxe) {
        bail!("--usb and --pxe boot QEMU; Bochs (here for --cpu intel without KVM) has neither");
    }
    let platform = match (bochs, args.cpu, args.uefi) {
        (true, Some(Cpu::Amd), _) => Platform::BochsAmd,
        (true, _, true) => bail!("Bochs boots the BIOS image only; drop --uefi, or use KVM for --cpu intel"),
        (true, _, false) => Platform::BochsIntel,
        (false, _, true) => Platform::QemuUefi,
        (false, _, false) => Platform::QemuBios,
    };
    ensure_packages(&[platform])?;
    if args.pxe && platform == Platform::QemuBios {
        // The PXE folder gets its BIOS half only where PXELINUX and MEMDISK are installed.
        ensure_missing(qemu_tests::emulators::missing_syslinux)?;
    }
    let a = build(&args.build)?;
    let image = if args.pxe {
        a.pxe.clone()
    } else if platform == Platform::QemuUefi {
        a.uefi.clone()
    } else {
        a.bios.clone()
    };
    let run_dir = root().join("target/bastion").join(format!("run-{}", platform.name()));
    std::fs::create_dir_all(&run_dir)?;
    let opts = RunOptions {
        smp: args.smp,
        memory_mib: args.memory,
        kvm: Some(kvm && platform.is_qemu()),
        interactive: true,
        usb: args.usb,
        pxe: args.pxe,
        ..RunOptions::default()
    };
    let mut cmd = qemu_tests::emulator_command(platform, &image, &run_dir, &opts).map_err(anyhow::Error::msg)?;
    eprintln!(
        "xtask: booting {} on {}{} (Ctrl-C quits)",
        image.display(),
        platform.name(),
        if opts.kvm == Some(true) { " with KVM" } else { "" }
    );
    // The whole command, so it can be run again or adapted by hand.
    eprintln!("xtask: {}", shell_line(&cmd));
    let status = if platform.is_qemu() {
        cmd.status().context("cannot start the emulator")?
    } else {
        // Bochs serves COM1 on a loopback socket: carry this terminal's keystrokes there.
        // Its output arrives on stdout through port 0xE9.
        // Bochs's stderr is mostly sound-library noise; keep it in the run directory.
        cmd.stderr(std::fs::File::create(run_dir.join("bochs-stderr.log"))?);
        let mut child = cmd.spawn().context("cannot start Bochs")?;
        let mut sock = qemu_tests::connect_bochs_com1(&run_dir);
        let raw = RawTerminal::enter();
        let quit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quit_in = quit.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut b = [0u8; 1];
            while std::io::stdin().read(&mut b).map(|n| n == 1).unwrap_or(false) {
                // In raw mode Ctrl-C arrives as a byte: it ends the run, as it does for QEMU.
                if b[0] == 3 {
                    quit_in.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                if sock.write_all(&b).is_err() {
                    break;
                }
            }
        });
        let status = loop {
            if let Some(s) = child.try_wait().context("waiting for Bochs")? {
                break s;
            }
            if quit.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = child.kill();
                break child.wait().context("waiting for Bochs")?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(raw);
        status
    };
    // QEMU reports Bastion's own exit through isa-debug-exit; Bochs always exits 1 and the
    // result is the BASTION EXIT line on the console.
    match status.code().and_then(bastion_core::exit::ExitStatus::from_qemu_process_status) {
        Some(bastion_core::exit::ExitStatus::Pass) => Ok(()),
        Some(bastion_core::exit::ExitStatus::Fail) => bail!("Bastion reported a failure"),
        None if platform.is_qemu() && !status.success() && status.code().is_some() => {
            bail!("QEMU ended with {status}")
        }
        None => Ok(()),
    }
}

/// Puts the terminal in raw mode (no line buffering, no echo, Ctrl-A passes through) while it
/// lives, so keystrokes reach the guest console as they are typed.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: termios calls on stdin; a non-terminal stdin makes tcgetattr fail and we
        // leave it alone.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_oflag |= libc::OPOST | libc::ONLCR; // keep output line endings readable
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the settings read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECS_IN_TEST: u64 = 8;

fn test(args: &TestArgs) -> Result<()> {
    if !args.host_only {
        ensure_test_packages()?;
    }
    // Debian's kernel, for the loader's test against a real bzImage (and the Linux guests).
    linux::fetch(&root())?;
    let host = cargo()
        .args(["test", "--workspace", "--exclude", "hypervisor", "--exclude", "test-guests", "--lib", "--bins"])
        .env("BASTION_REQUIRE_LINUX_KIT", "1")
        .status()
        .context("cannot run cargo test")?;
    if !host.success() {
        bail!("host unit tests failed");
    }
    // Every fuzz target briefly, from its seeds and the corpus earlier runs left: a target
    // that no longer builds, or an invariant that a recent change broke, shows here.
    if args.only.is_empty() {
        let bin = fuzz::build(&root(), false)?;
        for t in fuzz::TARGETS {
            fuzz::run(&root(), &bin, t, FUZZ_SECS_IN_TEST, None)?;
        }
    }
    if args.host_only {
        return Ok(());
    }
    let boot = prepare_boot_cli()?;
    let kernel = qemu_tests::build_kernel().map_err(anyhow::Error::msg)?;
    let mut names = emulator_tests()?;
    if !args.only.is_empty() {
        if let Some(unknown) = args.only.iter().find(|n| !names.contains(n)) {
            bail!("--only {unknown}: no qemu-tests/tests/{unknown}.rs (the files: {})", names.join(", "));
        }
        names.retain(|n| args.only.contains(n));
    }
    let emu_test = |names: &[String]| {
        let mut c = cargo();
        c.args(["test", "-p", "qemu-tests"]).env("BASTION_KERNEL", &kernel).env("BASTION_BOOT", &boot);
        for n in names {
            c.args(["--test", n]);
        }
        c
    };
    // Built once, before two cargo processes would wait on each other's build lock.
    if !emu_test(&names).arg("--no-run").status().context("cannot run cargo test")?.success() {
        bail!("the emulator tests do not build");
    }
    // The Linux tests are the long pole: Bochs boots Debian's kernel for about 20 minutes on
    // one host core. They run beside the others, which take one test at a time meanwhile, so
    // the host's 2 cores run about 2 emulators at once throughout instead of leaving one idle
    // for the last 15 minutes. Their output is kept in a file and printed when they end.
    let (long, rest): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| LONG_TESTS.contains(&n.as_str()));
    let log_path = root().join("target").join("qemu-tests-long.log");
    let mut background = None;
    if !long.is_empty() {
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let err = log.try_clone()?;
        let child = emu_test(&long).stdin(std::process::Stdio::null()).stdout(log).stderr(err).spawn().context("cannot run cargo test")?;
        println!("xtask: emulator tests {} run in the background beside the others; their output follows when they end", long.join(", "));
        background = Some(child);
    }
    let mut ok = true;
    if !rest.is_empty() {
        let mut c = emu_test(&rest);
        if background.is_some() {
            c.args(["--", "--test-threads=1"]);
        }
        ok &= c.status().context("cannot run cargo test")?.success();
    }
    if let Some(mut child) = background {
        let status = child.wait().context("cannot wait for the background emulator tests")?;
        println!("xtask: output of emulator tests {}:", long.join(", "));
        print!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        ok &= status.success();
    }
    if !ok {
        bail!("emulator tests failed");
    }
    Ok(())
}

/// Emulator test files that run in the background of the others (see `test`).
const LONG_TESTS: [&str; 1] = ["linux"];

/// The emulator test files, `qemu-tests/tests/*.rs`, by name, sorted.
fn emulator_tests() -> Result<Vec<String>> {
    let dir = root().join("qemu-tests").join("tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Benchmarks. `all` measures everything in one invocation so ratios between them are
/// meaningful: boot time on every platform, the CPU shares of identical busy guests,
/// Bastion's own memory, the console's cost, then the `bench` guest and Linux in Bastion
/// against bare QEMU (both need only QEMU, so `bench cpu` or `bench linux` alone installs
/// nothing else).
fn bench(args: &BenchArgs) -> Result<()> {
    ensure_packages(if matches!(args.what, Bench::Linux | Bench::Cpu | Bench::Hostile) { &[Platform::QemuBios][..] } else { &Platform::ALL })?;
    prepare_boot_cli()?;
    if matches!(args.what, Bench::All | Bench::Boot) {
        boot_times(args)?;
    }
    if matches!(args.what, Bench::All | Bench::Fairness) {
        fairness(args)?;
    }
    if matches!(args.what, Bench::All | Bench::Memory) {
        memory()?;
    }
    if matches!(args.what, Bench::All | Bench::Console) {
        console_bench::console(&[Platform::QemuBios, Platform::BochsIntel], args.fair_ms as u32)?;
    }
    if matches!(args.what, Bench::All | Bench::Cpu) {
        cpu_bench::cpu()?;
    }
    if matches!(args.what, Bench::All | Bench::Linux) {
        linux_bench::linux(&root())?;
    }
    if matches!(args.what, Bench::All | Bench::Hostile) {
        hostile_bench::hostile(args.ops)?;
    }
    Ok(())
}

/// Bastion's own memory: QEMU (BIOS, 2 CPUs, 256 MiB) with no guests, then with 4 busy
/// guests of 4 MiB. Bastion prints its footprint (`memory: hypervisor N KiB ...`, from the
/// frame allocator's counts, guest RAM excluded) once guests have started; the hypervisor
/// figure is the first run's, the per-guest one the growth from the first run to the second
/// shared by 4 (it includes what guests make the heap grow by).
fn memory() -> Result<()> {
    const GUESTS: u64 = 4;
    let busy = qemu_tests::guests::guest_image("busy");
    let mut with_guests = String::from("[hypervisor]\nexit_when_idle = true\n[debug]\nstop_after_ms = 300\n");
    for i in 0..GUESTS {
        with_guests += &format!("\n[[guest]]\nname = \"busy{i}\"\nkernel = \"guests/busy.bin\"\nmemory_mib = 4\n");
    }
    let opts = RunOptions { smp: 2, ..RunOptions::default() };
    let mut figures = Vec::new();
    for (name, what, cfg) in [
        ("bench-mem-none", "no guests", "[hypervisor]\nexit_when_idle = true\n".to_string()),
        ("bench-mem-four", "4 busy guests of 4 MiB", with_guests),
    ] {
        let image = qemu_tests::image_with_files(name, &cfg, &[("guests/busy.bin", busy.as_path())]);
        let mut emu = qemu_tests::Emulator::start(Platform::QemuBios, &image, &opts);
        emu.expect_exit(Platform::QemuBios.boot_timeout()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let out = emu.transcript();
        // The last footprint line: the one printed once guests have started.
        let line = out.lines().rfind(|l| l.contains("memory: hypervisor "));
        let Some((line, (kib, per_guest))) = line.and_then(|l| Some((l, bastion_core::hostmem::parse_line(l)?))) else {
            bail!("no `memory: hypervisor` line from {} with {what}:\n{out}", Platform::QemuBios.name());
        };
        println!("memory, {} with {} CPUs, {} MiB, {what}: {}", Platform::QemuBios.name(), opts.smp, opts.memory_mib, line.trim());
        figures.push((kib, per_guest));
    }
    let (none, _) = figures[0];
    let (four, own) = figures[1];
    let Some(own) = own else { bail!("the run with guests printed no per-guest figure") };
    let per_guest = four.saturating_sub(none).div_ceil(GUESTS);
    println!("memory: Bastion's own figure for each of the 4 guests: {own} KiB beyond RAM");
    println!("bench: memory hypervisor_kib={none} per_guest_kib={per_guest}");
    Ok(())
}

/// CPU share of 4 identical busy guests on 2 CPUs: Bastion runs them for a fixed time
/// (`[debug] stop_after_ms`) and prints each guest's run time from the scheduler's accounting;
/// fairness is max/min of those shares (1.0 is perfect).
fn fairness(args: &BenchArgs) -> Result<()> {
    let ms = args.fair_ms;
    let mut cfg = format!("[hypervisor]\nexit_when_idle = true\n[debug]\nstop_after_ms = {ms}\n");
    for i in 0..4 {
        cfg += &format!("\n[[guest]]\nname = \"busy{i}\"\nkernel = \"guests/busy.bin\"\nmemory_mib = 4\n");
    }
    let busy = qemu_tests::guests::guest_image("busy");
    let image = qemu_tests::image_with_files("bench-fair", &cfg, &[("guests/busy.bin", busy.as_path())]);
    for platform in [Platform::QemuBios, Platform::BochsIntel] {
        let opts = RunOptions { smp: 2, ..RunOptions::default() };
        let mut emu = qemu_tests::Emulator::start(platform, &image, &opts);
        emu.expect_exit(Duration::from_secs(600)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let out = emu.transcript();
        let ran: Vec<u64> = out
            .lines()
            .filter_map(|l| l.split("bench: guest ").nth(1))
            .filter_map(|l| l.split(" ran ").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        let fair = out.lines().find(|l| l.contains("bench: fairness")).unwrap_or("bench: fairness not reported");
        println!("fairness, 4 busy guests on 2 CPUs for {ms} ms, {}: ran {ran:?} ms; {}", platform.name(), fair.trim());
        if ran.len() != 4 {
            bail!("expected 4 guest run times from {}, got {ran:?}:\n{out}", platform.name());
        }
    }
    Ok(())
}

/// Boot-time figures: wall time from emulator start to Bastion's "boot complete" line, per
/// platform, median of N runs.
fn boot_times(args: &BenchArgs) -> Result<()> {
    let runs = args.runs;
    let image = qemu_tests::image_with_config("bench", "[hypervisor]\nexit_when_idle = true\n");
    println!("{:<12} {:>10} {:>10} {:>10}", "platform", "min (s)", "median (s)", "max (s)");
    let mut medians = Vec::new();
    for platform in Platform::ALL {
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let mut emu = qemu_tests::Emulator::start(platform, &image, &RunOptions::default());
            emu.expect("==== boot complete ====", platform.boot_timeout()).map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(start.elapsed());
            emu.expect_exit(Duration::from_secs(60)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        times.sort();
        let med = times[times.len() / 2];
        medians.push((platform, med));
        println!(
            "{:<12} {:>10.2} {:>10.2} {:>10.2}",
            platform.name(),
            times[0].as_secs_f64(),
            med.as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
    let base = medians[0].1.as_secs_f64();
    for (p, m) in &medians[1..] {
        println!("{} / {}: {:.2}x", p.name(), medians[0].0.name(), m.as_secs_f64() / base);
    }
    Ok(())
}

/// `cmd` as one line for a POSIX shell: the program and each argument, single-quoted when it
/// holds anything beyond letters, digits and `_./=:,+-@%` (a quote inside as `'\''`).
fn shell_line(cmd: &std::process::Command) -> String {
    let quote = |s: &std::ffi::OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./=:,+-@%".contains(c)) {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_printed_command_line_quotes_what_a_shell_would_split_or_expand() {
        let mut c = std::process::Command::new("qemu-system-x86_64");
        c.args(["-m", "256", "-drive", "format=raw,file=/tmp/a b/c.img", "it's", "", "$HOME", "-serial", "stdio"]);
        assert_eq!(
            super::shell_line(&c),
            "qemu-system-x86_64 -m 256 -drive 'format=raw,file=/tmp/a b/c.img' 'it'\\''s' '' '$HOME' -serial stdio"
        );
    }

    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_parses_with_its_defaults() {
        let Cmd::Run(r) = parse(&["run"]).unwrap().command else { panic!() };
        assert_eq!((r.smp, r.memory, r.cpu.is_none(), r.uefi, r.bochs, r.no_kvm), (2, 512, true, false, false, false));
        let Cmd::Run(r) =
            parse(&["run", "--config", "c.toml", "--out", "o", "--cpu", "amd", "--smp", "4", "--memory", "64", "--no-kvm", "--bochs"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!((r.smp, r.memory, r.cpu == Some(Cpu::Amd), r.bochs, r.no_kvm), (4, 64, true, true, true));
        assert_eq!((r.build.config.unwrap(), r.build.out.unwrap()), (PathBuf::from("c.toml"), PathBuf::from("o")));
        let Cmd::Build(b) = parse(&["build"]).unwrap().command else { panic!() };
        assert!(b.config.is_none() && b.out.is_none());
        let Cmd::Test(t) = parse(&["test", "--host-only"]).unwrap().command else { panic!() };
        assert!(t.host_only && t.only.is_empty());
        let Cmd::Test(t) = parse(&["test", "--only", "linux,multiboot"]).unwrap().command else { panic!() };
        assert_eq!(t.only, ["linux", "multiboot"]);
        let Cmd::Bench(b) = parse(&["bench"]).unwrap().command else { panic!() };
        assert!(b.what == Bench::All && b.runs == 3 && b.fair_ms == 6000);
        let Cmd::Bench(b) = parse(&["bench", "fairness", "--fair-ms", "100", "--runs", "1"]).unwrap().command else { panic!() };
        assert!(b.what == Bench::Fairness && b.runs == 1 && b.fair_ms == 100);
        let Cmd::Bench(b) = parse(&["bench", "memory"]).unwrap().command else { panic!() };
        assert!(b.what == Bench::Memory);
        let Cmd::Bench(b) = parse(&["bench", "linux"]).unwrap().command else { panic!() };
        assert!(b.what == Bench::Linux);
    }

    #[test]
    fn unknown_flags_and_bad_values_are_refused() {
        use clap::error::ErrorKind;
        for (args, kind) in [
            (&["run", "--no-such-flag"][..], ErrorKind::UnknownArgument),
            (&["run", "--smp", "x"], ErrorKind::ValueValidation),
            (&["run", "--smp", "0"], ErrorKind::ValueValidation),
            (&["run", "--cpu", "arm"], ErrorKind::InvalidValue),
            (&["run", "--uefi", "--bochs"], ErrorKind::ArgumentConflict),
            // A network boot uses no stick, and Bochs has no network boot.
            (&["run", "--pxe", "--usb"], ErrorKind::ArgumentConflict),
            (&["run", "--pxe", "--uefi", "--usb"], ErrorKind::ArgumentConflict),
            (&["run", "--pxe", "--bochs"], ErrorKind::ArgumentConflict),
            (&["run", "--usb", "--bochs"], ErrorKind::ArgumentConflict),
            (&["test", "--hostonly"], ErrorKind::UnknownArgument),
            (&["bench", "windows"], ErrorKind::InvalidValue),
            (&["bench", "--runs", "0"], ErrorKind::ValueValidation),
            (&["frobnicate"], ErrorKind::InvalidSubcommand),
            (&[], ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
        ] {
            match parse(args) {
                Ok(_) => panic!("{args:?} was accepted"),
                Err(e) => assert_eq!(e.kind(), kind, "{args:?}: {e}"),
            }
        }
    }

    #[test]
    fn only_toml_files_directly_in_the_configs_folder_are_built_in() {
        let configs = Path::new("/repo/boot/configs");
        assert_eq!(builtin_stem(configs, &configs.join("linux.toml")).as_deref(), Some("linux"));
        assert_eq!(builtin_stem(configs, &configs.join("default.toml")).as_deref(), Some("default"));
        for other in ["/repo/boot/configs/sub/x.toml", "/repo/boot/x.toml", "/home/me/linux.toml", "/repo/boot/configs/notes.txt", "/"] {
            assert_eq!(builtin_stem(configs, Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn the_linux_kit_is_fetched_only_for_guests_that_name_it() {
        let guest = |k: &str, extra: &str| format!("[[guest]]\nname = \"g\"\nkernel = \"{k}\"\n{extra}");
        assert!(names_linux_kit(&guest("linux/vmlinuz", "format = \"bzimage\"\n")));
        assert!(names_linux_kit(&guest("./linux/vmlinuz", "format = \"bzimage\"\n")));
        assert!(names_linux_kit(&guest("my/bzImage", "format = \"bzimage\"\ninitrd = \"linux/initramfs.cpio.gz\"\n")));
        assert!(!names_linux_kit(&guest("guests/echo.bin", "")));
        assert!(!names_linux_kit(&guest("mylinux/vmlinuz", "format = \"bzimage\"\n")));
        assert!(!names_linux_kit(&format!("# not linux/vmlinuz\n{}", guest("guests/echo.bin", ""))), "comments name nothing");
        assert!(!names_linux_kit("[[guest]]\nkernel = \"linux/vmlinuz\"\nnot toml"), "a broken config is left to boot validate");
        let builtin = |name: &str| std::fs::read_to_string(root().join(BUILTIN_CONFIGS).join(name)).unwrap();
        assert!(names_linux_kit(&builtin("linux.toml")));
        assert!(!names_linux_kit(&builtin("default.toml")));
    }

    fn parse_builtin(name: &str) -> bastion_core::config::Config {
        let path = root().join(BUILTIN_CONFIGS).join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let config = bastion_core::config::Config::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.guest_errors.is_empty(), "{:?}", config.guest_errors);
        config
    }

    #[test]
    fn the_linux_config_runs_two_linux_guests_and_echo() {
        use bastion_core::config::ImageFormat;
        let config = parse_builtin("linux.toml");
        let guests: Vec<_> = config.guests.iter().map(|g| (g.name.as_str(), g.format, g.memory_mib, g.vcpus, g.kernel.as_str())).collect();
        assert_eq!(
            guests,
            [
                ("linux1", ImageFormat::BzImage, 128, 1, "linux/vmlinuz"),
                ("linux2", ImageFormat::BzImage, 128, 1, "linux/vmlinuz"),
                ("echo", ImageFormat::Flat, 4, 1, "guests/echo.bin"),
            ]
        );
        for g in &config.guests[..2] {
            assert_eq!(g.initrd.as_deref(), Some("linux/initramfs.cpio.gz"));
            assert_eq!(g.cmdline.as_deref(), Some("console=ttyS0 pci=off 8250.nr_uarts=1 reboot=k panic=-1 cryptomgr.notests=1"));
            assert!(g.autostart);
        }
        assert!(!config.hypervisor.exit_when_idle);
        // What `cargo xtask run` gives QEMU by default holds every guest with room to spare for
        // Bastion, the bootloader and the bundle (about 13 MiB with the kit).
        let Cmd::Run(r) = parse(&["run"]).unwrap().command else { panic!() };
        let guests_mib: u32 = config.guests.iter().map(|g| g.memory_mib).sum();
        assert!(guests_mib + 128 <= r.memory, "{guests_mib} MiB of guests in {} MiB", r.memory);
    }

    /// Every built-in config names only files its staging provides: the test guests and the
    /// Linux kit.
    #[test]
    fn built_in_configs_name_only_staged_files() {
        let mut staged: Vec<String> = qemu_tests::guests::GUESTS.iter().map(|g| format!("guests/{g}.bin")).collect();
        staged.extend(["linux/vmlinuz".to_string(), "linux/initramfs.cpio.gz".to_string()]);
        let mut seen = 0;
        for e in std::fs::read_dir(root().join(BUILTIN_CONFIGS)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".toml") {
                continue;
            }
            seen += 1;
            for g in parse_builtin(&name).guests {
                for f in std::iter::once(&g.kernel).chain(g.initrd.as_ref()) {
                    assert!(staged.contains(f), "{name}: guest {} names {f}, which staging does not provide", g.name);
                }
            }
        }
        assert!(seen >= 2, "default.toml and linux.toml at least");
    }

    #[test]
    fn installed_components_are_recognised_by_rustups_names() {
        let listed: Vec<String> =
            ["cargo-x86_64-unknown-linux-gnu", "llvm-tools-x86_64-unknown-linux-gnu", "rust-src"].map(String::from).into();
        assert!(component_listed("rust-src", &listed));
        assert!(component_listed("llvm-tools-preview", &listed));
        let old: Vec<String> = vec!["llvm-tools-preview-x86_64-unknown-linux-gnu".into()];
        assert!(component_listed("llvm-tools-preview", &old));
        assert!(!component_listed("rust-src", &old));
        let fresh: Vec<String> = vec!["rustc-x86_64-unknown-linux-gnu".into(), "rust-std-x86_64-unknown-linux-gnu".into()];
        assert!(!component_listed("rust-src", &fresh) && !component_listed("llvm-tools-preview", &fresh));
    }
}
