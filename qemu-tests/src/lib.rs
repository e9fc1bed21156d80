//! Emulator test harness: boots Bastion images in QEMU (BIOS, UEFI) or Bochs (Intel or AMD
//! CPU model), streams the serial console, waits for expected lines with a timeout, and reads
//! the final status (see `bastion_core::exit`).
//!
//! Guarantees the tests rely on:
//! - every run has a deadline, and on a timeout the harness collects diagnostics (for Bochs,
//!   SIGINT first so it flushes its buffers and prints where the CPU is stuck);
//! - no emulator outlives its [`Emulator`]: `Drop` kills its process group (also when the test
//!   panics), and `PR_SET_PDEATHSIG` kills it if the test process itself dies;
//! - every run works in its own directory under `target/qemu-tests/`, so tests run in parallel.
//!
//! `xtask run` uses [`emulator_command`] too, so what tests boot is what developers boot.

pub mod emulators;
pub mod guests;

use bastion_core::exit::{parse_exit_line, ExitStatus};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use emulators::{bare_command, emulator_command, BareKernel, Platform, RunOptions};

/// The workspace root (this crate lives in `<root>/qemu-tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("qemu-tests has a parent").to_path_buf()
}

/// Target directory for kernel builds: separate from the host one, so a kernel build started
/// from inside `cargo test` never waits on the outer cargo's lock.
pub fn kernel_target_dir() -> PathBuf {
    workspace_root().join("target").join("kernel")
}

/// The kernel ELF: `$BASTION_KERNEL` when set (xtask sets it after building), otherwise built
/// once per test process with `cargo build -p hypervisor --target x86_64-unknown-none --release`.
pub fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        if let Some(p) = std::env::var_os("BASTION_KERNEL") {
            return PathBuf::from(p);
        }
        build_kernel().unwrap_or_else(|e| panic!("cannot build the kernel: {e}"))
    })
}

/// Builds the release kernel and returns its path.
pub fn build_kernel() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "hypervisor", "--target", "x86_64-unknown-none", "--release"])
        .env("CARGO_TARGET_DIR", kernel_target_dir())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("kernel build failed ({status})"));
    }
    Ok(kernel_target_dir().join("x86_64-unknown-none/release/bastion"))
}

/// A fresh, unique working directory for one run, `target/qemu-tests/<name>-<pid>-<n>`.
/// The first call in a process removes the directories of test processes that have ended,
/// so images do not pile up; the last run's files stay for inspection.
pub fn work_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    static PRUNED: OnceLock<()> = OnceLock::new();
    let base = workspace_root().join("target/qemu-tests");
    PRUNED.get_or_init(|| prune_dead_runs(&base));
    let dir = base.join(format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create work dir");
    dir
}

fn prune_dead_runs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplitn(3, '-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The `boot` CLI, which validates configs and makes the images: `$BASTION_BOOT` when set
/// (xtask sets it after building), otherwise built once per process by [`build_boot_cli`].
/// The harness runs it rather than linking the `boot` library, so that nothing linking the
/// harness (xtask) needs the `bootloader` crate, whose build needs the `rust-src` component.
pub fn boot_cli() -> &'static Path {
    static BOOT: OnceLock<PathBuf> = OnceLock::new();
    BOOT.get_or_init(|| {
        if let Some(p) = std::env::var_os("BASTION_BOOT") {
            return PathBuf::from(p);
        }
        build_boot_cli().unwrap_or_else(|e| panic!("cannot build the boot CLI: {e}"))
    })
}

