//! Hardware interrupts in long mode: an IDT with the boot code's exception gates plus gates
//! for the 16 PIC vectors 0x20..0x2F, and the one handler the guest installs behind them.
//!
//! The boot code's IDT (`boot.s`) covers the 32 exception vectors only, which is all a guest
//! that never sets IF needs. A guest that takes interrupts calls [`install`] on the vCPU that
//! takes them: it builds an IDT of [`VECTORS`] gates whose first 32 are copies of the boot
//! code's (so exceptions are reported, and [`guarded!`](crate::guarded) works, as before) and
//! whose last 16 lead to the stubs below, and loads it on that vCPU (IDTR is per CPU). A
//! vector past 0x2F is beyond the IDT limit and raises #GP with an error code naming the
//! vector (IDT bit set), which is reported like any exception (SDM Vol. 3A 6.10 and 6.13).
//!
//! Entry path: the stub of vector v pushes a zero error code (an external interrupt pushes
//! none, SDM Vol. 3A 6.13) and v, the same two words an exception stub pushes, and jumps to
//! the exceptions' `lm_exc_common` (`boot.s`): it saves all 15 general registers as an
//! [`exceptions::Frame`](crate::exceptions::Frame), calls `exception_dispatch`, which hands
//! any vector >= 32 to the installed handler before looking at anything else (so an
//! interrupt is never taken for the fault a guarded instruction expects), restores the
//! registers and returns with IRETQ. Hence the interrupted code gets back every general
//! register, and its RFLAGS (IF included) from the frame. That is all it needs: the target
//! (`x86_64-unknown-none`) is soft-float, so Rust code never touches x87/SSE registers, and it
//! has no red zone, so the CPU's pushes below RSP (no stack switch at CPL 0 without an IST)
//! never overwrite data of the interrupted code. The CPU aligns RSP to 16 before pushing
//! its frame (SDM Vol. 3A 6.14.2), so the call into Rust is aligned as for exceptions.
//!
//! The gates are interrupt gates (type 0xE): the CPU clears IF when it enters the handler
//! (SDM Vol. 3A 6.12.1.3), so handlers never nest and need no locks against themselves.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// First vector of the PIC IRQs: IRQ n arrives as `IRQ_BASE + n` if the PICs are initialised
/// with bases `IRQ_BASE` and `IRQ_BASE + 8` ([`crate::pic::init`]), as Linux does.
pub const IRQ_BASE: u8 = 0x20;
/// IRQ lines of the two PICs.
pub const IRQS: u8 = 16;
/// Gates in the IDT [`install`] loads: the 32 exceptions, then the 16 IRQ vectors.
pub const VECTORS: usize = IRQ_BASE as usize + IRQS as usize;

// The stubs know the vectors as IRQ_BASE + 0..15; the gate type below is an interrupt gate.
const _: () = assert!(IRQ_BASE == 32 && IRQS == 16);

core::arch::global_asm!(
    ".set IRQ_BASE, {irq_base}",
    // One stub per IRQ vector, like `LM_STUB` in boot.s for a vector without error code.
    "    .section .text.irq_stubs, \"ax\", @progbits",
    "    .code64",
    ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "lm_irq_\\i:",
    "    push 0",
    "    push IRQ_BASE + \\i",
    "    jmp lm_exc_common",
    ".endr",
    // Their addresses, for the gates (linked with --no-pie, so plain absolute addresses).
    "    .section .rodata.irq_stubs, \"a\", @progbits",
    "    .balign 8",
    "    .global irq_stubs",
    "irq_stubs:",
    ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "    .quad lm_irq_\\i",
    ".endr",
    "    .text",
    irq_base = const IRQ_BASE,
);

extern "C" {
    /// The boot code's 64-bit IDT: 32 gates of two quadwords (boot.s).
    static boot_lm_idt: [[u64; 2]; 32];
    /// The entry stub of vector `IRQ_BASE + i`, for i in 0..16 (above).
    static irq_stubs: [u64; IRQS as usize];
}

/// The IDT [`install`] builds; written once, before it is loaded.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[[u64; 2]; VECTORS]>);

