//! The isolation check shared by the `isolate-a` and `isolate-b` guests: fill every piece of
//! CPU state a hypervisor must switch between vCPUs with this guest's own pattern, then give
//! up the CPU many times (the yield hypercall, and the time slices that end by themselves)
//! and check after each switch that every value is still this guest's.
//!
//! Run two of them pinned to the same CPU: each slice of one runs between slices of the
//! other, so a register the hypervisor forgets to switch shows the other guest's pattern
//! (or the hypervisor's own value), and the check names it.
//!
//! The state (issue "A real vCPU"): the x87 stack, MXCSR and XMM0–15, YMM0–15's upper halves
//! where the CPU has AVX (CR4.OSXSAVE and XCR0 = x87|SSE|AVX, so XCR0 is checked too), CR2 (set
//! by a real page fault), DR0–DR3, CR8 (the TPR), and the MSRs STAR, LSTAR, CSTAR, SFMASK,
//! KERNEL_GS_BASE and TSC_AUX (where RDTSCP exists).

use crate::cpu::{self, cpuid, Regs};
use crate::say;
use core::arch::asm;

/// Switches each guest checks (two guests: at least twice as many switches on the CPU).
pub const ROUNDS: u32 = 10_000;

const STAR: u32 = 0xC000_0081;
const LSTAR: u32 = 0xC000_0082;
const CSTAR: u32 = 0xC000_0083;
const SFMASK: u32 = 0xC000_0084;
const KERNEL_GS_BASE: u32 = 0xC000_0102;
const TSC_AUX: u32 = 0xC000_0103;
/// The yield hypercall (Bastion ABI function 1).
const HC_YIELD: u64 = 1;

/// A splitmix64 step: distinct, well-mixed patterns from a small seed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A canonical 47-bit address from a pattern (DR0–3, LSTAR, CSTAR and KERNEL_GS_BASE must
/// hold canonical addresses, SDM Vol. 3A 18.2.4 / 2.2.1).
fn canonical(x: u64) -> u64 {
    x & 0x0000_7fff_ffff_fff0
}

#[repr(C, align(64))]
struct Area([u8; 512]);

/// Everything this guest expects to find.
struct Expected {
    fx: Area,
    ymm: [[u8; 32]; 16],
    cr2: u64,
    dr: [u64; 4],
    cr8: u64,
    msrs: [(u32, u64); 6],
    xcr0: Option<u64>,
}

fn fxsave(area: &mut Area) {
    // SAFETY: stores 512 bytes into the aligned buffer.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
}

fn read_ymm(out: &mut [[u8; 32]; 16]) {
    let p = out.as_mut_ptr() as *mut u8;
    // SAFETY: stores 16 × 32 bytes into `out`; AVX was enabled before this is called.
    unsafe {
        asm!(
            "vmovdqu [{p}], ymm0", "vmovdqu [{p} + 32], ymm1", "vmovdqu [{p} + 64], ymm2", "vmovdqu [{p} + 96], ymm3",
            "vmovdqu [{p} + 128], ymm4", "vmovdqu [{p} + 160], ymm5", "vmovdqu [{p} + 192], ymm6", "vmovdqu [{p} + 224], ymm7",
            "vmovdqu [{p} + 256], ymm8", "vmovdqu [{p} + 288], ymm9", "vmovdqu [{p} + 320], ymm10", "vmovdqu [{p} + 352], ymm11",
            "vmovdqu [{p} + 384], ymm12", "vmovdqu [{p} + 416], ymm13", "vmovdqu [{p} + 448], ymm14", "vmovdqu [{p} + 480], ymm15",
            p = in(reg) p, options(nostack)
        )
    };
}

fn read_dr() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reading debug registers at CPL 0 has no side effects (DR7.GD is clear).
    unsafe {
        asm!("mov {}, dr0", out(reg) a, options(nomem, nostack));
        asm!("mov {}, dr1", out(reg) b, options(nomem, nostack));
        asm!("mov {}, dr2", out(reg) c, options(nomem, nostack));
        asm!("mov {}, dr3", out(reg) d, options(nomem, nostack));
    }
    [a, b, c, d]
}

fn read_cr2() -> u64 {
    let v;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

fn read_cr8() -> u64 {
    let v;
    // SAFETY: reading CR8 has no side effects.
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack)) };
    v
}

fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) reads XCR0; only called with CR4.OSXSAVE set.
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Fills all the state with patterns from `seed` and returns what was loaded.
fn fill(seed: u64) -> Expected {
    let p = |i: u64| mix(seed * 1000 + i);
    // SSE needs CR4.OSFXSR (and OSXMMEXCPT); the x87 needs CR0.EM = 0, MP = 1 (SDM Vol. 3A
    // 13.1.3). AVX needs CR4.OSXSAVE and XCR0 bits 0-2 (SDM Vol. 1 14.3).
    let has_xsave = cpuid(1, 0).ecx & (1 << 26) != 0;
    let has_avx = has_xsave && cpuid(1, 0).ecx & (1 << 28) != 0;
    // SAFETY: enabling FPU/SSE/AVX state that this guest then uses; nothing else depends on it.
    unsafe {
        let cr0 = (cpu::read_cr0() & !(1 << 2)) | (1 << 1);
        asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack));
        let cr4 = cpu::read_cr4() | (1 << 9) | (1 << 10) | if has_avx { 1 << 18 } else { 0 };
        if let Err(f) = cpu::try_write_cr4(cr4) {
            say!("FAIL enabling SSE/XSAVE in CR4 ({cr4:#x}) raised {f}");
            cpu::test_exit(1);
        }
    }
    let xcr0 = has_avx.then(|| {
        // SAFETY: x87|SSE|AVX is a valid XCR0 on a CPU with AVX.
        if let Some(f) = unsafe { crate::guarded!("xsetbv", in("ecx") 0u32, in("eax") 7u32, in("edx") 0u32) } {
            say!("FAIL XSETBV 7 raised {f}");
            cpu::test_exit(1);
        }
        7
    });
    // x87: eight integers pushed onto the stack; MXCSR: a rounding mode of this guest's own.
    let ints: [u64; 8] = core::array::from_fn(|i| p(i as u64) >> 12);
    let mxcsr: u32 = 0x1f80 | ((seed as u32 & 3) << 13);
    // SAFETY: FNINIT then eight FILDs from `ints`; LDMXCSR of a valid value (reserved bits 0).
    unsafe {
        asm!("fninit", options(nomem, nostack));
        for v in &ints {
            asm!("fild qword ptr [{}]", in(reg) v, options(nostack, readonly));
        }
        asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly));
    }
    // XMM0-15 (or YMM0-15) from a pattern buffer.
    let mut buf = [[0u8; 32]; 16];
    for (r, reg) in buf.iter_mut().enumerate() {
        for (j, chunk) in reg.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&p(100 + r as u64 * 4 + j as u64).to_le_bytes());
        }
    }
    let b = buf.as_ptr() as *const u8;
    // SAFETY: loads from `buf`; AVX only when enabled above.
    unsafe {
        if has_avx {
            asm!(
                "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]", "vmovdqu ymm2, [{p} + 64]", "vmovdqu ymm3, [{p} + 96]",
                "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]", "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]",
                "vmovdqu ymm8, [{p} + 256]", "vmovdqu ymm9, [{p} + 288]", "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
                "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]", "vmovdqu ymm14, [{p} + 448]", "vmovdqu ymm15, [{p} + 480]",
                p = in(reg) b, options(nostack, readonly)
            );
        } else {
            asm!(
                "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 32]", "movdqu xmm2, [{p} + 64]", "movdqu xmm3, [{p} + 96]",
                "movdqu xmm4, [{p} + 128]", "movdqu xmm5, [{p} + 160]", "movdqu xmm6, [{p} + 192]", "movdqu xmm7, [{p} + 224]",
                "movdqu xmm8, [{p} + 256]", "movdqu xmm9, [{p} + 288]", "movdqu xmm10, [{p} + 320]", "movdqu xmm11, [{p} + 352]",
                "movdqu xmm12, [{p} + 384]", "movdqu xmm13, [{p} + 416]", "movdqu xmm14, [{p} + 448]", "movdqu xmm15, [{p} + 480]",
                p = in(reg) b, options(nostack, readonly)
            );
        }
    }
    let mut fx = Area([0; 512]);
    fxsave(&mut fx);
    let mut ymm = [[0u8; 32]; 16];
    if has_avx {
        read_ymm(&mut ymm);
    }
    // CR2 from a real #PF: an address beyond the guest's 4 GiB identity map is not present.
    let fault_at = 0x10_0000_0000 + (p(200) & 0xff_ffff_f000);
    // SAFETY: the read faults (#PF) and is caught; nothing is read.
    let f = unsafe { crate::guarded!("mov {tmp}, qword ptr [{a}]", a = in(reg) fault_at, tmp = out(reg) _) };
    if f.map(|f| f.vector) != Some(crate::exceptions::PF) {
        say!("FAIL reading {fault_at:#x} should raise #PF, got {f:?}");
        cpu::test_exit(1);
    }
    // DR0-3: addresses (breakpoints stay disabled in DR7); CR8: a TPR of this guest's own.
    let dr: [u64; 4] = core::array::from_fn(|i| canonical(p(300 + i as u64)));
    let cr8 = 1 + seed % 15;
    // SAFETY: debug-register writes with DR7 disabled, and a TPR with interrupts off, change
    // nothing this guest relies on.
    unsafe {
        asm!("mov dr0, {}", in(reg) dr[0], options(nomem, nostack));
        asm!("mov dr1, {}", in(reg) dr[1], options(nomem, nostack));
        asm!("mov dr2, {}", in(reg) dr[2], options(nomem, nostack));
        asm!("mov dr3, {}", in(reg) dr[3], options(nomem, nostack));
        asm!("mov cr8, {}", in(reg) cr8, options(nomem, nostack));
    }
    let has_tsc_aux = cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
    let mut msrs = [
        (STAR, p(400) & 0xffff_ffff_0000_0000),
        (LSTAR, canonical(p(401))),
        (CSTAR, canonical(p(402))),
        (SFMASK, p(403) & 0xffff_ffff),
        (KERNEL_GS_BASE, canonical(p(404))),
        (TSC_AUX, p(405) & 0xffff_ffff),
    ];
    for m in msrs.iter_mut() {
        if m.0 == TSC_AUX && !has_tsc_aux {
            m.0 = 0;
            continue;
        }
        // SAFETY: the SYSCALL MSRs are unused (this guest never executes SYSCALL), TSC_AUX
        // only tags RDTSCP.
        if let Err(f) = unsafe { cpu::try_wrmsr(m.0, m.1) } {
            say!("FAIL WRMSR {:#x} <- {:#x} raised {f}", m.0, m.1);
            cpu::test_exit(1);
        }
    }
    Expected { fx, ymm, cr2: read_cr2(), dr, cr8, msrs, xcr0 }
}

