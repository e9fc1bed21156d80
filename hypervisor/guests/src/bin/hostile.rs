//! Test guest `hostile`: a long, seeded, reproducible stream of privileged and odd operations
//! (issue "Hostile guests and fuzzing"), each checked against what the architecture, or
//! Bastion's documented answer where the architecture leaves it to the platform, says it must
//! do. It runs under its own IDT, counts every fault it takes and carries on; the hypervisor
//! must neither crash nor stop any other guest, and must answer each operation exactly.
//!
//! Loaded as a Multiboot kernel, it reads its command line: `seed=<n>` (default 1),
//! `ops=<n>` (default 10000), `end=triple|far` (after the stream: triple-fault, or read
//! guest-physical 2 GiB, past RAM and below the device hole, which the hypervisor must stop
//! the guest for), `trace=1` (print each operation's index and kind before it runs),
//! `skip=<kind>,...` (leave those kinds out, to narrow a failure down). Started
//! as a flat image it uses the defaults.
//!
//! The operations ([`KINDS`]), each with its rule:
//! - port I/O of every size, and INS/OUTS with REP, on random ports (not those that reset,
//!   power off or end the guest, reprogram its interrupt controllers or print): no fault;
//!   a REP string operation ends with RCX = 0 and RDI/RSI moved by count * size (SDM Vol. 2B
//!   INS/OUTS, REP);
//! - RDMSR/WRMSR of random MSRs Bastion does not implement: #GP(0) (SDM Vol. 2B RDMSR; the
//!   ABI: "every other MSR: #GP"); of the VMX capability MSRs and AMD's VM_HSAVE_PA: #GP(0)
//!   (nested virtualization is hidden); IA32_FEATURE_CONTROL reads locked with VMX off and
//!   refuses writes, VM_CR reads SVMDIS; EFER refuses reserved bits, SVME and an LME change
//!   while paging is on (SDM Vol. 3A 2.2.1, 10.8.5; APM Vol. 2 3.1.7); the segment-base and
//!   SYSCALL MSRs keep canonical values written to them; PAT keeps valid values;
//! - CPUID of random leaves: no fault; the same answer twice; VMX and SVM hidden, the
//!   hypervisor bit set, leaf 1 EBX[31:24] = this vCPU's index;
//! - MOV to CR0, CR4, CR8: #GP(0) for bits 63:32 (CR0, and CR4 above the defined bits), for
//!   CR4 bits whose CPUID feature is absent (VMXE included), clearing CR4.PAE or CR0.PG in
//!   64-bit mode, PG without PE, NW without CD, CR8 above 15 (SDM Vol. 3A 2.5, 10.8.5;
//!   Vol. 2B MOV CR); otherwise the value reads back, then the original is restored;
//! - MOV to DR0-DR7: DR4/DR5 #UD with CR4.DE set; #GP(0) for bits 63:32 of DR6/DR7 (SDM Vol.
//!   2B MOV DR); addresses read back;
//! - XSETBV: #UD without CR4.OSXSAVE; #GP(0) for ECX != 0, unsupported or inconsistent
//!   components (SDM Vol. 1 13.3, Vol. 2D XSETBV); XGETBV reads back what was set;
//! - INVD, WBINVD, INVLPG: no fault; RDPMC: #GP(0), no counters are virtualized; RDTSCP:
//!   #UD without the CPUID bit, otherwise ECX = IA32_TSC_AUX;
//! - Bastion's hypercall with random registers: no fault, unknown functions answer
//!   RAX = -1; the other vendor's hypercall instruction, and every VMX and SVM instruction:
//!   #UD (SDM Vol. 3C 31.3; APM Vol. 2 15.5);
//! - INT n: a gate of its IDT runs once; past the IDT limit #GP(n * 8 + 2) (SDM Vol. 3A 6.12.1:
//!   the error code names the IDT entry, IDT bit 1 set);
//! - LGDT/LIDT of junk tables, restored before anything can use them: no fault;
//! - STI/CLI storms, and HLT woken by its local APIC timer (one interrupt per HLT);
//! - its own 16550's registers with random values (the scratch register reads back, 16550D
//!   datasheet), restored; its local APIC's writable registers with random values (TPR reads
//!   back), restored; its I/O APIC's redirection entries (masked) and read-only version
//!   register (unchanged by a write, 82093AA datasheet 3.2.2), restored;
//! - random reads and writes of 1 to 8 bytes in the device hole where no device lives:
//!   no fault, reads all ones (Bastion's memory map);
//! - self-modifying code: an instruction rewritten and run again runs as rewritten (SDM Vol.
//!   3A 11.6).
//!
//! Output: `hostile: seed <s> ops <n>`, every 10000 operations `hostile: <i> ops <f> faults`,
//! a `hostile: FAIL op <i> <kind>: ...` line for each of the first 20 mismatches, then
//! `hostile: op <kind> count <n> faults <n>` per kind and `hostile: done ops=<n> faults=<n>
//! mismatches=<n> quirks=<n>` (quirks: outcomes of instructions the CPU runs without a VM
//! exit that break the rule the way a known emulator does, [`Battery::check_quirk`]); exit
//! code 0 if there was no mismatch, else 1. With `end=`, instead of the
//! test exit: `hostile: ending with a triple fault` / `hostile: reading past RAM at 0x80000000`.
#![no_std]
#![no_main]

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use test_guests::cpu::{self, cpuid, Regs};
use test_guests::exceptions::{Fault, GP, UD};
use test_guests::{apic, guarded, interrupts, say};

test_guests::guest!(name = "hostile", main = main);

const DEFAULT_OPS: u64 = 10_000;
const MAX_REPORTED: u64 = 20;

/// The outcome a rule expects: `None` (completes) or the exception with its error code.
type Want = Option<(u8, Option<u64>)>;
const OK: Want = None;
const GP0: Want = Some((GP, Some(0)));
const UDF: Want = Some((UD, None));

/// A splitmix64 generator: the whole stream follows from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    PortIo,
    StringIo,
    MsrUnknown,
    MsrNested,
    MsrEfer,
    MsrState,
    Cpuid,
    Cr0,
    Cr4,
    Cr8,
    Dr,
    Xsetbv,
    Cache,
    Rdpmc,
    Rdtscp,
    Hypercall,
    VirtInsn,
    IntN,
    DescTables,
    StiCli,
    Halt,
    Uart,
    Lapic,
    Ioapic,
    Mmio,
    Smc,
}

const KINDS: [(Kind, &str); 26] = [
    (Kind::PortIo, "port-io"),
    (Kind::StringIo, "string-io"),
    (Kind::MsrUnknown, "msr-unknown"),
    (Kind::MsrNested, "msr-nested"),
    (Kind::MsrEfer, "msr-efer"),
    (Kind::MsrState, "msr-state"),
    (Kind::Cpuid, "cpuid"),
    (Kind::Cr0, "cr0"),
    (Kind::Cr4, "cr4"),
    (Kind::Cr8, "cr8"),
    (Kind::Dr, "dr"),
    (Kind::Xsetbv, "xsetbv"),
    (Kind::Cache, "cache"),
    (Kind::Rdpmc, "rdpmc"),
    (Kind::Rdtscp, "rdtscp"),
    (Kind::Hypercall, "hypercall"),
    (Kind::VirtInsn, "vmx-svm-insn"),
    (Kind::IntN, "int-n"),
    (Kind::DescTables, "lgdt-lidt"),
    (Kind::StiCli, "sti-cli"),
    (Kind::Halt, "hlt"),
    (Kind::Uart, "uart"),
    (Kind::Lapic, "lapic"),
    (Kind::Ioapic, "ioapic"),
    (Kind::Mmio, "mmio-hole"),
    (Kind::Smc, "smc"),
];