/// Builds the `boot` CLI (`cargo build -p boot --bin boot`, in the host target directory,
/// which cargo does not lock while tests run) and returns its path.
pub fn build_boot_cli() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "boot", "--bin", "boot"])
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("`cargo build -p boot --bin boot` failed ({status}); its errors are above"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_absolute() { target } else { workspace_root().join(target) };
    Ok(target.join("debug").join(format!("boot{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs the `boot` CLI; on failure returns its error message (what it printed after
/// `boot: error: `).
pub fn run_boot<I, S>(args: I) -> Result<(), String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let boot = boot_cli();
    let out = Command::new(boot).args(args).output().map_err(|e| format!("cannot run {}: {e}", boot.display()))?;
    if out.status.success() {
        // Its notes (what it could not make, and why) reach the user.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim_end();
    Err(match err.strip_prefix("boot: error: ") {
        Some(msg) => msg.to_string(),
        None => format!("{} failed ({}): {err}", boot.display(), out.status),
    })
}

/// Where `llvm-objcopy` from the `llvm-tools-preview` component lives.
pub fn llvm_objcopy() -> Result<PathBuf, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc} to find the sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let host = Command::new(&rustc).args(["-vV"]).output().map_err(|e| format!("cannot run {rustc} -vV: {e}"))?;
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap_or_else(|| "x86_64-unknown-linux-gnu".into());
    let p = sysroot.join("lib/rustlib").join(host).join("bin/llvm-objcopy");
    if !p.exists() {
        return Err(format!("{} not found: run `rustup component add llvm-tools-preview`", p.display()));
    }
    Ok(p)
}

/// A bootable image for one test.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub dir: PathBuf,
    pub bios: PathBuf,
    pub uefi: PathBuf,
    /// The PXE folder (`boot image --pxe`): what a TFTP server serves, to UEFI and BIOS hosts.
    pub pxe: PathBuf,
}

/// Builds BIOS and UEFI images whose bundle carries `config` as `bastion.toml`. The config is
/// validated by `boot` exactly as for a real image.
pub fn image_with_config(name: &str, config: &str) -> TestImage {
    image_with_config_in(work_dir(name), config)
}

/// Writes `config` as `bastion.toml` in `dir`, packs it (and the guest kernels it names, read
/// from `dir`) with `boot bundle`, and builds the images.
fn image_with_config_in(dir: PathBuf, config: &str) -> TestImage {
    let cfg = dir.join("bastion.toml");
    std::fs::write(&cfg, config).unwrap();
    let bundle = dir.join(BUNDLE_FILE);
    run_boot([OsStr::new("bundle"), OsStr::new("--config"), cfg.as_os_str(), OsStr::new("--out"), bundle.as_os_str()])
        .unwrap_or_else(|e| panic!("test config refused: {e}"));
    images_in(dir)
}

/// Builds images around arbitrary bundle bytes (for corrupt-bundle tests).
pub fn image_with_bundle(name: &str, bundle: &[u8]) -> TestImage {
    let dir = work_dir(name);
    std::fs::write(dir.join(BUNDLE_FILE), bundle).unwrap();
    images_in(dir)
}

/// The bundle file in a test's folder.
const BUNDLE_FILE: &str = "bundle.tar";

/// Builds BIOS and UEFI images in `dir` from the kernel and `dir/bundle.tar`, taken as it is
/// (`boot image --bundle`), which also leaves the stripped kernel there as `bastion.elf`.
fn images_in(dir: PathBuf) -> TestImage {
    let img = TestImage { bios: dir.join("bastion-bios.img"), uefi: dir.join("bastion-uefi.img"), pxe: dir.join("pxe"), dir };
    let mut args: Vec<&OsStr> = vec![OsStr::new("image"), OsStr::new("--kernel"), kernel().as_os_str()];
    let bundle = img.dir.join(BUNDLE_FILE);
    args.extend([OsStr::new("--bundle"), bundle.as_os_str(), OsStr::new("--out"), img.dir.as_os_str()]);
    args.extend([OsStr::new("--bios"), OsStr::new("--uefi"), OsStr::new("--pxe")]);
    run_boot(args).unwrap_or_else(|e| panic!("{e}"));
    img
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// From the `BASTION EXIT:` line.
    pub status: ExitStatus,
    /// The emulator's process exit code, once it ended.
    pub process_code: Option<i32>,
}

/// A running emulator with its serial console.
pub struct Emulator {
    platform: Platform,
    child: Option<Child>,
    lines: Receiver<(Instant, String)>,
    transcript: Vec<String>,
    /// When each transcript line arrived.
    times: Vec<Instant>,
    started: Instant,
    dir: PathBuf,
    /// Bochs's COM1 socket, for typing (interactive runs).
    com1: Option<std::net::TcpStream>,
    /// What the paused QEMU held after a machine reset ([`Emulator::host_reset_report`]);
    /// every later failure carries it.
    reset_report: Option<String>,
}

/// A harness failure: what was expected, and everything seen so far.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Emulator {
    /// Boots `image` on `platform`. Panics with the install command when the emulator is missing.
    pub fn start(platform: Platform, image: &TestImage, opts: &RunOptions) -> Emulator {
        let run_dir = image.dir.join(format!("run-{}", platform.name()));
        std::fs::create_dir_all(&run_dir).unwrap();
        let cmd = emulator_command(platform, image_for(platform, image, opts), &run_dir, opts).unwrap_or_else(|e| panic!("{e}"));
        Emulator::spawn(platform, cmd, run_dir, opts)
    }

    /// Boots a Multiboot kernel bare under QEMU ([`emulators::bare_command`]); its files go to
    /// `dir/run-bare`. The run ends with the kernel's own test exit ([`Emulator::expect_bare_exit`]).
    pub fn start_bare(kernel: &emulators::BareKernel, dir: &Path, opts: &RunOptions) -> Emulator {
        let run_dir = dir.join("run-bare");
        std::fs::create_dir_all(&run_dir).unwrap();
        let cmd = emulators::bare_command(kernel, &run_dir, opts).unwrap_or_else(|e| panic!("{e}"));
        Emulator::spawn(Platform::QemuBios, cmd, run_dir, opts)
    }

    fn spawn(platform: Platform, mut cmd: std::process::Command, run_dir: PathBuf, opts: &RunOptions) -> Emulator {
        if platform.is_qemu() {
            // A machine reset (with -no-reboot, a shutdown) pauses QEMU instead of ending it,
            // so that the harness can read the CPUs and page tables as they were when it
            // happened (`host_reset_report`). Only for tests: `xtask run` keeps ending.
            cmd.args(["-action", "shutdown=pause"]);
        }
        cmd.stdin(if opts.interactive { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", platform.name()));
        let (tx, rx) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log_path = run_dir.join("console.log");
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).ok();
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).replace('\r', "");
                if let Some(l) = log.as_mut() {
                    let _ = writeln!(l, "{line}");
                }
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        let err_path = run_dir.join("stderr.log");
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = BufReader::new(stderr).read_to_end(&mut s);
            let _ = std::fs::write(err_path, s);
        });
        let started = Instant::now();
        let com1 = if opts.interactive && !platform.is_qemu() { Some(connect_bochs_com1(&run_dir)) } else { None };
        Emulator { platform, child: Some(child), lines: rx, transcript: Vec::new(), times: Vec::new(), started, dir: run_dir, com1, reset_report: None }
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Types `bytes` on the serial console (needs `RunOptions::interactive`). Bytes go one at a
    /// time with a short pause, as a person types: Bastion polls COM1 between time slices.
    pub fn send(&mut self, bytes: &[u8]) {
        for b in bytes {
            let r = match self.com1.as_mut() {
                Some(sock) => sock.write_all(&[*b]).and_then(|_| sock.flush()),
                None => {
                    let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut()).expect("emulator started with interactive = true");
                    stdin.write_all(&[*b]).and_then(|_| stdin.flush())
                }
            };
            r.expect("emulator console input closed");
            std::thread::sleep(Duration::from_millis(if self.platform.is_qemu() { 30 } else { 150 }));
        }
    }

    /// Position in the transcript, for [`Emulator::expect_after`].
    pub fn mark(&self) -> usize {
        self.transcript.len()
    }

    /// Waits for a line containing `needle` printed after `mark`.
    pub fn expect_after(&mut self, mark: usize, needle: &str, timeout: Duration) -> Result<String, Failure> {
        self.wait_for(timeout, &format!("a new `{needle}`"), |e| {
            e.transcript[mark.min(e.transcript.len())..].iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Receives console lines until `found` sees what it waits for in the transcript. On a
    /// timeout or an ended emulator the error carries the transcript and diagnostics; `what`
    /// names what was awaited.
    fn wait_for<T>(&mut self, timeout: Duration, what: &str, found: impl Fn(&Self) -> Option<T>) -> Result<T, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = found(self) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(RESET_POLL)) {
                Ok(l) => self.push(l),
                Err(RecvTimeoutError::Timeout) if !left.is_zero() && left > RESET_POLL => {
                    if self.host_reset_report() {
                        return Err(self.failure(&format!("the machine reset while waiting for {what}"), &self.log_tails()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let diag = self.diagnose_and_kill();
                    return Err(self.failure(&format!("timed out after {timeout:?} waiting for {what}"), &diag));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let code = self.reap();
                    return Err(self.failure(&format!("emulator ended ({code:?}) before {what}"), &self.log_tails()));
                }
            }
        }
    }

    /// Lines printed so far that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.transcript.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` has appeared `n` times in total.
    pub fn expect_count(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<(), Failure> {
        self.wait_for(timeout, &format!("`{needle}` {n} times"), |e| (e.count(needle) >= n).then_some(()))
    }

    /// Time from the emulator's start to the first line containing `needle`.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        let i = self.transcript.iter().position(|l| l.contains(needle))?;
        Some(self.times[i] - self.started)
    }

    fn push(&mut self, (t, line): (Instant, String)) {
        self.times.push(t);
        self.transcript.push(line);
    }

    /// Waits for a line containing `needle`; returns it. On timeout or emulator exit the error
    /// carries the transcript and diagnostics.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String, Failure> {
        // Lines already seen count too: expectations may be checked out of order.
        self.wait_for(timeout, &format!("`{needle}`"), |e| e.transcript.iter().find(|l| l.contains(needle)).cloned())
    }

    /// Waits for the `BASTION EXIT:` line and for the emulator to end; checks that QEMU's
    /// process status agrees with the line.
    pub fn expect_exit(&mut self, timeout: Duration) -> Result<Outcome, Failure> {
        let start = Instant::now();
        let line = self.expect(bastion_core::exit::EXIT_MARKER, timeout)?;
        let status = parse_exit_line(&line).ok_or_else(|| self.failure(&format!("malformed exit line `{line}`"), ""))?;
        let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
        let code = self.wait_end(left);
        if code.is_none() {
            let diag = self.diagnose_and_kill();
            return Err(self.failure("emulator did not stop after the exit line", &diag));
        }
        if self.platform.is_qemu() && code.and_then(ExitStatus::from_qemu_process_status) != Some(status) {
            return Err(self.failure(&format!("QEMU exit status {code:?} disagrees with `{line}`"), ""));
        }
        Ok(Outcome { status, process_code: code })
    }

    /// For a kernel booted bare ([`Emulator::start_bare`]): waits for QEMU to end and returns
    /// the code the kernel wrote to the isa-debug-exit port (QEMU exits with `code << 1 | 1`;
    /// any other ending is a failure).
    pub fn expect_bare_exit(&mut self, timeout: Duration) -> Result<u32, Failure> {
        match self.wait_end(timeout) {
            Some(status) if status > 0 && status & 1 == 1 => Ok((status >> 1) as u32),
            Some(status) => Err(self.failure(&format!("QEMU ended with status {status}, not through the debug-exit port"), &self.log_tails())),
            None => {
                let diag = self.diagnose_and_kill();
                Err(self.failure("the bare kernel did not exit", &diag))
            }
        }
    }

    /// Drains output until the emulator ends or `timeout` passes; returns its exit code. A
    /// QEMU paused by a machine reset ends here (killed, its state kept in the run
    /// directory's `host-reset.txt`), as it would have without `-action shutdown=pause`.
    fn wait_end(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut next_check = Instant::now() + RESET_POLL;
        loop {
            if Instant::now() >= next_check {
                next_check = Instant::now() + RESET_POLL;
                if self.host_reset_report() {
                    return Some(0);
                }
            }
            if let Some(c) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.push(l);
                }
                return Some(c.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.push(l);
            }
        }
    }

    fn reap(&mut self) -> Option<i32> {
        self.wait_end(Duration::from_secs(3))
    }

    /// On a hang: ask Bochs to stop with SIGINT (it flushes its logs and prints the stuck
    /// CS:RIP), give it a moment, then kill. Returns what it printed meanwhile.
    fn diagnose_and_kill(&mut self) -> String {
        let mut diag = String::new();
        if self.platform.is_qemu() {
            diag.push_str(&qemu_registers(&self.dir.join(emulators::QEMU_MONITOR_SOCKET)));
        }
        if let Some(child) = self.child.as_ref() {
            let pid = child.id() as i32;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let before = self.transcript.len();
            self.wait_end(Duration::from_secs(3));
            diag.push_str(&self.transcript[before..].join("\n"));
            diag.push_str(&self.log_tails());
        }
        self.kill();
        diag
    }

    /// The last lines of the emulator's own logs in the run directory (Bochs's log, QEMU's
    /// debug log with the reason for a reset, stderr).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in ["bochs.log", emulators::QEMU_DEBUG_LOG, "stderr.log"] {
            if let Ok(s) = std::fs::read_to_string(self.dir.join(name)) {
                let tail: Vec<&str> = s.lines().rev().take(40).collect();
                out.push_str(&format!("\n--- tail of {name}:\n"));
                out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
            }
        }
        out
    }

    fn failure(&self, what: &str, diag: &str) -> Failure {
        Failure(format!(
            "[{}] {what}\n--- console ({} lines, full log in {}):\n{}\n{}{}",
            self.platform.name(),
            self.transcript.len(),
            self.dir.display(),
            self.transcript.join("\n"),
            if diag.is_empty() { String::new() } else { format!("--- diagnostics:\n{diag}") },
            self.reset_report.as_deref().map_or(String::new(), |r| format!("\n--- {r}")),
        ))
    }

    /// Kills the emulator's whole process group and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: the child leads its own process group (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed Bochs leaves a lock file beside the disk image.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "lock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How often a wait checks whether QEMU paused on a machine reset.
