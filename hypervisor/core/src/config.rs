//! `bastion.toml`: the schema of the boot configuration, parsed with the same code by the
//! host tool (`boot`, before packing) and by the hypervisor (at boot).
//!
//! Every section and field is optional and has a documented default, so an empty file is a
//! valid configuration. Unknown fields are refused rather than ignored: a misspelt key that
//! silently does nothing is worse than an error. Errors carry the file name, line, column and
//! the dotted field path, e.g. `bastion.toml:3:13: hypervisor.log_level: unknown variant ...`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::Deserialize;

/// The whole configuration file, as validated.
///
/// Guests are validated one by one: a guest with an error is left out of `guests` and its
/// error is in `guest_errors`, so the valid guests still run (an error elsewhere in the file
/// refuses the whole file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub debug: DebugConfig,
    pub guests: Vec<GuestConfig>,
    pub guest_errors: Vec<ConfigError>,
}

/// The file as serde sees it; guests stay raw tables until [`GuestConfig::from_table`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hypervisor: HypervisorConfig,
    #[serde(default)]
    debug: DebugConfig,
    #[serde(default)]
    guest: Vec<toml::Spanned<toml::Table>>,
}

/// `[[guest]]`: one virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Unique; letters, digits, `-` and `_`, at most 32 characters. Tags the guest's console.
    pub name: String,
    /// Path of the kernel image inside the bundle (as written in the config: relative to it).
    pub kernel: String,
    pub format: ImageFormat,
    /// Optional initial ramdisk, a path inside the bundle (formats that take one).
    pub initrd: Option<String>,
    /// Kernel command line (formats that take one).
    pub cmdline: Option<String>,
    /// A multiboot kernel's modules, in order (`modules = [{ path, cmdline }]`).
    pub modules: Vec<ModuleConfig>,
    /// Guest RAM in MiB, mapped from guest-physical 0.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Physical CPUs the guest's vCPUs may run on; `None` = all. CPUs that do not exist are
    /// dropped at boot with a warning (the host cannot know the CPU count).
    pub affinity: Option<Vec<u32>>,
    pub console: Console,
    /// Start at boot; otherwise the monitor's `reset` starts it.
    pub autostart: bool,
    pub on_crash: OnCrash,
    /// What a reboot the guest asks for does (a keyboard-controller reset).
    pub on_reboot: OnReboot,
    /// What powering its machine off does (ACPI S5): by default the guest stays stopped.
    pub on_poweroff: OnPowerOff,
}

/// One module of a multiboot guest: a file in the bundle, and the command line the kernel
/// sees for it (the module's `string`, exactly as given; empty if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    pub path: String,
    pub cmdline: Option<String>,
}

/// Where a guest's serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// A virtual 16550 multiplexed onto Bastion's console (COM1).
    Virtual,
    /// A physical UART handed to the guest: its ports are not intercepted.
    Passthrough { port: u16 },
}

/// What happens when a guest crashes (triple fault, bad memory access, failed entry...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCrash {
    Stop,
    Restart,
}

/// What happens when a guest reboots itself: by default it restarts, as a machine would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReboot {
    Restart,
    Stop,
}

/// What happens when a guest powers its machine off: by default it stays off, as a machine
/// would; `restart` boots it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPowerOff {
    Stop,
    Restart,
}

/// Legacy UART base ports by name.
pub const COM_PORTS: [(&str, u16); 4] = [("com1", 0x3f8), ("com2", 0x2f8), ("com3", 0x3e8), ("com4", 0x2e8)];
/// Most vCPUs a guest may have.
pub const MAX_VCPUS: u32 = 64;

/// How a guest image is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A flat binary loaded at guest-physical 0x8000 and entered in real mode at 0000:8000,
    /// like a boot sector (the test guests).
    Flat,
    /// A Linux kernel (bzImage, boot protocol 2.12 or later) with an optional initrd and a
    /// command line, entered at its 64-bit entry point ([`crate::loader::bzimage`]).
    BzImage,
    /// A Multiboot 1 kernel with a command line and modules, entered in 32-bit protected
    /// mode ([`crate::loader::multiboot`]).
    Multiboot,
    /// The same for Multiboot 2.
    Multiboot2,
}

impl ImageFormat {
    /// Whether the format takes `modules`.
    pub fn is_multiboot(self) -> bool {
        matches!(self, ImageFormat::Multiboot | ImageFormat::Multiboot2)
    }
}

/// The command line of a `bzimage` guest that gives none: its console on the virtual UART.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Where a flat image is loaded and entered.
pub const FLAT_LOAD_ADDRESS: u64 = 0x8000;
/// Its initial stack pointer (below the image).
pub const FLAT_INITIAL_SP: u64 = 0x7000;
/// Smallest and largest guest RAM.
pub const MIN_GUEST_MIB: u32 = 2;
pub const MAX_GUEST_MIB: u32 = 64 * 1024;
/// A flat image must end by here: 640 KiB, the end of conventional memory below the legacy
/// VGA and ROM area (the hypervisor loads nothing above it for a real-mode guest).
pub const FLAT_IMAGE_END: u64 = 0xa_0000;

