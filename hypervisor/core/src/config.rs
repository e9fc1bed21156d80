//! `bastion.toml`: the schema of the boot configuration, parsed with the same code by the
//! host tool (`boot`, before packing) and by the hypervisor (at boot).
//!
//! Every section and field is optional and has a documented default, so an empty file is a
//! valid configuration. Unknown fields are refused rather than ignored: a misspelt key that
//! silently does nothing is worse than an error. Errors carry the file name, line, column and
//! the dotted field path, e.g. `bastion.toml:3:13: hypervisor.log_level: unknown variant ...`.

use alloc::string::{String, ToString};
use core::fmt;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub hypervisor: HypervisorConfig,
    #[serde(default)]
    pub debug: DebugConfig,
}

/// `[hypervisor]`: how Bastion itself behaves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    /// Console log level; overrides the level built into the kernel once the bundle is read.
    pub log_level: LogLevel,
    /// How Bastion stops the machine when a run ends.
    pub shutdown: Shutdown,
    /// End the run (with PASS) once there is nothing left to run, instead of idling.
    /// Test bundles set this; a production host keeps the default `false`.
    pub exit_when_idle: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig { log_level: LogLevel::Info, shutdown: Shutdown::Auto, exit_when_idle: false }
    }
}

/// `[debug]`: switches for testing Bastion itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Trigger a CPU exception in the hypervisor right after boot, to exercise the crash report.
    pub crash: Crash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// How a run ends (see [`crate::exit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shutdown {
    /// QEMU's debug-exit device under QEMU, Bochs's shutdown port under Bochs, halt elsewhere.
    Auto,
    /// Always QEMU's `isa-debug-exit` at port 0xf4.
    Qemu,
    /// Always Bochs's shutdown port 0x8900.
    Bochs,
    /// Stop all CPUs; the machine stays on with the report on the console.
    Halt,
    /// Reset the machine (keyboard controller, then triple fault).
    Reboot,
}

/// Exceptions `[debug] crash` can trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crash {
    #[default]
    None,
    /// Read [`CRASH_PAGE_FAULT_ADDRESS`], which is never mapped: #PF (vector 14).
    PageFault,
    /// Load a non-canonical address: #GP (vector 13).
    GeneralProtection,
    /// Execute `ud2`: #UD (vector 6).
    InvalidOpcode,
    /// Divide by zero: #DE (vector 0).
    DivideError,
    /// Panic in Rust code.
    Panic,
}

/// The address `crash = "page-fault"` reads: canonical (bit 47 clear, so the CPU raises #PF and
/// not #GP, SDM Vol. 3A 3.3.7.1) and far from anything the bootloader maps.
pub const CRASH_PAGE_FAULT_ADDRESS: u64 = 0x0000_7ff0_dead_0000;

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the parser gave no position.
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, when it could be determined (`hypervisor.log_level`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message.trim_end())
    }
}

impl Config {
    /// Parses the text of `file` (the name is used in errors only).
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let (line, column, field) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, 0, None),
            };
            ConfigError { file: file.to_string(), line, column, field, message: e.message().to_string() }
        })
    }
}

/// Turns a byte offset into (line, column, dotted field path) by reading the text around it:
/// the key is what stands before `=` on that line, the table is the nearest `[header]` above.
fn locate(text: &str, offset: usize) -> (usize, usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = this_line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let header_here = this_line.trim().starts_with('[');
    let field = match (table, key) {
        (_, None) if header_here => Some(this_line.trim().trim_matches(|c| c == '[' || c == ']').trim().to_string()),
        (Some(t), Some(k)) => Some(alloc::format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (t, None) => t,
    };
    (line, column, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("bastion.toml", "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.hypervisor.log_level, LogLevel::Info);
        assert_eq!(c.hypervisor.shutdown, Shutdown::Auto);
        assert!(!c.hypervisor.exit_when_idle);
        assert_eq!(c.debug.crash, Crash::None);
    }

    #[test]
    fn all_fields_parse() {
        let c = Config::parse(
            "t.toml",
            "[hypervisor]\nlog_level = \"trace\"\nshutdown = \"qemu\"\nexit_when_idle = true\n[debug]\ncrash = \"page-fault\"\n",
        )
        .unwrap();
        assert_eq!(c.hypervisor.log_level, LogLevel::Trace);
        assert_eq!(c.hypervisor.shutdown, Shutdown::Qemu);
        assert!(c.hypervisor.exit_when_idle);
        assert_eq!(c.debug.crash, Crash::PageFault);
        assert_eq!(LogLevel::Trace.to_filter(), log::LevelFilter::Trace);
    }

    #[test]
    fn bad_value_names_file_line_and_field() {
        let e = Config::parse("bastion.toml", "[hypervisor]\n\nlog_level = \"loud\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.field.as_deref(), Some("hypervisor.log_level"));
        let s = e.to_string();
        assert!(s.starts_with("bastion.toml:3:"), "{s}");
        assert!(s.contains("hypervisor.log_level"), "{s}");
        assert!(s.contains("loud"), "{s}");
    }

    #[test]
    fn unknown_field_is_refused_not_ignored() {
        let e = Config::parse("b.toml", "[debug]\ncrahs = \"panic\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.field.as_deref(), Some("debug.crahs"));
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = Config::parse("b.toml", "[hypervisr]\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert_eq!(e.field.as_deref(), Some("hypervisr"));
    }

    #[test]
    fn wrong_type_and_syntax_errors_are_located() {
        let e = Config::parse("b.toml", "[hypervisor]\nexit_when_idle = \"yes\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (2, Some("hypervisor.exit_when_idle")));
        let e = Config::parse("b.toml", "[hypervisor\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("b.toml:1:"), "{e}");
    }
}