const RESET_POLL: Duration = Duration::from_secs(1);

/// QEMU's debug log line for a triple fault (`-d guest_errors`), which resets the machine.
const QEMU_TRIPLE_FAULT: &str = "Triple fault";

impl Emulator {
    /// If QEMU paused on a machine reset (a triple fault of a host CPU: Bastion crashed),
    /// reads what the paused machine still holds, writes it to `host-reset.txt` in the run
    /// directory, kills QEMU, keeps a summary with the file's path for every later failure
    /// (`reset_report`) and returns true; false otherwise.
    ///
    /// A host triple fault leaves no trace on the serial console: the CPU could not even
    /// reach its exception handlers. What tells a corrupted page table from an emulator whose
    /// own state went wrong is whether the tables *in memory* map the addresses that failed:
    /// for each CPU, the summary walks its CR3 (4-level paging, SDM Vol. 3A 4.5) for RIP and
    /// the IDT base and shows every entry.
    fn host_reset_report(&mut self) -> bool {
        if !self.platform.is_qemu() || self.child.is_none() {
            return false;
        }
        let Ok(log) = std::fs::read_to_string(self.dir.join(emulators::QEMU_DEBUG_LOG)) else { return false };
        if !log.contains(QEMU_TRIPLE_FAULT) {
            return false;
        }
        let sock = self.dir.join(emulators::QEMU_MONITOR_SOCKET);
        let regs = monitor_command(&sock, "info registers -a").unwrap_or_default();
        let mut walks = String::new();
        for (cpu, cr3, rip, idt, cr2) in cpus_of_registers(&regs) {
            walks.push_str(&format!("CPU {cpu}: CR3 {cr3:#x} RIP {rip:#x} IDT base {idt:#x} CR2 {cr2:#x}\n"));
            for (what, va) in [("RIP", rip), ("IDT", idt), ("IDT vector 8 (#DF)", idt + 0x80), ("IDT vector 14 (#PF)", idt + 0xE0), ("CR2", cr2)] {
                let walk = page_walk(|pa| read_phys_u64(&sock, pa), cr3, va);
                // The last page fault was on this CPU's #DF or #PF gate (delivering a #PF, then
                // the #DF), which its page tables (as they are in memory) map: a correct CPU
                // cannot fault there, so the emulator translated with something else.
                if what == "CR2" && faulted_on_a_mapped_gate(cr2, idt, &walk) {
                    walks.push_str(&format!("  {EMULATOR_FAULT}: CPU {cpu} page-faulted on its IDT at {cr2:#x}, which its page tables map\n"));
                }
                walks.push_str(&format!("  {what}: {walk}\n"));
            }
        }
        let full = format!("{walks}\n--- info registers -a:\n{regs}\n--- {}:\n{log}", emulators::QEMU_DEBUG_LOG);
        let file = self.dir.join("host-reset.txt");
        let _ = std::fs::write(&file, &full);
        self.kill();
        self.reset_report = Some(format!(
            "the machine reset (QEMU: {QEMU_TRIPLE_FAULT}); page walks of the paused machine:\n{walks}(registers and QEMU's log in {})\n",
            file.display()
        ));
        true
    }
}

