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
    let img = TestImage { bios: dir.join("bastion-bios.img"), uefi: dir.join("bastion-uefi.img"), dir };
    let mut args: Vec<&OsStr> = vec![OsStr::new("image"), OsStr::new("--kernel"), kernel().as_os_str()];
    let bundle = img.dir.join(BUNDLE_FILE);
    args.extend([OsStr::new("--bundle"), bundle.as_os_str(), OsStr::new("--out"), img.dir.as_os_str()]);
    args.extend([OsStr::new("--bios"), OsStr::new("--uefi")]);
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
        let cmd = emulator_command(platform, image_for(platform, image), &run_dir, opts).unwrap_or_else(|e| panic!("{e}"));
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
        Emulator { platform, child: Some(child), lines: rx, transcript: Vec::new(), times: Vec::new(), started, dir: run_dir, com1 }
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
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => self.push(l),
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

    /// Drains output until the emulator ends or `timeout` passes; returns its exit code.
    fn wait_end(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
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
            diag = self.transcript[before..].join("\n");
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
            "[{}] {what}\n--- console ({} lines, full log in {}):\n{}\n{}",
            self.platform.name(),
            self.transcript.len(),
            self.dir.display(),
            self.transcript.join("\n"),
            if diag.is_empty() { String::new() } else { format!("--- diagnostics:\n{diag}") }
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

fn image_for(platform: Platform, image: &TestImage) -> &Path {
    if platform == Platform::QemuUefi {
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
mod memory_figure_tests {
    #[test]
    fn free_memory_is_read_from_the_first_and_last_lines() {
        let t = "memory: 500 KiB free before any guest starts\nguest a: stopped: x; memory freed, 400 KiB free\n\
                 guest b: stopped: y; memory freed, 499 KiB free\n";
        assert_eq!(super::free_kib_before_and_after(t), Some((500, 499)));
        assert_eq!(super::free_kib_before_and_after("guest b: stopped: y; memory freed, 499 KiB free"), None);
    }
}
