//! Boot: the real -> protected -> long mode bring-up (`boot.s`), the memory layout it sets
//! up, the entry state it records, the multi-vCPU start, and the hand-over to the guest's
//! `main`.
//!
//! # Several vCPUs
//!
//! Every vCPU of a guest starts at the same entry in the same state; each learns its index
//! from CPUID ([`vcpu_id`]) and nothing tells it how many vCPUs there are. The boot code
//! (`boot.s`, whose header has the details) gives vCPU `i` its own boot stack below
//! [`boot_stack_top`]`(i)` before its first PUSH, lets vCPU 0 alone zero `.bss` and build
//! the page tables while the others wait on a flag, then brings every vCPU to long mode and
//! calls `main` on it, on a larger stack of its own below [`stack_top`]`(i)`
//! ([`guest!`](crate::guest) says which vCPUs run `main`).
//! Console lines are whole lines whichever vCPUs print ([`crate::serial`]). A vCPU that is
//! done but must not end the guest parks ([`crate::cpu::park`]); the test exit ends the
//! guest, all vCPUs included.

use core::ffi::CStr;

/// Guest-physical address the hypervisor loads the flat image at, and where `_start` is.
pub const LOAD_ADDRESS: u64 = 0x8000;
/// The SP the ABI starts every vCPU with, and the top of vCPU 0's boot stack.
pub const STACK_TOP: u64 = 0x7000;
/// Size of each vCPU's boot stack, used by the real- and protected-mode code only (a few
/// dozen bytes): vCPU `i`'s is `boot_stack_top(i) - BOOT_STACK_SIZE .. boot_stack_top(i)`,
/// all of them in 0x3000..0x7000. It has to be below 64 KiB (real mode, SS = 0), where
/// there is no room for stacks Rust code could use safely.
pub const BOOT_STACK_SIZE: u64 = 0x400;
/// Long-mode stacks, one per vCPU, for the Rust code (`main`, formatting, exception
/// reports): vCPU `i`'s is `stack_top(i) - STACK_SIZE .. stack_top(i)`, in the RAM at
/// 1 MiB..1.25 MiB, which the ABI's (at least) 2 MiB always include. Measured on QEMU: the
/// `checks` guest goes 1.5 KiB deep and `busy` 0.7 KiB, so the 1 KiB boot stacks would not
/// do; an overflow would silently corrupt the next vCPU's stack.
pub const STACKS: u64 = 0x10_0000;
/// Size of each long-mode stack.
pub const STACK_SIZE: u64 = 0x4000;
/// vCPUs the boot code has stacks for (boot stacks down to 0x3000). A vCPU with a larger
/// index prints `<guest>: FAIL vCPU 0x.. has no stack ...` and parks in real mode.
pub const MAX_VCPUS: u32 = 16;
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
    ".set BOOT_STACK_SIZE, {boot_stack_size}",
    ".set STACKS, {stacks}",
    ".set STACK_SIZE, {stack_size}",
    ".set MAX_VCPUS, {max_vcpus}",
    ".set ENTRY_STATE_SIZE, {entry_state_size}",
    include_str!("boot.s"),
    com1 = const crate::serial::COM1,
    exit_port = const crate::cpu::EXIT_PORT,
    exit_fail = const EXIT_FAIL,
    stack_top = const STACK_TOP,
    boot_stack_size = const BOOT_STACK_SIZE,
    stacks = const STACKS,
    stack_size = const STACK_SIZE,
    max_vcpus = const MAX_VCPUS,
    entry_state_size = const core::mem::size_of::<EntryState>(),
);

// The boot stacks fit in 0x3000..0x7000 (link.ld) and the long-mode stacks in the ABI's
// 2 MiB; every stack top is 16-byte aligned (System V); the real-mode code computes the
// boot stack top with a 16-bit IMUL by -BOOT_STACK_SIZE; EntryState is laid out as boot.s
// writes it.
const _: () = assert!(boot_stack_top(MAX_VCPUS - 1) - BOOT_STACK_SIZE >= 0x3000);
const _: () = assert!(STACK_TOP.is_multiple_of(16) && BOOT_STACK_SIZE.is_multiple_of(16) && BOOT_STACK_SIZE <= 0x7FFF);
const _: () = assert!(STACKS >= 0x10_0000 && stack_top(MAX_VCPUS - 1) <= 2 << 20);
const _: () = assert!(STACKS.is_multiple_of(16) && STACK_SIZE.is_multiple_of(16));
const _: () = assert!(core::mem::size_of::<EntryState>() == 20);