/// What a reset report says when the machine state shows an emulator fault rather than
/// Bastion's (a page fault on an address the page tables map): [`shows_emulator_fault`].
pub const EMULATOR_FAULT: &str = "emulator fault";

/// Whether a failure's text is a machine reset whose report shows the emulator, not Bastion,
/// at fault (see `Emulator::host_reset_report`). Measured on QEMU 7.2's TCG under SMP
/// Linux: a host CPU right after VMRUN faults on its own IDT, whose page tables in memory map
/// it, 2 times in 31 runs of linux_smp.
///
/// A guest stopped by the emulator counts too, on QEMU's TCG ([`GuestStops`]): the failure's
/// console then holds Bastion's own account of it.
pub fn shows_emulator_fault(p: Platform, failure: &str) -> bool {
    if failure.contains(&format!("  {EMULATOR_FAULT}: ")) {
        return true;
    }
    let tcg = p.is_qemu() && !emulators::kvm_usable();
    let mut stops = GuestStops::default();
    tcg && failure.lines().any(|l| stops.emulator_cause(l).is_some())
}

/// How QEMU 7.2's TCG stops a guest that did nothing to be stopped (seen in the hostile bench
/// and linux_smp, both with 2 emulated CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorCause {
    /// Bastion found the host's own state saved as the guest's at an exit and stopped the
    /// guest (`the CPU lost the guest's state`): the emulator ran the host through the
    /// guest's nested tables.
    StateLost,
    /// A triple fault whose delivery walk (Bastion's `delivery walk:` line, from the state
    /// the CPU saved) found every page mapped, no entry with a bit set that is reserved on
    /// every CPU, every gate an interrupt or trap gate and the nested tables the guest's own.
    TripleFaultOnMappedPages,
}

