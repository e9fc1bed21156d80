//! `log` facade backend: one line per record on the console, tagged with level and CPU.
//!
//! The level starts at the one built into the kernel (`BASTION_LOG` at build time, default
//! `info`) and is replaced by `[hypervisor] log_level` once the bundle is read.

use log::{LevelFilter, Log, Metadata, Record};

struct Logger;
static LOGGER: Logger = Logger;

/// The build-time default level.
pub fn build_level() -> LevelFilter {
    match option_env!("BASTION_LOG") {
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    }
}

pub fn init() {
    // Only fails when a logger is already set, which cannot happen: init runs once at boot.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(build_level());
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = match r.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARN ",
            log::Level::Info => "INFO ",
            log::Level::Debug => "DEBUG",
            log::Level::Trace => "TRACE",
        };
        crate::serial::print(format_args!("[{tag} cpu{}] {}\n", crate::cpu::current_id(), r.args()));
    }

    fn flush(&self) {
        crate::serial::flush();
    }
}