/// What CPUID says this vCPU has, read once.
struct Features {
    intel: bool,
    /// CR4 bits that may be set (SDM Vol. 3A 2.5: each exists only with its CPUID feature).
    cr4_allowed: u64,
    /// XCR0 components (CPUID leaf 0xD), 0 without XSAVE.
    xcr0_supported: u64,
    nx: bool,
    rdtscp: bool,
}

impl Features {
    fn read() -> Features {
        let max = cpuid(0, 0).eax;
        let max_ext = cpuid(0x8000_0000, 0).eax;
        let l1 = cpuid(1, 0);
        let zero = cpu::Cpuid { eax: 0, ebx: 0, ecx: 0, edx: 0 };
        let l7 = if max >= 7 { cpuid(7, 0) } else { zero };
        let e1 = if max_ext >= 0x8000_0001 { cpuid(0x8000_0001, 0) } else { zero };
        let bit = |reg: u32, n: u32| reg & (1 << n) != 0;
        // (CR4 bit, present): SDM Vol. 3A 2.5's CR4 bits and the CPUID flags that name them.
        let gated: [(u32, bool); 22] = [
            (0, bit(l1.edx, 1)),  // VME
            (1, bit(l1.edx, 1)),  // PVI
            (2, bit(l1.edx, 4)),  // TSD
            (3, bit(l1.edx, 2)),  // DE
            (4, bit(l1.edx, 3)),  // PSE
            (5, bit(l1.edx, 6)),  // PAE
            (6, bit(l1.edx, 7)),  // MCE
            (7, bit(l1.edx, 13)), // PGE
            (8, true),            // PCE
            (9, bit(l1.edx, 24)), // OSFXSR
            (10, bit(l1.edx, 25)), // OSXMMEXCPT
            (11, bit(l7.ecx, 2)), // UMIP
            (12, bit(l7.ecx, 16)), // LA57
            (13, bit(l1.ecx, 5)), // VMXE
            (14, bit(l1.ecx, 6)), // SMXE
            (16, bit(l7.ebx, 0)), // FSGSBASE
            (17, bit(l1.ecx, 17)), // PCIDE
            (18, bit(l1.ecx, 26)), // OSXSAVE
            (20, bit(l7.ebx, 7)), // SMEP
            (21, bit(l7.ebx, 20)), // SMAP
            (22, bit(l7.ecx, 3)), // PKE
            (23, bit(l7.ecx, 7)), // CET
        ];
        let cr4_allowed = gated.iter().filter(|(_, on)| *on).fold(0, |m, (b, _)| m | 1u64 << b);
        let xcr0_supported = if bit(l1.ecx, 26) && max >= 0xd {
            let d = cpuid(0xd, 0);
            u64::from(d.eax) | u64::from(d.edx) << 32
        } else {
            0
        };
        Features { intel: cpu::is_intel(), cr4_allowed, xcr0_supported, nx: bit(e1.edx, 20), rdtscp: bit(e1.edx, 27) }
    }
}

/// Interrupts taken, by vector (only the IDT's 16 IRQ vectors have gates).
static TAKEN: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// The vector the local APIC timer is programmed with.
const TIMER_VECTOR: u8 = interrupts::IRQ_BASE + 15;

fn on_interrupt(vector: u8) {
    TAKEN[usize::from(vector - interrupts::IRQ_BASE)].fetch_add(1, SeqCst);
    if vector == TIMER_VECTOR {
        apic::eoi();
    }
}

fn taken(vector: u8) -> u64 {
    TAKEN[usize::from(vector - interrupts::IRQ_BASE)].load(SeqCst)
}

struct Battery {
    rng: Rng,
    f: Features,
    /// Index of the running operation, and its kind.
    op: u64,
    kind: usize,
    faults: u64,
    mismatches: u64,
    /// Outcomes that break the rule the way a known emulator does ([`Battery::check_quirk`]).
    quirks: u64,
    count: [u64; KINDS.len()],
    faults_of: [u64; KINDS.len()],
    /// `trace=1`: print each operation before it runs (to find the one a hang follows).
    trace: bool,
    /// `skip=<kind>,<kind>`: kinds left out (bit n = `KINDS[n]`), to narrow a failure down.
    skip: u64,
}

/// A 64-bit value as a canonical 48-bit address (bits 63:47 copies of bit 47, SDM Vol. 1
/// 3.3.7.1).
fn canonical(x: u64) -> u64 {
    ((x << 16) as i64 >> 16) as u64
}

fn fmt_want(w: Want) -> impl fmt::Display {
    struct W(Want);
    impl fmt::Display for W {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            match self.0 {
                None => f.write_str("no fault"),
                Some((v, None)) => f.write_str(test_guests::exceptions::mnemonic(v)),
                Some((v, Some(e))) => write!(f, "{}({e:#x})", test_guests::exceptions::mnemonic(v)),
            }
        }
    }
    W(w)
}

fn fmt_got(g: Option<Fault>) -> impl fmt::Display {
    struct G(Option<Fault>);
    impl fmt::Display for G {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            match self.0 {
                None => f.write_str("no fault"),
                Some(x) => write!(f, "{x}"),
            }
        }
    }
    G(g)
}

impl Battery {
    fn mismatch(&mut self, what: fmt::Arguments) {
        self.mismatches += 1;
        if self.mismatches <= MAX_REPORTED {
            say!("FAIL op {} {}: {what}", self.op, KINDS[self.kind].1);
        }
    }

    /// Counts a fault and compares the outcome with the rule's.
    fn check(&mut self, what: fmt::Arguments, got: Option<Fault>, want: Want) {
        if got.is_some() {
            self.faults += 1;
            self.faults_of[self.kind] += 1;
        }
        let same = match (got, want) {
            (None, None) => true,
            (Some(g), Some((v, code))) => g.vector == v && code.is_none_or(|c| c == g.error_code),
            _ => false,
        };
        if !same {
            self.mismatch(format_args!("{what}: {} where the rule says {}", fmt_got(got), fmt_want(want)));
        }
    }

    /// As [`check`](Self::check), but an outcome equal to `quirk` is counted as a known
    /// emulator deviation instead of a mismatch: for instructions the CPU carries out by
    /// itself under Bastion (no VM exit), where the emulator and not Bastion answers. The
    /// test allows quirks only where it knows the emulator has them.
    fn check_quirk(&mut self, what: fmt::Arguments, got: Option<Fault>, want: Want, quirk: Want) {
        let same = |w: Want| match (got, w) {
            (None, None) => true,
            (Some(g), Some((v, code))) => g.vector == v && code.is_none_or(|c| c == g.error_code),
            _ => false,
        };
        if !same(want) && same(quirk) {
            if got.is_some() {
                self.faults += 1;
                self.faults_of[self.kind] += 1;
            }
            self.quirks += 1;
            return;
        }
        self.check(what, got, want);
    }