/// Follows Bastion's log line by line and tells at each `guest NAME: stopped: …` line whether
/// the emulator, not the guest or Bastion, ended that guest ([`EmulatorCause`]). Only
/// meaningful on QEMU's TCG: on hardware the same lines would be Bastion's or the guest's.
#[derive(Debug, Default)]
pub struct GuestStops {
    /// Guests whose last delivery walk found everything mapped.
    walked_all_mapped: std::collections::HashSet<String>,
}

impl GuestStops {
    /// For a stop line, the emulator's cause of it if it was the emulator's; None for any
    /// other line (a walk line is remembered for its guest's stop line).
    pub fn emulator_cause(&mut self, line: &str) -> Option<EmulatorCause> {
        let rest = line.split_once("guest ")?.1;
        let (name, what) = rest.split_once(": ")?;
        if what.starts_with("vCPU ") && what.contains(" delivery walk: ") {
            if what.contains(bastion_core::vm::fault_report::ALL_MAPPED) {
                self.walked_all_mapped.insert(name.to_string());
            }
            return None;
        }
        let reason = what.strip_prefix("stopped: ")?;
        let walked = self.walked_all_mapped.remove(name);
        if reason.starts_with("the CPU lost the guest's state") {
            Some(EmulatorCause::StateLost)
        } else if reason.starts_with("triple fault") && walked {
            Some(EmulatorCause::TripleFaultOnMappedPages)
        } else {
            None
        }
    }
}

/// Runs `test`; if it fails with an [emulator fault](shows_emulator_fault), says so
/// (the whole report on stderr) and runs it once more. Any other failure, or a second one,
/// fails the test. For tests where an emulator defect was measured (Linux and the hostile
/// battery on QEMU's TCG, with 2 emulated CPUs).
pub fn retry_once_on_emulator_fault(p: Platform, test: impl Fn() + std::panic::RefUnwindSafe) {
    let Err(e) = std::panic::catch_unwind(&test) else { return };
    let msg = e.downcast_ref::<String>().map(String::as_str).or_else(|| e.downcast_ref::<&str>().copied()).unwrap_or("");
    if !shows_emulator_fault(p, msg) {
        std::panic::resume_unwind(e);
    }
    eprintln!("=== the first attempt ended in an emulator fault (not Bastion's: see the page walks); running once more ===\n{msg}");
    test();
}

/// Whether CR2 (the last page fault) is this CPU's #DF or #PF gate (a page fault while
/// delivering a page fault, then while delivering the double fault) and `walk` (of CR2 through
/// the CPU's page tables as they are in memory, [`page_walk`]) maps it.
fn faulted_on_a_mapped_gate(cr2: u64, idt: u64, walk: &str) -> bool {
    (cr2 == idt + 8 * 16 || cr2 == idt + 14 * 16) && walk.contains(" -> ")
}

/// (CPU index, CR3, RIP, IDT base, CR2) of each CPU in QEMU's `info registers -a` answer.
fn cpus_of_registers(regs: &str) -> Vec<(u32, u64, u64, u64, u64)> {
    let hex = |block: &str, key: &str| -> Option<u64> {
        let at = block.find(key)? + key.len();
        let v: String = block[at..].trim_start().chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        u64::from_str_radix(&v, 16).ok()
    };
    regs.split("CPU#")
        .skip(1)
        .filter_map(|block| {
            let cpu = block.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()?;
            Some((cpu, hex(block, "CR3=")?, hex(block, "RIP=")?, hex(block, "IDT=")?, hex(block, "CR2=")?))
        })
        .collect()
}

/// One quadword of physical memory through QEMU's monitor (`xp /1gx`).
fn read_phys_u64(sock: &Path, pa: u64) -> Option<u64> {
    let out = monitor_command(sock, &format!("xp /1gx {pa:#x}"))?;
    let line = out.lines().find(|l| l.trim_start().starts_with(&format!("{pa:016x}:")))?;
    u64::from_str_radix(line.split("0x").nth(1)?.trim(), 16).ok()
}

/// The 4-level walk of `va` from `cr3` (SDM Vol. 3A 4.5, tables 4-15..4-20), each entry as
/// read by `read`: `PML4[i]=e PDPT[j]=e ...`, ending with the physical address or where and
/// why it stopped (an entry not present, or memory that could not be read).
fn page_walk(read: impl Fn(u64) -> Option<u64>, cr3: u64, va: u64) -> String {
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let mut out = String::new();
    let mut table = cr3 & ADDR;
    for (level, name, shift) in [(4, "PML4", 39), (3, "PDPT", 30), (2, "PD", 21), (1, "PT", 12)] {
        let index = (va >> shift) & 0x1FF;
        let Some(e) = read(table + index * 8) else {
            out.push_str(&format!("{name}[{index:#x}] at {:#x} unreadable", table + index * 8));
            return out;
        };
        out.push_str(&format!("{name}[{index:#x}]={e:#x} "));
        if e & 1 == 0 {
            out.push_str("not present");
            return out;
        }
        // Bit 7 (PS) in a PDPT or PD entry: a 1 GiB or 2 MiB page.
        if level == 1 || (level < 4 && e & 0x80 != 0) {
            let offset_mask = (1u64 << shift) - 1;
            out.push_str(&format!("-> {:#x}", (e & ADDR & !offset_mask) | (va & offset_mask)));
            return out;
        }
        table = e & ADDR;
    }
    out
}

