//! `cargo xtask mutants [FILE…] [--diff BASE]`: mutation testing of `bastion-core` with
//! cargo-mutants (installed with `cargo install cargo-mutants` when it is missing): every
//! mutant of the files given (paths under `hypervisor/core/src`, e.g. `vm/cpuid.rs`; every
//! file of the crate when none is given), or only those in lines changed since git revision
//! BASE (a quick run on a change). Each mutant is built and the crate's unit tests run
//! against it (`--lib`; a mutant that makes a test run past the timeout counts apart, as
//! not caught).
//!
//! Code whose mutants cannot change behaviour (equivalent mutants) carries `#[mutants::skip]`
//! with the reason beside it; `.cargo/mutants.toml` leaves test support (`vm/fake.rs`) out.
//! cargo-mutants reads both itself.
//!
//! Prints, per file, `mutants: <file> caught=<n> missed=<n> timeout=<n> unviable=<n>
//! caught_pct=<x>` (caught over caught + missed + timeout; the goal is ≥ 90 % in every file)
//! and then every mutant not caught. The full output is in `target/mutants/mutants.out`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Per-file outcome counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub caught: u32,
    pub missed: u32,
    pub timeout: u32,
    pub unviable: u32,
}

impl Counts {
    /// Caught over the mutants that built (a timeout is not a catch: the test must fail).
    pub fn caught_pct(&self) -> Option<f64> {
        let viable = self.caught + self.missed + self.timeout;
        (viable > 0).then(|| 100.0 * f64::from(self.caught) / f64::from(viable))
    }
}

/// Counts by file from cargo-mutants' `outcomes.json`, and the names of the mutants not
/// caught (missed or timed out).
pub fn outcomes(json: &str) -> Result<(BTreeMap<String, Counts>, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(json).context("outcomes.json is not JSON")?;
    let mut by_file: BTreeMap<String, Counts> = BTreeMap::new();
    let mut survivors = Vec::new();
    for o in v["outcomes"].as_array().context("outcomes.json has no outcomes")? {
        let Some(m) = o["scenario"].get("Mutant") else { continue };
        let file = m["file"].as_str().unwrap_or("?").to_string();
        let c = by_file.entry(file).or_default();
        match o["summary"].as_str().unwrap_or("") {
            "CaughtMutant" => c.caught += 1,
            "MissedMutant" => {
                c.missed += 1;
                survivors.push(format!("missed: {}", m["name"].as_str().unwrap_or("?")));
            }
            "Timeout" => {
                c.timeout += 1;
                survivors.push(format!("timeout: {}", m["name"].as_str().unwrap_or("?")));
            }
            "Unviable" => c.unviable += 1,
            other => bail!("unknown mutant outcome `{other}`"),
        }
    }
    Ok((by_file, survivors))
}

/// The files of `bastion-core` to mutate: `hypervisor/core/src/<f>` for each one given (all
/// must exist), or none (cargo-mutants then takes every file).
pub fn files(root: &Path, given: &[String]) -> Result<Vec<String>> {
    given
        .iter()
        .map(|f| {
            let rel = f.trim_start_matches("hypervisor/core/src/").trim_start_matches("src/");
            let path = format!("hypervisor/core/src/{rel}");
            if !root.join(&path).is_file() {
                bail!("{f}: no such file in hypervisor/core/src");
            }
            Ok(path)
        })
        .collect()
}