    fn check_value(&mut self, what: fmt::Arguments, got: u64, want: u64) {
        if got != want {
            self.mismatch(format_args!("{what}: read {got:#x}, expected {want:#x}"));
        }
    }

    fn run_one(&mut self) {
        self.kind = self.rng.below(KINDS.len() as u64) as usize;
        while self.skip & 1 << self.kind != 0 {
            self.kind = self.rng.below(KINDS.len() as u64) as usize;
        }
        if self.trace {
            say!("op {} {}", self.op, KINDS[self.kind].1);
        }
        self.count[self.kind] += 1;
        match KINDS[self.kind].0 {
            Kind::PortIo => self.port_io(),
            Kind::StringIo => self.string_io(),
            Kind::MsrUnknown => self.msr_unknown(),
            Kind::MsrNested => self.msr_nested(),
            Kind::MsrEfer => self.msr_efer(),
            Kind::MsrState => self.msr_state(),
            Kind::Cpuid => self.cpuid(),
            Kind::Cr0 => self.cr0(),
            Kind::Cr4 => self.cr4(),
            Kind::Cr8 => self.cr8(),
            Kind::Dr => self.dr(),
            Kind::Xsetbv => self.xsetbv(),
            Kind::Cache => self.cache(),
            Kind::Rdpmc => self.rdpmc(),
            Kind::Rdtscp => self.rdtscp(),
            Kind::Hypercall => self.hypercall(),
            Kind::VirtInsn => self.virt_insn(),
            Kind::IntN => self.int_n(),
            Kind::DescTables => self.desc_tables(),
            Kind::StiCli => self.sti_cli(),
            Kind::Halt => self.halt(),
            Kind::Uart => self.uart(),
            Kind::Lapic => self.lapic(),
            Kind::Ioapic => self.ioapic(),
            Kind::Mmio => self.mmio(),
            Kind::Smc => self.smc(),
        }
    }

    /// A port that neither resets or powers off the guest (8042 0x64, port 0x92, 0xCF9, the
    /// ACPI PM block at 0x600), nor ends it (the test exit port), nor reprograms its PICs or
    /// PIT (whose vectors could then collide with exceptions), nor prints (COM1). An access
    /// of `size` bytes reaches every port from `port` to `port + size - 1` (SDM Vol. 1
    /// 19.3), so none of those may be one of them.
    fn random_port(&mut self, write: bool, size: u16) -> u16 {
        let denied = |p: u16| {
            matches!(p, 0x3F8..=0x3FF | 0xF4..=0xF7)
                || (write && matches!(p, 0x20 | 0x21 | 0xA0 | 0xA1 | 0x40..=0x43 | 0x60 | 0x64 | 0x92 | 0xCF9 | 0x600..=0x60B))
        };
        loop {
            let port = if self.rng.one_in(2) { self.rng.below(0x1000) as u16 } else { self.rng.next() as u16 };
            if port.checked_add(size - 1).is_some() && !(port..port + size).any(denied) {
                return port;
            }
        }
    }

    fn port_io(&mut self) {
        let write = self.rng.one_in(2);
        let size = [1u8, 2, 4][self.rng.below(3) as usize];
        let port = self.random_port(write, u16::from(size));
        let v = self.rng.next() as u32;
        // SAFETY: ports chosen by `random_port`, which leaves out everything that would end,
        // reset or disturb the guest; I/O itself cannot touch its memory.
        let got = unsafe {
            match (size, write) {
                (1, false) => guarded!("in al, dx", in("dx") port, out("al") _),
                (2, false) => guarded!("in ax, dx", in("dx") port, out("ax") _),
                (4, false) => guarded!("in eax, dx", in("dx") port, out("eax") _),
                (1, true) => guarded!("out dx, al", in("dx") port, in("al") v as u8),
                (2, true) => guarded!("out dx, ax", in("dx") port, in("ax") v as u16),
                _ => guarded!("out dx, eax", in("dx") port, in("eax") v),
            }
        };
        self.check(format_args!("{} port {port:#x} size {size}", if write { "OUT" } else { "IN" }), got, OK);
    }

    fn string_io(&mut self) {
        static mut BUF: [u8; 64] = [0; 64];
        let write = self.rng.one_in(2);
        let size = [1u64, 2, 4][self.rng.below(3) as usize];
        let port = self.random_port(write, size as u16);
        let count = 1 + self.rng.below(8);
        let buf = (&raw mut BUF) as u64;
        let (rcx, ptr): (u64, u64);
        // SAFETY: at most 8 * 4 bytes of our own buffer; ports as for `port_io`. DF is clear
        // (the ABI), so the pointer moves up.
        let got = unsafe {
            match (size, write) {
                (1, false) => guarded!("rep insb", in("dx") port, inout("rcx") count => rcx, inout("rdi") buf => ptr),
                (2, false) => guarded!("rep insw", in("dx") port, inout("rcx") count => rcx, inout("rdi") buf => ptr),
                (4, false) => guarded!("rep insd", in("dx") port, inout("rcx") count => rcx, inout("rdi") buf => ptr),
                (1, true) => guarded!("rep outsb", in("dx") port, inout("rcx") count => rcx, inout("rsi") buf => ptr),
                (2, true) => guarded!("rep outsw", in("dx") port, inout("rcx") count => rcx, inout("rsi") buf => ptr),
                _ => guarded!("rep outsd", in("dx") port, inout("rcx") count => rcx, inout("rsi") buf => ptr),
            }
        };
        let what = if write { "REP OUTS" } else { "REP INS" };
        self.check(format_args!("{what} port {port:#x} size {size} count {count}"), got, OK);
        if got.is_none() {
            self.check_value(format_args!("{what} port {port:#x}: RCX after"), rcx, 0);
            self.check_value(format_args!("{what} port {port:#x}: pointer moved"), ptr - buf, count * size);
        }
    }

    /// MSRs Bastion implements (its ABI, `vm/msr.rs`): emulated, passed through, kvmclock.
    fn implemented(msr: u32) -> bool {
        matches!(
            msr,
            0x10 | 0x1B | 0x3A | 0x8B | 0x1A0 | 0x174..=0x176 | 0x277
                | 0xC000_0080..=0xC000_0084
                | 0xC000_0100..=0xC000_0103
                | 0xC001_0055
                | 0xC001_0114
                | 0x4B56_4D00..=0x4B56_4D04
        )
    }

    fn msr_unknown(&mut self) {
        // Half of them near the architectural ranges, where real CPUs have MSRs Bastion must
        // not pass through (MTRRs, performance counters, machine check, VMX, SVM, x2APIC).
        let msr = loop {
            let m = match self.rng.below(4) {
                0 => self.rng.below(0x2000) as u32,
                1 => 0xC000_0000 + self.rng.below(0x2000) as u32,
                2 => 0xC001_0000 + self.rng.below(0x2000) as u32,
                _ => self.rng.next() as u32,
            };
            if !Self::implemented(m) {
                break m;
            }
        };
        if self.rng.one_in(2) {
            self.check(format_args!("RDMSR {msr:#x}"), cpu::try_rdmsr(msr).err(), GP0);
        } else {
            let v = self.rng.next();
            // SAFETY: the MSR is one Bastion does not implement: the write must fault.
            self.check(format_args!("WRMSR {msr:#x} <- {v:#x}"), unsafe { cpu::try_wrmsr(msr, v) }.err(), GP0);
        }
    }

