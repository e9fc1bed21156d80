//! `cargo xtask`: build, run, test and benchmark Bastion. `cargo xtask help` lists commands.

use anyhow::{bail, Context, Result};
use qemu_tests::emulators::{install_command, kvm_usable, missing_packages};
use qemu_tests::{Platform, RunOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

  build [--config FILE] [--out DIR]   build the kernel, bundle and BIOS/UEFI images
                                      (default config: boot/configs/default.toml,
                                       default out: target/bastion)
  run   [--config FILE] [--uefi] [--bochs] [--cpu intel|amd] [--smp N] [--memory MIB]
        [--no-kvm]                    build, then boot in QEMU (default) or Bochs with the
                                      serial console on this terminal (Ctrl-C quits)
  test  [--host-only]                 host unit tests, then the emulator tests (qemu-tests)
  bench [--runs N]                    boot-time figures on every platform
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

struct Args(Vec<String>);

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
    fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }
    fn number(&self, name: &str, default: u32) -> Result<u32> {
        match self.value(name) {
            Some(v) => v.parse().with_context(|| format!("{name} takes a number, not `{v}`")),
            None => Ok(default),
        }
    }
}

fn run() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        print!("{USAGE}");
        return Ok(());
    }
    let cmd = argv.remove(0);
    let args = Args(argv);
    match cmd.as_str() {
        "build" => build(&args).map(|_| ()),
        "run" => run_emulator(&args),
        "test" => test(&args),
        "bench" => bench(&args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
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

fn build(args: &Args) -> Result<boot::Artifacts> {
    let out = args.value("--out").map(PathBuf::from).unwrap_or_else(|| root().join("target/bastion"));
    let config = match args.value("--config") {
        Some(c) => PathBuf::from(c),
        None => stage_default_config(&out)?,
    };
    // Validate before the (slower) kernel build: a config error should come first.
    boot::validate_config(&config)?;
    let kernel = qemu_tests::build_kernel().map_err(anyhow::Error::msg)?;
    let a = boot::build_all(&kernel, &config, &out, true, true, false)?;
    println!("kernel: {}", a.kernel.display());
    println!("bundle: {}", a.bundle.display());
    for p in [&a.bios, &a.uefi].into_iter().flatten() {
        println!("image:  {}", p.display());
    }
    Ok(a)
}

/// The built-in default config names guest images built from this repository: build them and
/// stage the config beside them, so its relative paths resolve.
fn stage_default_config(out: &Path) -> Result<PathBuf> {
    let stage = out.join("default");
    let guests_dir = stage.join("guests");
    std::fs::create_dir_all(&guests_dir)?;
    let built = qemu_tests::guests::build_guests().map_err(anyhow::Error::msg)?;
    for g in qemu_tests::guests::GUESTS {
        std::fs::copy(built.join(format!("{g}.bin")), guests_dir.join(format!("{g}.bin")))?;
    }
    let config = stage.join("bastion.toml");
    std::fs::copy(root().join("boot/configs/default.toml"), &config)?;
    Ok(config)
}

/// Installs missing emulator packages when we are root on a Debian-like system; otherwise
/// stops with the exact command to run.
fn ensure_packages(platforms: &[Platform]) -> Result<()> {
    let missing = missing_packages(platforms);
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing emulator packages: {}\ninstall them with:\n  {}", missing.join(" "), install_command(&missing));
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
    let still = missing_packages(platforms);
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(" "));
    }
    Ok(())
}

fn run_emulator(args: &Args) -> Result<()> {
    let cpu = args.value("--cpu");
    let mut bochs = args.flag("--bochs");
    if let Some(c) = cpu {
        if c != "intel" && c != "amd" {
            bail!("--cpu takes intel or amd, not `{c}`");
        }
    }
    let kvm = !args.flag("--no-kvm") && kvm_usable();
    if cpu == Some("intel") && !bochs && !kvm {
        eprintln!("xtask: QEMU without KVM (TCG) cannot emulate Intel VT-x; using Bochs for --cpu intel");
        bochs = true;
    }
    let platform = match (bochs, cpu, args.flag("--uefi")) {
        (true, Some("amd"), _) => Platform::BochsAmd,
        (true, _, true) => bail!("Bochs boots the BIOS image only; drop --uefi or --bochs"),
        (true, _, false) => Platform::BochsIntel,
        (false, _, true) => Platform::QemuUefi,
        (false, _, false) => Platform::QemuBios,
    };
    ensure_packages(&[platform])?;
    let a = build(args)?;
    let image = if platform == Platform::QemuUefi { a.uefi.clone() } else { a.bios.clone() };
    let image = image.context("image was not built")?;
    let run_dir = root().join("target/bastion").join(format!("run-{}", platform.name()));
    std::fs::create_dir_all(&run_dir)?;
    let opts = RunOptions {
        smp: args.number("--smp", 2)?,
        memory_mib: args.number("--memory", 512)?,
        kvm: Some(kvm && platform.is_qemu()),
        qemu_args: Vec::new(),
        interactive: true,
        com2_file: None,
    };
    let mut cmd = qemu_tests::emulator_command(platform, &image, &run_dir, &opts).map_err(anyhow::Error::msg)?;
    eprintln!(
        "xtask: booting {} on {}{} (Ctrl-C quits)",
        image.display(),
        platform.name(),
        if opts.kvm == Some(true) { " with KVM" } else { "" }
    );
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

fn test(args: &Args) -> Result<()> {
    let host = cargo()
        .args(["test", "--workspace", "--exclude", "hypervisor", "--exclude", "test-guests", "--lib", "--bins"])
        .status()
        .context("cannot run cargo test")?;
    if !host.success() {
        bail!("host unit tests failed");
    }
    if args.flag("--host-only") {
        return Ok(());
    }
    ensure_packages(&Platform::ALL)?;
    let kernel = qemu_tests::build_kernel().map_err(anyhow::Error::msg)?;
    let emu = cargo()
        .args(["test", "-p", "qemu-tests", "--test", "*"])
        .env("BASTION_KERNEL", &kernel)
        .status()
        .context("cannot run cargo test")?;
    if !emu.success() {
        bail!("emulator tests failed");
    }
    Ok(())
}

/// Benchmarks, all measured in one invocation so ratios between them are meaningful:
/// boot time on every platform, then the CPU shares of identical busy guests.
fn bench(args: &Args) -> Result<()> {
    boot_times(args)?;
    fairness(args)
}

/// CPU share of 4 identical busy guests on 2 CPUs: Bastion runs them for a fixed time
/// (`[debug] stop_after_ms`) and prints each guest's run time from the scheduler's accounting;
/// fairness is max/min of those shares (1.0 is perfect).
fn fairness(args: &Args) -> Result<()> {
    let ms = args.number("--fair-ms", 6000)?;
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
fn boot_times(args: &Args) -> Result<()> {
    let runs = args.number("--runs", 3)?.max(1);
    ensure_packages(&Platform::ALL)?;
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