/// Asks QEMU's monitor for every CPU's registers (`info registers -a`), for hang reports.
fn qemu_registers(sock: &Path) -> String {
    match monitor_command(sock, "info registers -a") {
        Some(out) => format!("--- QEMU info registers:\n{out}\n"),
        None => format!("(no QEMU monitor at {})\n", sock.display()),
    }
}

/// Sends one command to the QEMU monitor at `sock` and returns what it answered within 1.5 s;
/// `None` if there is no monitor.
fn monitor_command(sock: &Path, cmd: &str) -> Option<String> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(sock).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
    let _ = s.write_all(format!("{cmd}\n").as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

impl Emulator {
    /// Runs a QEMU monitor command (e.g. `nmi`) on a QEMU platform and returns its answer.
    pub fn qemu_monitor(&self, cmd: &str) -> Result<String, String> {
        if !self.platform.is_qemu() {
            return Err(format!("{} has no QEMU monitor", self.platform.name()));
        }
        let sock = self.dir.join(emulators::QEMU_MONITOR_SOCKET);
        monitor_command(&sock, cmd).ok_or_else(|| format!("no QEMU monitor at {}", sock.display()))
    }
    /// The text on QEMU's screen: a screenshot (monitor `screendump`, a PPM file in the run
    /// directory) read back cell by cell against Bastion's screen font
    /// (`bastion_core::fbcon::read_text`): its width in characters, and its rows.
    pub fn screen_text(&self) -> Result<(usize, Vec<String>), String> {
        let file = self.dir.join("screen.ppm");
        let _ = std::fs::remove_file(&file);
        self.qemu_monitor(&format!("screendump {}", file.display()))?;
        let ppm = std::fs::read(&file).map_err(|e| format!("no screenshot at {}: {e}", file.display()))?;
        let (width, height, pixels) = parse_ppm(&ppm).ok_or_else(|| format!("{} is not a binary PPM (P6, 8-bit)", file.display()))?;
        let (cols, rows) = (width / bastion_core::fbcon::CELL_W, height / bastion_core::fbcon::CELL_H);
        // Bastion draws grey: red is the intensity.
        Ok((cols, bastion_core::fbcon::read_text(|x, y| pixels[(y * width + x) * 3], cols, rows)))
    }
}

/// A binary PPM (P6 with maxval 255): width, height and the RGB bytes.
pub fn parse_ppm(data: &[u8]) -> Option<(usize, usize, &[u8])> {
    // Header: "P6", width, height, maxval, separated by whitespace (comments start with '#'),
    // then one whitespace byte and the pixels.
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data.get(i)?.is_ascii_whitespace() || *data.get(i)? == b'#' {
            if data[i] == b'#' {
                while *data.get(i)? != b'\n' {
                    i += 1;
                }
            }
            i += 1;
        }
        let start = i;
        while !data.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        fields.push(std::str::from_utf8(&data[start..i]).ok()?);
    }
    let (w, h): (usize, usize) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    if fields[0] != "P6" || fields[3] != "255" {
        return None;
    }
    let pixels = data.get(i + 1..i + 1 + w.checked_mul(h)?.checked_mul(3)?)?;
    Some((w, h, pixels))
}

/// Connects to Bochs's COM1 server (it starts listening a moment after launch) and drains
/// what Bochs sends there into `com1.log` (the same text arrives on port 0xE9).
pub fn connect_bochs_com1(run_dir: &Path) -> std::net::TcpStream {
    let port: u16 = std::fs::read_to_string(run_dir.join(emulators::BOCHS_COM1_PORT_FILE))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .expect("Bochs COM1 port file");
    let deadline = Instant::now() + Duration::from_secs(30);
    let sock = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot connect to Bochs COM1 on port {port}: {e}"),
        }
    };
    let mut reader = sock.try_clone().expect("clone COM1 socket");
    let log = run_dir.join("com1.log");
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        let _ = std::fs::write(log, all);
    });
    sock
}

fn image_for<'a>(platform: Platform, image: &'a TestImage, opts: &RunOptions) -> &'a Path {
    if opts.pxe {
        &image.pxe
    } else if platform == Platform::QemuUefi {
        &image.uefi
    } else {
        &image.bios
    }
}

/// Boots `config` on `platform`, waits for the exit line, and returns the transcript and the
/// outcome: the common shape of a test. Panics (failing the test) with diagnostics on error.
pub fn boot_to_exit(name: &str, platform: Platform, config: &str, opts: &RunOptions) -> (String, Outcome) {
    let image = image_with_config(name, config);
    run_image(platform, &image, opts)
}

/// Boots an existing image until the exit line.
pub fn run_image(platform: Platform, image: &TestImage, opts: &RunOptions) -> (String, Outcome) {
    let (emu, o) = run_image_emulator(platform, image, opts);
    (emu.transcript(), o)
}

/// Like [`run_image`], but hands back the ended emulator (for line timestamps).
pub fn run_image_emulator(platform: Platform, image: &TestImage, opts: &RunOptions) -> (Emulator, Outcome) {
    let mut emu = Emulator::start(platform, image, opts);
    match emu.expect_exit(platform.boot_timeout()) {
        Ok(o) => (emu, o),
        Err(e) => panic!("{e}"),
    }
}

/// Builds images for `config`, with extra files placed beside it (guest kernels), so that
/// `boot` packs them as it would for a user.
pub fn image_with_files(name: &str, config: &str, files: &[(&str, &Path)]) -> TestImage {
    let dir = work_dir(name);
    for (dest, src) in files {
        let to = dir.join(dest);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
    }
    image_with_config_in(dir, config)
}