    fn msr_nested(&mut self) {
        const FEATURE_CONTROL: u32 = 0x3A;
        const VM_CR: u32 = 0xC001_0114;
        const VM_HSAVE_PA: u32 = 0xC001_0117;
        match self.rng.below(4) {
            0 | 1 => {
                // IA32_VMX_BASIC..IA32_VMX_VMFUNC (SDM Vol. 3D A.1-A.11), and VM_HSAVE_PA.
                let msr = if self.rng.one_in(4) { VM_HSAVE_PA } else { 0x480 + self.rng.below(0x12) as u32 };
                self.check(format_args!("RDMSR {msr:#x}"), cpu::try_rdmsr(msr).err(), GP0);
                let v = self.rng.next() & 0xFFFF_F000;
                // SAFETY: must fault: the MSR is hidden.
                self.check(format_args!("WRMSR {msr:#x}"), unsafe { cpu::try_wrmsr(msr, v) }.err(), GP0);
            }
            2 => {
                // Locked (bit 0) with VMX off inside and outside SMX (bits 1, 2): a guest BIOS
                // could not enable it, so the OS knows VMX is unusable (SDM Vol. 3C 24.7).
                match cpu::try_rdmsr(FEATURE_CONTROL) {
                    Ok(v) => self.check_value(format_args!("IA32_FEATURE_CONTROL lock and VMX bits"), v & 7, 1),
                    Err(f) => self.check(format_args!("RDMSR IA32_FEATURE_CONTROL"), Some(f), OK),
                }
                // A locked IA32_FEATURE_CONTROL refuses writes (SDM Vol. 4, MSR 3AH).
                // SAFETY: must fault.
                self.check(format_args!("WRMSR IA32_FEATURE_CONTROL"), unsafe { cpu::try_wrmsr(FEATURE_CONTROL, 5) }.err(), GP0);
            }
            _ => {
                // VM_CR.SVMDIS (bit 4): SVM disabled (APM Vol. 2 15.30.1).
                match cpu::try_rdmsr(VM_CR) {
                    Ok(v) => self.check_value(format_args!("VM_CR.SVMDIS"), v & 0x10, 0x10),
                    Err(f) => self.check(format_args!("RDMSR VM_CR"), Some(f), OK),
                }
            }
        }
    }

    fn msr_efer(&mut self) {
        const EFER: u32 = 0xC000_0080;
        const SCE: u64 = 1;
        const LME: u64 = 1 << 8;
        const NXE: u64 = 1 << 11;
        const SVME: u64 = 1 << 12;
        let Ok(efer) = cpu::try_rdmsr(EFER) else {
            return self.mismatch(format_args!("RDMSR EFER faulted"));
        };
        let (value, want, what) = match self.rng.below(5) {
            // Bits 63:32 are reserved on every CPU (SDM Vol. 3A 2.2.1; APM Vol. 2 3.1.7).
            0 => (efer | 1 << (32 + self.rng.below(32)), GP0, "a reserved bit"),
            1 => (efer | SVME, GP0, "SVME (SVM is hidden)"),
            2 => (efer & !LME, GP0, "LME cleared with paging on"),
            3 => (efer ^ NXE, if self.f.nx { OK } else { GP0 }, "NXE toggled"),
            _ => (efer ^ SCE, OK, "SCE toggled"),
        };
        // SAFETY: the only values that can succeed toggle SCE or NXE, which this guest's
        // code does not depend on (no SYSCALL, no NX bit in its page tables); restored below.
        let got = unsafe { cpu::try_wrmsr(EFER, value) }.err();
        self.check(format_args!("WRMSR EFER {efer:#x} -> {value:#x} ({what})"), got, want);
        if got.is_none() {
            let now = cpu::try_rdmsr(EFER).unwrap_or(0);
            self.check_value(format_args!("EFER after writing {value:#x}"), now, value);
            // SAFETY: the value read at the start.
            unsafe { cpu::try_wrmsr(EFER, efer) }.ok();
        }
    }

    /// MSRs a guest's OS owns (passed through or emulated): a value written reads back, and
    /// the original is restored. Only values valid on every CPU: the segment-base and
    /// SYSCALL MSRs canonical, PAT bytes of the defined memory types (SDM Vol. 3A 11.12.2).
    fn msr_state(&mut self) {
        const MSRS: [u32; 8] = [0xC000_0100, 0xC000_0101, 0xC000_0102, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0x277, 0x1A0];
        let msr = MSRS[self.rng.below(MSRS.len() as u64) as usize];
        let value = match msr {
            0x277 => (0..8).fold(0u64, |v, i| v | [0u64, 1, 4, 5, 6, 7][self.rng.below(6) as usize] << (8 * i)),
            // SFMASK: the low 32 bits (the upper half is reserved, SDM Vol. 4 C000_0084H).
            0xC000_0084 => self.rng.next() & 0xFFFF_FFFF,
            // MISC_ENABLE: bits Bastion keeps as written.
            0x1A0 => self.rng.next() & 0x1,
            _ => canonical(self.rng.next()),
        };
        let Ok(old) = cpu::try_rdmsr(msr) else {
            return self.mismatch(format_args!("RDMSR {msr:#x} faulted"));
        };
        // SAFETY: this guest uses none of these MSRs (no FS/GS, SYSCALL or memory types other
        // than write-back through PAT entry 0, which `value` may change only for the moment
        // it takes to read it back); the original is written back at once.
        let got = unsafe { cpu::try_wrmsr(msr, value) }.err();
        self.check(format_args!("WRMSR {msr:#x} <- {value:#x}"), got, OK);
        if got.is_none() {
            let now = cpu::try_rdmsr(msr).unwrap_or(!value);
            self.check_value(format_args!("RDMSR {msr:#x} after writing it"), now, value);
        }
        // SAFETY: the value read before.
        unsafe { cpu::try_wrmsr(msr, old) }.ok();
    }

    fn cpuid(&mut self) {
        let leaf = match self.rng.below(4) {
            0 => self.rng.below(0x20) as u32,
            1 => 0x8000_0000 + self.rng.below(0x20) as u32,
            2 => 0x4000_0000 + self.rng.below(0x20) as u32,
            _ => self.rng.next() as u32,
        };
        let sub = if self.rng.one_in(2) { 0 } else { self.rng.next() as u32 };
        let a = cpuid(leaf, sub);
        let b = cpuid(leaf, sub);
        if (a.eax, a.ebx, a.ecx, a.edx) != (b.eax, b.ebx, b.ecx, b.edx) {
            self.mismatch(format_args!("CPUID {leaf:#x}.{sub:#x} answered {a:x?} then {b:x?}"));
        }
        match leaf {
            // Leaf 1: ECX bit 5 VMX clear, bit 31 "hypervisor present" set, EBX[31:24] the
            // initial APIC ID, which is the vCPU index (the ABI).
            1 => {
                self.check_value(format_args!("CPUID 1 ECX VMX and hypervisor bits"), u64::from(a.ecx & (1 << 5 | 1 << 31)), 1 << 31);
                self.check_value(format_args!("CPUID 1 EBX[31:24]"), u64::from(a.ebx >> 24), u64::from(test_guests::boot::vcpu_id()));
            }
            // Leaf 0x8000_0001: ECX bit 2 SVM clear.
            0x8000_0001 => self.check_value(format_args!("CPUID 0x80000001 ECX SVM bit"), u64::from(a.ecx & 4), 0),
            _ => {}
        }
    }