/// Why an image of some size cannot be loaded into a guest (see [`image_fits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFitError {
    /// Zero bytes: nothing to run.
    Empty,
    /// The image would end at `end`, past the guest's RAM (`ram` bytes from guest-physical 0).
    PastRam { len: u64, end: u64, ram: u64, max_len: u64 },
    /// A flat image would end at `end`, past [`FLAT_IMAGE_END`].
    PastConventionalMemory { len: u64, end: u64, max_len: u64 },
}

impl fmt::Display for ImageFitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageFitError::Empty => write!(f, "the image is empty"),
            ImageFitError::PastRam { len, end, ram, max_len } => write!(
                f,
                "a flat image of {len} bytes loaded at {FLAT_LOAD_ADDRESS:#x} ends at {end:#x}, past the guest's {} MiB of RAM ({ram:#x}); at most {max_len} bytes fit",
                ram >> 20
            ),
            ImageFitError::PastConventionalMemory { len, end, max_len } => write!(
                f,
                "a flat image of {len} bytes loaded at {FLAT_LOAD_ADDRESS:#x} ends at {end:#x}, past the end of conventional memory at {FLAT_IMAGE_END:#x} (640 KiB); at most {max_len} bytes fit"
            ),
        }
    }
}

/// Whether an image of `len` bytes fits a guest with this format and RAM: the rule `boot`
/// applies before packing and the hypervisor applies when it loads the image. A `flat` image
/// is loaded at [`FLAT_LOAD_ADDRESS`] and must end within the guest's `memory_mib` MiB of RAM
/// and by [`FLAT_IMAGE_END`]; an empty image is refused.
pub fn image_fits(format: ImageFormat, memory_mib: u32, len: u64) -> Result<(), ImageFitError> {
    if len == 0 {
        return Err(ImageFitError::Empty);
    }
    match format {
        ImageFormat::Flat => {
            let ram = u64::from(memory_mib) << 20;
            let end = FLAT_LOAD_ADDRESS.saturating_add(len);
            if end > ram {
                return Err(ImageFitError::PastRam { len, end, ram, max_len: ram.saturating_sub(FLAT_LOAD_ADDRESS) });
            }
            if end > FLAT_IMAGE_END {
                return Err(ImageFitError::PastConventionalMemory { len, end, max_len: FLAT_IMAGE_END - FLAT_LOAD_ADDRESS });
            }
            Ok(())
        }
        // Where a bzImage goes depends on its header: `crate::loader::prepare` checks it.
        // Checked by their loaders, which know where the pieces go.
        ImageFormat::BzImage | ImageFormat::Multiboot | ImageFormat::Multiboot2 => Ok(()),
    }
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
    /// COM1's line speed (8N1).
    pub serial_baud: SerialBaud,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig { log_level: LogLevel::Info, shutdown: Shutdown::Auto, exit_when_idle: false, serial_baud: SerialBaud::DEFAULT }
    }
}

/// A baud rate a PC UART can run at: 115200 / divisor for a whole divisor from 1 to 65535
/// (the 16550's divisor latch is 16 bits and its 1.8432 MHz clock gives 115200 × 16; PC16550D
/// datasheet, "Programmable Baud Generator").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialBaud(pub u32);

impl SerialBaud {
    pub const DEFAULT: SerialBaud = SerialBaud(115_200);

    pub fn new(baud: u32) -> Result<SerialBaud, alloc::string::String> {
        if baud == 0 || baud > 115_200 || 115_200 % baud != 0 || 115_200 / baud > 0xffff {
            return Err(alloc::format!(
                "{baud} baud is not 115200 divided by a whole number (e.g. 115200, 57600, 38400, 19200, 9600)"
            ));
        }
        Ok(SerialBaud(baud))
    }

    /// The divisor latch value.
    pub fn divisor(self) -> u16 {
        (115_200 / self.0) as u16
    }
}

impl<'de> Deserialize<'de> for SerialBaud {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        SerialBaud::new(v).map_err(serde::de::Error::custom)
    }
}

/// `[debug]`: switches for testing Bastion itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Trigger a CPU exception in the hypervisor right after boot, to exercise the crash report.
    pub crash: Crash,
    /// End the run this many milliseconds after boot, printing each guest's share of CPU
    /// time first (`cargo xtask bench` and tests of guests that never end).
    pub stop_after_ms: Option<u64>,
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
        let raw = toml::from_str::<RawConfig>(text).map_err(|e| {
            let (line, column, field) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, 0, None),
            };
            ConfigError { file: file.to_string(), line, column, field, message: e.message().to_string() }
        })?;
        let mut config = Config { hypervisor: raw.hypervisor, debug: raw.debug, ..Config::default() };
        for (i, spanned) in raw.guest.into_iter().enumerate() {
            let span = spanned.span();
            let ctx = GuestCtx { file, text, span: span.clone(), index: i };
            match GuestConfig::from_table(spanned.into_inner(), &ctx) {
                Ok(g) if config.guests.iter().any(|o| o.name == g.name) => {
                    config.guest_errors.push(ctx.error("name", alloc::format!("duplicate guest name `{}`", g.name)));
                }
                Ok(GuestConfig { console: Console::Passthrough { port }, .. })
                    if config.guests.iter().any(|o| o.console == Console::Passthrough { port }) =>
                {
                    config.guest_errors.push(ctx.error("console_port", alloc::format!("port {port:#x} is already passed through to another guest")));
                }
                Ok(g) => config.guests.push(g),
                Err(e) => config.guest_errors.push(e),
            }
        }
        Ok(config)
    }
}