/// The Linux guest kit `cargo xtask fetch-linux` leaves under `target/linux`: Debian's cloud
/// kernel and the busybox initramfs. `None` when it is not there, unless the run requires it
/// (`cargo xtask test` fetches it and sets `BASTION_REQUIRE_LINUX_KIT=1`), which panics with
/// the command that fetches it.
pub fn linux_kit() -> Option<(PathBuf, PathBuf)> {
    let dir = workspace_root().join("target/linux");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if kernel.exists() && initrd.exists() {
        return Some((kernel, initrd));
    }
    if std::env::var_os("BASTION_REQUIRE_LINUX_KIT").is_some_and(|v| v == "1") {
        panic!("the Linux guest kit is missing from {}: run `cargo xtask fetch-linux`", dir.display());
    }
    eprintln!("skipped: no Linux guest kit in {} (`cargo xtask fetch-linux` fetches it)", dir.display());
    None
}

/// Free host memory (KiB) in a transcript: before any guest started (`memory: N KiB free
/// before any guest starts`) and after the last guest stopped (the last `guest X: stopped:
/// ... N KiB free` line); `None` if either line is missing.
pub fn free_kib_before_and_after(transcript: &str) -> Option<(u64, u64)> {
    let kib = |l: &str| l.split(" KiB free").next().and_then(|x| x.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok());
    let before = transcript.lines().find(|l| l.contains("KiB free before any guest starts")).and_then(kib)?;
    let after = transcript.lines().filter(|l| l.contains("stopped:") && l.contains("KiB free")).last().and_then(kib)?;
    Some((before, after))
}

/// Once every guest has stopped, Bastion must have every frame back that guests used (RAM,
/// page tables, VMCS/VMCB, bitmaps): the free figure equals the one before any guest started.
pub fn assert_all_memory_returned(transcript: &str) {
    let (before, after) = free_kib_before_and_after(transcript).unwrap_or_else(|| panic!("no memory figures in:\n{transcript}"));
    assert_eq!(after, before, "memory leaked by stopped guests:\n{transcript}");
}

#[cfg(test)]
mod host_reset_tests {
    use super::*;

    /// QEMU 7.2's `info registers -a` layout (abridged to the fields read).
    const REGS: &str = "CPU#0\nRAX=0000000000000000 RBX=0000000000000001\nRIP=0000010000030665 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
        GDT=     0000010000100000 00000037\nIDT=     0000010000200000 00000fff\nCR0=80010033 CR2=0000010000200080 CR3=0000000000a01000 CR4=000006a0\n\
        CPU#1\nRIP=ffffffff81000010 RFL=00000046\nIDT=     fffffe0000000000 00000fff\nCR0=80050033 CR2=0000000000000000 CR3=0000000002345000 CR4=00350ef0\n";

    #[test]
    fn each_cpus_cr3_rip_and_idt_base_are_read_from_qemus_registers() {
        assert_eq!(
            cpus_of_registers(REGS),
            vec![(0, 0xa01000, 0x10000030665, 0x10000200000, 0x10000200080), (1, 0x2345000, 0xffffffff81000010, 0xfffffe0000000000, 0)]
        );
        assert!(cpus_of_registers("no CPUs here").is_empty());
    }

    /// 64-bit IDT gates are 16 bytes (SDM Vol. 3A 6.14.1): #DF's at +0x80, #PF's at +0xE0.
    #[test]
    fn only_a_fault_on_a_mapped_df_or_pf_gate_is_the_emulators() {
        let idt = 0x100_000d_e520;
        assert!(faulted_on_a_mapped_gate(idt + 0x80, idt, "PML4[0x2]=0x1023 ... -> 0x10db5a0"));
        assert!(faulted_on_a_mapped_gate(idt + 0xE0, idt, "... -> 0x10db600"));
        assert!(!faulted_on_a_mapped_gate(idt + 0x80, idt, "PML4[0x2]=0x0 not present"), "unmapped: a real fault");
        assert!(!faulted_on_a_mapped_gate(idt + 0xD0, idt, "... -> 0x10db5f0"), "another gate");
        assert!(!faulted_on_a_mapped_gate(0, 0, "... -> 0x0"), "CR2 0 with an IDT at 0: no page fault at all");
    }

    /// A 4-level walk (SDM Vol. 3A 4.5): bits 47:39, 38:30, 29:21, 20:12 index the four
    /// tables; a PS bit in a PDPT or PD entry ends it at a 1 GiB or 2 MiB page; a clear P bit
    /// ends it as not present.
    #[test]
    fn the_page_walk_follows_each_level_and_stops_where_hardware_would() {
        let mem: std::collections::HashMap<u64, u64> = [
            (0x1000 + 2 * 8, 0x2003),         // PML4[2] -> PDPT at 0x2000
            (0x2000, 0x3003),                 // PDPT[0] -> PD at 0x3000
            (0x3000, 0x4003),                 // PD[0] -> PT at 0x4000
            (0x4000 + 0xde * 8, 0x9_9000_0003), // PT[0xde] -> 0x990000000
            (0x3000 + 8, 0x0060_0083),        // PD[1]: a 2 MiB page at 0x600000
            (0x2000 + 8, 0x4000_0083),        // PDPT[1]: a 1 GiB page at 0x40000000
        ]
        .into_iter()
        .collect();
        let read = |pa| mem.get(&pa).copied().or(Some(0));
        let base = 2u64 << 39;
        assert_eq!(page_walk(read, 0x1000, base + 0xde123), "PML4[0x2]=0x2003 PDPT[0x0]=0x3003 PD[0x0]=0x4003 PT[0xde]=0x990000003 -> 0x990000123");
        assert_eq!(page_walk(read, 0x1000, base + 0x20_0456), "PML4[0x2]=0x2003 PDPT[0x0]=0x3003 PD[0x1]=0x600083 -> 0x600456");
        assert_eq!(page_walk(read, 0x1000, base + 0x4123_4567), "PML4[0x2]=0x2003 PDPT[0x1]=0x40000083 -> 0x41234567");
        assert_eq!(page_walk(read, 0x1000, base + 0xdf000), "PML4[0x2]=0x2003 PDPT[0x0]=0x3003 PD[0x0]=0x4003 PT[0xdf]=0x0 not present");
        assert_eq!(page_walk(read, 0x1000, 0), "PML4[0x0]=0x0 not present");
        assert_eq!(page_walk(|_| None, 0x1000, 0), "PML4[0x0] at 0x1000 unreadable");
    }
}