    fn cr0(&mut self) {
        const PE: u64 = 1;
        const NW: u64 = 1 << 29;
        const CD: u64 = 1 << 30;
        const PG: u64 = 1 << 31;
        let cr0 = cpu::read_cr0();
        // MP, EM, TS, WP, AM, NW, CD, PG, PE, or a bit of 63:32.
        let bit = [1u64, 2, 3, 16, 18, 29, 30, 31, 0, 32 + self.rng.below(32)][self.rng.below(10) as usize];
        let new = cr0 ^ (1 << bit);
        let want = if new >> 32 != 0 || (new & PG != 0 && new & PE == 0) || (new & NW != 0 && new & CD == 0) || new & PG == 0 {
            GP0
        } else {
            OK
        };
        // SAFETY: the values that can succeed change caching, write protection of read-only
        // pages (this guest has none), alignment checks (CPL 3 only) and the x87/SSE traps
        // (this guest runs no x87 or SSE code); restored at once.
        let got = unsafe { guarded!("mov cr0, {v}", v = in(reg) new) };
        self.check(format_args!("MOV CR0 {cr0:#x} -> {new:#x}"), got, want);
        if got.is_none() {
            self.check_value(format_args!("CR0 after writing {new:#x}"), cpu::read_cr0(), new);
            // SAFETY: the original value.
            unsafe { guarded!("mov cr0, {v}", v = in(reg) cr0) };
        }
    }

    fn cr4(&mut self) {
        const PAE: u64 = 1 << 5;
        const LA57: u64 = 1 << 12;
        let cr4 = cpu::read_cr4();
        let bit = if self.rng.one_in(8) { 24 + self.rng.below(40) } else { self.rng.below(24) };
        let new = cr4 ^ (1 << bit);
        let reserved = new & !(self.f.cr4_allowed | cr4) != 0;
        // CET needs CR0.WP (set here); PCIDE needs CR3[11:0] = 0 (it is: CR3 = 0x70000).
        let want = if reserved || new & PAE == 0 || (new ^ cr4) & LA57 != 0 { GP0 } else { OK };
        // SAFETY: the values that can succeed toggle features this guest does not rely on
        // (its pages are supervisor pages, so SMEP/SMAP change nothing; no PKRU, no user
        // mode, no x87/SSE); restored at once.
        let got = unsafe { cpu::try_write_cr4(new) }.err();
        self.check(format_args!("MOV CR4 {cr4:#x} -> {new:#x} (bit {bit})"), got, want);
        if got.is_none() {
            self.check_value(format_args!("CR4 after writing {new:#x}"), cpu::read_cr4(), new);
            // SAFETY: the original value.
            unsafe { cpu::try_write_cr4(cr4) }.ok();
        }
    }

    fn cr8(&mut self) {
        let v = self.rng.below(32);
        // SAFETY: the task priority only holds back interrupts until it is set to 0 again.
        let got = unsafe { guarded!("mov cr8, {v}", v = in(reg) v) };
        // Quirk (QEMU 7.2 TCG, MOV CR8 without a VM exit under SVM's V_INTR_MASKING): no #GP
        // for bits 63:4, which are dropped.
        let quirk = v > 15 && got.is_none();
        self.check_quirk(format_args!("MOV CR8 {v}"), got, if v > 15 { GP0 } else { OK }, OK);
        if got.is_none() {
            let now: u64;
            // SAFETY: reads CR8.
            unsafe { asm!("mov {}, cr8", out(reg) now) };
            self.check_value(format_args!("CR8 after writing {v}"), now, if quirk { v & 15 } else { v });
        }
        // SAFETY: back to 0, every interrupt let through.
        unsafe { asm!("mov cr8, {}", in(reg) 0u64) };
    }

    fn dr(&mut self) {
        const DE: u64 = 1 << 3;
        let n = self.rng.below(8);
        let alias = if n == 4 || n == 5 { n + 2 } else { n };
        let de = cpu::read_cr4() & DE != 0;
        let value = match alias {
            0..=3 => canonical(self.rng.next()),
            // DR6/DR7: the low half without breakpoint enables or GD (which would make the
            // next MOV DR a #DB); sometimes a bit of 63:32, which is #GP(0).
            _ if self.rng.one_in(3) => 1 << (32 + self.rng.below(32)),
            6 => self.rng.next() & 0xFFFF_FFFF,
            _ => (self.rng.next() & 0xFFFF_DF00) | 0x400,
        };
        let want = if (n == 4 || n == 5) && de {
            UDF
        } else if alias >= 6 && value >> 32 != 0 {
            GP0
        } else {
            OK
        };
        // SAFETY: no breakpoint is enabled by any value written (DR7 L0-G3 and GD clear);
        // the registers are cleared again below.
        let got = unsafe {
            match n {
                0 => guarded!("mov dr0, {v}", v = in(reg) value),
                1 => guarded!("mov dr1, {v}", v = in(reg) value),
                2 => guarded!("mov dr2, {v}", v = in(reg) value),
                3 => guarded!("mov dr3, {v}", v = in(reg) value),
                4 => guarded!("mov dr4, {v}", v = in(reg) value),
                5 => guarded!("mov dr5, {v}", v = in(reg) value),
                6 => guarded!("mov dr6, {v}", v = in(reg) value),
                _ => guarded!("mov dr7, {v}", v = in(reg) value),
            }
        };
        self.check(format_args!("MOV DR{n} <- {value:#x}"), got, want);
        if got.is_none() && alias <= 3 {
            let now: u64;
            // SAFETY: reads the register just written.
            unsafe {
                match n {
                    0 => asm!("mov {}, dr0", out(reg) now),
                    1 => asm!("mov {}, dr1", out(reg) now),
                    2 => asm!("mov {}, dr2", out(reg) now),
                    _ => asm!("mov {}, dr3", out(reg) now),
                }
            }
            self.check_value(format_args!("DR{n} after writing it"), now, value);
        }
        // SAFETY: no breakpoints, as after reset (DR7 = 0x400).
        unsafe { asm!("mov dr7, {}", "mov dr0, {z}", "mov dr1, {z}", "mov dr2, {z}", "mov dr3, {z}", in(reg) 0x400u64, z = in(reg) 0u64) };
    }

    /// Whether XSETBV(0, value) is allowed: SDM Vol. 1 13.3 (x87 always; AVX needs SSE;
    /// AVX-512's three together and with AVX; MPX's two together; AMX's two together) and
    /// only supported components.
    fn xcr0_valid(&self, x: u64) -> bool {
        let all_or_none = |m: u64| x & m == m || x & m == 0;
        x & !self.f.xcr0_supported == 0
            && x & 1 != 0
            && (x & 4 == 0 || x & 2 != 0)
            && all_or_none(0xE0)
            && (x & 0xE0 == 0 || x & 4 != 0)
            && all_or_none(0x18)
            && all_or_none(0x6_0000)
    }