pub fn mutants(root: &Path, given: &[String], diff: Option<&str>, jobs: u32, timeout: u32) -> Result<()> {
    let files = files(root, given)?;
    let have = crate::cargo().args(["mutants", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        println!("xtask: installing cargo-mutants (cargo install --locked cargo-mutants)");
        let ok = crate::cargo().args(["install", "--locked", "cargo-mutants"]).status().context("cannot run cargo install")?;
        if !ok.success() {
            bail!("cannot install cargo-mutants; install it with `cargo install --locked cargo-mutants`");
        }
    }
    let out = root.join("target/mutants");
    std::fs::create_dir_all(&out)?;
    // An earlier run's results must not be read as this one's (an empty diff writes none).
    let _ = std::fs::remove_dir_all(out.join("mutants.out"));
    let mut cmd = crate::cargo();
    cmd.current_dir(root)
        .args(["mutants", "-p", "bastion-core", "--no-shuffle", "--cargo-test-arg=--lib"])
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--timeout={timeout}"))
        .arg("--output")
        .arg(&out);
    for f in &files {
        cmd.args(["--file", f]);
    }
    if let Some(base) = diff {
        let patch = out.join("in-diff.patch");
        let d = Command::new("git").current_dir(root).args(["diff", base, "--", "hypervisor/core/src"]).output().context("cannot run git diff")?;
        if !d.status.success() {
            bail!("git diff {base}: {}", String::from_utf8_lossy(&d.stderr).trim());
        }
        std::fs::write(&patch, &d.stdout)?;
        cmd.arg("--in-diff").arg(&patch);
    }
    // cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the figures say it all.
    let status = cmd.status().context("cannot run cargo mutants")?;
    if !matches!(status.code(), Some(0 | 2 | 3)) {
        bail!("cargo mutants failed ({status}); see {}", out.join("mutants.out/debug.log").display());
    }
    let Ok(json) = std::fs::read_to_string(out.join("mutants.out/outcomes.json")) else {
        if let Some(base) = diff {
            println!("mutants: none in the lines of hypervisor/core/src changed since {base}");
            return Ok(());
        }
        bail!("no outcomes.json from cargo mutants in {}", out.display());
    };
    let (by_file, survivors) = outcomes(&json)?;
    for (file, c) in &by_file {
        let pct = c.caught_pct().map_or("-".to_string(), |p| format!("{p:.1}"));
        println!("mutants: {file} caught={} missed={} timeout={} unviable={} caught_pct={pct}", c.caught, c.missed, c.timeout, c.unviable);
    }
    for s in &survivors {
        println!("  {s}");
    }
    let below: Vec<&String> = by_file.iter().filter(|(_, c)| c.caught_pct().is_some_and(|p| p < 90.0)).map(|(f, _)| f).collect();
    if below.is_empty() {
        println!("mutants: every file at or above the 90 % goal");
    } else {
        println!("mutants: below the 90 % goal: {}", below.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_by_file_and_a_timeout_is_not_a_catch() {
        let json = r#"{"outcomes": [
            {"scenario": "Baseline", "summary": "Success"},
            {"scenario": {"Mutant": {"file": "a.rs", "name": "a.rs:1:1: replace f with ()"}}, "summary": "CaughtMutant"},
            {"scenario": {"Mutant": {"file": "a.rs", "name": "a.rs:2:1: replace g with ()"}}, "summary": "MissedMutant"},
            {"scenario": {"Mutant": {"file": "a.rs", "name": "a.rs:3:1: replace < with <="}}, "summary": "Timeout"},
            {"scenario": {"Mutant": {"file": "b.rs", "name": "b.rs:1:1: x"}}, "summary": "Unviable"}
        ]}"#;
        let (by_file, survivors) = outcomes(json).unwrap();
        assert_eq!(by_file["a.rs"], Counts { caught: 1, missed: 1, timeout: 1, unviable: 0 });
        assert_eq!(by_file["b.rs"], Counts { caught: 0, missed: 0, timeout: 0, unviable: 1 });
        assert!((by_file["a.rs"].caught_pct().unwrap() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(by_file["b.rs"].caught_pct(), None, "no viable mutant: no figure");
        assert_eq!(survivors, ["missed: a.rs:2:1: replace g with ()", "timeout: a.rs:3:1: replace < with <="]);
        assert!(outcomes(r#"{"outcomes": [{"scenario": {"Mutant": {"file": "a.rs"}}, "summary": "Exploded"}]}"#).is_err());
    }

    #[test]
    fn files_are_named_under_the_crates_source() {
        let root = qemu_tests::workspace_root();
        let want = ["hypervisor/core/src/vm/cpuid.rs", "hypervisor/core/src/vm/msr.rs", "hypervisor/core/src/npt.rs"];
        assert_eq!(files(&root, &["vm/cpuid.rs".into(), "hypervisor/core/src/vm/msr.rs".into(), "src/npt.rs".into()]).unwrap(), want);
        assert!(files(&root, &["vm/nothing.rs".into()]).is_err());
    }
}