#[cfg(test)]
mod guest_stop_tests {
    use super::*;
    use bastion_core::vm::fault_report::ALL_MAPPED;

    #[test]
    fn only_a_lost_state_and_a_triple_fault_on_mapped_pages_are_the_emulators() {
        let walk_ok = format!("[WARN  cpu0] guest a: vCPU 0 delivery walk: RIP 0x127fc -> 0x127fc; {ALL_MAPPED} (after SHUTDOWN the APM leaves this state undefined)");
        let walk_hole = "[WARN  cpu0] guest a: vCPU 0 delivery walk: IDT[8] past the limit 0x0; the guest's tables do not map every page of this delivery for the access it makes";
        let triple = "[WARN  cpu0] guest a: stopped: triple fault (shutdown) (vCPU 0, RIP 0x127fc); exits total 5";
        let mut g = GuestStops::default();
        assert_eq!(g.emulator_cause("[WARN  cpu1] guest a: stopped: the CPU lost the guest's state at an exit: exit code 0x400"), Some(EmulatorCause::StateLost));
        // A walk line is no stop; the stop after it is judged by it.
        assert_eq!(g.emulator_cause(&walk_ok), None);
        assert_eq!(g.emulator_cause(triple), Some(EmulatorCause::TripleFaultOnMappedPages));
        // The walk holds for that stop only.
        assert_eq!(g.emulator_cause(triple), None);
        // A hole in the guest's tables is the guest's doing; so is a triple fault not walked.
        assert_eq!(g.emulator_cause(walk_hole), None);
        assert_eq!(g.emulator_cause(triple), None);
        // Another guest's walk says nothing of this one, and other stops are not the emulator's.
        assert_eq!(g.emulator_cause(&walk_ok.replace("guest a:", "guest b:")), None);
        assert_eq!(g.emulator_cause(triple), None);
        assert_eq!(g.emulator_cause("guest b: stopped: test exit: PASS"), None);
        assert_eq!(g.emulator_cause(&walk_ok), None);
        assert_eq!(g.emulator_cause("guest a: stopped: read guest-physical 0x80000000, which is neither RAM nor a device"), None);
        assert_eq!(g.emulator_cause(triple), None);
    }

    #[test]
    fn a_failure_shows_an_emulator_fault_only_from_qemus_tcg() {
        let console = format!(
            "guest a: vCPU 1 delivery walk: RIP 0xffffffff8a2bc777 -> 0x2bc777; {ALL_MAPPED}\nguest a: stopped: triple fault (shutdown) (vCPU 1)\n"
        );
        let failure = format!("seed 1: [qemu-bios] timed out waiting for \"x\"\n--- console:\n{console}");
        assert_eq!(shows_emulator_fault(Platform::QemuBios, &failure), !emulators::kvm_usable());
        assert!(!shows_emulator_fault(Platform::BochsAmd, &failure));
        assert!(!shows_emulator_fault(Platform::QemuBios, "timed out\n--- console:\nguest a: stopped: triple fault (shutdown)\n"));
        // A host fault the paused machine's walks put on the emulator, on any platform.
        assert!(shows_emulator_fault(Platform::BochsAmd, &format!("reset\n  {EMULATOR_FAULT}: CPU 1 page-faulted on its IDT")));
    }
}

#[cfg(test)]
mod memory_figure_tests {
    #[test]
    fn free_memory_is_read_from_the_first_and_last_lines() {
        let t = "memory: 500 KiB free before any guest starts\nguest a: stopped: x; memory freed, 400 KiB free\n\
                 guest b: stopped: y; memory freed, 499 KiB free\n";
        assert_eq!(super::free_kib_before_and_after(t), Some((500, 499)));
        assert_eq!(super::free_kib_before_and_after("guest b: stopped: y; memory freed, 499 KiB free"), None);
    }
}

#[cfg(test)]
mod ppm_tests {
    #[test]
    fn a_binary_ppm_header_is_read_with_comments_and_the_pixels_after_one_whitespace_byte() {
        // Netpbm's PPM format: "P6", width, height, maxval, one whitespace, then RGB bytes.
        let mut f = b"P6\n# QEMU\n2 1\n255\n".to_vec();
        f.extend_from_slice(&[10, 20, 30, 40, 50, 60, 99]);
        assert_eq!(super::parse_ppm(&f), Some((2, 1, &[10u8, 20, 30, 40, 50, 60][..])));
        // Too few pixels, another magic or maxval, a cut header.
        assert_eq!(super::parse_ppm(&f[..f.len() - 2]), None);
        assert_eq!(super::parse_ppm(b"P3\n1 1\n255\n\x00\x00\x00"), None);
        assert_eq!(super::parse_ppm(b"P6\n1 1\n65535\n\x00\x00\x00\x00\x00\x00"), None);
        assert_eq!(super::parse_ppm(b"P6\n1 1"), None);
    }
}
