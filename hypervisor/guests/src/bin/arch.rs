//! Test guest `arch`: architectural answers that must be the same under VMX and SVM, one check
//! per finding of the issue "A real vCPU" (each line `arch: PASS <what>` or `arch: FAIL ...`,
//! then `arch: <n> passed, <m> failed` and the test exit).
//!
//! vCPU 0 checks, in 64-bit mode:
//! - CR4: a reserved bit (15) and VMXE (13, VMX is hidden) raise #GP (SDM Vol. 3A 2.5);
//! - CR0: NW without CD, bit 32, and clearing PG in 64-bit mode raise #GP (SDM MOV CR);
//! - EFER: clearing LME while paging is on raises #GP (SDM Vol. 3A 10.8.5);
//! - XSETBV: with XSAVE, x87|SSE loads and reads back, x87-less and ECX = 1 raise #GP; without
//!   XSAVE, CR4.OSXSAVE cannot be set (SDM XSETBV, 2.5);
//! - INVD completes (the hypervisor performs it as WBINVD);
//! - WRMSR IA32_TSC is allowed and RDTSC continues from the written value (SDM Vol. 3A 18.17);
//! - REP OUTSB prints a line through the UART, REP INSB from an unclaimed port stores all
//!   ones, and RSI/RDI/RCX end where the SDM says (INS/OUTS);
//! - an interrupt raised by another vCPU's device access wakes this halted vCPU: vCPU 1 turns
//!   on the UART's transmitter-empty interrupt while vCPU 0 sleeps in `sti; hlt`, and the
//!   IRQ 4 that follows must reach vCPU 0;
//! - kvmclock: the KVM signature at CPUID 0x40000100 with CLOCKSOURCE2 and the stable bit, a
//!   pvclock structure whose time advances at the TSC rate CPUID reports (0.1 %), a wall
//!   clock after 2020 (Linux's kvmclock ABI, Documentation/virt/kvm/x86/msr.rst);
//! - the CMOS RTC at ports 0x70/0x71 shows the host's date (BCD, 24-hour, as a BIOS leaves
//!   it; a year from 2025 on) and agrees with kvmclock's wall clock to 2 s.
//!
//! Needs 2 vCPUs (with one, the wake check fails after 2 s of TSC time).
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use test_guests::cpu::{self, cpuid, outb, rdtsc};
use test_guests::exceptions::{GP, UD};
use test_guests::interrupts::{self, IRQ_BASE};
use test_guests::serial::{IER, IIR, MCR};
use test_guests::{pic, Checks};

test_guests::guest!(name = "arch", main = main);

/// vCPU 0 is about to sleep (1), or has been woken by IRQ 4 (2).
static STAGE: AtomicU32 = AtomicU32::new(0);
static IRQ4: AtomicU32 = AtomicU32::new(0);

fn main(vcpu: u32) -> u32 {
    if vcpu == 1 {
        trigger_from_vcpu1();
        cpu::park();
    }
    if vcpu != 0 {
        cpu::park();
    }
    // First, so that a hypervisor failing a check below still gives the figure.
    exit_cost();
    let mut c = Checks::new();
    control_registers(&mut c);
    xsetbv(&mut c);
    invd_and_tsc(&mut c);
    string_io(&mut c);
    wake_by_other_vcpu(&mut c);
    kvm_clock(&mut c);
    rtc(&mut c);
    c.finish()
}

/// Prints the average TSC cycles of a CPUID (a VM exit round trip under a hypervisor) and of
/// an OUT to an unclaimed port, over 1000 each: a figure for the exit path's length (Bochs
/// advances its TSC with executed instructions, so there it counts instructions).
fn exit_cost() {
    const N: u64 = 1000;
    let t0 = rdtsc();
    for _ in 0..N {
        core::hint::black_box(cpuid(0, 0));
    }
    let t1 = rdtsc();
    for _ in 0..N {
        outb(0x80, 0);
    }
    let t2 = rdtsc();
    test_guests::say!("exit cost: CPUID {} TSC cycles, OUT {} TSC cycles (average of {N})", (t1 - t0) / N, (t2 - t1) / N);
}