impl Config {
    /// An error about `key` of the guest named `guest` in `text` (the file this config was
    /// parsed from), located like the parser's own guest errors: at the key's line when it is
    /// present, with the field `guest[INDEX].key`. For checks made after parsing, such as the
    /// host tool's look at each guest's kernel file.
    pub fn guest_error(file: &str, text: &str, guest: &str, key: &str, message: String) -> ConfigError {
        let entry = toml::from_str::<RawConfig>(text).ok().and_then(|raw| {
            raw.guest.iter().enumerate().find_map(|(i, t)| {
                (t.get_ref().get("name").and_then(|n| n.as_str()) == Some(guest)).then(|| (i, t.span()))
            })
        });
        match entry {
            Some((index, span)) => GuestCtx { file, text, span, index }.error(key, message),
            None => ConfigError { file: file.to_string(), line: 0, column: 0, field: None, message },
        }
    }
}

/// Locates errors inside one `[[guest]]` table.
struct GuestCtx<'a> {
    file: &'a str,
    text: &'a str,
    span: core::ops::Range<usize>,
    index: usize,
}

impl GuestCtx<'_> {
    /// An error about `key` of this guest, at the key's line when it is present.
    fn error(&self, key: &str, message: String) -> ConfigError {
        // The span toml reports for an array-of-tables entry covers its header only: the
        // table's keys run from there to the next header.
        let start = self.span.start.min(self.text.len());
        let rest = &self.text[start..];
        // Searched from the header's own newline, so that a header right below it ends the
        // body too (an empty table must not take the next table's keys for its own).
        let end = match rest.find('\n') {
            Some(nl) => rest[nl..].find("\n[").map_or(rest.len(), |i| nl + i),
            None => rest.len(),
        };
        let body = &rest[..end];
        let at = body
            .match_indices(key)
            .find(|(i, _)| {
                let line_start = body[..*i].rfind('\n').map_or(0, |p| p + 1);
                body[line_start..*i].trim().is_empty() && body[i + key.len()..].trim_start().starts_with('=')
            })
            .map_or(self.span.start, |(i, _)| self.span.start + i);
        let (line, column, _) = locate(self.text, at);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: Some(alloc::format!("guest[{}].{key}", self.index)),
            message,
        }
    }
}

fn get_str(t: &toml::Table, key: &str, ctx: &GuestCtx) -> Result<Option<String>, ConfigError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ctx.error(key, alloc::format!("expected a string, found {}", v.type_str()))),
    }
}

fn get_int(t: &toml::Table, key: &str, ctx: &GuestCtx) -> Result<Option<i64>, ConfigError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => Ok(Some(*i)),
        Some(v) => Err(ctx.error(key, alloc::format!("expected an integer, found {}", v.type_str()))),
    }
}

fn get_bool(t: &toml::Table, key: &str, ctx: &GuestCtx) -> Result<Option<bool>, ConfigError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(v) => Err(ctx.error(key, alloc::format!("expected true or false, found {}", v.type_str()))),
    }
}

/// A path inside the bundle: relative, without `..`.
fn bundle_path(t: &toml::Table, key: &str, ctx: &GuestCtx) -> Result<Option<String>, ConfigError> {
    let Some(p) = get_str(t, key, ctx)? else { return Ok(None) };
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(ctx.error(key, alloc::format!("`{p}` must be a relative path inside the bundle, without `..`")));
    }
    Ok(Some(p))
}

/// `modules = [{ path = "...", cmdline = "..." }, ...]`: paths inside the bundle, command
/// lines optional; nothing else in an entry.
fn parse_modules(t: &toml::Table, ctx: &GuestCtx) -> Result<Vec<ModuleConfig>, ConfigError> {
    let Some(v) = t.get("modules") else { return Ok(Vec::new()) };
    let Some(list) = v.as_array() else {
        return Err(ctx.error("modules", alloc::format!("expected an array of {{ path, cmdline }} tables, found {}", v.type_str())));
    };
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let entry = |msg: String| ctx.error("modules", alloc::format!("entry {i}: {msg}"));
        let Some(m) = item.as_table() else {
            return Err(entry(alloc::format!("expected a {{ path, cmdline }} table, found {}", item.type_str())));
        };
        if let Some(k) = m.keys().find(|k| *k != "path" && *k != "cmdline") {
            return Err(entry(alloc::format!("unknown field `{k}`, expected `path` or `cmdline`")));
        }
        let path = match m.get("path").map(|p| p.as_str()) {
            None => return Err(entry("missing field `path`".into())),
            Some(None) => return Err(entry("`path` must be a string".into())),
            Some(Some(p)) => p,
        };
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(entry(alloc::format!("`{path}` must be a relative path inside the bundle, without `..`")));
        }
        let cmdline = match m.get("cmdline").map(|c| c.as_str()) {
            None => None,
            Some(None) => return Err(entry("`cmdline` must be a string".into())),
            Some(Some(c)) => Some(String::from(c)),
        };
        out.push(ModuleConfig { path: String::from(path), cmdline });
    }
    Ok(out)
}

