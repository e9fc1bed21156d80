//! Local APIC in xAPIC mode (registers at 0xFEE0_0000), one per vCPU, as a pure state machine.
//!
//! Every vCPU owns one [`Lapic`]. The kernel forwards the vCPU's loads and stores in the 4 KiB
//! page at [`LAPIC_BASE`] to its [`BusDevice`] implementation (offsets relative to the base); the
//! interrupt router puts fixed and lowest-priority interrupts into it with [`Lapic::accept`],
//! asks [`Lapic::pending_vector`] before a VM entry and injects what [`Lapic::acknowledge`]
//! returns; a broadcast EOI for a level-triggered vector comes back out of [`Lapic::eoi`] (or
//! [`Lapic::take_eoi_broadcasts`] after a guest EOI write) for the I/O APIC; the IPIs the guest
//! sends wait in a queue ([`Lapic::take_ipis`], [`Lapic::pop_ipi`]) for the router to deliver;
//! a halted vCPU sleeps until [`Lapic::next_deadline`] and [`Lapic::advance`] fires the timer.
//! Nothing here touches hardware or reads a clock, so all of it is tested on the host.
//!
//! The rules follow the Intel SDM Vol. 3A chapter 11, "Advanced Programmable Interrupt
//! Controller (APIC)" (chapter 10 in editions before 2023; section numbers such as 11.5.3 below
//! are the current ones). Where the SDM leaves room, the model does what QEMU
//! (`hw/intc/apic.c`) or KVM (`arch/x86/kvm/lapic.c`) do, and says which.
//!
//! # Registers
//!
//! Table 11-1 puts each register at a 16-byte-aligned offset; only its first 4 bytes exist.
//!
//! | offset        | register | here |
//! |---------------|----------|------|
//! | 0x020 | ID (11.4.6) | bits 31:24 read/write (KVM and QEMU allow the write in xAPIC mode; Nehalem and later make it read-only) |
//! | 0x030 | Version (11.4.8) | read-only [`LAPIC_VERSION`] = 0x0106_0014, see below |
//! | 0x080 | TPR (11.8.3.1) | bits 7:0 read/write |
//! | 0x090 | APR (11.6.2.4) | reads 0, see below |
//! | 0x0A0 | PPR (11.8.3.1) | read-only, computed from TPR and the ISR |
//! | 0x0B0 | EOI (11.8.5) | write-only (any value); reads 0 |
//! | 0x0C0 | RRD (remote read) | reads 0 (remote read is a P6/Pentium APIC-bus feature) |
//! | 0x0D0 | LDR (11.6.2.2) | bits 31:24 read/write |
//! | 0x0E0 | DFR (11.6.2.2) | bits 31:28 read/write, bits 27:0 read as ones |
//! | 0x0F0 | SVR (11.9) | bits 7:0 vector, 8 software enable, 12 suppress EOI broadcast |
//! | 0x100-0x170 | ISR (11.8.4) | read-only, vectors 32n..32n+31 in register n |
//! | 0x180-0x1F0 | TMR (11.8.4) | read-only |
//! | 0x200-0x270 | IRR (11.8.4) | read-only |
//! | 0x280 | ESR (11.5.3) | see "Errors" |
//! | 0x2F0 | LVT CMCI (11.5.1) | vector, delivery mode, mask |
//! | 0x300 / 0x310 | ICR low / high (11.6.1) | a write to the low half sends an IPI |
//! | 0x320 | LVT Timer | vector, mask, bit 17 periodic |
//! | 0x330 / 0x340 | LVT Thermal / Performance counters | vector, delivery mode, mask |
//! | 0x350 / 0x360 | LVT LINT0 / LINT1 | vector, delivery mode, polarity, trigger mode, mask |
//! | 0x370 | LVT Error | vector, mask |
//! | 0x380 / 0x390 | timer initial count / current count (11.5.4) | current count read-only |
//! | 0x3E0 | timer divide configuration (11.5.4, Figure 11-10) | bits 3, 1, 0 |
//!
//! Every other 16-byte slot of the page (0x000, 0x010, 0x040-0x070, 0x290-0x2E0, 0x3A0-0x3D0,
//! 0x3F0 and 0x400-0xFF0) is *reserved*. Reserved bits of a register read 0 and ignore
//! writes, and so do the read-only bits: Delivery Status (bit 12 of the LVTs and the ICR)
//! always reads 0 ("idle") because delivery is instantaneous here, and LINT Remote IRR (bit
//! 14) reads 0 (see "Left out"). Reset (11.4.7.1) gives: ID as given to [`Lapic::new`], SVR
//! 0xFF (software disabled), DFR all ones, every LVT masked (0x0001_0000), everything else 0.
//!
//! **Version** (11.4.8): version 0x14 in bits 7:0 (an integrated xAPIC: Linux's
//! `lapic_is_integrated` looks at bits 7:4, and `modern_apic` wants at least 0x14, which spares
//! the guest the APIC-bus arbitration-ID sync of older parts), Max LVT Entry 6 in bits 23:16,
//! and bit 24 set.
//! Max LVT Entry is the number of LVT entries minus one: seven here, LVT CMCI included. The
//! register list has LVT CMCI at 0x2F0, and a version saying 5 would describe an APIC without
//! it (QEMU says 5 and has no 0x2F0; KVM says 6 only when the guest's MCG_CAP has CMCI_P).
//! Linux's `lapic_get_maxlvt` reads the field; with 6 it also masks LVT CMCI when it clears the
//! APIC, which is harmless: nothing raises a CMCI here (CPUID hides machine-check support).
//! Bit 24 says EOI-broadcast suppression is supported (11.8.5): SVR bit 12 is writable and
//! honoured. Bastion's I/O APIC is version 0x20 with an EOI register (`ioapic.rs`), so a guest
//! that suppresses the broadcast can still end a level interrupt there. (KVM hides the bit with
//! its in-kernel I/O APIC, an 82093AA without that register, because some guests set SVR bit 12
//! without checking the I/O APIC's version.)
//!
//! **APR** reads 0: Table 11-1 marks it "not supported in the Pentium 4 and Intel Xeon
//! processors", QEMU and KVM read 0 too, and lowest-priority arbitration is the router's
//! business (it can use [`Lapic::ppr`]).
//!
//! # Access sizes
//!
//! "All 32-bit registers should be accessed using 128-bit aligned 32-bit loads or stores";
//! narrower accesses are model specific, and touching bytes 4-15 of a register "may cause
//! undefined behavior" (11.4.1). A guest can issue any access, so the model defines them all:
//!
//! - **Reads** of any size are served byte by byte: byte `k` of an access at offset `o` is
//!   byte `(o + k) & 3` of the register whose slot holds `o + k` when `(o + k) & 15 < 4`, and 0
//!   for bytes 4-15 of a slot (as KVM; QEMU returns the whole register for any offset in its
//!   slot). So a byte read at 0x23 gives the ID.
//! - **Writes** take effect only as exactly 4 bytes at a 16-byte-aligned offset. Every other
//!   write (1, 2 or 8 bytes, misaligned) is ignored. Merging a partial write would be
//!   meaningless for the registers whose write *is* the action (ICR low sends, EOI ends an
//!   interrupt, initial count restarts the timer: a byte of each cannot do a fraction of it),
//!   and KVM drops the same writes, so no guest known to run under KVM depends on them.
//! - Any access, read or write of any size, that touches a byte of a reserved slot sets
//!   "Illegal Register Address" (ESR bit 7, 11.5.3: "an access to a register address that's
//!   reserved"; QEMU sets it for both); reserved slots read 0 and ignore writes. Writes to
//!   read-only registers are ignored without an error, as on the Pentium 4 and later (and in
//!   QEMU and KVM). Offsets past the page (the bus never sends them) read 0 and do nothing.
//!
//! # Interrupts: acceptance, priority, EOI
//!
//! - [`Lapic::accept`] puts a fixed or lowest-priority interrupt into the IRR and sets its TMR
//!   bit for level-triggered, clears it for edge-triggered ("upon acceptance of an interrupt
//!   into the IRR", 11.8.4). A vector already in the IRR collapses into it; one in the ISR can
//!   also be in the IRR, so each vector queues at most two (11.8.4). Vectors 0-15 are illegal:
//!   "Receive Illegal Vector" (ESR bit 6) is set and no IRR bit (11.5.2, 11.5.3). Interrupts
//!   from the local sources (timer, error, LINT pins, self IPIs) take the same path.
//! - The priority class of a vector is `vector >> 4`. PPR is TPR if `TPR[7:4] >= ISRV[7:4]`
//!   (ISRV the highest vector in the ISR, 0 if none), otherwise `ISRV[7:4]` with bits 3:0 zero
//!   (11.8.3.1). [`Lapic::pending_vector`] is the highest IRR vector if its class is above PPR's
//!   class (11.8.3.1, 11.8.4), so a lower interrupt never preempts a higher one in service and
//!   an interrupt of the TPR's own class waits.
//! - [`Lapic::acknowledge`] moves that vector from the IRR to the ISR and returns it: what the
//!   hypervisor injects (the CPU's INTA cycle). Nothing is acknowledged when nothing is
//!   deliverable, so the model never produces the spurious vector (11.9); SVR bits 7:0 are
//!   stored only.
//! - [`Lapic::eoi`] (and any 4-byte write to the EOI register) clears the highest ISR bit. If
//!   that vector's TMR bit is set and SVR bit 12 is clear, the EOI goes to the I/O APICs as a
//!   broadcast (11.8.5): `eoi` returns the vector, and a guest's EOI *write* leaves it for
//!   [`Lapic::take_eoi_broadcasts`]. Those wait in a set of vectors: bounded, and nothing is lost,
//!   since one EOI message clears Remote IRR in every I/O APIC entry with its vector (two
//!   pending EOIs of one vector do what one does). An EOI with an empty ISR does nothing.
//!
//! # Software disable (11.4.7.2)
//!
//! With SVR bit 8 clear (after reset, or when the guest clears it) every LVT is masked, and a
//! write to an LVT keeps its mask bit set whatever it says; setting bit 8 again leaves the LVTs
//! masked until the guest unmasks them. The APIC "will respond normally to INIT, NMI, SMI, and
//! SIPI messages": fixed and lowest-priority interrupts are not accepted (`accept` drops them,
//! as KVM does), but what the IRR and ISR already hold "are held and require masking or
//! handling by the CPU", so [`Lapic::pending_vector`] still offers them. The APIC "can still
//! issue IPIs": ICR writes send.
//!
//! # Errors (11.5.3)
//!
//! Errors collect in an internal register. A write of any value to the ESR copies the
//! collected errors into the readable ESR and clears them; reads return what the last write
//! latched ("A write (of any value) to the ESR must be done to update the register before
//! attempting to read it. This write clears any previously logged errors and updates the ESR
//! with any errors detected since the last write"). The model sets bit 5 "Send Illegal Vector"
//! (an ICR write sending a fixed or lowest-priority vector below 16), bit 6 "Receive Illegal
//! Vector" and bit 7 "Illegal Register Address". An error bit that was not yet collected
//! raises the LVT Error vector (edge) if that entry is unmasked ("Errors are collected
//! regardless of LVT Error mask bit"); the same error again raises nothing until an ESR write
//! clears it, which re-arms the error interrupt.
//!
//! # Timer (11.5.4)
//!
//! The timer counts the bus clock ([`Lapic::new`]'s `bus_hz`, a caller's choice: KVM and QEMU
//! use 1 GHz) divided by the divide configuration (Figure 11-10: bits 3,1,0 = 000 ÷2, 001 ÷4,
//! 010 ÷8, 011 ÷16, 100 ÷32, 101 ÷64, 110 ÷128, 111 ÷1; bit 2 is reserved). The model never
//! ticks: a countdown remembers when it started, and the current count is computed from the
//! time, `floor(elapsed_ns * bus_hz / (1e9 * divisor))` ticks later; tick `k` happens at
//! `start + ceil(k * 1e9 * divisor / bus_hz)` ns, which is also the deadline reported. All of
//! it is `u128` integer arithmetic.
//!
//! - Writing the initial count (re)starts the timer from that count at the time of the write,
//!   in one-shot or periodic mode (LVT Timer bit 17); writing 0 stops it.
//! - One-shot: the count goes N, N-1, ..., 1, then 0, where the interrupt fires and the
//!   count stays. Periodic: N, ..., 1, then back to N with an interrupt, each N ticks.
//! - [`Lapic::advance`] puts the LVT Timer vector into the IRR when an expiry is due and the
//!   entry is unmasked. Several periodic expiries missed since the last call make one
//!   interrupt: the IRR holds one per vector anyway, and guests such as Linux catch up from
//!   their clocksource, as with the PIT's folded IRQ 0 edges. An expiry while the entry is
//!   masked is lost, not held: unmasking later raises nothing.
//! - [`Lapic::next_deadline`] is the instant of the next expiry that would raise an interrupt:
//!   `None` when the timer is stopped or its LVT entry masked; never earlier than `now_ns`, so
//!   a value equal to `now_ns` means "call advance now".
//! - Every entry point that takes the time first delivers the expiries due by then, so an
//!   expiry can never be lost or doubled by a register write that follows it (a restart, a
//!   mask, a divide change).
//! - **Changing the divide configuration** while the timer runs keeps the current count and
//!   counts on at the new rate from the time of the write (KVM rescales the same way; the
//!   SDM says nothing). The part of a tick already elapsed is dropped: at most one tick of the
//!   old rate late. Rewriting the same divisor changes nothing.
//! - **Mode changes.** "A write to the LVT Timer Register that changes the timer mode disarms
//!   the local APIC timer" (11.5.4.1): the count reads 0 until the next initial-count write.
//!   TSC-deadline mode (bits 18:17 = 10) is not supported (CPUID leaf 1 ECX bit 24 is clear),
//!   so bit 18 is reserved ("If CPUID.01H:ECX.TSC_Deadline[bit 24] = 0, bit 18 of the register
//!   is reserved", 11.5.4.1): it reads 0, and writing mode 10 selects one-shot, 11 periodic
//!   (what KVM does without TSC-deadline).
//!
//! # IPIs (11.6.1)
//!
//! A 4-byte write to ICR low sends the IPI that ICR low and high describe; ICR high is only
//! stored. The model does not deliver it: it queues an [`Ipi`] with the fields as written
//! (vector, delivery mode, destination mode, level, trigger mode, destination, shorthand) for
//! the router, which matches destinations with [`Lapic::matches_destination`]. Only the "self"
//! shorthand is handled here: a fixed (or lowest-priority) self IPI goes into the own IRR,
//! edge-triggered, and a self NMI sets the NMI flag. Table 11-3 makes self IPIs valid only
//! edge-triggered and fixed ("if the trigger mode bit is 1 (Level), the local xAPIC will override
//! the bit setting and issue the interrupt as an edge triggered interrupt"); the other self
//! combinations are invalid, and the model drops them except lowest priority and NMI, which
//! it delivers as KVM does. "All including self" is queued like the rest: the router delivers
//! it to every APIC, this one included.
//!
//! The same table says a Pentium 4 or later xAPIC issues *every* IPI edge-triggered; the queued
//! [`Ipi`] keeps the trigger and level bits as written so that the router can recognise an INIT
//! level de-assert (delivery mode INIT, trigger level, level 0) and ignore it, as KVM does.
//! A fixed or lowest-priority IPI with a vector below 16 sets ESR bit 5 and is still sent
//! (receivers reject it with bit 6, 11.5.3; a self IPI sets both here). The queue holds at most
//! [`MAX_QUEUED_IPIS`]; further IPIs are dropped and counted ([`Lapic::dropped_ipis`]).
//!
//! **Destinations** (11.6.2): 0xFF is a broadcast in both modes (11.6.2.1, 11.6.2.2: "setting
//! the MDA to all 1s"), which also reaches an APIC whose LDR is still 0 (KVM does the same).
//! Physical: the ID register equals the destination. Logical, flat model (DFR bits 31:28 =
//! 1111): the destination and LDR bits 31:24 share a set bit. Cluster model (0000): the high
//! nibbles are equal and the low nibbles share a set bit. Other DFR models are undefined and
//! match nothing but broadcasts (as KVM).
//!
//! # LINT0, LINT1 (11.5.1)
//!
//! [`Lapic::set_lint`] gives the level of pin 0 or 1 (polarity already applied by the board;
//! bit 13 is stored only). On a rising edge of an unmasked pin: delivery mode Fixed accepts
//! the LVT vector (LINT0 level-triggered if bit 15 says so; LINT1 is always edge, "Level-
//! sensitive interrupts are not supported for LINT1"); NMI sets the flag [`Lapic::take_nmi`]
//! returns. ExtINT means "the 8259A's INTR reaches this CPU": the model does nothing with
//! the pin, the router asks [`Lapic::lint0_extint_enabled`] whether to take vectors from the
//! PIC. SMI and INIT on the pins are ignored (no SMM; INIT comes as IPIs).
//!
//! The reset state follows 11.4.7.1, so LINT0 is masked until the guest programs it. QEMU and
//! KVM instead reset the BSP's LINT0 to ExtINT, unmasked, standing in for firmware: a router
//! that runs guests without firmware and wants the PIC to reach a CPU whose APIC the guest never
//! set up must route the PIC there itself (as when the APIC is hidden from CPUID).
//!
//! # Time
//!
//! Methods that need the time take `now_ns`, the caller's monotonic clock in ns. The
//! [`BusDevice`] accesses need it too (the current count; expiries due before the access), and
//! that trait carries no time, so the model keeps the caller's clock function ([`Clock`],
//! given to [`Lapic::with_clock`], like `vm::devices::PitDevice`) and calls it once per
//! access. A `set_now` before each access would do the same with one more call on every MMIO
//! path, and forgetting it would freeze the current count for a guest that polls it to
//! calibrate its timer. [`Lapic::new`] uses a clock stuck at 0; then bus accesses see the
//! latest time given to any method. If a `now_ns` is earlier than one already seen, the later
//! one is used: the timer never runs backwards and no expiry is delivered twice.
//!
//! # Left out
//!
//! - x2APIC (CPUID hides it) and the IA32_APIC_BASE MSR: the router (`irq.rs`) keeps the
//!   enable bit, refuses relocation, and replaces the model with a fresh one on a hardware
//!   disable.
//! - INIT and STARTUP handling (11.4.7.3): the router resets or starts the vCPU.
//! - LINT Remote IRR and level re-assertion: a level-triggered LINT0 fires on rising edges only.
//! - Thermal, performance-counter and CMCI interrupts: their LVTs are stored, nothing raises them.
//! - Focus processor checking (SVR bit 9, P6 and Pentium only) is reserved; no APIC bus, so no
//!   arbitration ID, remote read, or checksum and accept errors.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::bus::{BusDevice, IoOutcome};
pub use super::ioapic::{DELIVERY_EXTINT, DELIVERY_FIXED, DELIVERY_INIT, DELIVERY_LOWEST_PRIORITY, DELIVERY_NMI, DELIVERY_SMI};
use super::ioapic::MIN_VECTOR;