    fn xsetbv(&mut self) {
        const OSXSAVE: u64 = 1 << 18;
        let osxsave = cpu::read_cr4() & OSXSAVE != 0;
        let ecx: u32 = if self.rng.one_in(4) { 1 + self.rng.below(4) as u32 } else { 0 };
        let value = if self.rng.one_in(4) { self.rng.next() } else { self.rng.next() & (self.f.xcr0_supported | 1 << self.rng.below(64)) };
        let old = if osxsave { xgetbv() } else { 0 };
        let want = if !osxsave {
            UDF
        } else if ecx != 0 || !self.xcr0_valid(value) {
            GP0
        } else {
            OK
        };
        // SAFETY: this guest uses no x87/SSE/AVX state; the old XCR0 is restored below.
        let got = unsafe { guarded!("xsetbv", in("ecx") ecx, in("eax") value as u32, in("edx") (value >> 32) as u32) };
        self.check(format_args!("XSETBV {ecx} <- {value:#x}"), got, want);
        if got.is_none() {
            self.check_value(format_args!("XCR0 after XSETBV"), xgetbv(), value);
            // SAFETY: the value read before.
            unsafe { guarded!("xsetbv", in("ecx") 0, in("eax") old as u32, in("edx") (old >> 32) as u32) };
        }
    }

    fn cache(&mut self) {
        let addr = canonical(self.rng.next());
        // SAFETY: INVD is performed as WBINVD by Bastion (and this guest keeps nothing it
        // could lose in a cache line it did not write back: it runs under a hypervisor that
        // must not let it discard the host's); INVLPG only drops a translation.
        let got = unsafe {
            match self.rng.below(3) {
                0 => guarded!("invd"),
                1 => guarded!("wbinvd"),
                _ => guarded!("invlpg [{a}]", a = in(reg) addr),
            }
        };
        self.check(format_args!("INVD/WBINVD/INVLPG {addr:#x}"), got, OK);
    }

    fn rdpmc(&mut self) {
        let counter = if self.rng.one_in(2) { self.rng.below(8) as u32 } else { self.rng.next() as u32 };
        // SAFETY: reads a counter or faults.
        let got = unsafe { guarded!("rdpmc", in("ecx") counter, out("eax") _, out("edx") _) };
        self.check(format_args!("RDPMC {counter:#x}"), got, GP0);
    }