impl GuestConfig {
    /// [`image_fits`] for this guest's format and RAM.
    pub fn image_fits(&self, len: u64) -> Result<(), ImageFitError> {
        image_fits(self.format, self.memory_mib, len)
    }

    const FIELDS: &'static [&'static str] = &[
        "name", "kernel", "format", "initrd", "cmdline", "modules", "memory_mib", "vcpus", "affinity", "console", "console_port", "autostart",
        "on_crash",
        "on_reboot",
        "on_poweroff",
    ];

    fn from_table(t: toml::Table, ctx: &GuestCtx) -> Result<GuestConfig, ConfigError> {
        if let Some(k) = t.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(ctx.error(k, alloc::format!("unknown field `{k}`, expected one of {}", Self::FIELDS.join(", "))));
        }
        let missing = |k: &str| ctx.error(k, alloc::format!("missing field `{k}`"));
        let name = get_str(&t, "name", ctx)?.ok_or_else(|| missing("name"))?;
        if name.is_empty() || name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ctx.error("name", alloc::format!("`{name}` is not a valid name (1-32 letters, digits, `-`, `_`)")));
        }
        let kernel = bundle_path(&t, "kernel", ctx)?.ok_or_else(|| missing("kernel"))?;
        let format = match get_str(&t, "format", ctx)?.as_deref() {
            None | Some("flat") => ImageFormat::Flat,
            Some("bzimage") => ImageFormat::BzImage,
            Some("multiboot") => ImageFormat::Multiboot,
            Some("multiboot2") => ImageFormat::Multiboot2,
            Some(other) => {
                return Err(ctx.error("format", alloc::format!("unknown format `{other}`, expected `flat`, `bzimage`, `multiboot` or `multiboot2`")))
            }
        };
        let initrd = bundle_path(&t, "initrd", ctx)?;
        let cmdline = get_str(&t, "cmdline", ctx)?;
        let modules = parse_modules(&t, ctx)?;
        if !format.is_multiboot() && !modules.is_empty() {
            return Err(ctx.error("modules", "only `multiboot` and `multiboot2` kernels take modules".into()));
        }
        if format.is_multiboot() && initrd.is_some() {
            return Err(ctx.error("initrd", "a multiboot kernel takes `modules`, not an initrd".into()));
        }
        if format == ImageFormat::Flat {
            for (key, set) in [("initrd", initrd.is_some()), ("cmdline", cmdline.is_some())] {
                if set {
                    return Err(ctx.error(key, alloc::format!("a `flat` image takes no {key}")));
                }
            }
        }
        let memory_mib = get_int(&t, "memory_mib", ctx)?.unwrap_or(16);
        if !(MIN_GUEST_MIB as i64..=MAX_GUEST_MIB as i64).contains(&memory_mib) {
            return Err(ctx.error(
                "memory_mib",
                alloc::format!("{memory_mib} MiB is out of range ({MIN_GUEST_MIB}..={MAX_GUEST_MIB})"),
            ));
        }
        let vcpus = get_int(&t, "vcpus", ctx)?.unwrap_or(1);
        if !(1..=MAX_VCPUS as i64).contains(&vcpus) {
            return Err(ctx.error("vcpus", alloc::format!("{vcpus} vCPUs is out of range (1..={MAX_VCPUS})")));
        }
        // Every vCPU of a guest starts at its entry today; Linux's secondary CPUs must instead
        // wait for the INIT-SIPI-SIPI of its bootstrap processor (SDM Vol. 3A 9.4.4), which
        // comes with SMP guests. One vCPU until then, rather than a guest that cannot boot.
        let affinity = match t.get("affinity") {
            None => None,
            Some(toml::Value::Array(a)) => {
                let mut cpus = Vec::new();
                for v in a {
                    match v {
                        toml::Value::Integer(c) if (0..64).contains(c) => cpus.push(*c as u32),
                        toml::Value::Integer(c) => {
                            return Err(ctx.error("affinity", alloc::format!("expected CPU numbers 0..=63, found {c}")));
                        }
                        other => {
                            return Err(ctx.error("affinity", alloc::format!("expected CPU numbers 0..=63, found {}", other.type_str())));
                        }
                    }
                }
                if cpus.is_empty() {
                    return Err(ctx.error("affinity", "an empty affinity leaves the guest nowhere to run".into()));
                }
                Some(cpus)
            }
            Some(v) => return Err(ctx.error("affinity", alloc::format!("expected an array of CPU numbers, found {}", v.type_str()))),
        };
        let port = get_str(&t, "console_port", ctx)?;
        let console = match get_str(&t, "console", ctx)?.as_deref() {
            None | Some("virtual") => {
                if port.is_some() {
                    return Err(ctx.error("console_port", "console_port goes with console = \"passthrough\"".into()));
                }
                Console::Virtual
            }
            Some("passthrough") => {
                let p = port.ok_or_else(|| missing("console_port"))?;
                let Some(&(_, base)) = COM_PORTS.iter().find(|(n, _)| n.eq_ignore_ascii_case(&p)) else {
                    return Err(ctx.error("console_port", alloc::format!("unknown port `{p}`, expected com2, com3 or com4")));
                };
                if base == 0x3f8 {
                    return Err(ctx.error("console_port", "com1 is Bastion's own console and cannot be passed through".into()));
                }
                Console::Passthrough { port: base }
            }
            Some(other) => {
                return Err(ctx.error("console", alloc::format!("unknown console `{other}`, expected `virtual` or `passthrough`")));
            }
        };
        let autostart = get_bool(&t, "autostart", ctx)?.unwrap_or(true);
        let on_crash = match get_str(&t, "on_crash", ctx)?.as_deref() {
            None | Some("stop") => OnCrash::Stop,
            Some("restart") => OnCrash::Restart,
            Some(other) => return Err(ctx.error("on_crash", alloc::format!("unknown value `{other}`, expected `stop` or `restart`"))),
        };
        let on_reboot = match get_str(&t, "on_reboot", ctx)?.as_deref() {
            None | Some("restart") => OnReboot::Restart,
            Some("stop") => OnReboot::Stop,
            Some(other) => return Err(ctx.error("on_reboot", alloc::format!("unknown value `{other}`, expected `restart` or `stop`"))),
        };
        let on_poweroff = match get_str(&t, "on_poweroff", ctx)?.as_deref() {
            None | Some("stop") => OnPowerOff::Stop,
            Some("restart") => OnPowerOff::Restart,
            Some(other) => return Err(ctx.error("on_poweroff", alloc::format!("unknown value `{other}`, expected `stop` or `restart`"))),
        };
        Ok(GuestConfig {
            name,
            kernel,
            format,
            initrd,
            cmdline,
            modules,
            memory_mib: memory_mib as u32,
            vcpus: vcpus as u32,
            affinity,
            console,
            autostart,
            on_crash,
            on_reboot,
            on_poweroff,
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
        assert_eq!(c.hypervisor.serial_baud, SerialBaud(115_200), "COM1 runs at 115200 unless told otherwise");
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

    const TWO_GUESTS: &str = "[hypervisor]\nexit_when_idle = true\n\n[[guest]]\nname = \"a\"\nkernel = \"guests/a.bin\"\nmemory_mib = 4\n\n[[guest]]\nname = \"b-2\"\nkernel = \"b.bin\"\nformat = \"flat\"\n";

    #[test]
    fn guests_parse_with_defaults() {
        let c = Config::parse("b.toml", TWO_GUESTS).unwrap();
        assert!(c.guest_errors.is_empty(), "{:?}", c.guest_errors);
        assert_eq!(c.guests.len(), 2);
        let a = &c.guests[0];
        assert_eq!((a.name.as_str(), a.kernel.as_str(), a.format, a.memory_mib), ("a", "guests/a.bin", ImageFormat::Flat, 4));
        let b = &c.guests[1];
        assert_eq!((b.memory_mib, b.vcpus, b.affinity.clone(), b.console, b.autostart, b.on_crash), (16, 1, None, Console::Virtual, true, OnCrash::Stop));
        assert_eq!(b.on_reboot, OnReboot::Restart, "a reboot restarts by default, as a machine would");
        assert_eq!(b.on_poweroff, OnPowerOff::Stop, "a machine that was turned off stays off");
    }

    #[test]
    fn guest_errors_point_at_the_guests_own_key_line() {
        // An empty table right above another: its missing `name` is at its own header, not
        // at the next guest's `name`.
        let c = Config::parse("g.toml", "[[guest]]\n[[guest]]\nname = \"b\"\nkernel = \"k\"\n").unwrap();
        let e = &c.guest_errors[0];
        assert_eq!((e.line, e.field.as_deref()), (1, Some("guest[0].name")), "{e}");
        assert_eq!(c.guests.len(), 1);
        // The key's text inside an earlier value (`kernel=` in a command line) is not the key:
        // a key starts its line and is followed by `=`.
        let c = Config::parse("g.toml", "[[guest]]\nname = \"a\"\ncmdline = \"x kernel=y\"\nkernel = \"../k\"\n").unwrap();
        let e = &c.guest_errors[0];
        assert_eq!((e.line, e.column, e.field.as_deref()), (4, 1, Some("guest[0].kernel")), "{e}");
        // Indented keys are keys too.
        let c = Config::parse("g.toml", "[[guest]]\nname = \"a\"\n  kernel = \"/k\"\n").unwrap();
        assert_eq!((c.guest_errors[0].line, c.guest_errors[0].column), (3, 3));
    }

    #[test]
    fn names_have_1_to_32_characters_and_paths_are_not_empty() {
        let guest = |name: &str, kernel: &str| Config::parse("g.toml", &format!("[[guest]]\nname = \"{name}\"\nkernel = \"{kernel}\"\n")).unwrap();
        assert_eq!(guest(&"n".repeat(32), "k").guests.len(), 1);
        for bad in [String::new(), "n".repeat(33)] {
            let c = guest(&bad, "k");
            assert!(c.guest_errors[0].message.contains("not a valid name"), "{bad:?}: {}", c.guest_errors[0]);
        }
        let c = guest("a", "");
        assert!(c.guest_errors[0].message.contains("relative path"), "{}", c.guest_errors[0]);
    }

    #[test]
    fn guest_ram_is_2_mib_to_64_gib() {
        let mib = |m: u64| Config::parse("g.toml", &format!("[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory_mib = {m}\n")).unwrap();
        assert_eq!(mib(2).guests.len(), 1);
        assert_eq!(mib(65536).guests[0].memory_mib, 65536);
        for bad in [1, 65537] {
            assert!(mib(bad).guest_errors[0].message.contains("out of range (2..=65536)"), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_name_the_table_they_are_in() {
        // A line that is neither a key nor a header belongs to the table above it.
        let e = Config::parse("b.toml", "[hypervisor]\nlog_level = \"info\"\ngarbage\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (3, Some("hypervisor")), "{e}");
        // The `]` that closes a multi-line array is not a table header.
        let e = Config::parse("b.toml", "[[guest]]\nname = \"a\"\naffinity = [\n  0,\n]\ngarbage\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (6, Some("guest")), "{e}");
    }

    #[test]
    fn a_bad_guest_is_refused_and_the_others_kept() {
        let text = "[[guest]]\nname = \"ok\"\nkernel = \"ok.bin\"\n\n[[guest]]\nname = \"bad\"\nkernel = \"x.bin\"\nmemory_mib = 1\n\n[[guest]]\nname = \"ok2\"\nkernel = \"k\"\n";
        let c = Config::parse("b.toml", text).unwrap();
        assert_eq!(c.guests.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["ok", "ok2"]);
        assert_eq!(c.guest_errors.len(), 1);
        let e = &c.guest_errors[0];
        assert_eq!((e.line, e.field.as_deref()), (8, Some("guest[1].memory_mib")));
        assert!(e.to_string().starts_with("b.toml:8:1: guest[1].memory_mib: 1 MiB is out of range"), "{e}");
    }

    #[test]
    fn guest_errors_name_the_field() {
        let cases = [
            ("[[guest]]\nkernel = \"k\"\n", 1, "guest[0].name", "missing field `name`"),
            ("[[guest]]\nname = \"a b\"\nkernel = \"k\"\n", 2, "guest[0].name", "not a valid name"),
            ("[[guest]]\nname = \"a\"\nkernel = \"../etc/passwd\"\n", 3, "guest[0].kernel", "relative path"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nformat = \"elf\"\n", 4, "guest[0].format", "unknown format"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory_mib = \"lots\"\n", 4, "guest[0].memory_mib", "expected an integer"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nvcpu = 2\n", 4, "guest[0].vcpu", "unknown field `vcpu`"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nvcpus = 0\n", 4, "guest[0].vcpus", "out of range"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\naffinity = []\n", 4, "guest[0].affinity", "empty affinity"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\naffinity = [0, 99]\n", 4, "guest[0].affinity", "CPU numbers"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nconsole = \"passthrough\"\n", 1, "guest[0].console_port", "missing field"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nconsole = \"passthrough\"\nconsole_port = \"com1\"\n", 5, "guest[0].console_port", "Bastion's own console"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nconsole_port = \"com2\"\n", 4, "guest[0].console_port", "goes with"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\non_crash = \"panic\"\n", 4, "guest[0].on_crash", "expected `stop` or `restart`"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\non_reboot = \"halt\"\n", 4, "guest[0].on_reboot", "expected `restart` or `stop`"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\non_poweroff = \"halt\"\n", 4, "guest[0].on_poweroff", "expected `stop` or `restart`"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\nautostart = 1\n", 4, "guest[0].autostart", "true or false"),
            ("[[guest]]\nname = \"a\"\nkernel = \"k\"\ncmdline = \"quiet\"\n", 4, "guest[0].cmdline", "takes no cmdline"),
        ];
        for (text, line, field, msg) in cases {
            let c = Config::parse("g.toml", text).unwrap();
            assert!(c.guests.is_empty(), "{text}");
            let e = &c.guest_errors[0];
            assert_eq!((e.line, e.field.as_deref()), (line, Some(field)), "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
    }

    #[test]
    fn multiboot_guests_take_modules_with_optional_command_lines() {
        let text = "[[guest]]\nname = \"mb\"\nkernel = \"k.elf\"\nformat = \"multiboot\"\ncmdline = \"-v\"\nmodules = [{ path = \"m/a\", cmdline = \"a 1\" }, { path = \"b\" }]\n[[guest]]\nname = \"mb2\"\nkernel = \"k2\"\nformat = \"multiboot2\"\n";
        let c = Config::parse("g.toml", text).unwrap();
        assert!(c.guest_errors.is_empty(), "{:?}", c.guest_errors);
        let (g, h) = (&c.guests[0], &c.guests[1]);
        assert_eq!((g.format, h.format), (ImageFormat::Multiboot, ImageFormat::Multiboot2));
        assert_eq!(g.cmdline.as_deref(), Some("-v"));
        assert_eq!(
            g.modules,
            vec![ModuleConfig { path: "m/a".into(), cmdline: Some("a 1".into()) }, ModuleConfig { path: "b".into(), cmdline: None }]
        );
        assert!(h.modules.is_empty());
        assert!(ImageFormat::Multiboot.is_multiboot() && ImageFormat::Multiboot2.is_multiboot());
        assert!(!ImageFormat::Flat.is_multiboot() && !ImageFormat::BzImage.is_multiboot());
    }

    #[test]
    fn bad_module_lists_name_the_entry_and_the_reason() {
        let g = |format: &str, extra: &str| alloc::format!("[[guest]]\nname = \"a\"\nkernel = \"k\"\nformat = \"{format}\"\n{extra}");
        let cases = [
            (g("bzimage", "modules = [{ path = \"m\" }]\n"), 5, "guest[0].modules", "only `multiboot` and `multiboot2` kernels take modules"),
            (g("flat", "modules = []\nmodules2 = 1\n"), 6, "guest[0].modules2", "unknown field"),
            (g("multiboot", "initrd = \"i\"\n"), 5, "guest[0].initrd", "takes `modules`, not an initrd"),
            (g("multiboot", "modules = \"m\"\n"), 5, "guest[0].modules", "expected an array"),
            (g("multiboot", "modules = [\"m\"]\n"), 5, "guest[0].modules", "entry 0: expected a { path, cmdline } table"),
            (g("multiboot", "modules = [{ path = \"m\" }, { cmdline = \"x\" }]\n"), 5, "guest[0].modules", "entry 1: missing field `path`"),
            (g("multiboot", "modules = [{ path = \"m\", size = 1 }]\n"), 5, "guest[0].modules", "entry 0: unknown field `size`"),
            (g("multiboot", "modules = [{ path = \"/etc/m\" }]\n"), 5, "guest[0].modules", "entry 0: `/etc/m` must be a relative path"),
            (g("multiboot", "modules = [{ path = \"a/../../m\" }]\n"), 5, "guest[0].modules", "relative path"),
            (g("multiboot", "modules = [{ path = 3 }]\n"), 5, "guest[0].modules", "entry 0: `path` must be a string"),
            (g("multiboot", "modules = [{ path = \"m\", cmdline = 3 }]\n"), 5, "guest[0].modules", "entry 0: `cmdline` must be a string"),
            (g("multiboot3", ""), 4, "guest[0].format", "expected `flat`, `bzimage`, `multiboot` or `multiboot2`"),
        ];
        for (text, line, field, msg) in cases {
            let c = Config::parse("g.toml", &text).unwrap();
            assert!(c.guests.is_empty(), "{text}");
            let e = &c.guest_errors[0];
            assert_eq!((e.line, e.field.as_deref()), (line, Some(field)), "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
    }

    #[test]
    fn full_guest_entry_parses() {
        let text = "[[guest]]\nname = \"web\"\nkernel = \"w.bin\"\nvcpus = 2\naffinity = [1]\nconsole = \"passthrough\"\nconsole_port = \"COM2\"\nautostart = false\non_crash = \"restart\"\non_reboot = \"stop\"\non_poweroff = \"restart\"\n";
        let c = Config::parse("g.toml", text).unwrap();
        assert!(c.guest_errors.is_empty(), "{:?}", c.guest_errors);
        let g = &c.guests[0];
        assert_eq!(g.on_reboot, OnReboot::Stop);
        assert_eq!(g.on_poweroff, OnPowerOff::Restart);
        assert_eq!((g.vcpus, g.affinity.clone(), g.console, g.autostart, g.on_crash), (2, Some(vec![1]), Console::Passthrough { port: 0x2f8 }, false, OnCrash::Restart));
    }

    #[test]
    fn one_port_passes_through_to_one_guest_only() {
        let g = |n: &str| alloc::format!("[[guest]]\nname = \"{n}\"\nkernel = \"k\"\nconsole = \"passthrough\"\nconsole_port = \"com2\"\n");
        let c = Config::parse("g.toml", &(g("a") + &g("b"))).unwrap();
        assert_eq!(c.guests.len(), 1);
        assert!(c.guest_errors[0].message.contains("already passed through"), "{:?}", c.guest_errors);
    }

    #[test]
    fn duplicate_guest_names_keep_the_first() {
        let text = "[[guest]]\nname = \"a\"\nkernel = \"k\"\n[[guest]]\nname = \"a\"\nkernel = \"j\"\n";
        let c = Config::parse("g.toml", text).unwrap();
        assert_eq!(c.guests.len(), 1);
        assert_eq!(c.guests[0].kernel, "k");
        assert_eq!(c.guest_errors[0].line, 5);
        assert!(c.guest_errors[0].message.contains("duplicate"));
    }

    #[test]
    fn flat_images_must_be_non_empty_and_end_within_ram_and_640_kib() {
        let flat = |mib, len| image_fits(ImageFormat::Flat, mib, len);
        assert_eq!(flat(2, 0), Err(ImageFitError::Empty));
        assert_eq!(flat(2, 1), Ok(()));
        // 0x8000..0xa0000 is the most a flat image may use.
        assert_eq!(flat(2, FLAT_IMAGE_END - FLAT_LOAD_ADDRESS), Ok(()));
        assert_eq!(
            flat(2, FLAT_IMAGE_END - FLAT_LOAD_ADDRESS + 1),
            Err(ImageFitError::PastConventionalMemory { len: 0x9_8001, end: 0xa_0001, max_len: 0x9_8000 })
        );
        // Past the guest's RAM: checked first, it is what a user changes.
        let e = flat(2, 3 << 20).unwrap_err();
        assert_eq!(e, ImageFitError::PastRam { len: 3 << 20, end: (3 << 20) + 0x8000, ram: 2 << 20, max_len: (2 << 20) - 0x8000 });
        let s = e.to_string();
        assert!(s.contains("past the guest's 2 MiB of RAM") && s.contains("at most 2064384 bytes fit"), "{s}");
        // A guest smaller than the schema allows still gets a sensible answer.
        assert!(matches!(flat(0, 1), Err(ImageFitError::PastRam { ram: 0, max_len: 0, .. })));
        // An image that ends exactly where RAM ends fits RAM (and here is past 640 KiB).
        assert!(matches!(flat(2, (2 << 20) - FLAT_LOAD_ADDRESS), Err(ImageFitError::PastConventionalMemory { end: 0x20_0000, .. })));
        assert!(matches!(flat(MAX_GUEST_MIB, u64::MAX), Err(ImageFitError::PastRam { end: u64::MAX, .. })));
        let g = Config::parse("g.toml", "[[guest]]\nname = \"a\"\nkernel = \"k\"\nmemory_mib = 4\n").unwrap();
        assert_eq!(g.guests[0].image_fits(512), Ok(()));
        assert_eq!(g.guests[0].image_fits(0), Err(ImageFitError::Empty));
    }

    #[test]
    fn errors_found_after_parsing_are_located_at_the_guest_key() {
        let text = "[hypervisor]\n\n[[guest]]\nname = \"a\"\nkernel = \"a.bin\"\n\n[[guest]]\nname = \"b\"\n# its image\nkernel = \"b.bin\"\n";
        let e = Config::guest_error("b.toml", text, "b", "kernel", "guest `b`: too big".into());
        assert_eq!((e.line, e.column, e.field.as_deref()), (10, 1, Some("guest[1].kernel")));
        assert_eq!(e.to_string(), "b.toml:10:1: guest[1].kernel: guest `b`: too big");
        // A key the table does not have: the guest's header.
        let e = Config::guest_error("b.toml", text, "a", "initrd", "x".into());
        assert_eq!((e.line, e.field.as_deref()), (3, Some("guest[0].initrd")));
        // No such guest: the file and the message only.
        let e = Config::guest_error("b.toml", text, "zz", "kernel", "x".into());
        assert_eq!(e.to_string(), "b.toml: x");
    }

    #[test]
    fn wrong_type_and_syntax_errors_are_located() {
        let e = Config::parse("b.toml", "[hypervisor]\nexit_when_idle = \"yes\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (2, Some("hypervisor.exit_when_idle")));
        let e = Config::parse("b.toml", "[hypervisor\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("b.toml:1:"), "{e}");
    }

    #[test]
    fn serial_baud_takes_whole_divisors_of_115200_only() {
        let c = Config::parse("b.toml", "[hypervisor]\nserial_baud = 9600\n").unwrap();
        assert_eq!((c.hypervisor.serial_baud.0, c.hypervisor.serial_baud.divisor()), (9600, 12));
        assert_eq!(Config::parse("b.toml", "[hypervisor]\nserial_baud = 115200\n").unwrap().hypervisor.serial_baud.divisor(), 1);
        for bad in ["0", "230400", "100000", "-1"] {
            let e = Config::parse("b.toml", &format!("[hypervisor]\n\nserial_baud = {bad}\n")).unwrap_err();
            assert_eq!(e.line, 3, "{e}");
            assert!(e.to_string().contains("serial_baud"), "{e}");
        }
        let e = Config::parse("b.toml", "[hypervisor]\nserial_baud = 100000\n").unwrap_err();
        assert!(e.to_string().contains("100000 baud is not 115200 divided by a whole number"), "{e}");
    }
}