/// Guest-physical base of the local APIC page after reset (11.4.1, IA32_APIC_BASE).
pub const LAPIC_BASE: u64 = crate::vm::memmap::LAPIC_BASE;
/// Length of the MMIO range: one 4 KiB page.
pub const LAPIC_MMIO_LEN: u64 = crate::vm::memmap::LAPIC_SIZE;

/// Local APIC ID register (11.4.6).
pub const REG_ID: u64 = 0x020;
/// Local APIC Version register (11.4.8).
pub const REG_VERSION: u64 = 0x030;
/// Task Priority Register (11.8.3.1).
pub const REG_TPR: u64 = 0x080;
/// Arbitration Priority Register (11.6.2.4); reads 0 here.
pub const REG_APR: u64 = 0x090;
/// Processor Priority Register (11.8.3.1).
pub const REG_PPR: u64 = 0x0a0;
/// EOI register (11.8.5).
pub const REG_EOI: u64 = 0x0b0;
/// Remote Read Register; reads 0 here.
pub const REG_RRD: u64 = 0x0c0;
/// Logical Destination Register (11.6.2.2).
pub const REG_LDR: u64 = 0x0d0;
/// Destination Format Register (11.6.2.2).
pub const REG_DFR: u64 = 0x0e0;
/// Spurious Interrupt Vector Register (11.9).
pub const REG_SVR: u64 = 0x0f0;
/// In-Service Register, bits 31:0; register n (vectors 32n..32n+31) is at `REG_ISR + 16n`.
pub const REG_ISR: u64 = 0x100;
/// Trigger Mode Register, bits 31:0.
pub const REG_TMR: u64 = 0x180;
/// Interrupt Request Register, bits 31:0.
pub const REG_IRR: u64 = 0x200;
/// Error Status Register (11.5.3).
pub const REG_ESR: u64 = 0x280;
/// LVT CMCI register (11.5.1).
pub const REG_LVT_CMCI: u64 = 0x2f0;
/// Interrupt Command Register bits 31:0 (11.6.1); writing it sends.
pub const REG_ICR_LOW: u64 = 0x300;
/// Interrupt Command Register bits 63:32: the destination in bits 31:24.
pub const REG_ICR_HIGH: u64 = 0x310;
/// LVT Timer register.
pub const REG_LVT_TIMER: u64 = 0x320;
/// LVT Thermal Sensor register.
pub const REG_LVT_THERMAL: u64 = 0x330;
/// LVT Performance Monitoring Counters register.
pub const REG_LVT_PMC: u64 = 0x340;
/// LVT LINT0 register.
pub const REG_LVT_LINT0: u64 = 0x350;
/// LVT LINT1 register.
pub const REG_LVT_LINT1: u64 = 0x360;
/// LVT Error register.
pub const REG_LVT_ERROR: u64 = 0x370;
/// Timer Initial Count register (11.5.4).
pub const REG_TIMER_INITIAL: u64 = 0x380;
/// Timer Current Count register (read-only).
pub const REG_TIMER_CURRENT: u64 = 0x390;
/// Timer Divide Configuration register (Figure 11-10).
pub const REG_TIMER_DIVIDE: u64 = 0x3e0;

/// The version in bits 7:0 of the Version register: an integrated (xAPIC) local APIC.
pub const APIC_VERSION: u8 = 0x14;
/// Number of LVT entries: CMCI, Timer, Thermal, Performance counters, LINT0, LINT1, Error.
pub const LVT_ENTRIES: usize = 7;
/// Version register bit 24: EOI-broadcast suppression (SVR bit 12) is supported.
pub const VERSION_SUPPRESS_EOI_BROADCAST: u32 = 1 << 24;
/// The Version register: version 0x14, Max LVT Entry 6 (bits 23:16), bit 24 set.
/// Disjoint fields, so `+`.
pub const LAPIC_VERSION: u32 = VERSION_SUPPRESS_EOI_BROADCAST + ((LVT_ENTRIES as u32 - 1) << 16) + APIC_VERSION as u32;

/// SVR bits 7:0: the spurious vector (stored only).
pub const SVR_VECTOR: u32 = 0xff;
/// SVR bit 8: APIC software enable.
pub const SVR_APIC_ENABLED: u32 = 1 << 8;
/// SVR bit 12: suppress the EOI broadcast for level-triggered interrupts (11.8.5).
pub const SVR_SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;
/// The SVR bits a write sets; bit 9 (focus processor checking, P6 only) and the rest are reserved.
const SVR_WRITABLE: u32 = SVR_VECTOR + SVR_APIC_ENABLED + SVR_SUPPRESS_EOI_BROADCAST;
/// SVR after reset (11.4.7.1): spurious vector 0xFF, software disabled.
pub const SVR_RESET: u32 = 0xff;

/// DFR bits 31:28: the model.
const DFR_MODEL_SHIFT: u32 = 28;
/// DFR bits 27:0 read as ones.
const DFR_RESERVED_ONES: u32 = 0x0fff_ffff;
/// DFR model 1111: flat.
pub const DFR_MODEL_FLAT: u8 = 0xf;
/// DFR model 0000: cluster.
pub const DFR_MODEL_CLUSTER: u8 = 0x0;

/// ESR bit 5: the APIC sent an IPI with a vector below 16.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: the APIC received (or raised locally) an interrupt with a vector below 16.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: an access to a reserved register offset.
pub const ESR_ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;

/// LVT bits 7:0: the vector.
pub const LVT_VECTOR: u32 = 0xff;
/// LVT bits 10:8: the delivery mode (CMCI, Thermal, Performance counters, LINT0, LINT1).
pub const LVT_DELIVERY_MODE: u32 = 0x700;
/// LVT bit 12: Delivery Status (read-only; always 0 here).
pub const LVT_DELIVERY_STATUS: u32 = 1 << 12;
/// LVT bit 13: input pin polarity (LINT0, LINT1; stored only).
pub const LVT_POLARITY_LOW: u32 = 1 << 13;
/// LVT bit 14: Remote IRR (LINT0, LINT1; read-only, always 0 here).
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
/// LVT bit 15: trigger mode, 1 = level (LINT0, LINT1).
pub const LVT_LEVEL: u32 = 1 << 15;
/// LVT bit 16: mask.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT Timer bit 17: periodic mode (bits 18:17 = 01).
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// LVT Timer bit 18: TSC-deadline mode; reserved here (not supported).
pub const LVT_TIMER_TSC_DEADLINE: u32 = 1 << 18;

/// ICR bits 7:0: the vector.
pub const ICR_VECTOR: u32 = 0xff;
/// ICR bits 10:8: the delivery mode.
pub const ICR_DELIVERY_MODE_SHIFT: u32 = 8;
/// ICR bit 11: destination mode, 1 = logical.
pub const ICR_DEST_LOGICAL: u32 = 1 << 11;
/// ICR bit 12: Delivery Status (read-only; always 0 here).
pub const ICR_DELIVERY_STATUS: u32 = 1 << 12;
/// ICR bit 14: level, 1 = assert (0 only for INIT level de-assert).
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// ICR bit 15: trigger mode, 1 = level.
pub const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
/// ICR bits 19:18: the destination shorthand.
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
/// The ICR low bits a write sets (bits 13, 16-17 and 20-31 are reserved).
/// (Disjoint fields throughout these masks: `+`.)
const ICR_LOW_WRITABLE: u32 = ICR_VECTOR + 0x700 + ICR_DEST_LOGICAL + ICR_LEVEL_ASSERT + ICR_TRIGGER_LEVEL + (3 << ICR_SHORTHAND_SHIFT);
/// ICR high bits 31:24: the destination; the rest is reserved.
const ICR_HIGH_WRITABLE: u32 = 0xff00_0000;

/// The divide configuration bits that exist: 3, 1 and 0 (Figure 11-10).
const DIVIDE_WRITABLE: u32 = 0b1011;

/// Delivery mode 110: STARTUP (ICR only). The other modes are the I/O APIC's constants.
pub const DELIVERY_STARTUP: u8 = 6;
/// The destination that addresses every local APIC (11.6.2.1, 11.6.2.2).
pub const BROADCAST: u8 = 0xff;
/// How many IPIs wait in the queue at most; later ones are dropped and counted.
pub const MAX_QUEUED_IPIS: usize = 256;

const NS_PER_SECOND: u128 = 1_000_000_000;

// Indices into `Lapic::lvt`.
const LVT_TIMER: usize = 1;
const LVT_LINT0: usize = 4;
const LVT_ERROR: usize = 6;
/// Offsets of the LVT entries, in index order.
const LVT_OFFSETS: [u64; LVT_ENTRIES] =
    [REG_LVT_CMCI, REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PMC, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR];
/// The bits of each LVT entry a write sets (Figure 11-8), in index order.
const LVT_WRITABLE: [u32; LVT_ENTRIES] = {
    const WITH_MODE: u32 = LVT_VECTOR + LVT_DELIVERY_MODE + LVT_MASKED;
    const LINT: u32 = WITH_MODE + LVT_POLARITY_LOW + LVT_LEVEL;
    [
        WITH_MODE,
        LVT_VECTOR + LVT_MASKED + LVT_TIMER_PERIODIC,
        WITH_MODE,
        WITH_MODE,
        LINT,
        LINT,
        LVT_VECTOR + LVT_MASKED,
    ]
};

/// The caller's monotonic clock in ns, read once per bus access (see "Time").
pub type Clock = fn() -> u64;

/// The clock of [`Lapic::new`]: always 0, so bus accesses use the latest time seen.
fn stopped_clock() -> u64 {
    0
}

/// ICR bits 19:18 (11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// 00: the destination field says who.
    None,
    /// 01: the sending APIC only (handled by the model, never queued).
    SelfOnly,
    /// 10: every APIC, the sender included.
    AllIncludingSelf,
    /// 11: every APIC but the sender.
    AllExcludingSelf,
}

impl Shorthand {
    fn from_bits(bits: u32) -> Shorthand {
        match bits & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        }
    }
}

/// An interprocessor interrupt the guest sent by writing ICR low, fields as written (11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    /// ICR bits 7:0.
    pub vector: u8,
    /// ICR bits 10:8: one of the `DELIVERY_*` values (3 and 7 are reserved, passed on as they are).
    pub delivery_mode: u8,
    /// ICR bit 11: logical destination mode.
    pub dest_mode_logical: bool,
    /// ICR bit 14: assert (false only for an INIT level de-assert).
    pub level: bool,
    /// ICR bit 15: level-triggered as written (an xAPIC issues every IPI edge-triggered).
    pub trigger_level: bool,
    /// ICR bits 63:56 (used only without a shorthand).
    pub dest: u8,
    /// ICR bits 19:18.
    pub shorthand: Shorthand,
}