    fn rdtscp(&mut self) {
        let aux: u32;
        // SAFETY: reads the TSC and TSC_AUX or faults.
        let got = unsafe { guarded!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux) };
        self.check(format_args!("RDTSCP"), got, if self.f.rdtscp { OK } else { UDF });
        if got.is_none() {
            let want = cpu::try_rdmsr(0xC000_0103).unwrap_or(u64::MAX);
            self.check_value(format_args!("RDTSCP ECX (IA32_TSC_AUX)"), u64::from(aux), want);
        }
    }

    fn hypercall(&mut self) {
        let mut r = Regs::default();
        let function = match self.rng.below(4) {
            0 => 0,
            1 => 2 + self.rng.below(100),
            _ => self.rng.next() | 2,
        };
        r.rax = function;
        for x in [&mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11] {
            *x = self.rng.next();
        }
        let before = r;
        let got = cpu::hypercall(&mut r);
        self.check(format_args!("hypercall {function:#x}"), got, OK);
        if got.is_none() {
            if function == cpu::HC_VERSION {
                self.check_value(format_args!("hypercall VERSION: RBX"), r.rbx, cpu::HC_VERSION_MAGIC);
            } else {
                self.check_value(format_args!("hypercall {function:#x}: RAX"), r.rax, cpu::HC_UNKNOWN);
                // Nothing else changes (the ABI: an unknown function only answers in RAX).
                let changed = r.as_array().iter().zip(before.as_array()).skip(1).any(|(a, b)| *a != b);
                if changed {
                    self.mismatch(format_args!("hypercall {function:#x} changed registers other than RAX: {r:x?}"));
                }
            }
        }
        // The other vendor's instruction is #UD (VMCALL on AMD, VMMCALL on Intel: each is an
        // invalid opcode on the other's CPUs, SDM Vol. 2B VMCALL, APM Vol. 3 VMMCALL).
        // SAFETY: must fault.
        let other = unsafe { if self.f.intel { guarded!(".byte 0x0f, 0x01, 0xd9", in("rax") 0u64) } else { guarded!("vmcall", in("rax") 0u64) } };
        self.check(format_args!("the other vendor's hypercall instruction"), other, UDF);
    }

    fn virt_insn(&mut self) {
        #[repr(C, align(4096))]
        struct Page([u8; 4096]);
        static mut REGION: Page = Page([0; 4096]);
        let page = (&raw mut REGION) as u64;
        let which = self.rng.below(19);
        // SAFETY: each must raise #UD: VMX is off and hidden (VMXON needs CR4.VMXE, which
        // cannot be set; the others need VMX operation, SDM Vol. 3C 31.3), SVM is off and
        // hidden (EFER.SVME cannot be set, APM Vol. 2 15.4), VMFUNC needs VM functions
        // enabled by a hypervisor for this guest. Had one run, it could only touch `REGION`.
        let got = unsafe {
            match which {
                0 => guarded!("vmxon qword ptr [{p}]", p = in(reg) &page),
                1 => guarded!("vmxoff"),
                2 => guarded!("vmclear qword ptr [{p}]", p = in(reg) &page),
                3 => guarded!("vmptrld qword ptr [{p}]", p = in(reg) &page),
                4 => guarded!("vmptrst qword ptr [{p}]", p = in(reg) page),
                5 => guarded!("vmread {v}, {f}", f = in(reg) 0x681Eu64, v = out(reg) _),
                6 => guarded!("vmwrite {f}, {v}", f = in(reg) 0x681Eu64, v = in(reg) 0u64),
                7 => guarded!("vmlaunch"),
                8 => guarded!("vmresume"),
                9 => guarded!("invept {r}, [{p}]", r = in(reg) 1u64, p = in(reg) page),
                10 => guarded!("invvpid {r}, [{p}]", r = in(reg) 1u64, p = in(reg) page),
                11 => guarded!(".byte 0x0f, 0x01, 0xd4", in("eax") 0u32, in("ecx") 0u32), // VMFUNC
                12 => guarded!(".byte 0x0f, 0x01, 0xd8", in("rax") page),                 // VMRUN
                13 => guarded!(".byte 0x0f, 0x01, 0xda", in("rax") page),                 // VMLOAD
                14 => guarded!(".byte 0x0f, 0x01, 0xdb", in("rax") page),                 // VMSAVE
                15 => guarded!(".byte 0x0f, 0x01, 0xdc"),                                 // STGI
                16 => guarded!(".byte 0x0f, 0x01, 0xdd"),                                 // CLGI
                17 => guarded!(".byte 0x0f, 0x01, 0xde", in("eax") page as u32),          // SKINIT
                _ => guarded!(".byte 0x0f, 0x01, 0xdf", in("rax") page, in("ecx") 0u32),  // INVLPGA
            }
        };
        const NAMES: [&str; 19] = [
            "VMXON", "VMXOFF", "VMCLEAR", "VMPTRLD", "VMPTRST", "VMREAD", "VMWRITE", "VMLAUNCH", "VMRESUME", "INVEPT", "INVVPID",
            "VMFUNC", "VMRUN", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "INVLPGA",
        ];
        self.check(format_args!("{}", NAMES[which as usize]), got, UDF);
    }

    fn int_n(&mut self) {
        let vector = 32 + self.rng.below(224) as u8;
        let installed = usize::from(vector) < interrupts::VECTORS;
        let before = if installed { taken(vector) } else { 0 };
        // INT imm8: the vector is part of the instruction, so each is its own encoding: run
        // it from a two-byte stub written for this vector (the self-modifying-code path).
        let got = run_int(vector);
        // Beyond the IDT's limit: #GP with the entry's index * 8 + 2 (IDT bit) as error code.
        let want = if installed { OK } else { Some((GP, Some(u64::from(vector) * 8 + 2))) };
        // Quirk (QEMU 7.2 TCG, `do_interrupt64`): the error code's index is the gate's byte
        // offset / 8, twice the vector, for 16-byte long-mode gates.
        let quirk = Some((GP, Some(u64::from(vector) * 16 + 2)));
        self.check_quirk(format_args!("INT {vector:#x}"), got, want, quirk);
        if installed {
            self.check_value(format_args!("INT {vector:#x}: handler runs"), taken(vector) - before, 1);
        }
    }

    fn desc_tables(&mut self) {
        #[repr(C, packed)]
        #[derive(Default)]
        struct Dtr {
            limit: u16,
            base: u64,
        }
        let (mut gdt, mut idt) = (Dtr::default(), Dtr::default());
        let junk = Dtr { limit: self.rng.next() as u16, base: canonical(self.rng.next()) };
        let (pg, pi, pj) = (&raw mut gdt, &raw mut idt, &raw const junk);
        // SAFETY: interrupts are off and nothing between the junk load and the restore can
        // fault or load a segment, so the junk table is never used.
        let got = unsafe {
            asm!("sgdt [{}]", "sidt [{}]", in(reg) pg, in(reg) pi);
            if self.rng.one_in(2) {
                guarded!("lgdt [{j}]\n lgdt [{g}]", j = in(reg) pj, g = in(reg) pg)
            } else {
                guarded!("lidt [{j}]\n lidt [{i}]", j = in(reg) pj, i = in(reg) pi)
            }
        };
        self.check(format_args!("LGDT/LIDT junk then the real table"), got, OK);
    }

    fn sti_cli(&mut self) {
        let n = 1 + self.rng.below(64);
        for _ in 0..n {
            // SAFETY: nothing is programmed to interrupt but the APIC timer, whose handler
            // only counts; interrupts are disabled again after each pair.
            unsafe { asm!("sti", "nop", "cli") };
        }
    }

    fn halt(&mut self) {
        const LVT_TIMER: u64 = 0x320;
        const TIMER_INITIAL: u64 = 0x380;
        const TIMER_DIVIDE: u64 = 0x3E0;
        let before = taken(TIMER_VECTOR);
        apic::write(TIMER_DIVIDE, 0xB); // divide by 1
        apic::write(LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot
        apic::write(TIMER_INITIAL, 1000 + self.rng.below(100_000) as u32);
        // A HLT can end without the interrupt (SDM Vol. 2A HLT): wait until it came.
        let came = cpu::wait_until(5, || {
            interrupts::halt_until_interrupt();
            taken(TIMER_VECTOR) != before
        });
        if !came {
            self.mismatch(format_args!("HLT: the local APIC timer's interrupt did not come within 5 s"));
        }
        self.check_value(format_args!("one-shot timer interrupts per HLT"), taken(TIMER_VECTOR) - before, 1);
    }

    fn uart(&mut self) {
        use test_guests::serial::{COM1, IER, LCR, MCR};
        const SCR: u16 = COM1 + 7;
        // SAFETY (all port I/O here): this guest's own UART; the line settings are restored
        // before the next line is printed.
        let (ier, lcr, mcr) = (cpu::inb(IER), cpu::inb(LCR), cpu::inb(MCR));
        cpu::outb(LCR, lcr | 0x80);
        let (dll, dlm) = (cpu::inb(COM1), cpu::inb(COM1 + 1));
        for _ in 0..1 + self.rng.below(6) {
            let v = self.rng.next() as u8;
            match self.rng.below(6) {
                0 => cpu::outb(IER, v & 0x0F),
                1 => cpu::outb(LCR, v),
                2 => cpu::outb(MCR, v),
                3 => cpu::outb(COM1 + 2, v), // FCR
                4 => {
                    cpu::outb(LCR, lcr | 0x80);
                    cpu::outb(COM1, v);
                    cpu::outb(COM1 + 1, v);
                }
                _ => {
                    cpu::outb(SCR, v);
                    self.check_value(format_args!("16550 scratch register"), u64::from(cpu::inb(SCR)), u64::from(v));
                }
            }
        }
        cpu::outb(LCR, lcr | 0x80);
        cpu::outb(COM1, dll);
        cpu::outb(COM1 + 1, dlm);
        cpu::outb(LCR, lcr);
        cpu::outb(COM1 + 2, 0); // FIFOs off, as after reset
        cpu::outb(MCR, mcr);
        cpu::outb(IER, ier);
    }

    fn lapic(&mut self) {
        const TPR: u64 = 0x80;
        const ESR: u64 = 0x280;
        const LVT: [u64; 4] = [0x320, 0x350, 0x360, 0x370]; // timer, LINT0, LINT1, error
        let reg = self.rng.below(5);
        let v = self.rng.next() as u32;
        match reg {
            0 => {
                let old = apic::read(TPR);
                apic::write(TPR, v);
                // The TPR keeps bits 7:0 (SDM Vol. 3A 11.8.3.1, Figure 11-18).
                self.check_value(format_args!("local APIC TPR"), u64::from(apic::read(TPR)), u64::from(v & 0xFF));
                apic::write(TPR, old);
            }
            1 => {
                let (ldr, dfr) = (apic::read(apic::LDR), apic::read(apic::DFR));
                apic::write(apic::LDR, v);
                apic::write(apic::DFR, v | 0x0FFF_FFFF);
                apic::write(apic::LDR, ldr);
                apic::write(apic::DFR, dfr);
            }
            2 => {
                // Masked (bit 16), so nothing fires from it.
                let i = self.rng.below(4) as usize;
                let old = apic::read(LVT[i]);
                apic::write(LVT[i], v | 1 << 16);
                apic::write(LVT[i], old);
            }
            3 => {
                apic::write(ESR, v);
                apic::write(ESR, 0);
            }
            _ => {
                // SVR: a random spurious vector, the APIC kept enabled (bit 8).
                let old = apic::read(apic::SVR);
                apic::write(apic::SVR, (v | 0x100) & 0x1FF | 0x0F);
                apic::write(apic::SVR, old);
            }
        }
    }

    fn ioapic(&mut self) {
        const IOAPIC: u64 = 0xFEC0_0000;
        let sel = |r: u32| {
            // SAFETY: the I/O APIC's select and window registers (82093AA 3.1), identity-mapped.
            unsafe { core::ptr::write_volatile(IOAPIC as *mut u32, r) }
        };
        let read = |r: u32| {
            sel(r);
            // SAFETY: as above.
            unsafe { core::ptr::read_volatile((IOAPIC + 0x10) as *const u32) }
        };
        let write = |r: u32, v: u32| {
            sel(r);
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile((IOAPIC + 0x10) as *mut u32, v) }
        };
        let v = self.rng.next() as u32;
        if self.rng.one_in(3) {
            // IOAPICVER is read-only.
            let ver = read(1);
            write(1, v);
            self.check_value(format_args!("I/O APIC version after a write"), u64::from(read(1)), u64::from(ver));
        } else {
            // A redirection entry's low half (0x10 + 2n), masked so it never fires.
            let r = 0x10 + 2 * self.rng.below(24) as u32;
            let old = read(r);
            write(r, v | 1 << 16);
            write(r, old);
        }
        // A random register index, read: whatever it answers, no fault.
        let _ = read(self.rng.next() as u32 & 0xFF);
    }

    fn mmio(&mut self) {
        // The device hole 0xC0000000..4 GiB without the I/O APIC's and local APIC's pages.
        let addr = loop {
            let a = 0xC000_0000 + self.rng.below(0x4000_0000 - 8);
            if !(0xFEC0_0000..0xFEC0_1000).contains(&a) && !(0xFEE0_0000..0xFEE0_1000).contains(&a) {
                break a & !7;
            }
        };
        let size = [1u64, 2, 4, 8][self.rng.below(4) as usize];
        let write = self.rng.one_in(2);
        let v = self.rng.next();
        let mut got = 0u64;
        // SAFETY: identity-mapped device space where no device lives: reads all ones, writes
        // go nowhere (Bastion's memory map); aligned accesses.
        unsafe {
            match (size, write) {
                (1, false) => got = u64::from(core::ptr::read_volatile(addr as *const u8)),
                (2, false) => got = u64::from(core::ptr::read_volatile(addr as *const u16)),
                (4, false) => got = u64::from(core::ptr::read_volatile(addr as *const u32)),
                (8, false) => got = core::ptr::read_volatile(addr as *const u64),
                (1, true) => core::ptr::write_volatile(addr as *mut u8, v as u8),
                (2, true) => core::ptr::write_volatile(addr as *mut u16, v as u16),
                (4, true) => core::ptr::write_volatile(addr as *mut u32, v as u32),
                _ => core::ptr::write_volatile(addr as *mut u64, v),
            }
        }
        if !write {
            let ones = if size == 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 };
            self.check_value(format_args!("read of {size} bytes at {addr:#x} (no device)"), got, ones);
        }
    }

    fn smc(&mut self) {
        let a = self.rng.next() as u32;
        let b = self.rng.next() as u32;
        let first = run_mov_eax(a);
        let second = run_mov_eax(b);
        self.check_value(format_args!("self-modifying code: first run"), u64::from(first), u64::from(a));
        self.check_value(format_args!("self-modifying code: rewritten"), u64::from(second), u64::from(b));
    }
}

fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV 0 with CR4.OSXSAVE set (the callers check).
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Code written at run time (an identity-mapped, writable and executable page of .bss).
#[repr(C, align(4096))]
struct CodePage([u8; 4096]);
static mut CODE: CodePage = CodePage([0; 4096]);

/// Writes `mov eax, imm32; ret` and calls it: SDM Vol. 3A 11.6, a write to code followed by
/// a near call executes what was written.
fn run_mov_eax(imm: u32) -> u32 {
    let code = (&raw mut CODE).cast::<u8>();
    let bytes = imm.to_le_bytes();
    for (i, b) in [0xB8, bytes[0], bytes[1], bytes[2], bytes[3], 0xC3].into_iter().enumerate() {
        // SAFETY: our own page.
        unsafe { code.add(i).write_volatile(b) };
    }
    let out: u32;
    // SAFETY: calls the six bytes just written, which only set EAX and return.
    unsafe { asm!("call {c}", c = in(reg) code, out("eax") out) };
    out
}

/// Writes `int imm8; ret` at the code page's second half and calls it. The call's return
/// address is the resume address too: a fault in the stub (a gate past the IDT limit) comes
/// back there with the return address still pushed, and the stack pointer saved in RBX
/// (which the asm keeps) puts the stack back either way.
fn run_int(vector: u8) -> Option<Fault> {
    // SAFETY: our own page.
    let code = unsafe { (&raw mut CODE).cast::<u8>().add(2048) };
    for (i, b) in [0xCD, vector, 0xC3].into_iter().enumerate() {
        // SAFETY: our own page.
        unsafe { code.add(i).write_volatile(b) };
    }
    let slot = test_guests::exceptions::arm();
    // SAFETY: runs INT n, whose gate is this guest's handler (which changes no register) or
    // absent (#GP, resumed at label 2); only the stack below RSP is used.
    unsafe {
        asm!(
            "push rbx",
            "mov rbx, rsp",
            "lea {t}, [rip + 2f]",
            "mov qword ptr [{resume}], {t}",
            "call {c}",
            "2:",
            "mov rsp, rbx",
            "pop rbx",
            "mov qword ptr [{resume}], 0",
            resume = in(reg) slot.resume(),
            c = in(reg) code,
            t = out(reg) _,
        )
    };
    test_guests::exceptions::take_fault(slot)
}

/// `key=value` from the Multiboot command line.
fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn main() -> u32 {
    let cmdline = test_guests::boot::multiboot_cmdline().unwrap_or("");
    let seed = arg(cmdline, "seed").and_then(|s| s.parse().ok()).unwrap_or(1u64);
    let ops = arg(cmdline, "ops").and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_OPS);
    let end = arg(cmdline, "end");
    say!("seed {seed} ops {ops}");
    interrupts::install(on_interrupt);
    apic::write(apic::SVR, 0x1FF);
    let mut b = Battery {
        rng: Rng(seed),
        f: Features::read(),
        op: 0,
        kind: 0,
        faults: 0,
        mismatches: 0,
        quirks: 0,
        count: [0; KINDS.len()],
        faults_of: [0; KINDS.len()],
        trace: arg(cmdline, "trace") == Some("1"),
        skip: arg(cmdline, "skip").map_or(0, |list| {
            list.split(',').filter_map(|k| KINDS.iter().position(|(_, name)| *name == k)).fold(0, |m, i| m | 1 << i)
        }),
    };
    while b.op < ops {
        b.run_one();
        b.op += 1;
        if b.op % 10_000 == 0 {
            say!("{} ops {} faults", b.op, b.faults);
        }
    }
    for (i, (_, name)) in KINDS.iter().enumerate() {
        say!("op {name} count {} faults {}", b.count[i], b.faults_of[i]);
    }
    say!("done ops={} faults={} mismatches={} quirks={}", b.op, b.faults, b.mismatches, b.quirks);
    match end {
        Some("triple") => {
            say!("ending with a triple fault");
            let idtr = [0u16; 5];
            // SAFETY: an IDT of limit 0: the next exception cannot be delivered, nor the #GP
            // and #DF that follow: a triple fault (SDM Vol. 3A 6.15, interrupt 8).
            unsafe { asm!("lidt [{}]", "int3", in(reg) &idtr, options(noreturn)) }
        }
        Some("far") => {
            say!("reading past RAM at 0x80000000");
            // SAFETY: identity-mapped; past the guest's RAM and below the device hole the
            // hypervisor has nothing to answer with and must stop the guest.
            let v = unsafe { core::ptr::read_volatile(0x8000_0000 as *const u64) };
            say!("FAIL the read past RAM returned {v:#x}");
            1
        }
        _ => u32::from(b.mismatches != 0),
    }
}

