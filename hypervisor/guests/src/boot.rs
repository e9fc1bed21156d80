//! Boot: the real -> protected -> long mode bring-up (`boot.s`), the memory layout it sets
//! up, the entry state it records, and the hand-over to the guest's `main`.

use core::ffi::CStr;

/// Guest-physical address the hypervisor loads the flat image at, and where `_start` is.
pub const LOAD_ADDRESS: u64 = 0x8000;
/// Stack top in every mode: the SP the ABI starts the guest with (the stack grows down into
/// 0..0x7000, which holds nothing else).
pub const STACK_TOP: u64 = 0x7000;
/// The identity map set up by the boot code (link.ld fixes these addresses): PML4 here,
/// PDPT at +0x1000, four page directories at +0x2000..+0x6000, 2 MiB pages covering 0..4 GiB.
pub const PML4: u64 = 0x7_0000;
/// How much of the guest-physical space the boot code's page tables map (identity).
pub const IDENTITY_MAPPED: u64 = 4 << 30;

/// Exit code the boot code uses when it fails before Rust runs (same as any failure).
const EXIT_FAIL: u32 = 1;

core::arch::global_asm!(
    ".set COM1, {com1}",
    ".set EXIT_PORT, {exit_port}",
    ".set EXIT_FAIL, {exit_fail}",
    ".set STACK_TOP, {stack_top}",
    include_str!("boot.s"),
    com1 = const crate::serial::COM1,
    exit_port = const crate::cpu::EXIT_PORT,
    exit_fail = const EXIT_FAIL,
    stack_top = const STACK_TOP,
);

/// The state the vCPU started in, recorded by the first instructions of `_start` (real mode).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EntryState {
    /// CR0 as read with `mov eax, cr0`.
    pub cr0: u32,
    pub sp: u16,
    /// FLAGS (low 16 bits of EFLAGS), read with PUSHF before the boot code's CLI.
    pub flags: u16,
    pub cs: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub ss: u16,
}

extern "C" {
    static boot_entry_state: EntryState;
    /// NUL-terminated guest name, defined by [`guest!`](crate::guest) in the binary.
    static GUEST_NAME: u8;
    /// The binary's `main`, wrapped by [`guest!`](crate::guest); returns the exit code.
    fn guest_main() -> u32;
}

/// The entry state recorded in real mode.
pub fn entry_state() -> EntryState {
    // SAFETY: written once by the boot code before any Rust code runs, never again.
    unsafe { core::ptr::read_volatile(&raw const boot_entry_state) }
}

/// This guest's name, as given to [`guest!`](crate::guest); every line it prints starts
/// with it.
pub fn name() -> &'static str {
    // SAFETY: `guest!` defines GUEST_NAME as a NUL-terminated byte array.
    let name = unsafe { CStr::from_ptr((&raw const GUEST_NAME).cast()) };
    name.to_str().unwrap_or("guest")
}

/// Called by the 64-bit boot code on the boot stack: runs the guest's `main` and ends the
/// test with the code it returns.
#[no_mangle]
extern "C" fn guest_rust_entry() -> ! {
    // SAFETY: `guest!` defines guest_main with this signature.
    let code = unsafe { guest_main() };
    crate::cpu::test_exit(code)
}

/// `s` followed by a NUL byte, as an array of `N = s.len() + 1` bytes (for [`guest!`]).
#[doc(hidden)]
pub const fn nul_terminated<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() + 1 == N, "N must be the length plus one");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i] != 0, "the name must not contain NUL");
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Declares the guest: its name (the prefix of every line it prints), its `main` (returns
/// the test exit code: 0 pass, anything else fail), and optionally `trace_modes = true` to
/// have the boot code print `<name>: real mode` and `<name>: protected mode` as it passes
/// through them.
///
/// ```ignore
/// test_guests::guest!(name = "checks", main = main);
/// ```
#[macro_export]
macro_rules! guest {
    (name = $name:literal, main = $main:path $(, trace_modes = $trace:tt)? $(,)?) => {
        /// The guest's name, NUL-terminated. In `.rodata.boot` because the real-mode boot
        /// code prints it and can only address the first 64 KiB.
        #[no_mangle]
        #[link_section = ".rodata.boot.guest_name"]
        pub static GUEST_NAME: [u8; $name.len() + 1] = $crate::boot::nul_terminated($name);

        /// Nonzero: the boot code prints a line in real mode and in protected mode.
        #[no_mangle]
        #[link_section = ".rodata.boot.guest_trace_modes"]
        pub static GUEST_TRACE_MODES: u8 = $crate::guest!(@trace $($trace)?);

        #[no_mangle]
        pub extern "C" fn guest_main() -> u32 {
            $main()
        }
    };
    (@trace true) => { 1 };
    (@trace false) => { 0 };
    (@trace) => { 0 };
}
