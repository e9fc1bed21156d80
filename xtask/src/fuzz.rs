//! `cargo xtask fuzz [TARGET] [--time S] [--runs N] [--asan]`: the libFuzzer targets of `hypervisor/core/fuzz`
//! (every parser and device model that takes guest- or user-controlled input, and the exit
//! handler over a fake vCPU), built and run without cargo-fuzz installed.
//!
//! The build is cargo-fuzz's own (`cargo fuzz build -s none` in `hypervisor/core` gives the
//! same binaries): release with debug assertions and overflow checks, libFuzzer's coverage
//! instrumentation (sanitizer-coverage with inline 8-bit counters, PC tables, compare tracing
//! and stack depth), `--cfg fuzzing`, for the host triple so that build scripts stay
//! uninstrumented; into `target/fuzz`, so the workspace's own builds are not disturbed.
//! AddressSanitizer (cargo-fuzz's default) is there with `--asan`, into `target/fuzz-asan`:
//! it is not the default because bastion-core has no `unsafe` code outside its tests, so it
//! could only find memory errors in dependencies, and it halves the executions per second of
//! the targets that allocate (the loaders, ACPI, the config).
//!
//! Each target runs from its seed corpus (`hypervisor/core/fuzz/seeds/<target>`, in the
//! repository) and its working corpus (`target/fuzz/corpus/<target>`, which grows with every
//! run); a finding is written to `target/fuzz/artifacts/<target>/` and fails the command with
//! the line that replays it. Figures: `fuzz: <target> runs=<n> secs=<s> corpus=<n>`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every target, in `hypervisor/core/fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 14] =
    ["config", "bundle", "uart", "pic", "pit", "rtc", "lapic", "ioapic", "mmio_decode", "exit_decode", "bzimage", "multiboot", "acpi", "handle_exit"];

/// The host triple the targets are built for.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// The flags cargo-fuzz 0.12 passes to rustc (debug assertions on; `--sanitizer address`
/// with `asan`, else `none`), in the same order.
pub fn rustflags(asan: bool) -> String {
    let mut flags = vec![
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cllvm-args=-sanitizer-coverage-stack-depth",
        "--cfg",
        "fuzzing",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ];
    if asan {
        flags.extend(["-Zsanitizer=address", "-Cforce-frame-pointers"]);
    }
    flags.join(" ")
}

/// The longest input libFuzzer makes for `target`: files (configs, bundles, kernel images)
/// get room for several tables or headers; an operation stream of 1 KiB is a few hundred
/// guest operations, enough to reach every state and short enough to run fast.
pub fn max_len(target: &str) -> usize {
    match target {
        "config" | "bundle" | "bzimage" | "multiboot" => 8192,
        _ => 1024,
    }
}

/// What one run did, from libFuzzer's last line (`Done 1234 runs in 10 second(s)`).
#[derive(Debug, PartialEq, Eq)]
pub struct Figures {
    pub runs: u64,
    pub secs: u64,
}

pub fn figures(stderr: &str) -> Option<Figures> {
    let line = stderr.lines().rev().find(|l| l.starts_with("Done ") && l.contains(" runs in "))?;
    let mut w = line.split_whitespace();
    let runs = w.nth(1)?.parse().ok()?;
    let secs = w.nth(2)?.parse().ok()?;
    Some(Figures { runs, secs })
}

/// The fuzz workspace.
fn dir(root: &Path) -> PathBuf {
    root.join("hypervisor/core/fuzz")
}

/// Builds every target; returns the folder holding the binaries.
pub fn build(root: &Path, asan: bool) -> Result<PathBuf> {
    let target_dir = root.join(if asan { "target/fuzz-asan" } else { "target/fuzz" });
    let status = crate::cargo()
        .current_dir(dir(root))
        .args(["build", "--release", "--bins", "--target", HOST, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", rustflags(asan))
        // ASan's runtime comes with the nightly toolchain; libfuzzer-sys builds libFuzzer.
        .env_remove("RUSTC_WRAPPER")
        .status()
        .context("cannot run cargo build for the fuzz targets")?;
    if !status.success() {
        bail!("the fuzz targets do not build (hypervisor/core/fuzz)");
    }
    Ok(target_dir.join(HOST).join("release"))
}

/// Runs `target` for `secs` seconds of fuzzing (or `runs` executions, whichever ends first)
/// and returns its figures; a finding is an error naming the input that shows it.
pub fn run(root: &Path, bin: &Path, target: &str, secs: u64, runs: Option<u64>) -> Result<Figures> {
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    let seeds = dir(root).join("seeds").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut cmd = Command::new(bin.join(target));
    cmd.arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_len={}", max_len(target)))
        .arg("-print_final_stats=1")
        // A slow input is a hang to look at, not to wait on.
        .arg("-timeout=10")
        .arg(&corpus);
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    // LeakSanitizer would report the statics of a `spin::Once`-style init as leaks.
    cmd.env("ASAN_OPTIONS", "detect_leaks=0");
    let out = cmd.output().with_context(|| format!("cannot run {}", bin.join(target).display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let found = std::fs::read_dir(&artifacts)
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok()));
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        bail!(
            "fuzz target {target} found a failure{}:\n{}\nreplay: {} {}",
            found.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default(),
            tail.join("\n"),
            bin.join(target).display(),
            found.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    let f = figures(&stderr).with_context(|| format!("fuzz target {target}: no `Done N runs` line from libFuzzer:\n{stderr}"))?;
    let corpus_n = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    println!("fuzz: {target} runs={} secs={} corpus={corpus_n}", f.runs, f.secs);
    Ok(f)
}

/// `cargo xtask fuzz`: builds, then runs each target asked for in turn.
pub fn fuzz(root: &Path, target: Option<&str>, secs: u64, runs: Option<u64>, asan: bool) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target `{t}` (the targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let bin = build(root, asan)?;
    for t in targets {
        run(root, &bin, t, secs, runs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzers_last_line_gives_the_figures() {
        let stderr = "#1000\tpulse  cov: 10\nDone 12345678 runs in 61 second(s)\nstat::number_of_executed_units: 12345678\n";
        assert_eq!(figures(stderr), Some(Figures { runs: 12_345_678, secs: 61 }));
        assert_eq!(figures("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn every_target_has_a_source_file_and_a_seed_folder() {
        let root = qemu_tests::workspace_root();
        let manifest = std::fs::read_to_string(dir(&root).join("Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(dir(&root).join("fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t} is not a [[bin]] of the fuzz crate");
            let seeds = dir(&root).join("seeds").join(t);
            assert!(seeds.read_dir().is_ok_and(|mut d| d.next().is_some()), "no seeds for {t}");
        }
        let sources = std::fs::read_dir(dir(&root).join("fuzz_targets")).unwrap().count();
        assert_eq!(sources, TARGETS.len(), "a fuzz target is missing from TARGETS");
    }

    #[test]
    fn the_flags_are_cargo_fuzzs() {
        for asan in [false, true] {
            let f = rustflags(asan);
            for flag in ["-Cpasses=sancov-module", "--cfg fuzzing", "-Cdebug-assertions", "-Coverflow-checks"] {
                assert!(f.contains(flag), "{flag}");
            }
            assert_eq!(f.contains("-Zsanitizer=address"), asan);
        }
    }
}