fn expect_fault(c: &mut Checks, what: &str, got: Option<test_guests::exceptions::Fault>, vector: u8) {
    match got {
        Some(f) if f.vector == vector => c.pass(what),
        Some(f) => c.fail(what, format_args!("raised {f}, expected vector {vector}")),
        None => c.fail(what, format_args!("completed, expected vector {vector}")),
    }
}

fn control_registers(c: &mut Checks) {
    let cr4 = cpu::read_cr4();
    // SAFETY (all below): each write is refused by the CPU (the check is that it faults); if it
    // were accepted, the value differs from the current one only in a bit this guest does
    // not depend on... except the CR0/EFER ones, whose acceptance would end the guest (and
    // so fail the test) anyway.
    let f = unsafe { cpu::try_write_cr4(cr4 | (1 << 15)) };
    expect_fault(c, "MOV CR4 with reserved bit 15 raises #GP", f.err(), GP);
    let f = unsafe { cpu::try_write_cr4(cr4 | (1 << 13)) };
    expect_fault(c, "MOV CR4 with VMXE (VMX hidden) raises #GP", f.err(), GP);
    let cr0 = cpu::read_cr0();
    let nw = (cr0 | (1 << 29)) & !(1 << 30);
    let f = unsafe { test_guests::guarded!("mov cr0, {v}", v = in(reg) nw) };
    expect_fault(c, "MOV CR0 with NW but not CD raises #GP", f, GP);
    let f = unsafe { test_guests::guarded!("mov cr0, {v}", v = in(reg) cr0 | (1 << 32)) };
    expect_fault(c, "MOV CR0 with bit 32 raises #GP", f, GP);
    let f = unsafe { test_guests::guarded!("mov cr0, {v}", v = in(reg) cr0 & !(1 << 31)) };
    expect_fault(c, "clearing CR0.PG in 64-bit mode raises #GP", f, GP);
    let efer = cpu::try_rdmsr(cpu::IA32_EFER).unwrap_or(0);
    let f = unsafe { cpu::try_wrmsr(cpu::IA32_EFER, efer & !(1 << 8)) };
    expect_fault(c, "clearing EFER.LME while paging is on raises #GP", f.err(), GP);
    c.expect_eq("CR0 unchanged after the refused writes", cpu::read_cr0(), cr0);
}

fn xsetbv(c: &mut Checks) {
    let has_xsave = cpuid(1, 0).ecx & (1 << 26) != 0;
    let cr4 = cpu::read_cr4();
    // SAFETY: CR4.OSXSAVE only enables XSETBV/XGETBV and XSAVE*.
    let set = unsafe { cpu::try_write_cr4(cr4 | (1 << 18)) };
    if !has_xsave {
        expect_fault(c, "CR4.OSXSAVE without XSAVE raises #GP", set.err(), GP);
        return;
    }
    if let Err(f) = set {
        return c.fail("CR4.OSXSAVE with XSAVE", format_args!("raised {f}"));
    }
    // SAFETY (the XSETBVs): x87|SSE is valid; the others must fault and change nothing.
    let f = unsafe { test_guests::guarded!("xsetbv", in("ecx") 0u32, in("eax") 3u32, in("edx") 0u32) };
    match f {
        None => {
            let (lo, hi): (u32, u32);
            // SAFETY: XGETBV(0) with CR4.OSXSAVE set.
            unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
            c.expect_eq("XSETBV x87|SSE loads XCR0", u64::from(hi) << 32 | u64::from(lo), 3);
        }
        Some(f) => c.fail("XSETBV x87|SSE", format_args!("raised {f}")),
    }
    let f = unsafe { test_guests::guarded!("xsetbv", in("ecx") 0u32, in("eax") 2u32, in("edx") 0u32) };
    expect_fault(c, "XSETBV without x87 raises #GP", f, GP);
    let f = unsafe { test_guests::guarded!("xsetbv", in("ecx") 1u32, in("eax") 3u32, in("edx") 0u32) };
    expect_fault(c, "XSETBV of XCR1 raises #GP", f, GP);
    // SAFETY: turning OSXSAVE back off; XSETBV then raises #UD (SDM XSETBV).
    let _ = unsafe { cpu::try_write_cr4(cr4) };
    let f = unsafe { test_guests::guarded!("xsetbv", in("ecx") 0u32, in("eax") 3u32, in("edx") 0u32) };
    expect_fault(c, "XSETBV with CR4.OSXSAVE clear raises #UD", f, UD);
}