/// The state a vCPU started in, recorded by the first instructions of `_start` (real mode).
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
    /// One per vCPU (index = vCPU index), each written once by that vCPU's boot code.
    static boot_entry_states: [EntryState; MAX_VCPUS as usize];
    /// EAX and EBX at the Multiboot entry (`mb_entry` in boot.s); 0 after a flat start.
    static boot_multiboot_magic: u32;
    static boot_multiboot_info: u32;
    /// NUL-terminated guest name, defined by [`guest!`](crate::guest) in the binary.
    static GUEST_NAME: u8;
    /// The binary's `main`, wrapped by [`guest!`](crate::guest); returns the exit code.
    fn guest_main(vcpu: u32) -> u32;
}

/// This vCPU's index, 0..n-1: CPUID leaf 1, EBX bits 31:24, the initial APIC ID (SDM
/// Vol. 2A CPUID), which the hypervisor sets to the vCPU index. Under a hypervisor each call
/// is a VM exit; `main` also receives the index as its argument.
pub fn vcpu_id() -> u32 {
    crate::cpu::cpuid(1, 0).ebx >> 24
}

/// The entry state this vCPU started in, recorded in real mode.
pub fn entry_state() -> EntryState {
    entry_state_of(vcpu_id())
}

/// The entry state vCPU `vcpu` started in; all zeros if that vCPU has not started (yet).
/// Panics if `vcpu >= MAX_VCPUS`.
pub fn entry_state_of(vcpu: u32) -> EntryState {
    assert!(vcpu < MAX_VCPUS, "vCPU {vcpu}: the boot code only runs vCPUs 0..{MAX_VCPUS}");
    // SAFETY: each slot is written only by its own vCPU's boot code before that vCPU runs
    // any Rust code, never afterwards; a volatile read of plain integers is harmless even
    // while another vCPU is still writing its own slot.
    unsafe { core::ptr::read_volatile((&raw const boot_entry_states).cast::<EntryState>().add(vcpu as usize)) }
}

/// What EAX holds at a Multiboot 1 kernel's entry (Multiboot spec 3.2).
pub const MULTIBOOT_MAGIC: u32 = 0x2BAD_B002;
/// What EAX holds at a Multiboot 2 kernel's entry (Multiboot 2 spec 3.2).
pub const MULTIBOOT2_MAGIC: u32 = 0x36D7_6289;

/// Whether a Multiboot loader (either version: every guest has both headers) started this
/// guest (the magic in EAX at `mb_entry`), rather than the flat-image entry.
pub fn started_by_multiboot() -> bool {
    matches!(multiboot_registers().0, MULTIBOOT_MAGIC | MULTIBOOT2_MAGIC)
}

/// EAX and EBX as a Multiboot loader left them (the boot loader's magic and the address of
/// the boot information); `(0, 0)` when the guest started as a flat image.
pub fn multiboot_registers() -> (u32, u32) {
    // SAFETY: written once by the boot code before any Rust code runs.
    unsafe { (core::ptr::read_volatile(&raw const boot_multiboot_magic), core::ptr::read_volatile(&raw const boot_multiboot_info)) }
}

/// A 32-bit word of the boot loader's information, in identity-mapped RAM.
fn info_u32(at: u64) -> u32 {
    // SAFETY: the loader's information lies in RAM, identity-mapped; an address outside it
    // reads whatever the hypervisor answers, never faults.
    unsafe { core::ptr::read_volatile(at as *const u32) }
}

/// The tags of the Multiboot 2 information at `info` (Multiboot 2 spec 3.6: total_size,
/// reserved, then tags, each `type`, `size`, body, 8-byte aligned, up to the end tag), as
/// (type, address, size), within the first 64 KiB. A tag whose size is below the 8 bytes of
/// its header is yielded and ends the walk (its successor cannot be found).
pub fn multiboot2_tags(info: u64) -> impl Iterator<Item = (u32, u64, u64)> {
    let end = info + u64::from(info_u32(info)).min(64 * 1024);
    let mut at = Some(info + 8);
    core::iter::from_fn(move || {
        let tag = at.filter(|&t| t + 8 <= end)?;
        let (kind, size) = (info_u32(tag), u64::from(info_u32(tag + 4)));
        if kind == 0 {
            return None;
        }
        at = (size >= 8).then(|| tag + size.div_ceil(8) * 8);
        Some((kind, tag, size))
    })
}