// SAFETY: written only by `install`, once (checked), before any CPU loads it; read-only after.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; VECTORS]));
/// The installed handler, a `fn(u8)` as usize; 0 = none (then `install` has not run).
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A 64-bit interrupt gate to `offset` through code segment `selector` (SDM Vol. 3A 6.14.1,
/// Figure 6-8): offset 15:0, selector, IST = 0, type 0xE with P = 1 and DPL = 0 (0x8E),
/// offset 31:16; then offset 63:32 and a reserved doubleword.
fn interrupt_gate(offset: u64, selector: u16) -> [u64; 2] {
    let low = (offset & 0xFFFF) | u64::from(selector) << 16 | 0x8E << 40 | (offset >> 16 & 0xFFFF) << 48;
    [low, offset >> 32]
}

/// Builds the IDT (the boot code's 32 exception gates, then gates for vectors
/// [`IRQ_BASE`]`..`[`IRQ_BASE`]` + 16`), loads it on this vCPU, and makes `handler` the code
/// every one of those 16 vectors runs, with the vector as argument; the handler must send
/// the EOI itself ([`crate::pic`]). Call it once, with interrupts disabled, before
/// unmasking anything. Panics if called a second time.
///
/// The handler runs with IF = 0 on the stack of the code it interrupted, and must neither
/// print (the interrupted code may hold the console's line lock, and the handler cannot wait
/// for it) nor panic.
pub fn install(handler: fn(vector: u8)) {
    let previous = HANDLER.swap(handler as usize, SeqCst);
    assert!(previous == 0, "interrupts::install called twice");
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    // SAFETY: nothing has loaded IDT yet (HANDLER was 0, so this is the first and only
    // writer); the two extern statics are read-only tables in the image.
    unsafe {
        let idt = &mut *IDT.0.get();
        idt[..32].copy_from_slice(&boot_lm_idt);
        for (i, &stub) in irq_stubs.iter().enumerate() {
            idt[usize::from(IRQ_BASE) + i] = interrupt_gate(stub, cs);
        }
    }
    load();
}

/// Loads the IDT [`install`] built on this vCPU (IDTR is per CPU, SDM Vol. 3A 6.10): what
/// every other vCPU that takes interrupts calls once `install` has run on one of them.
/// Panics if `install` has not run.
pub fn load() {
    assert!(HANDLER.load(SeqCst) != 0, "interrupts::load before interrupts::install");
    // LIDT operand: 16-bit limit, then the 64-bit base (SDM Vol. 2A LGDT/LIDT).
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr { limit: (VECTORS * 16 - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the table is complete, static and valid for every vector up to its limit.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

/// Runs the installed handler for `vector` (>= 32); false if none is installed. Called by
/// `exception_dispatch` only.
pub(crate) fn dispatch(vector: u8) -> bool {
    match HANDLER.load(SeqCst) {
        0 => false,
        h => {
            // SAFETY: HANDLER only ever holds 0 or a `fn(u8)` stored by `install`.
            let handler: fn(u8) = unsafe { core::mem::transmute::<usize, fn(u8)>(h) };
            handler(vector);
            true
        }
    }
}

/// The installed NMI handler, a `fn()` as usize; 0 = none.
static NMI_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Makes `handler` what an NMI (vector 2, through the boot code's exception gate) runs on
/// whichever vCPU takes it, instead of being reported as an unexpected exception. The NMI
/// gate is an interrupt gate too; NMIs stay blocked until the handler's IRETQ (SDM Vol. 3A
/// 7.7). The same rules as for [`install`]'s handler: no printing, no panic.
pub fn install_nmi(handler: fn()) {
    NMI_HANDLER.store(handler as usize, SeqCst);
}

/// Runs the installed NMI handler; false if none is installed.
pub(crate) fn dispatch_nmi() -> bool {
    match NMI_HANDLER.load(SeqCst) {
        0 => false,
        h => {
            // SAFETY: NMI_HANDLER only ever holds 0 or a `fn()` stored by `install_nmi`.
            let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
            handler();
            true
        }
    }
}

/// Enables interrupts, halts until one arrives, lets its handler run, and disables them
/// again: `sti; hlt; cli`. STI delays the recognition of interrupts until after the next
/// instruction (SDM Vol. 2B STI), so an interrupt that is already pending or arrives right
/// after STI is taken at HLT (ending the halt at once, with the return address after it),
/// never before it: the pair cannot miss a wake-up. After the handler's IRETQ (IF = 1 again)
/// another pending interrupt may be taken before the CLI. A HLT may also end without an
/// interrupt (NMI, SMI; SDM Vol. 2A HLT): callers look at what the handler left, not at the
/// return itself.
pub fn halt_until_interrupt() {
    // SAFETY: the handler may change memory, so this asm is not `nomem` (it is a compiler
    // barrier: memory the handler wrote is read afresh after it) nor `nostack` (the CPU
    // pushes the interrupt frame below RSP); it changes no register.
    unsafe { core::arch::asm!("sti", "hlt", "cli") };
}