fn invd_and_tsc(c: &mut Checks) {
    // SAFETY: this guest keeps nothing in caches that is not also in memory it reads again…
    // and the hypervisor writes back anyway.
    match unsafe { test_guests::guarded!("invd") } {
        None => c.pass("INVD completes"),
        Some(f) => c.fail("INVD completes", format_args!("raised {f}")),
    }
    const T: u64 = 1 << 40;
    // SAFETY: moving the guest's TSC; nothing here depends on its absolute value.
    match unsafe { cpu::try_wrmsr(0x10, T) } {
        Ok(()) => {
            let now = rdtsc();
            if (T..T + (1 << 36)).contains(&now) {
                c.pass("WRMSR IA32_TSC sets the TSC RDTSC reads");
            } else {
                c.fail("WRMSR IA32_TSC sets the TSC RDTSC reads", format_args!("wrote {T:#x}, then read {now:#x}"));
            }
        }
        Err(f) => c.fail("WRMSR IA32_TSC is allowed", format_args!("raised {f}")),
    }
}

fn string_io(c: &mut Checks) {
    // Exactly a FIFO's worth, written with the FIFOs on and the transmitter empty: REP OUTSB
    // does not look at LSR.THRE, so a longer string would lose bytes whenever the hypervisor's
    // console is busy, as on the chip (PC16550D: 16-byte transmitter FIFO; LSR bit 6, TEMT,
    // says it and the shift register are empty).
    let line = b"arch: rep outsb\n";
    const _: () = assert!(b"arch: rep outsb\n".len() == 16);
    let (mut rsi, mut rcx) = (line.as_ptr() as u64, line.len() as u64);
    {
        use test_guests::serial::{FCR, LSR};
        let _l = test_guests::serial::LineLock::take();
        cpu::outb(FCR, 0x07); // FIFOs on, both cleared
        let empty = cpu::wait_until(5, || cpu::inb(LSR) & 0x40 != 0);
        // SAFETY: reads `line`, writes the UART; DF is clear (the Rust ABI keeps it so).
        unsafe { asm!("rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") 0x3f8u16, options(nostack, readonly)) };
        cpu::wait_until(5, || cpu::inb(LSR) & 0x40 != 0);
        cpu::outb(FCR, 0); // back to the reset state the rest of the guest prints in
        if !empty {
            drop(_l);
            c.fail("the UART's transmitter empties", "LSR.TEMT stayed clear for 5 s");
        }
    }
    if rcx == 0 && rsi == line.as_ptr() as u64 + line.len() as u64 {
        c.pass("REP OUTSB ends with RCX = 0 and RSI past the string");
    } else {
        c.fail("REP OUTSB registers", format_args!("RCX {rcx}, RSI {rsi:#x}"));
    }
    let mut buf = [0u8; 8];
    let (mut rdi, mut rcx) = (buf.as_mut_ptr() as u64, 6u64);
    // SAFETY: writes 6 bytes into `buf`.
    unsafe { asm!("rep insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") 0x1234u16, options(nostack)) };
    if buf == [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0] && rcx == 0 && rdi == buf.as_ptr() as u64 + 6 {
        c.pass("REP INSB from an unclaimed port stores all ones");
    } else {
        c.fail("REP INSB from an unclaimed port", format_args!("{buf:?}, RCX {rcx}"));
    }
}

fn irq_handler(vector: u8) {
    if vector == IRQ_BASE + 4 {
        // Reading IIR clears a transmitter-empty interrupt (PC16550D, "IIR"); turn it off.
        let _ = cpu::inb(IIR);
        outb(IER, 0);
        IRQ4.fetch_add(1, SeqCst);
    }
    pic::eoi(vector - IRQ_BASE);
}