/// The kernel command line a Multiboot loader gave this guest (Multiboot spec 3.3: flag bit
/// 2, the address at offset 16; Multiboot 2 spec 3.6.2: tag type 1), as text; `None` after a
/// flat start, without one, or if it is not UTF-8.
pub fn multiboot_cmdline() -> Option<&'static str> {
    let (magic, info) = multiboot_registers();
    let info = u64::from(info);
    let at = match magic {
        MULTIBOOT_MAGIC if info_u32(info) & 1 << 2 != 0 => u64::from(info_u32(info + 16)),
        MULTIBOOT2_MAGIC => multiboot2_tags(info).find(|&(kind, _, size)| kind == 1 && size >= 8)?.1 + 8,
        _ => return None,
    };
    // SAFETY: a NUL-terminated string the loader placed in RAM.
    unsafe { CStr::from_ptr(at as *const core::ffi::c_char) }.to_str().ok()
}

/// Top of vCPU `vcpu`'s boot stack (real and protected mode).
pub const fn boot_stack_top(vcpu: u32) -> u64 {
    STACK_TOP - vcpu as u64 * BOOT_STACK_SIZE
}

/// Top of vCPU `vcpu`'s long-mode stack (the RSP its `main` starts just below).
pub const fn stack_top(vcpu: u32) -> u64 {
    STACKS + (vcpu as u64 + 1) * STACK_SIZE
}

/// This guest's name, as given to [`guest!`](crate::guest); every line it prints starts
/// with it.
pub fn name() -> &'static str {
    // SAFETY: `guest!` defines GUEST_NAME as a NUL-terminated byte array.
    let name = unsafe { CStr::from_ptr((&raw const GUEST_NAME).cast()) };
    name.to_str().unwrap_or("guest")
}

/// Called by the 64-bit boot code of every vCPU on its own stack, with its index: runs the
/// guest's `main` and ends the test with the code it returns.
#[no_mangle]
extern "C" fn guest_rust_entry(vcpu: u32) -> ! {
    // SAFETY: `guest!` defines guest_main with this signature.
    let code = unsafe { guest_main(vcpu) };
    crate::cpu::test_exit(code)
}

/// A guest's `main`: `fn() -> u32` (a single-vCPU guest: it runs on vCPU 0, and any other
/// vCPU parks at once) or `fn(vcpu: u32) -> u32` (runs on every vCPU, with its index).
/// Either returns the test exit code, which ends the whole guest whichever vCPU returns it.
/// `Args` only tells the two impls apart.
pub trait Main<Args> {
    fn run(self, vcpu: u32) -> u32;
}

impl<F: FnOnce() -> u32> Main<()> for F {
    fn run(self, vcpu: u32) -> u32 {
        if vcpu != 0 {
            crate::cpu::park();
        }
        self()
    }
}

impl<F: FnOnce(u32) -> u32> Main<(u32,)> for F {
    fn run(self, vcpu: u32) -> u32 {
        self(vcpu)
    }
}

/// Runs `main` on vCPU `vcpu` (for [`guest!`]).
#[doc(hidden)]
pub fn run_main<Args, M: Main<Args>>(main: M, vcpu: u32) -> u32 {
    main.run(vcpu)
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
/// through them (vCPU 0 only).
///
/// `main` is either `fn() -> u32`, run on vCPU 0 only (any other vCPU parks, so a
/// single-vCPU guest stays one whatever it is given), or `fn(vcpu: u32) -> u32`, run on
/// every vCPU with its index ([`Main`](crate::boot::Main)).
///
/// ```ignore
/// test_guests::guest!(name = "checks", main = main);      // fn main() -> u32
/// test_guests::guest!(name = "busy", main = main);        // fn main(vcpu: u32) -> u32
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
        pub extern "C" fn guest_main(vcpu: u32) -> u32 {
            $crate::boot::run_main($main, vcpu)
        }
    };
    (@trace true) => { 1 };
    (@trace false) => { 0 };
    (@trace) => { 0 };
}