/// Compares the live state with `e`; the first difference, named.
fn check(e: &Expected, round: u32) -> Result<(), ()> {
    let mut fx = Area([0; 512]);
    fxsave(&mut fx);
    // FXSAVE layout (SDM Vol. 1 Table 10-2): FCW at 0, FSW at 2, MXCSR at 24, ST0-7 at
    // 32 (16 bytes each, 10 used), XMM0-15 at 160.
    let fields: [(&str, core::ops::Range<usize>); 4] = [("FCW/FSW", 0..4), ("MXCSR", 24..28), ("x87 stack", 32..160), ("XMM0-15", 160..416)];
    for (name, r) in fields {
        if fx.0[r.clone()] != e.fx.0[r.clone()] {
            let at = r.clone().find(|&i| fx.0[i] != e.fx.0[i]).unwrap_or(r.start);
            say!("FAIL round {round}: {name} changed (byte {at}: {:#x}, expected {:#x})", fx.0[at], e.fx.0[at]);
            return Err(());
        }
    }
    if let Some(x) = e.xcr0 {
        let got = xgetbv();
        if got != x {
            say!("FAIL round {round}: XCR0 = {got:#x}, expected {x:#x}");
            return Err(());
        }
        let mut ymm = [[0u8; 32]; 16];
        read_ymm(&mut ymm);
        if let Some(r) = (0..16).find(|&r| ymm[r] != e.ymm[r]) {
            say!("FAIL round {round}: YMM{r} changed");
            return Err(());
        }
    }
    let got = read_cr2();
    if got != e.cr2 {
        say!("FAIL round {round}: CR2 = {got:#x}, expected {:#x}", e.cr2);
        return Err(());
    }
    let dr = read_dr();
    if let Some(i) = (0..4).find(|&i| dr[i] != e.dr[i]) {
        say!("FAIL round {round}: DR{i} = {:#x}, expected {:#x}", dr[i], e.dr[i]);
        return Err(());
    }
    let got = read_cr8();
    if got != e.cr8 {
        say!("FAIL round {round}: CR8 = {got:#x}, expected {:#x}", e.cr8);
        return Err(());
    }
    for &(m, v) in e.msrs.iter().filter(|m| m.0 != 0) {
        match cpu::try_rdmsr(m) {
            Ok(got) if got == v => {}
            Ok(got) => {
                say!("FAIL round {round}: MSR {m:#x} = {got:#x}, expected {v:#x}");
                return Err(());
            }
            Err(f) => {
                say!("FAIL round {round}: RDMSR {m:#x} raised {f}");
                return Err(());
            }
        }
    }
    Ok(())
}

/// The guest's main: fill with `seed`'s patterns, then ROUNDS × (yield, check).
pub fn run(seed: u64) -> u32 {
    let e = fill(seed);
    let avx = if e.xcr0.is_some() { "x87, MXCSR, XMM/YMM, XCR0" } else { "x87, MXCSR, XMM" };
    say!("filled {avx}, CR2 {:#x}, DR0-3, CR8 {}, SYSCALL MSRs{}", e.cr2, e.cr8, if e.msrs[5].0 != 0 { ", TSC_AUX" } else { "" });
    for round in 1..=ROUNDS {
        let mut regs = Regs { rax: HC_YIELD, ..Regs::default() };
        if let Some(f) = cpu::hypercall(&mut regs) {
            say!("FAIL the yield hypercall raised {f}");
            return 1;
        }
        if check(&e, round).is_err() {
            return 1;
        }
        if round % 2500 == 0 {
            say!("{round} switches, state intact");
        }
    }
    say!("PASS {ROUNDS} switches, every register kept its value");
    0
}