fn wake_by_other_vcpu(c: &mut Checks) {
    let what = "an interrupt raised by vCPU 1's device access wakes halted vCPU 0";
    // Give up after 2 s of TSC time (the rate from Bastion's timing leaf).
    let limit = u64::from(cpuid(0x4000_0010, 0).eax).max(1_000_000) * 2000;
    interrupts::install(irq_handler);
    pic::init(IRQ_BASE, IRQ_BASE + 8, !(1 << 4), 0xff);
    outb(IER, 0);
    outb(MCR, 0x0b); // DTR, RTS, OUT2: the UART's interrupt reaches the PIC
    STAGE.store(1, SeqCst);
    let start = rdtsc();
    while IRQ4.load(SeqCst) == 0 {
        interrupts::halt_until_interrupt();
        if rdtsc().wrapping_sub(start) > limit {
            break;
        }
    }
    STAGE.store(2, SeqCst);
    if IRQ4.load(SeqCst) > 0 {
        c.pass(what);
    } else {
        c.fail(what, "no IRQ 4");
    }
}

/// vCPU 1: once vCPU 0 sleeps, enable the UART's transmitter-empty interrupt (THR is empty,
/// so the interrupt is raised at once).
fn trigger_from_vcpu1() {
    while STAGE.load(SeqCst) == 0 {
        core::hint::spin_loop();
    }
    // Give vCPU 0 time to reach its HLT: the wake-up, not the delivery to a running vCPU, is
    // what is checked.
    cpu::wait_tsc(2_000_000);
    outb(IER, 0x02);
}

/// The KVM-compatible clock (Linux's kvmclock ABI, `Documentation/virt/kvm/x86/msr.rst`): the
/// signature at 0x40000100 offers CLOCKSOURCE2 and the stable bit; enabling
/// MSR_KVM_SYSTEM_TIME_NEW fills a pvclock_vcpu_time_info whose time advances with the TSC at
/// the rate CPUID 0x40000010 reports; the wall clock is a date after 2020.
fn kvm_clock(c: &mut Checks) {
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static mut PAGE: Page = Page([0; 4096]);
    let sig = cpuid(0x4000_0100, 0);
    let bytes: [[u8; 4]; 3] = [sig.ebx.to_le_bytes(), sig.ecx.to_le_bytes(), sig.edx.to_le_bytes()];
    if *bytes.as_flattened() != *b"KVMKVMKVM\0\0\0" {
        return c.fail("KVM signature at CPUID 0x40000100", format_args!("{:x?}", bytes));
    }
    c.pass("KVM signature at CPUID 0x40000100");
    c.expect_eq("KVM features: CLOCKSOURCE2, PV_EOI and the stable bit", u64::from(cpuid(0x4000_0101, 0).eax), (1 << 3) | (1 << 6) | (1 << 24));
    // The page is this guest's own, written only by the hypervisor through the MSRs.
    let page = core::ptr::addr_of_mut!(PAGE) as u64;
    // SAFETY: the kvmclock MSRs only make the hypervisor write into the page given.
    let set = unsafe { cpu::try_wrmsr(0x4b56_4d01, page | 1).and(cpu::try_wrmsr(0x4b56_4d00, page + 64)) };
    if let Err(f) = set {
        return c.fail("kvmclock MSRs accept a page", format_args!("raised {f}"));
    }
    // SAFETY: reading what the hypervisor wrote; volatile, as another agent wrote it.
    let rd = |off: u64, n: usize| -> u64 {
        let mut v = 0u64;
        for i in 0..n as u64 {
            v |= u64::from(unsafe { core::ptr::read_volatile((page + off + i) as *const u8) }) << (8 * i);
        }
        v
    };
    c.expect_eq("pvclock version is even", rd(0, 4) & 1, 0);
    c.expect_eq("pvclock flags: TSC stable", rd(29, 1), 1);
    let (ts, sys, mul, shift) = (rd(8, 8), rd(16, 8), rd(24, 4), rd(28, 1) as u8 as i8);
    let time = |tsc: u64| {
        let d = tsc.wrapping_sub(ts);
        let d = if shift >= 0 { d << shift } else { d >> (-shift) };
        sys + ((u128::from(d) * u128::from(mul)) >> 32) as u64
    };
    let khz = u64::from(cpuid(0x4000_0010, 0).eax).max(1);
    let t0 = rdtsc();
    cpu::wait_tsc(khz * 20); // 20 ms of TSC
    let t1 = rdtsc();
    let (a, b) = (time(t0), time(t1));
    // The ticks waited at the reported rate: the clock must say as much, to 0.1 %.
    let expected_us = (t1 - t0) * 1000 / khz;
    let ms_x1000 = (b - a) / 1000 * 20_000 / expected_us.max(1);
    if (19_980..=20_020).contains(&ms_x1000) {
        c.pass(format_args!("kvmclock agrees with the TSC rate: {}.{:03} ms per 20 ms of ticks", ms_x1000 / 1000, ms_x1000 % 1000));
    } else {
        c.fail("kvmclock advances at the TSC rate", format_args!("{} us per 20 ms of ticks", ms_x1000));
    }
    let wall = rd(64 + 4, 4);
    // 2020-01-01 is Unix 1577836800: the host clock is read from its RTC.
    if wall > 1_577_836_800 {
        c.pass("kvmclock wall clock is after 2020");
    } else {
        c.fail("kvmclock wall clock is after 2020", format_args!("{wall}"));
    }
}