/// A register, decoded from its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Id,
    Version,
    Tpr,
    Apr,
    Ppr,
    Eoi,
    Rrd,
    Ldr,
    Dfr,
    Svr,
    Isr(usize),
    Tmr(usize),
    Irr(usize),
    Esr,
    Lvt(usize),
    IcrLow,
    IcrHigh,
    InitialCount,
    CurrentCount,
    DivideConfig,
}

/// The register at `offset`, or `None` for a reserved (or misaligned, or out-of-page) offset.
fn decode(offset: u64) -> Option<Reg> {
    if offset & 0xf != 0 {
        return None;
    }
    let index = |base: u64| ((offset - base) >> 4) as usize;
    Some(match offset {
        REG_ID => Reg::Id,
        REG_VERSION => Reg::Version,
        REG_TPR => Reg::Tpr,
        REG_APR => Reg::Apr,
        REG_PPR => Reg::Ppr,
        REG_EOI => Reg::Eoi,
        REG_RRD => Reg::Rrd,
        REG_LDR => Reg::Ldr,
        REG_DFR => Reg::Dfr,
        REG_SVR => Reg::Svr,
        0x100..=0x170 => Reg::Isr(index(REG_ISR)),
        0x180..=0x1f0 => Reg::Tmr(index(REG_TMR)),
        0x200..=0x270 => Reg::Irr(index(REG_IRR)),
        REG_ESR => Reg::Esr,
        REG_ICR_LOW => Reg::IcrLow,
        REG_ICR_HIGH => Reg::IcrHigh,
        REG_TIMER_INITIAL => Reg::InitialCount,
        REG_TIMER_CURRENT => Reg::CurrentCount,
        REG_TIMER_DIVIDE => Reg::DivideConfig,
        _ => return LVT_OFFSETS.iter().position(|&o| o == offset).map(Reg::Lvt),
    })
}

/// The divisor a divide configuration selects (Figure 11-10): bits 3,1,0 = 111 is ÷1, and
/// `n` = 000..110 is ÷2^(n+1). Bit 2 and bits 31:4 are ignored.
pub fn timer_divisor(config: u32) -> u32 {
    // Bits 1:0 and bit 3 (moved to bit 2): disjoint, so `+`.
    let code = (config & 3) + ((config >> 1) & 4);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

/// The highest vector whose bit is set in a 256-bit register (ISR, TMR or IRR).
fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| bits[i] != 0).map(|i| (i * 32 + 31 - bits[i].leading_zeros() as usize) as u8)
}

fn test_bit(bits: &[u32; 8], vector: u8) -> bool {
    bits[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

fn set_bit(bits: &mut [u32; 8], vector: u8, value: bool) {
    let word = &mut bits[usize::from(vector >> 5)];
    if value {
        *word |= 1 << (vector & 31);
    } else {
        *word &= !(1 << (vector & 31));
    }
}

/// A running timer: the countdown began at `base_ns`, and `next` is the tick (counted from
/// `base_ns`) of the first expiry not yet delivered. Periodic expiries follow every
/// initial-count ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Countdown {
    base_ns: u64,
    next: u64,
}

/// One local APIC. See the module documentation for the rules it follows.
#[derive(Debug, Clone)]
pub struct Lapic {
    /// ID register bits 31:24.
    id: u8,
    tpr: u8,
    /// LDR bits 31:24.
    ldr: u8,
    /// DFR bits 31:28.
    dfr_model: u8,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// The ESR as read: latched by the last ESR write.
    esr: u32,
    /// Errors collected since the last ESR write.
    esr_collected: u32,
    lvt: [u32; LVT_ENTRIES],
    icr_low: u32,
    icr_high: u32,
    initial_count: u32,
    /// Divide configuration bits 3, 1, 0.
    divide: u32,
    /// `None` when stopped: never started, initial count 0, one-shot expired, or disarmed.
    timer: Option<Countdown>,
    /// The bus clock the timer divides, Hz (at least 1).
    bus_hz: u64,
    /// The latest time seen: time never runs backwards for the model.
    now_seen: u64,
    /// Levels of LINT0 and LINT1.
    lint: [bool; 2],
    /// An NMI from a LINT pin or a self IPI, not yet taken.
    nmi: bool,
    /// IPIs sent and not yet taken, oldest first.
    ipis: VecDeque<Ipi>,
    dropped_ipis: u64,
    /// Vectors whose EOI, written by the guest, must be broadcast to the I/O APICs.
    eoi_broadcasts: [u32; 8],
    clock: Clock,
}

impl Lapic {
    /// The APIC after reset (11.4.7.1) with ID `apic_id`, its timer counting a bus clock of
    /// `bus_hz` (0 is taken as 1 Hz). Bus accesses use the latest time given to a method; see
    /// [`Lapic::with_clock`].
    pub fn new(apic_id: u8, bus_hz: u64) -> Self {
        Lapic {
            id: apic_id,
            tpr: 0,
            ldr: 0,
            dfr_model: DFR_MODEL_FLAT,
            svr: SVR_RESET,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_collected: 0,
            lvt: [LVT_MASKED; LVT_ENTRIES],
            icr_low: 0,
            icr_high: 0,
            initial_count: 0,
            divide: 0,
            timer: None,
            bus_hz: bus_hz.max(1),
            now_seen: 0,
            lint: [false; 2],
            nmi: false,
            ipis: VecDeque::new(),
            dropped_ipis: 0,
            eoi_broadcasts: [0; 8],
            clock: stopped_clock,
        }
    }

    /// Like [`Lapic::new`], with bus accesses taking their time from `clock`.
    pub fn with_clock(apic_id: u8, bus_hz: u64, clock: Clock) -> Self {
        Lapic { clock, ..Lapic::new(apic_id, bus_hz) }
    }

    /// The ID register's APIC ID (bits 31:24).
    pub fn apic_id(&self) -> u8 {
        self.id
    }

    /// SVR bit 8: the APIC is software enabled.
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_APIC_ENABLED != 0
    }

    /// What an interrupt waits on, for a report: `SVR 0x1ff TPR 0x00 PPR 0x00 IRR 0x2f ISR -
    /// timer LVT 0x1002f count 0` (the IRR and ISR as their vectors, highest first).
    pub fn summary(&self, now_ns: u64) -> alloc::string::String {
        use core::fmt::Write;
        let vectors = |bits: &[u32; 8]| {
            let mut s = alloc::string::String::new();
            for v in (0..=255u8).rev().filter(|&v| test_bit(bits, v)) {
                let _ = write!(s, "{}{v:#x}", if s.is_empty() { "" } else { "," });
            }
            if s.is_empty() {
                s.push('-');
            }
            s
        };
        alloc::format!(
            "SVR {:#x} TPR {:#04x} PPR {:#04x} IRR {} ISR {} timer LVT {:#x} count {}",
            self.svr,
            self.tpr,
            self.ppr(),
            vectors(&self.irr),
            vectors(&self.isr),
            self.lvt[LVT_TIMER],
            self.current_count(now_ns)
        )
    }

    /// The TPR (what CR8 reads, shifted: CR8[3:0] = TPR[7:4], 11.8.6).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the TPR (a MOV to CR8 writes `cr8 << 4`, 11.8.6).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// The PPR (11.8.3.1): the TPR if its class is at least that of the highest vector in
    /// service, otherwise that vector's class with bits 3:0 clear.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// Reads the register at `offset` (a Table 11-1 offset) at `now_ns`, as a 4-byte load
    /// would. A reserved offset reads 0 and sets ESR bit 7.
    pub fn read_register(&mut self, offset: u64, now_ns: u64) -> u32 {
        let now = self.time(now_ns);
        match decode(offset) {
            Some(reg) => self.value(reg, now),
            None => {
                self.set_error(ESR_ILLEGAL_REGISTER_ADDRESS);
                0
            }
        }
    }

    /// Writes `value` to the register at `offset` at `now_ns`, as a 4-byte store would.
    /// Read-only registers ignore it; a reserved offset sets ESR bit 7.
    pub fn write_register(&mut self, offset: u64, value: u32, now_ns: u64) {
        let now = self.time(now_ns);
        match decode(offset) {
            Some(reg) => self.store(reg, value, now),
            None => self.set_error(ESR_ILLEGAL_REGISTER_ADDRESS),
        }
    }

    /// Accepts a fixed or lowest-priority interrupt: sets the vector's IRR bit, and its TMR bit
    /// if `level` (trigger mode) is set, clearing it otherwise (11.8.4). Returns whether the
    /// vector is now in the IRR. A vector below 16 sets ESR bit 6 instead (11.5.2); a
    /// software-disabled APIC accepts nothing (11.4.7.2).
    pub fn accept(&mut self, vector: u8, level: bool) -> bool {
        if !self.software_enabled() {
            return false;
        }
        if vector < MIN_VECTOR {
            self.set_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level);
        true
    }

    /// The vector the APIC would deliver to the CPU now: the highest one in the IRR, if its
    /// priority class is above the PPR's (11.8.3.1, 11.8.4).
    pub fn pending_vector(&self) -> Option<u8> {
        let vector = highest(&self.irr)?;
        (vector >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The CPU takes the pending vector: it moves from the IRR to the ISR and is returned, to
    /// be injected. `None` if nothing is deliverable.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.pending_vector()?;
        set_bit(&mut self.irr, vector, false);
        set_bit(&mut self.isr, vector, true);
        Some(vector)
    }

    /// End of interrupt (11.8.5): clears the highest ISR bit. Returns its vector if the EOI
    /// must be broadcast to the I/O APICs: the interrupt was level-triggered (TMR) and SVR bit
    /// 12 does not suppress the broadcast.
    pub fn eoi(&mut self) -> Option<u8> {
        let vector = highest(&self.isr)?;
        set_bit(&mut self.isr, vector, false);
        let broadcast = test_bit(&self.tmr, vector) && self.svr & SVR_SUPPRESS_EOI_BROADCAST == 0;
        broadcast.then_some(vector)
    }

    /// The vectors whose EOI the guest wrote to the EOI register and that must be broadcast
    /// to the I/O APICs (what [`Lapic::eoi`] would have returned), each once, lowest first.
    /// Taken all at once, so a caller's drain is bounded by construction.
    pub fn take_eoi_broadcasts(&mut self) -> impl Iterator<Item = u8> {
        let bits = core::mem::take(&mut self.eoi_broadcasts);
        (0..=255u8).filter(move |&v| test_bit(&bits, v))
    }

    /// Whether this APIC is a target of a message to `dest` in logical (`logical`) or physical
    /// destination mode (11.6.2): 0xFF is everyone; physical compares the ID; logical uses
    /// LDR and the DFR model (flat: any common bit; cluster: same high nibble and a common bit
    /// in the low one).
    pub fn matches_destination(&self, dest: u8, logical: bool) -> bool {
        if dest == BROADCAST {
            return true;
        }
        if !logical {
            return dest == self.id;
        }
        match self.dfr_model {
            DFR_MODEL_FLAT => dest & self.ldr != 0,
            DFR_MODEL_CLUSTER => dest >> 4 == self.ldr >> 4 && dest & self.ldr & 0xf != 0,
            _ => false,
        }
    }

    /// Delivers the timer expiries due by `now_ns` (several periodic ones fold into one
    /// interrupt). Returns whether the timer vector went into the IRR.
    pub fn advance(&mut self, now_ns: u64) -> bool {
        self.now_seen = self.now_seen.max(now_ns);
        self.settle(self.now_seen)
    }

    /// The instant (ns) of the next timer expiry that will raise an interrupt, never earlier
    /// than `now_ns` (equal to it when one is due: call [`Lapic::advance`]). `None` when the
    /// timer is stopped, its LVT entry masked, or the instant beyond `u64::MAX` ns.
    pub fn next_deadline(&self, now_ns: u64) -> Option<u64> {
        let countdown = self.timer?;
        if self.lvt[LVT_TIMER] & LVT_MASKED != 0 {
            return None;
        }
        let deadline = self.tick_instant(countdown.base_ns, countdown.next)?;
        Some(deadline.max(now_ns.max(self.now_seen)))
    }

    /// The timer's current count at `now_ns` (what register 0x390 reads).
    pub fn current_count(&self, now_ns: u64) -> u32 {
        let Some(countdown) = self.timer else {
            return 0;
        };
        let ticks = self.ticks(countdown.base_ns, now_ns.max(self.now_seen));
        if ticks < countdown.next {
            // Never more than the initial count (a restart or rebase starts at most there).
            return u32::try_from(countdown.next - ticks).unwrap_or(u32::MAX);
        }
        if self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC == 0 {
            return 0;
        }
        let period = u64::from(self.initial_count);
        (period - (ticks - countdown.next) % period) as u32
    }

    /// All IPIs sent since the last call, oldest first.
    pub fn take_ipis(&mut self) -> Vec<Ipi> {
        self.ipis.drain(..).collect()
    }

    /// The oldest IPI not yet taken.
    pub fn pop_ipi(&mut self) -> Option<Ipi> {
        self.ipis.pop_front()
    }

    /// Whether any vector waits in the IRR (deliverable now or not).
    pub fn irr_pending(&self) -> bool {
        self.irr.iter().any(|&w| w != 0)
    }

    /// The highest vector in service (ISRV, 11.8.3.1), if any.
    pub fn in_service(&self) -> Option<u8> {
        highest(&self.isr)
    }

    /// Whether `vector` was accepted level-triggered (its TMR bit, 11.8.4).
    pub fn level_triggered(&self, vector: u8) -> bool {
        test_bit(&self.tmr, vector)
    }

    /// Whether an IPI waits in the queue.
    pub fn has_ipis(&self) -> bool {
        !self.ipis.is_empty()
    }

    /// How many IPIs were dropped because the queue held [`MAX_QUEUED_IPIS`].
    pub fn dropped_ipis(&self) -> u64 {
        self.dropped_ipis
    }

    /// Drives LINT0 (`pin` 0) or LINT1 (`pin` 1) to `level` (asserted, polarity applied).
    /// Other pins are ignored. See "LINT0, LINT1" in the module docs.
    pub fn set_lint(&mut self, pin: u8, level: bool) {
        let Some(was) = self.lint.get_mut(usize::from(pin)) else {
            return;
        };
        let rising = level && !*was;
        *was = level;
        let lvt = self.lvt[LVT_LINT0 + usize::from(pin)];
        if !rising || lvt & LVT_MASKED != 0 {
            return;
        }
        match ((lvt & LVT_DELIVERY_MODE) >> 8) as u8 {
            DELIVERY_FIXED => {
                self.accept(lvt as u8, pin == 0 && lvt & LVT_LEVEL != 0);
            }
            DELIVERY_NMI => self.nmi = true,
            _ => {}
        }
    }

    /// Whether LINT0 is unmasked in ExtINT mode: the PIC's INTR reaches this CPU.
    pub fn lint0_extint_enabled(&self) -> bool {
        let lvt = self.lvt[LVT_LINT0];
        lvt & LVT_MASKED == 0 && ((lvt & LVT_DELIVERY_MODE) >> 8) as u8 == DELIVERY_EXTINT
    }

    /// Whether an NMI arrived (LINT pin in NMI mode, or a self NMI) since the last call.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// `now_ns`, or the latest time already seen if it is earlier; remembered. Delivers the
    /// timer expiries due by then, so nothing that follows can lose or double one.
    fn time(&mut self, now_ns: u64) -> u64 {
        self.advance(now_ns);
        self.now_seen
    }

    /// Whole timer ticks in `[from, to)` ns at the current divisor, saturating.
    fn ticks(&self, from: u64, to: u64) -> u64 {
        let span = u128::from(to.saturating_sub(from));
        let per = NS_PER_SECOND * u128::from(timer_divisor(self.divide));
        u64::try_from(span * u128::from(self.bus_hz) / per).unwrap_or(u64::MAX)
    }

    /// The instant at which tick `tick` after `from` happens, if it fits in a `u64`.
    fn tick_instant(&self, from: u64, tick: u64) -> Option<u64> {
        let ns = (u128::from(tick) * NS_PER_SECOND * u128::from(timer_divisor(self.divide))).div_ceil(u128::from(self.bus_hz));
        u64::try_from(u128::from(from) + ns).ok()
    }

    /// Delivers the timer expiries due at `now`; returns whether the vector went into the IRR.
    fn settle(&mut self, now: u64) -> bool {
        let Some(mut countdown) = self.timer else {
            return false;
        };
        let ticks = self.ticks(countdown.base_ns, now);
        if ticks < countdown.next {
            return false;
        }
        let lvt = self.lvt[LVT_TIMER];
        self.timer = if lvt & LVT_TIMER_PERIODIC != 0 {
            // Every expiry up to `ticks` folds into this one; the next is the first after it.
            let period = u64::from(self.initial_count);
            let missed = (ticks - countdown.next) / period + 1;
            missed.checked_mul(period).and_then(|n| countdown.next.checked_add(n)).map(|next| {
                countdown.next = next;
                countdown
            })
        } else {
            None
        };
        lvt & LVT_MASKED == 0 && self.accept(lvt as u8, false)
    }

    /// Collects `bits` in the error register; a newly collected error raises the LVT Error
    /// interrupt if it is unmasked (11.5.3).
    fn set_error(&mut self, bits: u32) {
        let new = bits & !self.esr_collected;
        self.esr_collected |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if new != 0 && lvt & LVT_MASKED == 0 {
            // An illegal vector here comes back as bit 6, which is then no longer new.
            self.accept(lvt as u8, false);
        }
    }

    /// The value of register `reg` at `now`.
    fn value(&self, reg: Reg, now: u64) -> u32 {
        match reg {
            Reg::Id => u32::from(self.id) << 24,
            Reg::Version => LAPIC_VERSION,
            Reg::Tpr => u32::from(self.tpr),
            Reg::Ppr => u32::from(self.ppr()),
            Reg::Apr | Reg::Eoi | Reg::Rrd => 0,
            Reg::Ldr => u32::from(self.ldr) << 24,
            // The model in bits 31:28, ones below: disjoint, so `+`.
            Reg::Dfr => (u32::from(self.dfr_model) << DFR_MODEL_SHIFT) + DFR_RESERVED_ONES,
            Reg::Svr => self.svr,
            Reg::Isr(i) => self.isr[i],
            Reg::Tmr(i) => self.tmr[i],
            Reg::Irr(i) => self.irr[i],
            Reg::Esr => self.esr,
            Reg::Lvt(i) => self.lvt[i],
            Reg::IcrLow => self.icr_low,
            Reg::IcrHigh => self.icr_high,
            Reg::InitialCount => self.initial_count,
            Reg::CurrentCount => self.current_count(now),
            Reg::DivideConfig => self.divide,
        }
    }

    /// A 4-byte store of `value` to register `reg` at `now` (expiries up to `now` delivered).
    fn store(&mut self, reg: Reg, value: u32, now: u64) {
        match reg {
            Reg::Id => self.id = (value >> 24) as u8,
            Reg::Tpr => self.tpr = value as u8,
            Reg::Eoi => {
                if let Some(vector) = self.eoi() {
                    set_bit(&mut self.eoi_broadcasts, vector, true);
                }
            }
            Reg::Ldr => self.ldr = (value >> 24) as u8,
            Reg::Dfr => self.dfr_model = (value >> DFR_MODEL_SHIFT) as u8,
            Reg::Svr => {
                self.svr = value & SVR_WRITABLE;
                if !self.software_enabled() {
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            Reg::Esr => self.esr = core::mem::take(&mut self.esr_collected),
            Reg::Lvt(i) => {
                let mut lvt = value & LVT_WRITABLE[i];
                if !self.software_enabled() {
                    lvt |= LVT_MASKED;
                }
                if i == LVT_TIMER && (lvt ^ self.lvt[i]) & LVT_TIMER_PERIODIC != 0 {
                    // 11.5.4.1: a write that changes the timer mode disarms the timer.
                    self.timer = None;
                }
                self.lvt[i] = lvt;
            }
            Reg::IcrLow => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                self.send_ipi();
            }
            Reg::IcrHigh => self.icr_high = value & ICR_HIGH_WRITABLE,
            Reg::InitialCount => {
                self.initial_count = value;
                self.timer = (value != 0).then_some(Countdown { base_ns: now, next: u64::from(value) });
            }
            Reg::DivideConfig => {
                let divide = value & DIVIDE_WRITABLE;
                let changed = timer_divisor(divide) != timer_divisor(self.divide);
                let remaining = self.current_count(now);
                self.divide = divide;
                if let (true, Some(countdown)) = (changed, &mut self.timer) {
                    // The count carries on from its current value at the new rate.
                    *countdown = Countdown { base_ns: now, next: u64::from(remaining) };
                }
            }
            Reg::Version | Reg::Apr | Reg::Ppr | Reg::Rrd | Reg::Isr(_) | Reg::Tmr(_) | Reg::Irr(_) | Reg::CurrentCount => {}
        }
    }

    /// Sends the IPI ICR describes (see "IPIs" in the module docs).
    fn send_ipi(&mut self) {
        let low = self.icr_low;
        let ipi = Ipi {
            vector: (low & ICR_VECTOR) as u8,
            delivery_mode: ((low >> ICR_DELIVERY_MODE_SHIFT) & 7) as u8,
            dest_mode_logical: low & ICR_DEST_LOGICAL != 0,
            level: low & ICR_LEVEL_ASSERT != 0,
            trigger_level: low & ICR_TRIGGER_LEVEL != 0,
            dest: (self.icr_high >> 24) as u8,
            shorthand: Shorthand::from_bits(low >> ICR_SHORTHAND_SHIFT),
        };
        let uses_vector = matches!(ipi.delivery_mode, DELIVERY_FIXED | DELIVERY_LOWEST_PRIORITY);
        if uses_vector && ipi.vector < MIN_VECTOR {
            self.set_error(ESR_SEND_ILLEGAL_VECTOR);
        }
        if ipi.shorthand == Shorthand::SelfOnly {
            // Table 11-3: self IPIs are edge-triggered; invalid modes other than these are dropped.
            match ipi.delivery_mode {
                DELIVERY_FIXED | DELIVERY_LOWEST_PRIORITY => {
                    self.accept(ipi.vector, false);
                }
                DELIVERY_NMI => self.nmi = true,
                _ => {}
            }
        } else if self.ipis.len() < MAX_QUEUED_IPIS {
            self.ipis.push_back(ipi);
        } else {
            self.dropped_ipis += 1;
        }
    }
}

/// The byte at page offset `offset + k`, if it is inside the page.
fn page_byte(offset: u64, k: usize) -> Option<u64> {
    offset.checked_add(k as u64).filter(|&at| at < LAPIC_MMIO_LEN)
}

impl BusDevice for Lapic {
    /// Byte `k` is byte `(offset + k) & 3` of the register whose slot holds it, 0 for bytes
    /// 4-15 of a slot, reserved slots and bytes past the page (see "Access sizes").
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.time((self.clock)());
        let mut illegal = false;
        for (k, byte) in data.iter_mut().enumerate() {
            *byte = 0;
            let Some(at) = page_byte(offset, k) else { continue };
            match decode(at & !0xf) {
                Some(reg) if at & 0xf < 4 => *byte = (self.value(reg, now) >> (8 * (at & 3))) as u8,
                Some(_) => {}
                None => illegal = true,
            }
        }
        if illegal {
            self.set_error(ESR_ILLEGAL_REGISTER_ADDRESS);
        }
    }

    /// Only a 4-byte store at a 16-byte-aligned offset writes a register; every access that
    /// touches a reserved slot sets ESR bit 7 (see "Access sizes").
    fn write(&mut self, offset: u64, data: &[u8]) -> IoOutcome {
        let now = self.time((self.clock)());
        if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset & 0xf) {
            if offset < LAPIC_MMIO_LEN {
                self.write_register(offset, u32::from_le_bytes(bytes), now);
            }
            return IoOutcome::Done;
        }
        let illegal = (0..data.len()).filter_map(|k| page_byte(offset, k)).any(|at| decode(at & !0xf).is_none());
        if illegal {
            self.set_error(ESR_ILLEGAL_REGISTER_ADDRESS);
        }
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::{handle, Bus, Space};
    use alloc::sync::Arc;
    use alloc::vec;
    use core::cell::Cell;
    use spin::Mutex;

    /// A bus clock of 1 GHz: one tick per ns at ÷1.
    const GHZ: u64 = 1_000_000_000;
    /// A start time away from 0.
    const T0: u64 = 1_000_000;
    /// Divide configuration ÷1 (Figure 11-10: 1011).
    const DIV1: u32 = 0b1011;
    const MASKED: u32 = LVT_MASKED;
    const PERIODIC: u32 = LVT_TIMER_PERIODIC;
    /// SVR with the APIC software enabled and spurious vector 0xFF.
    const ENABLE: u32 = SVR_APIC_ENABLED | 0xff;

    std::thread_local! {
        /// The time the test clock reports, per test thread.
        static NOW: Cell<u64> = const { Cell::new(0) };
    }

    fn test_clock() -> u64 {
        NOW.with(Cell::get)
    }

    fn set_now(t: u64) {
        NOW.with(|n| n.set(t));
    }

    /// A 4-byte store, as the guest's MOV does it.
    fn wr(a: &mut Lapic, offset: u64, value: u32) {
        assert_eq!(a.write(offset, &value.to_le_bytes()), IoOutcome::Done);
    }

    /// A 4-byte load.
    fn rd(a: &mut Lapic, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        a.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn read_bytes(a: &mut Lapic, offset: u64, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        a.read(offset, &mut d);
        d
    }

    /// What a guest reads from the ESR: write, then read (11.5.3).
    fn esr(a: &mut Lapic) -> u32 {
        wr(a, REG_ESR, 0);
        rd(a, REG_ESR)
    }

    /// An APIC after reset, software enabled.
    fn enabled() -> Lapic {
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_SVR, ENABLE);
        a
    }

    /// An enabled APIC whose timer counts ÷1 at 1 GHz with LVT Timer `lvt`, started with
    /// `initial` at T0.
    fn timer(lvt: u32, initial: u32) -> Lapic {
        let mut a = enabled();
        a.write_register(REG_TIMER_DIVIDE, DIV1, T0);
        a.write_register(REG_LVT_TIMER, lvt, T0);
        a.write_register(REG_TIMER_INITIAL, initial, T0);
        a
    }

    fn in_irr(a: &Lapic, vector: u8) -> bool {
        test_bit(&a.irr, vector)
    }

    fn in_isr(a: &Lapic, vector: u8) -> bool {
        test_bit(&a.isr, vector)
    }

    /// Every register of Table 11-1 as read at `now` (reads of defined registers change nothing).
    fn dump(a: &mut Lapic, now: u64) -> Vec<u32> {
        (0..0x400).step_by(16).filter(|&o| decode(o).is_some()).map(|o| a.read_register(o, now)).collect()
    }

    fn fixed_ipi(vector: u8, dest: u8) -> Ipi {
        Ipi {
            vector,
            delivery_mode: DELIVERY_FIXED,
            dest_mode_logical: false,
            level: true,
            trigger_level: false,
            dest,
            shorthand: Shorthand::None,
        }
    }

    /// ICR low for a shorthand (bits 19:18).
    fn shorthand(bits: u32) -> u32 {
        bits << ICR_SHORTHAND_SHIFT
    }

    #[test]
    fn reset_state_follows_11_4_7_1() {
        // 11.4.7.1: IRR, ISR, TMR, ICR, LDR, TPR, timer counts and divide are 0; DFR all ones;
        // LVTs 0 but for the mask bits; SVR 0xFF. The ID is the one given.
        let mut a = Lapic::new(3, GHZ);
        assert_eq!(rd(&mut a, REG_ID), 0x0300_0000);
        assert_eq!(a.apic_id(), 3);
        assert_eq!(rd(&mut a, REG_VERSION), LAPIC_VERSION);
        for reg in [REG_TPR, REG_APR, REG_PPR, REG_EOI, REG_RRD, REG_LDR, REG_ESR, REG_ICR_LOW, REG_ICR_HIGH] {
            assert_eq!(rd(&mut a, reg), 0, "{reg:#x}");
        }
        for reg in [REG_TIMER_INITIAL, REG_TIMER_CURRENT, REG_TIMER_DIVIDE] {
            assert_eq!(rd(&mut a, reg), 0, "{reg:#x}");
        }
        assert_eq!(rd(&mut a, REG_DFR), 0xffff_ffff);
        assert_eq!(rd(&mut a, REG_SVR), 0xff);
        assert!(!a.software_enabled());
        for n in 0..8 {
            for base in [REG_ISR, REG_TMR, REG_IRR] {
                assert_eq!(rd(&mut a, base + 16 * n), 0);
            }
        }
        for reg in LVT_OFFSETS {
            assert_eq!(rd(&mut a, reg), 0x0001_0000, "LVT {reg:#x}");
        }
        assert_eq!(esr(&mut a), 0, "reading registers raised no error");
        assert_eq!((a.pending_vector(), a.acknowledge(), a.eoi()), (None, None, None));
        assert_eq!((a.next_deadline(T0), a.current_count(T0)), (None, 0));
        assert!(!a.has_ipis() && a.pop_ipi().is_none() && a.take_ipis().is_empty());
        assert_eq!((a.dropped_ipis(), a.take_eoi_broadcasts().count()), (0, 0));
        assert!(!a.take_nmi());
        assert!(!a.lint0_extint_enabled());
        assert_eq!((a.tpr(), a.ppr()), (0, 0));
    }

    #[test]
    fn bit_constants_are_the_sdm_bit_positions() {
        // The router uses these: Figure 11-8 (LVT), 11-9 (ESR), 11-12 (ICR), 11-23 (SVR).
        assert_eq!((ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER_ADDRESS), (0x20, 0x40, 0x80));
        assert_eq!((LVT_VECTOR, LVT_DELIVERY_MODE, LVT_DELIVERY_STATUS, LVT_POLARITY_LOW), (0xff, 0x700, 0x1000, 0x2000));
        assert_eq!((LVT_REMOTE_IRR, LVT_LEVEL, LVT_MASKED), (0x4000, 0x8000, 0x1_0000));
        assert_eq!((LVT_TIMER_PERIODIC, LVT_TIMER_TSC_DEADLINE), (0x2_0000, 0x4_0000));
        assert_eq!((ICR_VECTOR, ICR_DELIVERY_MODE_SHIFT, ICR_DEST_LOGICAL, ICR_DELIVERY_STATUS), (0xff, 8, 0x800, 0x1000));
        assert_eq!((ICR_LEVEL_ASSERT, ICR_TRIGGER_LEVEL, ICR_SHORTHAND_SHIFT), (0x4000, 0x8000, 18));
        assert_eq!((SVR_VECTOR, SVR_APIC_ENABLED, SVR_SUPPRESS_EOI_BROADCAST, SVR_RESET), (0xff, 0x100, 0x1000, 0xff));
        assert_eq!((VERSION_SUPPRESS_EOI_BROADCAST, APIC_VERSION, DELIVERY_STARTUP, BROADCAST), (1 << 24, 0x14, 6, 0xff));
        assert_eq!((DFR_MODEL_FLAT, DFR_MODEL_CLUSTER), (0xf, 0));
    }

    #[test]
    fn version_register_is_read_only_0x01060014() {
        // 11.4.8: version 0x14 (bits 7:0), Max LVT Entry 6 = seven LVTs incl. CMCI (23:16),
        // EOI-broadcast suppression supported (bit 24).
        assert_eq!(LAPIC_VERSION, 0x0106_0014);
        assert_eq!(((LAPIC_VERSION >> 16) & 0xff) as usize + 1, LVT_OFFSETS.len());
        let mut a = enabled();
        wr(&mut a, REG_VERSION, 0);
        assert_eq!(rd(&mut a, REG_VERSION), 0x0106_0014);
        assert_eq!(esr(&mut a), 0, "a read-only register is not an illegal address");
    }

    #[test]
    fn id_register_holds_bits_31_24() {
        // 11.4.6, Figure 11-6: the xAPIC ID is bits 31:24; the rest is reserved.
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_ID, 0xabcd_ef12);
        assert_eq!(rd(&mut a, REG_ID), 0xab00_0000);
        assert_eq!(a.apic_id(), 0xab);
        assert!(a.matches_destination(0xab, false), "the new ID is the physical destination");
    }

    /// The report of a stuck vCPU names what holds an interrupt back: the IRR and ISR as
    /// vectors (highest first), TPR and PPR (11.8.3.1: PPR is the in-service vector's class
    /// when that is above the TPR's), and the timer's LVT and current count.
    #[test]
    fn the_summary_shows_pending_and_in_service_vectors_and_the_timer() {
        let mut a = timer(0x2f, 1000);
        assert_eq!(a.summary(T0), "SVR 0x1ff TPR 0x00 PPR 0x00 IRR - ISR - timer LVT 0x2f count 1000");
        a.accept(0x41, false);
        a.accept(0x30, false);
        assert_eq!(a.acknowledge(), Some(0x41));
        a.set_tpr(0x20);
        assert_eq!(a.summary(T0 + 400), "SVR 0x1ff TPR 0x20 PPR 0x40 IRR 0x30 ISR 0x41 timer LVT 0x2f count 600");
        a.accept(0x31, false);
        assert!(a.summary(T0).contains("IRR 0x31,0x30 "), "{}", a.summary(T0));
    }

    #[test]
    fn tpr_holds_bits_7_0() {
        // Figure 11-18: TPR bits 7:0; 31:8 reserved.
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_TPR, 0xffff_ff5a);
        assert_eq!(rd(&mut a, REG_TPR), 0x5a);
        assert_eq!(a.tpr(), 0x5a);
        a.set_tpr(0x20);
        assert_eq!(rd(&mut a, REG_TPR), 0x20);
    }

    #[test]
    fn ldr_holds_bits_31_24_and_dfr_bits_27_0_read_as_ones() {
        // Figures 11-13 and 11-14.
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_LDR, 0xffff_ffff);
        assert_eq!(rd(&mut a, REG_LDR), 0xff00_0000);
        wr(&mut a, REG_DFR, 0);
        assert_eq!(rd(&mut a, REG_DFR), 0x0fff_ffff);
        wr(&mut a, REG_DFR, 0x5000_0000);
        assert_eq!(rd(&mut a, REG_DFR), 0x5fff_ffff);
    }

    #[test]
    fn svr_keeps_vector_enable_and_suppress_bits_only() {
        // 11.9, Figure 11-23: bits 7:0, 8 and 12 (advertised in Version bit 24); bit 9 (focus
        // checking) and the rest reserved.
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_SVR, 0xffff_ffff);
        assert_eq!(rd(&mut a, REG_SVR), 0x11ff);
        assert!(a.software_enabled());
        wr(&mut a, REG_SVR, 0x0000_0e00);
        assert_eq!(rd(&mut a, REG_SVR), 0);
        assert!(!a.software_enabled());
    }

    #[test]
    fn read_only_registers_ignore_writes_without_an_error() {
        // Table 11-1: Version, APR, PPR, RRD, ISR, TMR, IRR and current count are read-only.
        let mut a = timer(0x40, 1000);
        a.accept(0x41, true);
        a.accept(0x90, false);
        a.acknowledge();
        a.set_tpr(0x20);
        let before = dump(&mut a, T0 + 10);
        for offset in [REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TIMER_CURRENT].into_iter().chain((0x100..0x280).step_by(16)) {
            a.write_register(offset, 0xffff_ffff, T0 + 10);
            a.write_register(offset, 0, T0 + 10);
        }
        assert_eq!(dump(&mut a, T0 + 10), before);
        assert_eq!(esr(&mut a), 0);
    }

    #[test]
    fn reserved_offsets_read_0_and_set_illegal_register_address() {
        // 11.5.3 bit 7: "an access to a register address that's reserved"; Table 11-1.
        let reserved: Vec<u64> = [0x000, 0x010, 0x040, 0x050, 0x060, 0x070]
            .into_iter()
            .chain((0x290..=0x2e0).step_by(16))
            .chain((0x3a0..=0x3d0).step_by(16))
            .chain([0x3f0, 0x400, 0x800, 0xff0])
            .collect();
        for &offset in &reserved {
            let mut a = enabled();
            assert_eq!(rd(&mut a, offset), 0, "{offset:#x}");
            assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS, "read of {offset:#x}");
            assert_eq!(esr(&mut a), 0);
            wr(&mut a, offset, 0xffff_ffff);
            assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS, "write of {offset:#x}");
            assert_eq!(rd(&mut a, offset), 0);
            assert_eq!(a.read_register(offset, 0), 0);
            a.write_register(offset, 1, 0);
        }
        // Every other slot below 0x400 is a register.
        let defined = (0..0x400u64).step_by(16).filter(|&o| decode(o).is_some()).count();
        assert_eq!(defined + reserved.len() - 3, 64, "the rest of 0x000-0x3F0 is reserved");
        assert_eq!(defined, 47, "Table 11-1 has 47 registers");
    }

    #[test]
    fn esr_write_latches_collected_errors_and_clears_them() {
        // 11.5.3: "A write (of any value) to the ESR must be done to update the register before
        // attempting to read it. This write clears any previously logged errors and updates
        // the ESR with any errors detected since the last write."
        let mut a = enabled();
        rd(&mut a, 0x40);
        assert_eq!(rd(&mut a, REG_ESR), 0, "not visible before a write");
        a.accept(0x01, false);
        wr(&mut a, REG_ESR, 0xdead_beef);
        assert_eq!(rd(&mut a, REG_ESR), ESR_ILLEGAL_REGISTER_ADDRESS | ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(rd(&mut a, REG_ESR), ESR_ILLEGAL_REGISTER_ADDRESS | ESR_RECEIVE_ILLEGAL_VECTOR, "reads do not clear");
        wr(&mut a, REG_ESR, 0);
        assert_eq!(rd(&mut a, REG_ESR), 0, "back-to-back writes clear it");
    }

    #[test]
    fn a_new_error_raises_the_lvt_error_vector_once_until_the_esr_is_written() {
        // 11.5.3: an APIC error interrupt is generated when an error bit is set; the ESR write
        // re-arms it. Errors are collected even while LVT Error is masked.
        let mut b = enabled();
        wr(&mut b, REG_LVT_ERROR, 0xfe);
        rd(&mut b, 0x40);
        assert_eq!(b.acknowledge(), Some(0xfe));
        b.eoi();
        rd(&mut b, 0x50);
        assert!(!in_irr(&b, 0xfe), "the same error again raises nothing");
        wr(&mut b, REG_ESR, 0);
        rd(&mut b, 0x40);
        assert!(in_irr(&b, 0xfe), "re-armed by the ESR write");
        // Masked: collected, no interrupt.
        let mut c = enabled();
        wr(&mut c, REG_LVT_ERROR, MASKED | 0xfe);
        rd(&mut c, 0x40);
        assert_eq!(c.pending_vector(), None);
        assert_eq!(esr(&mut c), ESR_ILLEGAL_REGISTER_ADDRESS);
    }

    #[test]
    fn a_new_receive_error_raises_the_error_vector() {
        // 11.5.3: bit 6 newly set after bit 7 is a new error.
        let mut a = enabled();
        wr(&mut a, REG_LVT_ERROR, 0xfe);
        rd(&mut a, 0x40);
        assert_eq!(a.acknowledge(), Some(0xfe));
        a.eoi();
        a.accept(0x02, false);
        assert!(in_irr(&a, 0xfe));
    }

    #[test]
    fn an_illegal_error_vector_ends_in_receive_illegal_vector() {
        // 11.5.2: an LVT interrupt with a vector below 16 is not delivered and sets bit 6.
        let mut a = enabled();
        wr(&mut a, REG_LVT_ERROR, 0x05);
        rd(&mut a, 0x40);
        assert_eq!(a.irr, [0; 8]);
        assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS | ESR_RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn ppr_is_tpr_or_the_class_of_the_highest_vector_in_service() {
        // 11.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] with PPR[3:0] = 0.
        for (tpr, in_service, ppr) in [
            (0x00, None, 0x00),
            (0x35, None, 0x35),
            (0x35, Some(0x31), 0x35),
            (0x35, Some(0x3f), 0x35),
            (0x35, Some(0x41), 0x40),
            (0x50, Some(0x4f), 0x50),
            (0x00, Some(0xfe), 0xf0),
        ] {
            let mut a = enabled();
            if let Some(v) = in_service {
                a.accept(v, false);
                assert_eq!(a.acknowledge(), Some(v));
            }
            wr(&mut a, REG_TPR, tpr);
            assert_eq!(rd(&mut a, REG_PPR), ppr, "TPR {tpr:#x}, ISR {in_service:?}");
            assert_eq!(u32::from(a.ppr()), ppr);
        }
        // The highest in-service vector counts, not the lowest.
        let mut a = enabled();
        for v in [0x31, 0x72] {
            a.accept(v, false);
            a.acknowledge();
        }
        assert_eq!(a.ppr(), 0x70);
    }

    #[test]
    fn an_interrupt_is_deliverable_only_above_the_processor_priority_class() {
        // 11.8.3.1: only a priority class above PPR[7:4] is dispatched.
        let mut a = enabled();
        a.set_tpr(0x45);
        a.accept(0x4f, false);
        assert_eq!(a.pending_vector(), None, "class 4 = class 4 waits");
        assert_eq!(a.acknowledge(), None);
        assert!(in_irr(&a, 0x4f) && !in_isr(&a, 0x4f));
        a.set_tpr(0x3f);
        assert_eq!(a.pending_vector(), Some(0x4f));
        a.set_tpr(0x40);
        assert_eq!(a.pending_vector(), None, "TPR's sub-class does not matter");
        a.accept(0x50, false);
        assert_eq!(a.pending_vector(), Some(0x50));
        a.set_tpr(0xff);
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn higher_vectors_first_and_nested_interrupts_end_in_order() {
        // 11.8.4: the highest IRR vector goes first; a higher class preempts one in service;
        // 11.8.5: EOI ends the highest in service.
        let mut a = enabled();
        for v in [0x30, 0x80, 0x55] {
            assert!(a.accept(v, false));
        }
        assert_eq!(a.acknowledge(), Some(0x80));
        assert_eq!(rd(&mut a, REG_ISR + 0x40), 1, "ISR bit 128");
        assert_eq!(a.pending_vector(), None, "0x55 is below 0x80 in service");
        a.accept(0x90, false);
        assert_eq!(a.acknowledge(), Some(0x90), "a higher class preempts");
        assert!(in_isr(&a, 0x80) && in_isr(&a, 0x90));
        assert_eq!(a.eoi(), None);
        assert!(in_isr(&a, 0x80) && !in_isr(&a, 0x90), "the EOI ended 0x90, the highest");
        assert_eq!(a.pending_vector(), None);
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x55));
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x30));
        a.eoi();
        assert_eq!((a.isr, a.irr), ([0; 8], [0; 8]));
        assert_eq!(a.eoi(), None, "an EOI with nothing in service does nothing");
    }

    #[test]
    fn a_vector_queues_once_in_irr_and_once_in_isr() {
        // 11.8.4: the IRR and ISR can queue two interrupts per vector; more collapse into the IRR.
        let mut a = enabled();
        a.accept(0x40, false);
        a.acknowledge();
        a.accept(0x40, false);
        a.accept(0x40, false);
        assert!(in_irr(&a, 0x40) && in_isr(&a, 0x40));
        assert_eq!(a.pending_vector(), None, "the same class is in service");
        a.eoi();
        assert_eq!(a.acknowledge(), Some(0x40));
        a.eoi();
        assert_eq!(a.pending_vector(), None, "the third collapsed");
    }

    #[test]
    fn tmr_is_set_for_level_and_cleared_for_edge_at_acceptance() {
        // 11.8.4: "Upon acceptance of an interrupt into the IRR, the corresponding TMR bit is
        // cleared for edge-triggered interrupts and set for level-triggered interrupts."
        let mut a = enabled();
        a.accept(0x70, true);
        assert_eq!(rd(&mut a, REG_TMR + 0x30), 1 << 16);
        assert_eq!(rd(&mut a, REG_IRR + 0x30), 1 << 16);
        a.accept(0x70, false);
        assert_eq!(rd(&mut a, REG_TMR + 0x30), 0);
    }

    #[test]
    fn eoi_of_a_level_interrupt_returns_its_vector_for_the_io_apic() {
        // 11.8.5: for a level-triggered interrupt the EOI is broadcast to the I/O APICs.
        let mut a = enabled();
        a.accept(0x61, true);
        a.accept(0x62, false);
        assert_eq!(a.acknowledge(), Some(0x62));
        assert_eq!(a.eoi(), None, "edge");
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(a.eoi(), Some(0x61), "level");
        assert_eq!(a.eoi(), None);
    }

    #[test]
    fn svr_bit_12_suppresses_the_eoi_broadcast() {
        // 11.8.5: with SVR bit 12 set no broadcast EOI is generated, even for a level interrupt.
        let mut a = enabled();
        wr(&mut a, REG_SVR, ENABLE | SVR_SUPPRESS_EOI_BROADCAST);
        a.accept(0x61, true);
        a.acknowledge();
        assert_eq!(a.eoi(), None);
        assert!(!in_isr(&a, 0x61), "the ISR bit is still cleared");
        wr(&mut a, REG_SVR, ENABLE);
        a.accept(0x61, true);
        a.acknowledge();
        assert_eq!(a.eoi(), Some(0x61));
    }

    #[test]
    fn an_eoi_register_write_leaves_the_broadcast_for_the_router() {
        // 11.8.5 through the EOI register (any value): take_eoi_broadcasts gives each vector
        // once.
        let mut a = enabled();
        for (v, level) in [(0x51, true), (0x62, false), (0x93, true)] {
            a.accept(v, level);
            assert_eq!(a.acknowledge(), Some(v), "each preempts the one before");
        }
        assert_eq!(a.take_eoi_broadcasts().next(), None);
        a.write(REG_EOI, &[0; 1]);
        assert!(in_isr(&a, 0x93), "a byte write is ignored");
        for _ in 0..3 {
            wr(&mut a, REG_EOI, 0x1234_5678);
        }
        assert_eq!(a.isr, [0; 8]);
        assert_eq!(a.take_eoi_broadcasts().collect::<alloc::vec::Vec<u8>>(), [0x51, 0x93]);
        assert_eq!(a.take_eoi_broadcasts().next(), None, "taken once");
        assert_eq!(rd(&mut a, REG_EOI), 0, "write-only, reads 0");
    }

    #[test]
    fn vectors_0_to_15_are_refused_with_receive_illegal_vector() {
        // 11.5.2 / 11.5.3 bit 6: no IRR bit is ever set in 0-15.
        let mut a = enabled();
        for v in 0..MIN_VECTOR {
            assert!(!a.accept(v, false), "{v}");
            assert!(!a.accept(v, true));
        }
        assert_eq!((a.irr, a.tmr), ([0; 8], [0; 8]));
        assert_eq!(esr(&mut a), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert!(a.accept(0x10, false), "16 is legal");
        assert!(a.accept(0xff, false));
        assert_eq!(a.irr[0], 1 << 16);
        assert_eq!(esr(&mut a), 0);
    }

    #[test]
    fn software_disabled_apic_refuses_new_interrupts_but_keeps_held_ones() {
        // 11.4.7.2: only INIT, NMI, SMI and SIPI are handled normally; pending interrupts in
        // the IRR and ISR are held and still reach the CPU.
        let mut a = enabled();
        a.accept(0x50, false);
        wr(&mut a, REG_SVR, 0xff);
        assert!(!a.accept(0x60, false));
        assert!(!a.accept(0x05, false), "not even an error");
        assert_eq!(esr(&mut a), 0);
        assert!(!in_irr(&a, 0x60));
        assert_eq!(a.acknowledge(), Some(0x50));
        // After reset the APIC is software disabled too.
        let mut b = Lapic::new(0, GHZ);
        assert!(!b.accept(0x50, false));
        assert_eq!(b.pending_vector(), None);
    }

    #[test]
    fn software_disable_masks_every_lvt_and_keeps_it_masked() {
        // 11.4.7.2: "The mask bits for all the LVT entries are set. Attempts to reset these bits
        // will be ignored." Re-enabling leaves them masked.
        let mut a = enabled();
        for reg in LVT_OFFSETS {
            wr(&mut a, reg, 0x42);
            assert_eq!(rd(&mut a, reg), 0x42);
        }
        wr(&mut a, REG_SVR, 0x1ff & !SVR_APIC_ENABLED);
        for reg in LVT_OFFSETS {
            assert_eq!(rd(&mut a, reg), MASKED | 0x42, "{reg:#x}");
            wr(&mut a, reg, 0x43);
            assert_eq!(rd(&mut a, reg), MASKED | 0x43, "write while disabled keeps the mask");
        }
        wr(&mut a, REG_SVR, ENABLE);
        for reg in LVT_OFFSETS {
            assert_eq!(rd(&mut a, reg), MASKED | 0x43);
            wr(&mut a, reg, 0x44);
            assert_eq!(rd(&mut a, reg), 0x44);
        }
    }

    #[test]
    fn lvt_entries_keep_their_defined_bits_only() {
        // Figure 11-8: Delivery Status and Remote IRR are read-only (0 here); the timer has no
        // delivery mode, the error entry only vector and mask; bit 18 is reserved without
        // TSC-deadline (11.5.4.1).
        let mut a = enabled();
        let expected = [0x1_07ff, 0x3_00ff, 0x1_07ff, 0x1_07ff, 0x1_a7ff, 0x1_a7ff, 0x1_00ff];
        for (reg, want) in LVT_OFFSETS.into_iter().zip(expected) {
            wr(&mut a, reg, 0xffff_ffff);
            assert_eq!(rd(&mut a, reg), want, "{reg:#x}");
        }
    }

    #[test]
    fn divide_configuration_selects_every_divisor_of_figure_11_10() {
        // Figure 11-10: bits 3,1,0 = 000 ÷2, 001 ÷4, 010 ÷8, 011 ÷16, 100 ÷32, 101 ÷64,
        // 110 ÷128, 111 ÷1; bit 2 is reserved.
        let table = [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16), (0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1)];
        for (config, divisor) in table {
            for extra in [0, 0b0100, 0xffff_fff0] {
                assert_eq!(timer_divisor(config | extra), divisor, "{config:#06b} | {extra:#x}");
                let mut a = enabled();
                a.write_register(REG_TIMER_DIVIDE, config | extra, T0);
                assert_eq!(a.read_register(REG_TIMER_DIVIDE, T0), config, "reserved bits read 0");
                a.write_register(REG_LVT_TIMER, 0x40, T0);
                a.write_register(REG_TIMER_INITIAL, 1000, T0);
                // Ten periods of the divided clock are ten counts.
                let t = T0 + 10 * u64::from(divisor);
                assert_eq!(a.current_count(t - 1), 991, "÷{divisor}");
                assert_eq!(a.current_count(t), 990, "÷{divisor}");
                assert_eq!(a.next_deadline(T0), Some(T0 + 1000 * u64::from(divisor)));
            }
        }
    }

    #[test]
    fn one_shot_counts_down_fires_once_and_stays_at_0() {
        // 11.5.4: "After the timer reaches zero, a timer interrupt is generated and the timer
        // remains at its 0 value until reprogrammed."
        let mut a = timer(0x40, 1000);
        assert_eq!(a.read_register(REG_TIMER_CURRENT, T0), 1000);
        assert_eq!(a.read_register(REG_TIMER_CURRENT, T0 + 1), 999);
        assert_eq!(a.read_register(REG_TIMER_CURRENT, T0 + 999), 1);
        assert_eq!(a.next_deadline(T0 + 999), Some(T0 + 1000));
        assert!(!a.advance(T0 + 999));
        assert!(!in_irr(&a, 0x40));
        assert!(a.advance(T0 + 1000));
        assert!(in_irr(&a, 0x40));
        assert!(!test_bit(&a.tmr, 0x40), "timer interrupts are edge-triggered");
        assert_eq!(a.read_register(REG_TIMER_CURRENT, T0 + 1000), 0);
        assert_eq!(a.next_deadline(T0 + 1000), None);
        a.acknowledge();
        a.eoi();
        assert!(!a.advance(T0 + 100_000));
        assert_eq!(a.read_register(REG_TIMER_CURRENT, T0 + 100_000), 0);
        assert_eq!(a.read_register(REG_TIMER_INITIAL, T0 + 100_000), 1000, "the initial count stays");
    }

    #[test]
    fn periodic_timer_reloads_and_folds_missed_periods_into_one_interrupt() {
        // 11.5.4: periodic mode reloads the initial count at 0 with an interrupt. Expiries
        // missed between two advances make one interrupt (module docs, "Timer").
        let mut a = timer(PERIODIC | 0x40, 100);
        assert_eq!(a.current_count(T0 + 99), 1);
        assert_eq!(a.current_count(T0 + 100), 100, "reloaded, never 0");
        assert_eq!(a.current_count(T0 + 150), 50);
        assert!(a.advance(T0 + 100));
        assert_eq!(a.acknowledge(), Some(0x40));
        a.eoi();
        assert_eq!(a.next_deadline(T0 + 100), Some(T0 + 200));
        // Nine periods late: one interrupt, the next deadline the first one after now.
        assert!(a.advance(T0 + 1050));
        assert_eq!(a.acknowledge(), Some(0x40));
        assert_eq!(a.pending_vector(), None);
        a.eoi();
        assert_eq!(a.current_count(T0 + 1050), 50);
        assert_eq!(a.next_deadline(T0 + 1050), Some(T0 + 1100));
        assert!(!a.advance(T0 + 1099));
        assert!(a.advance(T0 + 1100));
    }

    #[test]
    fn next_deadline_rounds_up_to_the_tick_and_never_lies_in_the_past() {
        // Tick k after a start happens at ceil(k * 1e9 * divisor / bus_hz) ns, which is when the
        // count first reads one less.
        let mut a = Lapic::new(0, 3);
        a.write_register(REG_SVR, ENABLE, T0);
        a.write_register(REG_TIMER_DIVIDE, DIV1, T0);
        a.write_register(REG_LVT_TIMER, 0x40, T0);
        a.write_register(REG_TIMER_INITIAL, 2, T0);
        assert_eq!(a.next_deadline(T0), Some(T0 + 666_666_667));
        assert_eq!(a.current_count(T0 + 333_333_333), 2);
        assert_eq!(a.current_count(T0 + 333_333_334), 1);
        assert!(!a.advance(T0 + 666_666_666));
        assert_eq!(a.next_deadline(T0 + 666_666_666), Some(T0 + 666_666_667));
        // Asked later than the deadline without advancing: now, meaning "due".
        assert_eq!(a.next_deadline(T0 + 700_000_000), Some(T0 + 700_000_000));
        assert!(a.advance(T0 + 666_666_667));
    }

    #[test]
    fn no_deadline_when_stopped_masked_or_beyond_u64() {
        let a = timer(MASKED | 0x40, 1000);
        assert_eq!(a.next_deadline(T0), None, "masked: nothing to wake for");
        assert_eq!(a.current_count(T0 + 1), 999, "but it counts");
        let b = timer(0x40, 0);
        assert_eq!(b.next_deadline(T0), None, "never started");
        // 2^32-1 ticks at ÷128 of a 1 Hz bus clock are 1.7e22 ns away.
        let mut c = Lapic::new(0, 1);
        c.write_register(REG_SVR, ENABLE, T0);
        c.write_register(REG_LVT_TIMER, 0x40, T0);
        c.write_register(REG_TIMER_DIVIDE, 0b1010, T0);
        c.write_register(REG_TIMER_INITIAL, u32::MAX, T0);
        assert_eq!(c.next_deadline(T0), None);
        assert_eq!(c.current_count(u64::MAX), u32::MAX - 144_115_188, "(2^64 - 1 - T0) ns / 128e9 ns per tick");
        assert!(!c.advance(u64::MAX));
    }

    #[test]
    fn a_bus_clock_of_0_hz_counts_as_1_hz() {
        let mut a = Lapic::new(0, 0);
        a.write_register(REG_SVR, ENABLE, T0);
        a.write_register(REG_TIMER_DIVIDE, DIV1, T0);
        a.write_register(REG_LVT_TIMER, 0x40, T0);
        a.write_register(REG_TIMER_INITIAL, 1, T0);
        assert_eq!(a.next_deadline(T0), Some(T0 + 1_000_000_000));
    }

    #[test]
    fn writing_initial_count_0_stops_the_timer() {
        // 11.5.4: "A write of 0 to the initial-count register effectively stops the local APIC
        // timer, in both one-shot and periodic mode."
        for mode in [0, PERIODIC] {
            let mut a = timer(mode | 0x40, 100);
            a.write_register(REG_TIMER_INITIAL, 0, T0 + 50);
            assert_eq!(a.current_count(T0 + 50), 0);
            assert_eq!(a.next_deadline(T0 + 50), None);
            assert!(!a.advance(T0 + 10_000));
            assert_eq!(a.irr, [0; 8]);
        }
    }

    #[test]
    fn writing_initial_count_restarts_the_timer() {
        // 11.5.4: "If during the count-down process the initial-count register is set, counting
        // will restart, using the new initial-count value."
        let mut a = timer(PERIODIC | 0x40, 100);
        a.write_register(REG_TIMER_INITIAL, 200, T0 + 70);
        assert_eq!(a.current_count(T0 + 70), 200);
        assert_eq!(a.next_deadline(T0 + 70), Some(T0 + 270));
        assert!(!a.advance(T0 + 269));
        assert!(a.advance(T0 + 270));
        // A one-shot that already fired starts again too.
        let mut b = timer(0x40, 10);
        b.advance(T0 + 10);
        b.write_register(REG_TIMER_INITIAL, 10, T0 + 20);
        assert_eq!(b.next_deadline(T0 + 20), Some(T0 + 30));
    }

    #[test]
    fn an_expiry_due_before_a_register_write_is_delivered_first() {
        // Every access settles the timer at its time: restarting after a missed deadline does
        // not lose the old expiry, masking after it does not either.
        let mut a = timer(0x40, 100);
        a.write_register(REG_TIMER_INITIAL, 500, T0 + 150);
        assert!(in_irr(&a, 0x40), "the expiry at T0+100 was delivered");
        assert_eq!(a.next_deadline(T0 + 150), Some(T0 + 650));
        let mut b = timer(0x40, 100);
        b.write_register(REG_LVT_TIMER, MASKED | 0x40, T0 + 100);
        assert!(in_irr(&b, 0x40));
        let mut c = timer(0x40, 100);
        c.read_register(REG_TPR, T0 + 100);
        assert!(in_irr(&c, 0x40), "reads settle too");
    }

    #[test]
    fn an_expiry_while_masked_is_lost() {
        // 11.5.1: the mask inhibits reception; nothing is held for later.
        let mut a = timer(MASKED | 0x40, 100);
        a.write_register(REG_LVT_TIMER, 0x40, T0 + 200);
        assert!(!a.advance(T0 + 200));
        assert_eq!(a.irr, [0; 8]);
        assert_eq!(a.current_count(T0 + 200), 0);
        // Periodic: the count goes on and the next expiry after unmasking fires.
        let mut b = timer(PERIODIC | MASKED | 0x40, 100);
        assert!(!b.advance(T0 + 150));
        b.write_register(REG_LVT_TIMER, PERIODIC | 0x40, T0 + 250);
        assert_eq!(b.irr, [0; 8]);
        assert_eq!(b.next_deadline(T0 + 250), Some(T0 + 300));
    }

    #[test]
    fn changing_the_timer_mode_disarms_the_timer() {
        // 11.5.4.1: "A write to the LVT Timer Register that changes the timer mode disarms the
        // local APIC timer." Other LVT changes leave it running.
        let mut a = timer(PERIODIC | 0x40, 100);
        a.write_register(REG_LVT_TIMER, PERIODIC | MASKED | 0x41, T0 + 10);
        a.write_register(REG_LVT_TIMER, PERIODIC | 0x42, T0 + 20);
        assert_eq!(a.current_count(T0 + 20), 80, "same mode: still counting");
        a.write_register(REG_LVT_TIMER, 0x42, T0 + 30);
        assert_eq!(a.current_count(T0 + 30), 0);
        assert_eq!(a.next_deadline(T0 + 30), None);
        assert!(!a.advance(T0 + 1000));
        assert_eq!(a.read_register(REG_TIMER_INITIAL, T0 + 1000), 100);
        let mut b = timer(0x40, 100);
        b.write_register(REG_LVT_TIMER, PERIODIC | 0x40, T0 + 30);
        assert_eq!(b.current_count(T0 + 30), 0, "one-shot to periodic disarms as well");
    }

    #[test]
    fn tsc_deadline_mode_is_not_there() {
        // 11.5.4.1: without CPUID.01H:ECX.TSC_Deadline bit 18 is reserved: mode 10 is one-shot
        // and mode 11 periodic.
        let mut a = enabled();
        a.write_register(REG_LVT_TIMER, LVT_TIMER_TSC_DEADLINE | 0x40, T0);
        assert_eq!(a.read_register(REG_LVT_TIMER, T0), 0x40);
        a.write_register(REG_LVT_TIMER, LVT_TIMER_TSC_DEADLINE | PERIODIC | 0x40, T0);
        assert_eq!(a.read_register(REG_LVT_TIMER, T0), PERIODIC | 0x40);
        // Mode 10 written to a running one-shot timer is no mode change.
        let mut b = timer(0x40, 100);
        b.write_register(REG_LVT_TIMER, LVT_TIMER_TSC_DEADLINE | 0x40, T0 + 10);
        assert_eq!(b.current_count(T0 + 10), 90);
    }

    #[test]
    fn a_new_divisor_counts_on_from_the_current_count() {
        // Module docs, "Timer": the count keeps its value and goes on at the new rate.
        let mut a = timer(0x40, 1000);
        a.write_register(REG_TIMER_DIVIDE, 0b0000, T0 + 400);
        assert_eq!(a.current_count(T0 + 400), 600);
        assert_eq!(a.current_count(T0 + 401), 600);
        assert_eq!(a.current_count(T0 + 402), 599);
        assert_eq!(a.next_deadline(T0 + 400), Some(T0 + 1600));
        // Periodic reloads use the new rate for the whole period.
        let mut b = timer(PERIODIC | 0x40, 100);
        b.write_register(REG_TIMER_DIVIDE, 0b0000, T0 + 50);
        assert!(b.advance(T0 + 150));
        assert_eq!(b.next_deadline(T0 + 150), Some(T0 + 350));
        // The fraction of a tick already counted is dropped.
        let mut c = enabled();
        c.write_register(REG_LVT_TIMER, 0x40, T0);
        c.write_register(REG_TIMER_INITIAL, 10, T0);
        c.write_register(REG_TIMER_DIVIDE, DIV1, T0 + 3);
        assert_eq!(c.next_deadline(T0 + 3), Some(T0 + 12));
    }

    #[test]
    fn rewriting_the_same_divisor_changes_nothing() {
        // Bit 2 is reserved, so 1111 is still ÷1: no rebase, no dropped fraction.
        let mut a = enabled();
        a.write_register(REG_LVT_TIMER, 0x40, T0);
        a.write_register(REG_TIMER_INITIAL, 10, T0);
        a.write_register(REG_TIMER_DIVIDE, 0b0100, T0 + 3);
        assert_eq!(a.next_deadline(T0 + 3), Some(T0 + 20));
        let mut b = timer(0x40, 10);
        b.write_register(REG_TIMER_DIVIDE, 0b1111, T0 + 3);
        assert_eq!(b.next_deadline(T0 + 3), Some(T0 + 10));
        assert_eq!(b.read_register(REG_TIMER_DIVIDE, T0 + 3), DIV1);
    }

    #[test]
    fn a_timer_with_an_illegal_vector_sets_receive_illegal_vector() {
        // 11.5.3 bit 6: "an interrupt generated locally from the local vector table".
        let mut a = timer(0x05, 10);
        assert!(!a.advance(T0 + 10));
        assert_eq!(a.irr, [0; 8]);
        assert_eq!(a.read_register(REG_ESR, T0 + 10), 0);
        a.write_register(REG_ESR, 0, T0 + 10);
        assert_eq!(a.read_register(REG_ESR, T0 + 10), ESR_RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn bus_accesses_take_their_time_from_the_clock() {
        // Module docs, "Time": the current count read through MMIO follows the caller's clock.
        set_now(T0);
        let mut a = Lapic::with_clock(0, GHZ, test_clock);
        wr(&mut a, REG_SVR, ENABLE);
        wr(&mut a, REG_TIMER_DIVIDE, DIV1);
        wr(&mut a, REG_LVT_TIMER, 0x40);
        wr(&mut a, REG_TIMER_INITIAL, 1000);
        set_now(T0 + 250);
        assert_eq!(rd(&mut a, REG_TIMER_CURRENT), 750);
        set_now(T0 + 1000);
        assert_eq!(rd(&mut a, REG_IRR + 0x20), 1, "the expiry is in the IRR when read");
        // Lapic::new's clock stands still: accesses use the latest time given to a method.
        let mut b = Lapic::new(0, GHZ);
        b.advance(T0);
        wr(&mut b, REG_TIMER_DIVIDE, DIV1);
        wr(&mut b, REG_TIMER_INITIAL, 100);
        b.advance(T0 + 40);
        assert_eq!(rd(&mut b, REG_TIMER_CURRENT), 60);
    }

    #[test]
    fn time_never_runs_backwards() {
        // Module docs, "Time": an earlier now_ns is taken as the latest one seen.
        let mut a = timer(0x40, 100);
        assert!(a.advance(T0 + 100));
        a.write_register(REG_TIMER_INITIAL, 50, T0);
        assert_eq!(a.next_deadline(0), Some(T0 + 150), "started at T0 + 100");
        assert_eq!(a.current_count(T0), 50);
        assert!(!a.advance(T0 + 10));
    }

    #[test]
    fn a_self_ipi_goes_into_the_own_irr_edge_triggered() {
        // 11.6.1 shorthand 01; Table 11-3: a level self IPI is issued as edge.
        let mut a = enabled();
        wr(&mut a, REG_ICR_HIGH, 0x0500_0000);
        wr(&mut a, REG_ICR_LOW, shorthand(1) | ICR_TRIGGER_LEVEL | ICR_LEVEL_ASSERT | 0x55);
        assert!(in_irr(&a, 0x55));
        assert!(!test_bit(&a.tmr, 0x55));
        assert!(!a.has_ipis());
        assert_eq!(rd(&mut a, REG_ICR_LOW) & ICR_DELIVERY_STATUS, 0, "idle");
        wr(&mut a, REG_ICR_LOW, shorthand(1) | u32::from(DELIVERY_LOWEST_PRIORITY) << 8 | 0x56);
        assert!(in_irr(&a, 0x56), "lowest priority to self is self");
        // Software disabled: refused like any fixed interrupt.
        wr(&mut a, REG_SVR, 0xff);
        wr(&mut a, REG_ICR_LOW, shorthand(1) | 0x57);
        assert!(!in_irr(&a, 0x57));
    }

    #[test]
    fn a_self_nmi_sets_the_nmi_flag_and_invalid_self_modes_do_nothing() {
        // Table 11-3: self with NMI, INIT, SMI, STARTUP is invalid; the model delivers NMI.
        let mut a = enabled();
        wr(&mut a, REG_ICR_LOW, shorthand(1) | u32::from(DELIVERY_NMI) << 8);
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        for mode in [DELIVERY_SMI, 3, DELIVERY_INIT, DELIVERY_STARTUP, 7] {
            wr(&mut a, REG_ICR_LOW, shorthand(1) | u32::from(mode) << 8 | 0x60);
            assert!(!a.has_ipis() && !a.take_nmi(), "mode {mode}");
        }
        assert_eq!(a.irr, [0; 8]);
        assert_eq!(esr(&mut a), 0);
    }

    #[test]
    fn other_ipis_are_queued_with_every_field() {
        // 11.6.1, Figure 11-12: vector 7:0, delivery mode 10:8, destination mode 11, level 14,
        // trigger mode 15, shorthand 19:18, destination 63:56.
        let mut a = enabled();
        wr(&mut a, REG_ICR_HIGH, 0x0a00_0000);
        wr(&mut a, REG_ICR_LOW, ICR_DEST_LOGICAL | ICR_TRIGGER_LEVEL | ICR_LEVEL_ASSERT | 0x66);
        wr(&mut a, REG_ICR_LOW, u32::from(DELIVERY_INIT) << 8 | ICR_TRIGGER_LEVEL);
        wr(&mut a, REG_ICR_HIGH, 0x00ff_ffff);
        wr(&mut a, REG_ICR_LOW, u32::from(DELIVERY_STARTUP) << 8 | ICR_LEVEL_ASSERT | 0x9a);
        wr(&mut a, REG_ICR_LOW, shorthand(2) | ICR_LEVEL_ASSERT | 0x30);
        wr(&mut a, REG_ICR_LOW, shorthand(3) | u32::from(DELIVERY_NMI) << 8 | ICR_LEVEL_ASSERT);
        assert!(a.has_ipis());
        assert_eq!(
            a.pop_ipi(),
            Some(Ipi { dest_mode_logical: true, trigger_level: true, ..fixed_ipi(0x66, 0x0a) })
        );
        assert_eq!(
            a.take_ipis(),
            [
                Ipi { delivery_mode: DELIVERY_INIT, level: false, trigger_level: true, ..fixed_ipi(0, 0x0a) },
                Ipi { delivery_mode: DELIVERY_STARTUP, ..fixed_ipi(0x9a, 0) },
                Ipi { shorthand: Shorthand::AllIncludingSelf, ..fixed_ipi(0x30, 0) },
                Ipi { delivery_mode: DELIVERY_NMI, shorthand: Shorthand::AllExcludingSelf, ..fixed_ipi(0, 0) },
            ]
        );
        assert!(!a.has_ipis());
        assert_eq!(a.irr, [0; 8], "all-including-self is the router's to deliver");
        assert!(!a.take_nmi());
    }

    #[test]
    fn icr_keeps_its_defined_bits_and_delivery_status_reads_idle() {
        // Figure 11-12: bits 13, 16-17, 20-31 and 32-55 reserved; Delivery Status read-only.
        let mut a = enabled();
        wr(&mut a, REG_ICR_HIGH, 0xffff_ffff);
        assert_eq!(rd(&mut a, REG_ICR_HIGH), 0xff00_0000);
        wr(&mut a, REG_ICR_LOW, 0xffff_ffff);
        assert_eq!(rd(&mut a, REG_ICR_LOW), 0x000c_cfff);
        let ipi = a.pop_ipi().unwrap();
        assert_eq!((ipi.delivery_mode, ipi.dest, ipi.shorthand), (7, 0xff, Shorthand::AllExcludingSelf));
        // A write to ICR high alone sends nothing.
        wr(&mut a, REG_ICR_HIGH, 0x0100_0000);
        assert!(!a.has_ipis());
    }

    #[test]
    fn an_ipi_with_an_illegal_vector_sets_send_illegal_vector_and_is_sent() {
        // 11.5.3 bit 5: "a write to the ICR ... with an illegal vector"; receivers refuse it
        // (bit 6). A self IPI sets both.
        let mut a = enabled();
        wr(&mut a, REG_ICR_LOW, ICR_LEVEL_ASSERT | 0x0f);
        assert_eq!(a.pop_ipi().map(|i| i.vector), Some(0x0f));
        assert_eq!(esr(&mut a), ESR_SEND_ILLEGAL_VECTOR);
        wr(&mut a, REG_ICR_LOW, u32::from(DELIVERY_LOWEST_PRIORITY) << 8 | 0x01);
        assert_eq!(esr(&mut a), ESR_SEND_ILLEGAL_VECTOR);
        a.take_ipis();
        for mode in [DELIVERY_NMI, DELIVERY_INIT, DELIVERY_STARTUP, DELIVERY_SMI] {
            wr(&mut a, REG_ICR_LOW, u32::from(mode) << 8);
        }
        assert_eq!(esr(&mut a), 0, "modes without a vector");
        assert_eq!(a.take_ipis().len(), 4);
        wr(&mut a, REG_ICR_LOW, shorthand(1) | 0x03);
        assert_eq!(esr(&mut a), ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(a.irr, [0; 8]);
    }

    #[test]
    fn ipis_are_sent_while_software_disabled() {
        // 11.4.7.2: "The local APIC can still issue IPIs."
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_ICR_LOW, ICR_LEVEL_ASSERT | 0x40);
        assert_eq!(a.take_ipis().len(), 1);
    }

    #[test]
    fn a_full_ipi_queue_drops_and_counts() {
        let mut a = enabled();
        for i in 0..MAX_QUEUED_IPIS + 5 {
            wr(&mut a, REG_ICR_LOW, 0x20 + (i as u32 & 0x3f));
        }
        assert_eq!(a.dropped_ipis(), 5);
        let ipis = a.take_ipis();
        assert_eq!(ipis.len(), MAX_QUEUED_IPIS);
        assert_eq!((ipis[0].vector, ipis[255].vector), (0x20, 0x20 + 63), "the oldest are kept");
        wr(&mut a, REG_ICR_LOW, 0x20);
        assert_eq!(a.take_ipis().len(), 1, "room again");
        assert_eq!(a.dropped_ipis(), 5);
    }

    #[test]
    fn physical_destination_is_the_apic_id_or_broadcast() {
        // 11.6.2.1: the destination is the APIC ID; 0xFF is a broadcast.
        let a = Lapic::new(5, GHZ);
        assert!(a.matches_destination(5, false));
        assert!(!a.matches_destination(4, false));
        assert!(!a.matches_destination(0x85, false));
        assert!(a.matches_destination(0xff, false));
        assert!(!a.matches_destination(5, true), "logical 5 is not the ID");
    }

    #[test]
    fn flat_logical_destination_matches_any_common_ldr_bit() {
        // 11.6.2.2 flat model: bitwise AND of MDA and logical APIC ID; all ones broadcasts.
        let mut a = Lapic::new(0, GHZ);
        assert!(!a.matches_destination(0x01, true), "LDR 0 matches no bit");
        assert!(a.matches_destination(0xff, true), "but a broadcast");
        wr(&mut a, REG_LDR, 0x0400_0000);
        assert!(a.matches_destination(0x04, true));
        assert!(a.matches_destination(0x06, true));
        assert!(a.matches_destination(0x84, true));
        assert!(!a.matches_destination(0x03, true));
        assert!(!a.matches_destination(0xfb, true));
    }

    #[test]
    fn cluster_logical_destination_needs_the_cluster_and_a_member_bit() {
        // 11.6.2.2 cluster model: MDA bits 7:4 the cluster, 3:0 a member bit mask.
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_DFR, 0x0fff_ffff);
        wr(&mut a, REG_LDR, 0x3200_0000);
        assert!(a.matches_destination(0x32, true));
        assert!(a.matches_destination(0x3f, true));
        assert!(a.matches_destination(0x3a, true));
        assert!(!a.matches_destination(0x31, true));
        assert!(!a.matches_destination(0x30, true));
        assert!(!a.matches_destination(0x42, true));
        assert!(!a.matches_destination(0xf2, true));
        assert!(!a.matches_destination(0x22, true));
        assert!(a.matches_destination(0xff, true));
        assert!(a.matches_destination(0x00, false), "physical ignores the DFR");
    }

    #[test]
    fn undefined_dfr_models_match_only_broadcasts() {
        let mut a = Lapic::new(0, GHZ);
        wr(&mut a, REG_LDR, 0xff00_0000);
        wr(&mut a, REG_DFR, 0x7000_0000);
        for dest in 0..0xffu8 {
            assert!(!a.matches_destination(dest, true), "{dest:#x}");
        }
        assert!(a.matches_destination(0xff, true));
    }

    #[test]
    fn lint0_in_extint_mode_unmasked_lets_the_pic_through() {
        // 11.5.1: LINT0 delivery mode 111 (ExtINT) routes the 8259A's INTR to this CPU.
        let mut a = enabled();
        assert!(!a.lint0_extint_enabled(), "masked at reset");
        wr(&mut a, REG_LVT_LINT0, 0x700);
        assert!(a.lint0_extint_enabled());
        a.set_lint(0, true);
        assert_eq!((a.irr, a.take_nmi()), ([0; 8], false), "the pin itself does nothing");
        wr(&mut a, REG_LVT_LINT0, MASKED | 0x700);
        assert!(!a.lint0_extint_enabled());
        wr(&mut a, REG_LVT_LINT0, 0x400);
        assert!(!a.lint0_extint_enabled(), "NMI mode");
        wr(&mut a, REG_LVT_LINT1, 0x700);
        assert!(!a.lint0_extint_enabled(), "LINT1 is not LINT0");
        wr(&mut a, REG_LVT_LINT0, 0x700);
        wr(&mut a, REG_SVR, 0xff);
        assert!(!a.lint0_extint_enabled(), "software disable masks it");
    }

    #[test]
    fn a_lint_pin_in_nmi_mode_raises_an_nmi_on_each_rising_edge() {
        // 11.5.1: delivery mode 100 (NMI), edge-sensitive.
        let mut a = enabled();
        wr(&mut a, REG_LVT_LINT1, 0x400);
        a.set_lint(1, true);
        assert!(a.take_nmi());
        assert!(!a.take_nmi(), "taken");
        a.set_lint(1, true);
        assert!(!a.take_nmi(), "holding the pin high is no new edge");
        a.set_lint(1, false);
        assert!(!a.take_nmi());
        a.set_lint(1, true);
        assert!(a.take_nmi());
        wr(&mut a, REG_LVT_LINT1, MASKED | 0x400);
        a.set_lint(1, false);
        a.set_lint(1, true);
        assert!(!a.take_nmi(), "masked");
        wr(&mut a, REG_LVT_LINT0, 0x400);
        a.set_lint(0, true);
        assert!(a.take_nmi(), "LINT0 can be NMI too");
        a.set_lint(2, true);
        a.set_lint(255, true);
        assert!(!a.take_nmi(), "no pin 2");
    }

    #[test]
    fn a_lint_pin_in_fixed_mode_accepts_its_vector() {
        // 11.5.1: fixed delivery; LINT0 may be level-triggered, LINT1 is always edge.
        let mut a = enabled();
        wr(&mut a, REG_LVT_LINT0, LVT_LEVEL | 0x31);
        wr(&mut a, REG_LVT_LINT1, LVT_LEVEL | 0x32);
        a.set_lint(0, true);
        a.set_lint(1, true);
        assert!(in_irr(&a, 0x31) && test_bit(&a.tmr, 0x31));
        assert!(in_irr(&a, 0x32) && !test_bit(&a.tmr, 0x32));
        // SMI and INIT on the pins are ignored.
        let mut b = enabled();
        wr(&mut b, REG_LVT_LINT0, 0x200 | 0x33);
        wr(&mut b, REG_LVT_LINT1, 0x500 | 0x34);
        b.set_lint(0, true);
        b.set_lint(1, true);
        assert_eq!((b.irr, b.take_nmi()), ([0; 8], false));
    }

    #[test]
    fn narrow_reads_return_the_bytes_of_the_register() {
        // Module docs, "Access sizes": byte k is byte (o + k) & 3 of the register in the slot;
        // bytes 4-15 of a slot read 0 without an error.
        let mut a = Lapic::new(0x12, GHZ);
        wr(&mut a, REG_SVR, 0x1234);
        assert_eq!(read_bytes(&mut a, 0x23, 1), [0x12]);
        assert_eq!(read_bytes(&mut a, 0x22, 2), [0x00, 0x12]);
        assert_eq!(read_bytes(&mut a, 0x20, 8), [0, 0, 0, 0x12, 0, 0, 0, 0]);
        assert_eq!(read_bytes(&mut a, 0xf1, 1), [0x10], "SVR 0x1034");
        assert_eq!(read_bytes(&mut a, 0xf0, 2), [0x34, 0x10]);
        assert_eq!(read_bytes(&mut a, 0x2e, 4), [0, 0, 0x14, 0], "slot 0x20's tail, then Version");
        assert_eq!(read_bytes(&mut a, 0x24, 12), [0; 12]);
        assert_eq!(esr(&mut a), 0);
    }

    #[test]
    fn writes_other_than_aligned_dwords_are_ignored() {
        // Module docs, "Access sizes" (11.4.1: only 128-bit aligned 32-bit stores are defined).
        let mut a = enabled();
        wr(&mut a, REG_TPR, 0x20);
        a.write(REG_TPR, &[0x55]);
        a.write(REG_TPR, &[0x55, 0]);
        a.write(REG_TPR, &[0x55, 0, 0, 0, 0, 0, 0, 0]);
        a.write(REG_TPR + 1, &[0x55, 0, 0, 0]);
        a.write(REG_TPR + 4, &[0x55, 0, 0, 0]);
        assert_eq!(rd(&mut a, REG_TPR), 0x20);
        a.write(REG_ICR_LOW, &[0x40, 0x40, 0, 0, 0, 0, 0, 0]);
        a.write(REG_TIMER_INITIAL, &[1, 0]);
        assert!(!a.has_ipis());
        assert_eq!(rd(&mut a, REG_TIMER_INITIAL), 0);
        assert_eq!(esr(&mut a), 0, "none touched a reserved slot");
    }

    #[test]
    fn narrow_accesses_touching_a_reserved_slot_set_illegal_register_address() {
        let mut a = enabled();
        assert_eq!(read_bytes(&mut a, 0x45, 1), [0]);
        assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS);
        a.write(0x3f2, &[1, 2]);
        assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS);
        // An access that runs from a register's slot into a reserved one.
        read_bytes(&mut a, 0x3ec, 8);
        assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS);
        a.write(0x3ec, &[0; 8]);
        assert_eq!(esr(&mut a), ESR_ILLEGAL_REGISTER_ADDRESS);
        // Past the page is no register address at all.
        read_bytes(&mut a, LAPIC_MMIO_LEN, 4);
        a.write(LAPIC_MMIO_LEN, &[0; 4]);
        assert_eq!(esr(&mut a), 0);
    }

    #[test]
    fn no_offset_or_size_panics() {
        // Every offset of the page, every size 1-8, reads and writes; plus offsets the bus
        // never sends. Each read byte is the register byte the access rules give.
        let mut base = timer(PERIODIC | 0x40, 1000);
        base.accept(0x80, true);
        base.acknowledge();
        base.accept(0x30, false);
        wr(&mut base, REG_ICR_HIGH, 0x0300_0000);
        wr(&mut base, REG_LDR, 0x0100_0000);
        for offset in 0..LAPIC_MMIO_LEN {
            for size in 1..=8usize {
                let mut a = base.clone();
                let mut d = vec![0xeeu8; size];
                a.read(offset, &mut d);
                for (k, &b) in d.iter().enumerate() {
                    let at = offset + k as u64;
                    let expected = match decode(at & !0xf) {
                        Some(reg) if at < LAPIC_MMIO_LEN && at & 0xf < 4 => (base.value(reg, T0) >> (8 * (at & 3))) as u8,
                        _ => 0,
                    };
                    assert_eq!(b, expected, "byte {k} of {offset:#x}+{size}");
                }
                assert_eq!(a.write(offset, &d), IoOutcome::Done);
                assert_eq!(a.write(offset, &[0xff; 8][..size]), IoOutcome::Done);
            }
        }
        let mut a = base.clone();
        for offset in [u64::MAX, u64::MAX - 3, 1 << 63] {
            let mut d = [0xeeu8; 8];
            a.read(offset, &mut d);
            assert_eq!(d, [0; 8]);
            a.write(offset, &[0xff; 8]);
            a.write(offset, &[0xff; 4]);
            assert_eq!(a.read_register(offset, 0), 0);
            a.write_register(offset, 0xffff_ffff, 0);
        }
        a.read(0, &mut []);
        a.write(0, &[]);
    }

    #[test]
    fn the_page_works_through_the_bus() {
        // The kernel registers the LAPIC page at 0xFEE0_0000 (11.4.1).
        assert_eq!((LAPIC_BASE, LAPIC_MMIO_LEN), (0xfee0_0000, 0x1000));
        let lapic = Arc::new(Mutex::new(Lapic::new(7, GHZ)));
        let mut bus = Bus::new();
        let dev: crate::devices::bus::DeviceHandle = lapic.clone();
        bus.insert(Space::Mmio, LAPIC_BASE, LAPIC_MMIO_LEN, dev).unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(Space::Mmio, LAPIC_BASE + REG_ID, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x0700_0000);
        bus.write(Space::Mmio, LAPIC_BASE + REG_SVR, &ENABLE.to_le_bytes());
        assert!(lapic.lock().software_enabled());
        let _ = handle(Lapic::new(0, GHZ));
    }

    #[test]
    fn without_a_clock_bus_accesses_happen_at_the_latest_time_seen() {
        // Lapic::new's clock is stuck at 0: a bus access is taken to happen at the latest
        // instant the APIC has seen, here none yet (0), so a count started by a bus write
        // has run 100 ns by 100 ns (1 GHz bus, divide by 1).
        let mut a = enabled();
        wr(&mut a, REG_TIMER_DIVIDE, DIV1);
        wr(&mut a, REG_TIMER_INITIAL, 1000);
        assert_eq!(a.current_count(100), 900);
    }

    #[test]
    fn the_divide_configuration_codes_are_figure_11_10s() {
        // Bits 3, 1, 0: 000 = ÷2, 001 = ÷4, 010 = ÷8, 011 = ÷16, 100 = ÷32, 101 = ÷64,
        // 110 = ÷128, 111 = ÷1; bit 2 and bits 31:4 are ignored.
        let want = [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16), (0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1)];
        for (config, div) in want {
            assert_eq!(timer_divisor(config), div, "{config:#06b}");
            assert_eq!(timer_divisor(config | 0b0100 | 0xffff_fff0), div, "{config:#06b} with ignored bits");
        }
    }

    #[test]
    fn a_one_shot_count_past_its_expiry_reads_0_and_a_periodic_one_reloads() {
        // 11.5.4: one-shot, the count stays 0 after reaching it; periodic, it reloads from
        // the initial count. Read before the expiry is delivered (no `advance`).
        let mut a = enabled();
        wr(&mut a, REG_TIMER_DIVIDE, DIV1);
        wr(&mut a, REG_LVT_TIMER, 0x40);
        wr(&mut a, REG_TIMER_INITIAL, 1000);
        assert_eq!(a.current_count(1500), 0);
        let mut a = enabled();
        wr(&mut a, REG_TIMER_DIVIDE, DIV1);
        wr(&mut a, REG_LVT_TIMER, 0x40 | LVT_TIMER_PERIODIC);
        wr(&mut a, REG_TIMER_INITIAL, 1000);
        assert_eq!(a.current_count(1500), 500);
        // A new divisor at 300 ns carries the count on (700 left) at half the rate: the
        // expiry comes at 300 + 1400 ns, and 200 ns later (100 ticks) the reloaded count is
        // 900.
        wr(&mut a, REG_TIMER_INITIAL, 1000);
        let t = a.now_seen;
        a.write_register(REG_TIMER_DIVIDE, 0, t + 300);
        assert_eq!(a.current_count(t + 300), 700);
        assert_eq!(a.current_count(t + 1900), 900);
    }

    #[test]
    fn lint0_in_fixed_mode_is_edge_triggered_unless_its_lvt_says_level() {
        // 11.5.1: LVT LINT0's trigger mode bit 15 selects level; an edge-triggered vector
        // leaves its TMR bit clear (11.8.4).
        for (lvt, level) in [(0x41, false), (0x41 | LVT_LEVEL, true)] {
            let mut a = enabled();
            wr(&mut a, REG_LVT_LINT0, lvt);
            a.set_lint(0, true);
            assert_eq!(a.acknowledge(), Some(0x41));
            assert_eq!(a.level_triggered(0x41), level, "LVT {lvt:#x}");
        }
    }

    #[test]
    fn vector_16_is_the_first_legal_one_for_an_ipi() {
        // 11.5.3: vectors 0-15 are reserved; sending one sets ESR bit 5 (a self IPI also
        // receives it: bit 6), vector 16 sets nothing.
        let mut a = enabled();
        wr(&mut a, REG_ICR_LOW, 0x0004_0010);
        assert_eq!(esr(&mut a), 0);
        wr(&mut a, REG_ICR_LOW, 0x0004_000f);
        assert_ne!(esr(&mut a) & ESR_SEND_ILLEGAL_VECTOR, 0);
    }
}