/// The guest's CMOS RTC (MC146818A, "Time, Calendar, and Alarm Locations"), read when no
/// update is in progress (register A bit 7), shows the host's date and time.
fn rtc(c: &mut Checks) {
    let reg = |i: u8| {
        outb(0x70, i);
        test_guests::cpu::inb(0x71)
    };
    while reg(0x0a) & 0x80 != 0 {
        core::hint::spin_loop();
    }
    let bcd = |v: u8| u64::from(v >> 4) * 10 + u64::from(v & 0xf);
    let (sec, min, hour, day, month, year, century) =
        (bcd(reg(0)), bcd(reg(2)), bcd(reg(4)), bcd(reg(7)), bcd(reg(8)), bcd(reg(9)), bcd(reg(0x32)));
    c.expect_eq("RTC register B: BCD, 24-hour", u64::from(reg(0x0b) & 0x06), 0x02);
    let y = century * 100 + year;
    if !(2025..2100).contains(&y) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return c.fail("RTC shows the host's date", format_args!("{y}-{month}-{day}"));
    }
    c.pass(format_args!("RTC shows {y:04}-{month:02}-{day:02} {hour:02}:{min:02}:{sec:02}"));
    // Days since 1970 (proleptic Gregorian; Howard Hinnant's days_from_civil).
    let (y2, m2) = if month <= 2 { (y - 1, month + 9) } else { (y, month - 3) };
    let era = y2 / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let rtc_unix = days * 86_400 + hour * 3600 + min * 60 + sec;
    // kvmclock's wall clock (written by `kvm_clock` at the page + 64) plus the guest's time.
    let khz = u64::from(cpuid(0x4000_0010, 0).eax).max(1);
    // 16-byte aligned, so the 12 bytes never cross a page (the hypervisor writes none then).
    #[repr(C, align(16))]
    struct Wall([u8; 16]);
    static mut WALL: Wall = Wall([0; 16]);
    let at = core::ptr::addr_of_mut!(WALL) as u64;
    // SAFETY: the wall-clock MSR makes the hypervisor write 12 bytes at the address given.
    if let Err(f) = unsafe { cpu::try_wrmsr(0x4b56_4d00, at) } {
        return c.fail("kvmclock wall clock for the RTC check", format_args!("raised {f}"));
    }
    // SAFETY: reading what the hypervisor wrote, volatile as another agent wrote it.
    let sec = |i: u64| u64::from(unsafe { core::ptr::read_volatile((at + 4 + i) as *const u8) }) << (8 * i);
    let at_zero = (0..4).map(sec).sum::<u64>();
    let now = at_zero + rdtsc() / khz / 1000;
    if now.abs_diff(rtc_unix) <= 2 {
        c.pass("RTC and kvmclock's wall clock agree to 2 s");
    } else {
        c.fail("RTC and kvmclock's wall clock agree to 2 s", format_args!("RTC {rtc_unix}, kvmclock {now}"));
    }
}
