//! Architectural register rules, decided once for both vendors: which CR0/CR4/EFER/XCR0 values
//! a guest may load and what the CPU answers otherwise (#GP, or #UD for XSETBV without
//! CR4.OSXSAVE), and which exceptions push an error code.
//!
//! The bits a guest may set are derived from the guest's own CPUID view
//! ([`crate::vm::cpuid::guest_cpuid`]), so a feature Bastion hides (VMX, SMX, machine check…)
//! cannot be switched on behind its back, and a value that the hardware would refuse at the
//! next VM entry never reaches the VMCS/VMCB: it becomes a #GP for the instruction that tried.

use bitflags::bitflags;

bitflags! {
    /// CR0 (Intel SDM Vol. 3A 2.5, AMD APM Vol. 2 3.1.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr0: u64 {
        const PE = 1 << 0;
        const MP = 1 << 1;
        const EM = 1 << 2;
        const TS = 1 << 3;
        const ET = 1 << 4;
        const NE = 1 << 5;
        const WP = 1 << 16;
        const AM = 1 << 18;
        const NW = 1 << 29;
        const CD = 1 << 30;
        const PG = 1 << 31;
    }
}

bitflags! {
    /// CR4 (SDM Vol. 3A 2.5, APM Vol. 2 3.1.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr4: u64 {
        const VME = 1 << 0;
        const PVI = 1 << 1;
        const TSD = 1 << 2;
        const DE = 1 << 3;
        const PSE = 1 << 4;
        const PAE = 1 << 5;
        const MCE = 1 << 6;
        const PGE = 1 << 7;
        const PCE = 1 << 8;
        const OSFXSR = 1 << 9;
        const OSXMMEXCPT = 1 << 10;
        const UMIP = 1 << 11;
        const LA57 = 1 << 12;
        const VMXE = 1 << 13;
        const SMXE = 1 << 14;
        const FSGSBASE = 1 << 16;
        const PCIDE = 1 << 17;
        const OSXSAVE = 1 << 18;
        const SMEP = 1 << 20;
        const SMAP = 1 << 21;
        const PKE = 1 << 22;
        const CET = 1 << 23;
        const PKS = 1 << 24;
    }
}

bitflags! {
    /// IA32_EFER (SDM Vol. 3A 2.2.1, APM Vol. 2 3.1.7).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Efer: u64 {
        const SCE = 1 << 0;
        const LME = 1 << 8;
        const LMA = 1 << 10;
        const NXE = 1 << 11;
        const SVME = 1 << 12;
    }
}

bitflags! {
    /// RFLAGS (SDM Vol. 1 3.4.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rflags: u64 {
        const CF = 1 << 0;
        const FIXED1 = 1 << 1;
        const PF = 1 << 2;
        const AF = 1 << 4;
        const ZF = 1 << 6;
        const SF = 1 << 7;
        const TF = 1 << 8;
        const IF = 1 << 9;
        const DF = 1 << 10;
        const OF = 1 << 11;
        const VM = 1 << 17;
    }
}

bitflags! {
    /// XCR0, the XSAVE feature mask (SDM Vol. 1 13.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Xcr0: u64 {
        const X87 = 1 << 0;
        const SSE = 1 << 1;
        const AVX = 1 << 2;
        const BNDREGS = 1 << 3;
        const BNDCSR = 1 << 4;
        const OPMASK = 1 << 5;
        const ZMM_HI256 = 1 << 6;
        const HI16_ZMM = 1 << 7;
        const PKRU = 1 << 9;
        const TILECFG = 1 << 17;
        const TILEDATA = 1 << 18;
    }
}

/// Why a register write is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #GP(0).
    Gp,
    /// #UD.
    Ud,
}

/// What the guest's CPUID allows, computed once per vCPU from its CPUID view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CR4 bits the guest may set.
    pub cr4: Cr4,
    /// XCR0 bits the guest may enable (CPUID.(EAX=0DH,ECX=0):EDX:EAX), empty without XSAVE.
    pub xcr0: Xcr0,
    /// EFER.NXE allowed (CPUID.8000_0001H:EDX[20]).
    pub nx: bool,
    /// Physical address width (CPUID.8000_0008H:EAX[7:0]), for CR3's reserved bits.
    pub phys_bits: u8,
}

impl GuestFeatures {
    /// Reads the guest's CPUID view (`cpuid(leaf, sub)`, the policy already applied).
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> GuestFeatures {
        let max = cpuid(0, 0)[0];
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let [_, _, c1, d1] = cpuid(1, 0);
        let [_, b7, c7, _] = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
        let bit = |reg: u32, n: u32| reg & (1 << n) != 0;
        // Each CR4 bit exists only where CPUID names its feature (SDM Vol. 3A 2.5, the CR4 bit
        // descriptions, and 2.6 "Extended Control Registers"); setting another is #GP.
        let gated = [
            (Cr4::VME.union(Cr4::PVI), bit(d1, 1)),
            (Cr4::DE, bit(d1, 2)),
            (Cr4::PSE, bit(d1, 3)),
            (Cr4::TSD, bit(d1, 4)),
            (Cr4::PAE, bit(d1, 6)),
            (Cr4::MCE, bit(d1, 7)),
            (Cr4::PGE, bit(d1, 13)),
            (Cr4::OSFXSR, bit(d1, 24)),
            (Cr4::OSXMMEXCPT, bit(d1, 25)),
            (Cr4::PCIDE, bit(c1, 17)),
            (Cr4::OSXSAVE, bit(c1, 26)),
            (Cr4::FSGSBASE, bit(b7, 0)),
            (Cr4::SMEP, bit(b7, 7)),
            (Cr4::SMAP, bit(b7, 20)),
            (Cr4::UMIP, bit(c7, 2)),
            (Cr4::PKE, bit(c7, 3)),
            (Cr4::CET, bit(c7, 7)),
            (Cr4::LA57, bit(c7, 16)),
            (Cr4::PKS, bit(c7, 31)),
            (Cr4::VMXE, bit(c1, 5)),
            (Cr4::SMXE, bit(c1, 6)),
        ];
        let cr4 = gated.iter().filter(|(_, on)| *on).fold(Cr4::PCE, |m, (b, _)| m.union(*b));
        let xcr0 = if bit(c1, 26) && max >= 0xd {
            // EAX holds the supported XCR0 bits 31:0, EDX bits 63:32 (SDM Vol. 1 13.2), where
            // no component is defined: the XCR0 that can be set is EAX's known bits.
            Xcr0::from_bits_truncate(u64::from(cpuid(0xd, 0)[0]))
        } else {
            Xcr0::empty()
        };
        let nx = max_ext >= 0x8000_0001 && bit(cpuid(0x8000_0001, 0)[3], 20);
        let phys_bits = if max_ext >= 0x8000_0008 { (cpuid(0x8000_0008, 0)[0] & 0xff) as u8 } else { 36 };
        GuestFeatures { cr4, xcr0, nx, phys_bits: phys_bits.clamp(32, 52) }
    }
}

/// The state a control-register rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeView {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS.L: with EFER.LMA, the vCPU runs 64-bit code.
    pub cs_l: bool,
}

impl ModeView {
    fn efer(&self) -> Efer {
        Efer::from_bits_retain(self.efer)
    }
    /// 64-bit mode (IA-32e mode with CS.L = 1, SDM Vol. 3A 2.2.1).
    pub fn in_64bit_mode(&self) -> bool {
        self.efer().contains(Efer::LMA) && self.cs_l
    }
}

/// MOV to CR0 (SDM Vol. 2B "MOV—Move to/from Control Registers", APM Vol. 3 "MOV CRn"):
/// returns the value to load and the new EFER.LMA, or the fault.
pub fn check_cr0_write(m: &ModeView, value: u64) -> Result<(u64, bool), Fault> {
    let new = Cr0::from_bits_retain(value);
    let efer = m.efer();
    // Bits 63:32 are reserved (#GP in 64-bit mode; and in any mode the upper half cannot be
    // set through a 32-bit operand, so a set bit can only come from a 64-bit write).
    if value >> 32 != 0 {
        return Err(Fault::Gp);
    }
    // PG without PE, and NW without CD, are invalid combinations (#GP).
    if new.contains(Cr0::PG) && !new.contains(Cr0::PE) {
        return Err(Fault::Gp);
    }
    if new.contains(Cr0::NW) && !new.contains(Cr0::CD) {
        return Err(Fault::Gp);
    }
    let old_pg = m.cr0 & Cr0::PG.bits() != 0;
    let new_pg = new.contains(Cr0::PG);
    // Entering IA-32e mode requires CR4.PAE (SDM Vol. 3A 10.8.5: #GP otherwise).
    if new_pg && !old_pg && efer.contains(Efer::LME) && m.cr4 & Cr4::PAE.bits() == 0 {
        return Err(Fault::Gp);
    }
    // Paging cannot be turned off from 64-bit mode: software must first drop to
    // compatibility mode (SDM Vol. 3A 10.8.5.4).
    if old_pg && !new_pg && m.in_64bit_mode() {
        return Err(Fault::Gp);
    }
    // With PCIDs enabled paging cannot be turned off (SDM Vol. 3A 4.10.1: #GP on clearing
    // CR0.PG while CR4.PCIDE = 1), and write protection cannot be turned off under CET
    // (SDM Vol. 3A 2.5: CR0.WP cannot be cleared while CR4.CET = 1).
    if old_pg && !new_pg && m.cr4 & Cr4::PCIDE.bits() != 0 {
        return Err(Fault::Gp);
    }
    if !new.contains(Cr0::WP) && m.cr4 & Cr4::CET.bits() != 0 {
        return Err(Fault::Gp);
    }
    // EFER.LMA follows LME & PG (SDM Vol. 3A 10.8.5).
    let lma = efer.contains(Efer::LME) && new_pg;
    Ok((value, lma))
}

/// MOV to CR4.
pub fn check_cr4_write(m: &ModeView, value: u64, f: &GuestFeatures) -> Result<u64, Fault> {
    let new = Cr4::from_bits_retain(value);
    // Any bit the guest's CPU does not have is reserved (#GP), including VMXE/SMXE when the
    // guest's CPUID hides VMX/SMX.
    if value & !f.cr4.bits() != 0 {
        return Err(Fault::Gp);
    }
    let long = m.efer().contains(Efer::LMA);
    // IA-32e mode needs PAE, and LA57 cannot change in it (SDM Vol. 3A 4.1.1).
    if long && !new.contains(Cr4::PAE) {
        return Err(Fault::Gp);
    }
    if long && (m.cr4 ^ value) & Cr4::LA57.bits() != 0 {
        return Err(Fault::Gp);
    }
    // CET needs write protection on (SDM Vol. 3A 2.5: #GP on setting CR4.CET while CR0.WP = 0).
    if new.contains(Cr4::CET) && m.cr0 & Cr0::WP.bits() == 0 {
        return Err(Fault::Gp);
    }
    // PCIDE: only in IA-32e mode, and only with CR3[11:0] = 0 when it is being set (SDM
    // Vol. 3A 4.10.1).
    if new.contains(Cr4::PCIDE) && m.cr4 & Cr4::PCIDE.bits() == 0 && (!long || m.cr3 & 0xfff != 0) {
        return Err(Fault::Gp);
    }
    Ok(value)
}

/// WRMSR to EFER: the value to load (LMA kept, since only the CPU changes it), or #GP.
pub fn check_efer_write(m: &ModeView, value: u64, f: &GuestFeatures) -> Result<u64, Fault> {
    let mut allowed = Efer::SCE.union(Efer::LME).union(Efer::LMA);
    if f.nx {
        allowed |= Efer::NXE;
    }
    if value & !allowed.bits() != 0 {
        return Err(Fault::Gp);
    }
    // LME cannot change while paging is on (SDM Vol. 3A 10.8.5; APM 14.6.1).
    if m.cr0 & Cr0::PG.bits() != 0 && (m.efer ^ value) & Efer::LME.bits() != 0 {
        return Err(Fault::Gp);
    }
    // Disjoint parts: everything but LMA from the write, LMA as it was.
    Ok((value & !Efer::LMA.bits()) + (m.efer & Efer::LMA.bits()))
}

/// XSETBV (SDM Vol. 2D "XSETBV"): `ecx` selects the XCR, `value` is EDX:EAX.
pub fn check_xsetbv(cpl: u8, cr4: u64, ecx: u32, value: u64, f: &GuestFeatures) -> Result<Xcr0, Fault> {
    if cr4 & Cr4::OSXSAVE.bits() == 0 {
        return Err(Fault::Ud);
    }
    if cpl != 0 || ecx != 0 {
        return Err(Fault::Gp);
    }
    if value & !f.xcr0.bits() != 0 {
        return Err(Fault::Gp);
    }
    let x = Xcr0::from_bits_retain(value);
    // x87 state can never be disabled; AVX needs SSE; AVX-512's three components go together
    // and need AVX; MPX's two go together; AMX's TILEDATA needs TILECFG (SDM Vol. 1 13.3).
    let avx512 = Xcr0::OPMASK.union(Xcr0::ZMM_HI256).union(Xcr0::HI16_ZMM);
    let mpx = Xcr0::BNDREGS.union(Xcr0::BNDCSR);
    let amx = Xcr0::TILECFG.union(Xcr0::TILEDATA);
    let all_or_none = |s: Xcr0| x.contains(s) || !x.intersects(s);
    if !x.contains(Xcr0::X87)
        || (x.contains(Xcr0::AVX) && !x.contains(Xcr0::SSE))
        || !all_or_none(avx512)
        || (x.intersects(avx512) && !x.contains(Xcr0::AVX))
        || !all_or_none(mpx)
        || !all_or_none(amx)
    {
        return Err(Fault::Gp);
    }
    Ok(x)
}

/// A general register after a write to its low `size` bytes (1, 2, 4 or 8): an 8- or 16-bit
/// write keeps the bits above it, a 32-bit write zero-extends to 64 bits, a 64-bit write
/// replaces it (SDM Vol. 1 3.4.1.1). The address registers a string instruction steps (rSI,
/// rDI, rCX) follow the same rule through the address size.
pub fn write_low(old: u64, size: u8, value: u64) -> u64 {
    match size {
        // The kept bits and the written part are disjoint: added.
        1 => (old & !0xff) + (value & 0xff),
        2 => (old & !0xffff) + (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// Vectors that push an error code (SDM Vol. 3A 6.13 and Table 6-1; APM Vol. 2 8.2): #DF, #TS,
/// #NP, #SS, #GP, #PF, #AC, #CP, and AMD's #VC and #SX.
pub fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The error code an exception delivers: none in real mode, where the CPU never pushes one
/// (SDM Vol. 3A 21.1.4 "Interrupt and Exception Handling" in real-address mode; a VMX entry
/// that tried would fail, SDM Vol. 3C 27.2.1.3), and otherwise exactly for the vectors above
/// (0 where the caller gave none).
pub fn exception_error_code(vector: u8, error_code: Option<u32>, protected_mode: bool) -> Option<u32> {
    (protected_mode && exception_has_error_code(vector)).then(|| error_code.unwrap_or(0))
}

/// An event field as both backends write it, for reports: VMX's IDT-vectoring and VM-entry
/// interruption information (SDM Vol. 3C 25.8.3, 25.9.3) and SVM's EXITINTINFO and EVENTINJ
/// (APM Vol. 2 15.20) share the layout: vector in bits 7:0, type in 10:8, "error code
/// delivered" in 11, valid in 31. `none` when the valid bit is clear (the other bits then
/// mean nothing: an entry clears only bit 31).
pub fn describe_event(info: u64) -> alloc::string::String {
    if info >> 31 & 1 == 0 {
        return "none".into();
    }
    let kind = match (info >> 8) & 7 {
        0 => "external interrupt",
        2 => "NMI",
        3 => "exception",
        4 => "software interrupt",
        5 => "privileged software exception",
        6 => "software exception",
        _ => "other event",
    };
    let vector = info & 0xff;
    if info & (1 << 11) != 0 {
        alloc::format!("{kind} {vector} with an error code")
    } else {
        alloc::format!("{kind} {vector}")
    }
}

/// CR3 reserved bits in IA-32e mode: above MAXPHYADDR, except bit 63 (the PCID no-flush hint
/// of MOV to CR3, not stored) (SDM Vol. 3A 4.5).
pub fn cr3_reserved(f: &GuestFeatures) -> u64 {
    !((1u64 << f.phys_bits) - 1) & !(1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_described_by_the_shared_layout() {
        // #GP, hardware exception (type 3), error code delivered, valid: 0x80000b0d.
        assert_eq!(describe_event(0x8000_0b0d), "exception 13 with an error code");
        // INT3 as QEMU's SVM reports it: software interrupt (type 4), vector 3.
        assert_eq!(describe_event(0x8000_0403), "software interrupt 3");
        assert_eq!(describe_event(0x8000_0020), "external interrupt 32");
        assert_eq!(describe_event(0x8000_0202), "NMI 2");
        assert_eq!(describe_event(0x8000_0506), "privileged software exception 6");
        assert_eq!(describe_event(0x8000_0601), "software exception 1");
        assert_eq!(describe_event(0x8000_0700), "other event 0");
        // What an entry leaves in VMX's field: the valid bit cleared, the rest stale.
        assert_eq!(describe_event(0xb0d), "none");
        assert_eq!(describe_event(0), "none");
    }

    /// A guest CPU with every feature of leaves 1, 7 and 0xD, 48-bit physical addresses, XCR0
    /// components x87..AVX-512 and PKRU.
    fn full(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0xd, 0, 0, 0],
            1 => [0, 0, !((1 << 5) | (1 << 6)), u32::MAX],
            7 => [0, u32::MAX, u32::MAX, 0],
            0xd => [0x2ff, 0, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, 1 << 20],
            0x8000_0008 => [48, 0, 0, 0],
            _ => [0; 4],
        }
    }

    fn features() -> GuestFeatures {
        GuestFeatures::from_cpuid(full)
    }

    fn real_mode() -> ModeView {
        ModeView { cr0: Cr0::ET.bits(), cr3: 0, cr4: 0, efer: 0, cs_l: false }
    }

    fn long_mode() -> ModeView {
        ModeView {
            cr0: (Cr0::PE | Cr0::PG | Cr0::ET | Cr0::NE).bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: (Efer::LME | Efer::LMA).bits(),
            cs_l: true,
        }
    }

    #[test]
    fn cr4_bits_follow_cpuid_and_hidden_features_are_reserved() {
        let f = features();
        // SDM Vol. 3A 2.5: CR4.VMXE (bit 13) and SMXE (bit 14) exist only with VMX/SMX.
        assert!(!f.cr4.contains(Cr4::VMXE) && !f.cr4.contains(Cr4::SMXE));
        assert_eq!(check_cr4_write(&real_mode(), 1 << 13, &f), Err(Fault::Gp));
        assert_eq!(check_cr4_write(&real_mode(), 1 << 14, &f), Err(Fault::Gp));
        // Bit 15 and bits above 24 are reserved on every CPU.
        assert_eq!(check_cr4_write(&real_mode(), 1 << 15, &f), Err(Fault::Gp));
        assert_eq!(check_cr4_write(&real_mode(), 1 << 40, &f), Err(Fault::Gp));
        // OSFXSR (bit 9) and OSXSAVE (bit 18) are there because CPUID says FXSR and XSAVE.
        assert_eq!(check_cr4_write(&real_mode(), (1 << 9) | (1 << 18), &f), Ok((1 << 9) | (1 << 18)));
        // A CPU without XSAVE (CPUID.1:ECX[26] = 0) has no CR4.OSXSAVE.
        let no_xsave = GuestFeatures::from_cpuid(|l, s| if l == 1 { [0, 0, 0, u32::MAX] } else { full(l, s) });
        assert_eq!(check_cr4_write(&real_mode(), 1 << 18, &no_xsave), Err(Fault::Gp));
        assert!(no_xsave.xcr0.is_empty(), "no XSAVE: no XCR0 components either");
        // VMX shown by CPUID would make CR4.VMXE legal: the mask really comes from CPUID.
        let vmx = GuestFeatures::from_cpuid(|l, s| if l == 1 { [0, 0, 1 << 5, 0] } else { full(l, s) });
        assert!(vmx.cr4.contains(Cr4::VMXE));
    }

    #[test]
    fn cr4_mode_rules() {
        let f = features();
        // IA-32e mode: PAE cannot be cleared, LA57 cannot change (SDM Vol. 3A 4.1.1).
        assert_eq!(check_cr4_write(&long_mode(), 0, &f), Err(Fault::Gp));
        assert_eq!(check_cr4_write(&long_mode(), (1 << 5) | (1 << 12), &f), Err(Fault::Gp));
        // PCIDE only in IA-32e mode with CR3[11:0] = 0 (SDM Vol. 3A 4.10.1).
        assert_eq!(check_cr4_write(&real_mode(), 1 << 17, &f), Err(Fault::Gp));
        let mut m = long_mode();
        assert_eq!(check_cr4_write(&m, (1 << 5) | (1 << 17), &f), Ok((1 << 5) | (1 << 17)));
        m.cr3 = 0x1001;
        assert_eq!(check_cr4_write(&m, (1 << 5) | (1 << 17), &f), Err(Fault::Gp));
        // Already set: CR3's low bits are the PCID and do not matter.
        m.cr4 |= 1 << 17;
        assert_eq!(check_cr4_write(&m, (1 << 5) | (1 << 17) | (1 << 7), &f), Ok((1 << 5) | (1 << 17) | (1 << 7)));
    }

    #[test]
    fn cr0_invalid_combinations_fault() {
        let m = real_mode();
        // SDM MOV CR0: PG without PE, NW without CD, and bits 63:32 raise #GP.
        assert_eq!(check_cr0_write(&m, 0x8000_0010), Err(Fault::Gp));
        assert_eq!(check_cr0_write(&m, (1 << 29) | 0x11), Err(Fault::Gp));
        assert_eq!(check_cr0_write(&m, (1 << 32) | 0x11), Err(Fault::Gp));
        assert_eq!(check_cr0_write(&m, (1 << 63) | 0x11), Err(Fault::Gp));
        // CD and NW together, and CD alone, are fine.
        assert_eq!(check_cr0_write(&m, (3 << 29) | 0x11), Ok(((3 << 29) | 0x11, false)));
        assert_eq!(check_cr0_write(&m, (1 << 30) | 0x11), Ok(((1 << 30) | 0x11, false)));
    }

    #[test]
    fn cr0_paging_and_long_mode() {
        // Protected mode, LME set, PAE set: turning paging on activates IA-32e mode (LMA = 1).
        let mut m = ModeView { cr0: 0x11, cr3: 0x1000, cr4: Cr4::PAE.bits(), efer: Efer::LME.bits(), cs_l: false };
        assert_eq!(check_cr0_write(&m, 0x8000_0011), Ok((0x8000_0011, true)));
        // Without PAE it is #GP (SDM Vol. 3A 10.8.5).
        m.cr4 = 0;
        assert_eq!(check_cr0_write(&m, 0x8000_0011), Err(Fault::Gp));
        // Without LME paging is legacy paging: LMA stays 0.
        m.efer = 0;
        assert_eq!(check_cr0_write(&m, 0x8000_0011), Ok((0x8000_0011, false)));
        // In 64-bit mode PG cannot be cleared; in compatibility mode (CS.L = 0) it can, which
        // leaves IA-32e mode (LMA = 0).
        let l = long_mode();
        assert_eq!(check_cr0_write(&l, 0x11), Err(Fault::Gp));
        let compat = ModeView { cs_l: false, ..l };
        assert_eq!(check_cr0_write(&compat, 0x11), Ok((0x11, false)));
        // Other bits change freely in 64-bit mode, LMA stays.
        assert_eq!(check_cr0_write(&l, l.cr0 | (1 << 16)), Ok((l.cr0 | (1 << 16), true)));
    }

    #[test]
    fn pcide_keeps_paging_on_and_cet_keeps_write_protection_on() {
        let f = features();
        // Compatibility mode (CS.L = 0) may normally clear PG, but not with CR4.PCIDE = 1
        // (SDM Vol. 3A 4.10.1).
        let compat = ModeView { cs_l: false, ..long_mode() };
        assert!(check_cr0_write(&compat, 0x11).is_ok());
        let pcid = ModeView { cr4: compat.cr4 | (1 << 17), ..compat };
        assert_eq!(check_cr0_write(&pcid, 0x11), Err(Fault::Gp));
        // CR4.CET (bit 23) only with CR0.WP (bit 16), and WP cannot be cleared under CET
        // (SDM Vol. 3A 2.5).
        let no_wp = long_mode();
        assert_eq!(check_cr4_write(&no_wp, (1 << 5) | (1 << 23), &f), Err(Fault::Gp));
        let wp = ModeView { cr0: no_wp.cr0 | (1 << 16), ..no_wp };
        assert_eq!(check_cr4_write(&wp, (1 << 5) | (1 << 23), &f), Ok((1 << 5) | (1 << 23)));
        let cet = ModeView { cr4: wp.cr4 | (1 << 23), ..wp };
        assert_eq!(check_cr0_write(&cet, cet.cr0 & !(1 << 16)), Err(Fault::Gp));
        assert!(check_cr0_write(&cet, cet.cr0).is_ok());
    }

    #[test]
    fn efer_rules() {
        let f = features();
        let mut m = real_mode();
        assert_eq!(check_efer_write(&m, (Efer::LME | Efer::SCE | Efer::NXE).bits(), &f), Ok(0x901));
        // SVME (bit 12) is Bastion's, bits 13+ and 1-7 are reserved.
        assert_eq!(check_efer_write(&m, Efer::SVME.bits(), &f), Err(Fault::Gp));
        assert_eq!(check_efer_write(&m, 1 << 20, &f), Err(Fault::Gp));
        assert_eq!(check_efer_write(&m, 1 << 1, &f), Err(Fault::Gp));
        // NXE only where CPUID.8000_0001H:EDX[20] says NX.
        let no_nx = GuestFeatures { nx: false, ..f };
        assert_eq!(check_efer_write(&m, Efer::NXE.bits(), &no_nx), Err(Fault::Gp));
        // LMA is the CPU's: a write neither sets nor clears it.
        assert_eq!(check_efer_write(&m, Efer::LMA.bits(), &f), Ok(0));
        m = long_mode();
        assert_eq!(check_efer_write(&m, (Efer::LME | Efer::SCE).bits(), &f), Ok((Efer::LME | Efer::SCE | Efer::LMA).bits()));
        // LME cannot change while CR0.PG = 1 (SDM Vol. 3A 10.8.5).
        assert_eq!(check_efer_write(&m, 0, &f), Err(Fault::Gp));
        let pm = ModeView { cr0: 0x8000_0011, efer: 0, cs_l: false, cr4: 0, cr3: 0 };
        assert_eq!(check_efer_write(&pm, Efer::LME.bits(), &f), Err(Fault::Gp));
    }

    #[test]
    fn xsetbv_rules() {
        let f = features();
        let osx = Cr4::OSXSAVE.bits();
        // SDM XSETBV: #UD without CR4.OSXSAVE; #GP at CPL > 0, for ECX != 0, for unsupported
        // bits, for XCR0[0] = 0, and for AVX without SSE.
        assert_eq!(check_xsetbv(0, 0, 0, 1, &f), Err(Fault::Ud));
        assert_eq!(check_xsetbv(3, osx, 0, 1, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 1, 1, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, 0, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, 0b101, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, 1 << 17, &f), Err(Fault::Gp), "AMX is not offered by this CPUID");
        assert_eq!(check_xsetbv(0, osx, 0, 0b111, &f), Ok(Xcr0::X87 | Xcr0::SSE | Xcr0::AVX));
        assert_eq!(check_xsetbv(0, osx, 0, 0b11, &f), Ok(Xcr0::X87 | Xcr0::SSE));
        // AVX-512: all three components or none, and only with AVX.
        assert_eq!(check_xsetbv(0, osx, 0, 0b1110_0111, &f).map(|x| x.bits()), Ok(0xe7));
        assert_eq!(check_xsetbv(0, osx, 0, 0b0110_0111, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, 0b1110_0011, &f), Err(Fault::Gp));
        // MPX: both or none.
        assert_eq!(check_xsetbv(0, osx, 0, 0b1011, &f), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, 0b11011, &f).map(|x| x.bits()), Ok(0b11011));
        assert_eq!(check_xsetbv(0, osx, 0, (1 << 9) | 3, &f).map(|x| x.bits()), Ok(0x203));
    }

    #[test]
    fn a_write_to_the_low_part_of_a_register_keeps_or_clears_the_rest() {
        // SDM Vol. 1 3.4.1.1: 8- and 16-bit results leave bits 63:8 / 63:16 as they were; a
        // 32-bit result is zero-extended to 64 bits; a 64-bit one replaces the register.
        let old = 0x1122_3344_5566_7788;
        let new = 0xaabb_ccdd_eeff_0099;
        assert_eq!(write_low(old, 1, new), 0x1122_3344_5566_7799);
        assert_eq!(write_low(old, 2, new), 0x1122_3344_5566_0099);
        assert_eq!(write_low(old, 4, new), 0x0000_0000_eeff_0099);
        assert_eq!(write_low(old, 8, new), new);
    }

    #[test]
    fn error_codes_per_vector_and_mode() {
        // SDM Vol. 3A Table 6-1: these push an error code...
        for v in [8u8, 10, 11, 12, 13, 14, 17, 21] {
            assert!(exception_has_error_code(v), "vector {v}");
            assert_eq!(exception_error_code(v, Some(0x18), true), Some(0x18));
            assert_eq!(exception_error_code(v, None, true), Some(0));
            // ...but never in real mode.
            assert_eq!(exception_error_code(v, Some(0x18), false), None);
        }
        // ...and these never do, whatever the caller passes.
        for v in [0u8, 1, 2, 3, 4, 5, 6, 7, 9, 16, 18, 19, 20] {
            assert!(!exception_has_error_code(v), "vector {v}");
            assert_eq!(exception_error_code(v, Some(5), true), None);
        }
    }

    /// Every CPUID input a CPU could report: all feature bits of leaves 1 and 7 set (VMX and
    /// SMX included), basic leaves up to 0xD, extended leaves up to 8000_0008H.
    fn everything(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            1 => [0, 0, u32::MAX, u32::MAX],
            _ => full(leaf, sub),
        }
    }

    #[test]
    fn each_cr4_bit_exists_exactly_when_its_cpuid_feature_does() {
        // SDM Vol. 3A 2.5 (CR4 bit descriptions) and Vol. 2A CPUID: (CR4 bits, CPUID leaf,
        // register index EAX=0..EDX=3, feature bit). PCE (bit 8) needs no CPUID bit.
        let table: [(u64, u32, usize, u32); 21] = [
            ((1 << 0) | (1 << 1), 1, 3, 1), // VME, PVI: CPUID.1:EDX.VME[1]
            (1 << 2, 1, 3, 4),              // TSD: EDX.TSC[4]
            (1 << 3, 1, 3, 2),              // DE: EDX.DE[2]
            (1 << 4, 1, 3, 3),              // PSE: EDX.PSE[3]
            (1 << 5, 1, 3, 6),              // PAE: EDX.PAE[6]
            (1 << 6, 1, 3, 7),              // MCE: EDX.MCE[7]
            (1 << 7, 1, 3, 13),             // PGE: EDX.PGE[13]
            (1 << 9, 1, 3, 24),             // OSFXSR: EDX.FXSR[24]
            (1 << 10, 1, 3, 25),            // OSXMMEXCPT: EDX.SSE[25]
            (1 << 11, 7, 2, 2),             // UMIP: CPUID.(7,0):ECX.UMIP[2]
            (1 << 12, 7, 2, 16),            // LA57: ECX.LA57[16]
            (1 << 13, 1, 2, 5),             // VMXE: CPUID.1:ECX.VMX[5]
            (1 << 14, 1, 2, 6),             // SMXE: ECX.SMX[6]
            (1 << 16, 7, 1, 0),             // FSGSBASE: CPUID.(7,0):EBX.FSGSBASE[0]
            (1 << 17, 1, 2, 17),            // PCIDE: CPUID.1:ECX.PCID[17]
            (1 << 18, 1, 2, 26),            // OSXSAVE: ECX.XSAVE[26]
            (1 << 20, 7, 1, 7),             // SMEP: CPUID.(7,0):EBX.SMEP[7]
            (1 << 21, 7, 1, 20),            // SMAP: EBX.SMAP[20]
            (1 << 22, 7, 2, 3),             // PKE: ECX.PKU[3]
            (1 << 23, 7, 2, 7),             // CET: ECX.CET_SS[7]
            (1 << 24, 7, 2, 31),            // PKS: ECX.PKS[31]
        ];
        // With every feature: bits 14:0, 18:16 and 24:20; 15 and 19 (Key Locker, not derived)
        // and everything above 24 stay reserved.
        let all: u64 = 0x7fff | (0x7 << 16) | (0x1f << 20);
        assert_eq!(GuestFeatures::from_cpuid(everything).cr4.bits(), all);
        assert_eq!(table.iter().fold(1 << 8, |m, r| m | r.0), all, "the table covers every bit");
        for (cr4_bits, leaf, reg, bit) in table {
            let without = |l: u32, s: u32| {
                let mut r = everything(l, s);
                if l == leaf {
                    r[reg] &= !(1 << bit);
                }
                r
            };
            let f = GuestFeatures::from_cpuid(without);
            assert_eq!(f.cr4.bits(), all & !cr4_bits, "CR4 {cr4_bits:#x} without CPUID.{leaf:#x}[{reg}] bit {bit}");
            // Setting a bit the CPU does not have is #GP (SDM MOV CR: reserved bit in CR4).
            let lowest = cr4_bits & cr4_bits.wrapping_neg();
            assert_eq!(check_cr4_write(&real_mode(), lowest, &f), Err(Fault::Gp), "CR4 bit {lowest:#x}");
        }
        // VME and PVI are both there with CPUID.1:EDX.VME, and both writable.
        let f = GuestFeatures::from_cpuid(everything);
        assert_eq!(check_cr4_write(&real_mode(), 0b11, &f), Ok(0b11));
    }

    #[test]
    fn leaf_7_features_count_only_when_the_cpu_has_leaf_7() {
        // SDM Vol. 2A CPUID: a leaf above the maximum basic leaf (CPUID.0:EAX) returns the data
        // of the highest basic leaf, not leaf 7's; its bits mean nothing.
        let f = GuestFeatures::from_cpuid(everything);
        let leaf7_bits: u64 = (1 << 11) | (1 << 12) | (1 << 16) | (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23) | (1 << 24);
        assert_eq!(f.cr4.bits() & leaf7_bits, leaf7_bits);
        let max6 = GuestFeatures::from_cpuid(|l, s| if l == 0 { [6, 0, 0, 0] } else { everything(l, s) });
        assert_eq!(max6.cr4.bits() & leaf7_bits, 0);
        assert_eq!(check_cr4_write(&real_mode(), 1 << 16, &max6), Err(Fault::Gp), "FSGSBASE");
        assert_eq!(check_cr4_write(&real_mode(), 1 << 16, &f), Ok(1 << 16));
        // Without leaf 0xD there are no XCR0 components to enable either.
        assert!(max6.xcr0.is_empty());
    }

    #[test]
    fn efer_nxe_follows_cpuid_extended_leaf_nx() {
        // EFER.NXE (bit 11) exists only with CPUID.8000_0001H:EDX.NX[20] (SDM Vol. 3A 2.2.1).
        let with_nx = GuestFeatures::from_cpuid(full);
        assert!(with_nx.nx);
        assert_eq!(check_efer_write(&real_mode(), 1 << 11, &with_nx), Ok(1 << 11));
        let no_nx = GuestFeatures::from_cpuid(|l, s| if l == 0x8000_0001 { [0; 4] } else { full(l, s) });
        assert!(!no_nx.nx);
        assert_eq!(check_efer_write(&real_mode(), 1 << 11, &no_nx), Err(Fault::Gp));
        // A CPU whose highest extended leaf is 8000_0000H has no leaf 8000_0001H to ask.
        let no_ext = GuestFeatures::from_cpuid(|l, s| if l == 0x8000_0000 { [0x8000_0000, 0, 0, 0] } else { full(l, s) });
        assert!(!no_ext.nx);
        assert_eq!(no_ext.phys_bits, 36, "and no 8000_0008H: MAXPHYADDR is 36");
    }

    #[test]
    fn la57_may_stay_set_in_ia32e_mode() {
        // SDM Vol. 3A 4.1.1: MOV to CR4 cannot *change* LA57 (bit 12) while EFER.LMA = 1;
        // writing it back unchanged is fine, with it set or clear.
        let f = features();
        let mut m = long_mode();
        m.cr4 = (1 << 5) | (1 << 12);
        assert_eq!(check_cr4_write(&m, (1 << 5) | (1 << 12) | (1 << 7), &f), Ok((1 << 5) | (1 << 12) | (1 << 7)));
        assert_eq!(check_cr4_write(&m, 1 << 5, &f), Err(Fault::Gp), "clearing LA57 in IA-32e mode");
        m.cr4 = 1 << 5;
        assert_eq!(check_cr4_write(&m, (1 << 5) | (1 << 7), &f), Ok((1 << 5) | (1 << 7)));
        // Outside IA-32e mode LA57 may change freely (it takes effect when paging starts).
        let mut pm = real_mode();
        pm.cr4 = 1 << 12;
        assert_eq!(check_cr4_write(&pm, 0, &f), Ok(0));
    }

    #[test]
    fn xsetbv_amx_tilecfg_and_tiledata_go_together() {
        // SDM Vol. 1 13.3: XCR0[17] (TILECFG) and XCR0[18] (TILEDATA) are both 0 or both 1;
        // XSETBV with exactly one of them is #GP.
        let amx = GuestFeatures::from_cpuid(|l, s| if l == 0xd { [(1 << 18) | (1 << 17) | 0x2ff, 0, 0, 0] } else { full(l, s) });
        let osx = 1 << 18;
        assert_eq!(check_xsetbv(0, osx, 0, (1 << 17) | 0b11, &amx), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, (1 << 18) | 0b11, &amx), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, (3 << 17) | 0b11, &amx).map(|x| x.bits()), Ok((3 << 17) | 0b11));
        // MPX likewise: XCR0[3] (BNDREGS) and XCR0[4] (BNDCSR).
        assert_eq!(check_xsetbv(0, osx, 0, (1 << 4) | 0b11, &amx), Err(Fault::Gp));
        assert_eq!(check_xsetbv(0, osx, 0, (1 << 3) | 0b11, &amx), Err(Fault::Gp));
    }

    #[test]
    fn exactly_the_architectural_vectors_push_an_error_code() {
        // SDM Vol. 3A Table 6-1: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21;
        // APM Vol. 2 8.2: #VC 29, #SX 30. No other vector 0-31 pushes one, and no external
        // interrupt vector (32-255) does.
        for v in 0..=255u8 {
            let pushes = matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
            assert_eq!(exception_has_error_code(v), pushes, "vector {v}");
            assert_eq!(exception_error_code(v, Some(0x2a), true), pushes.then_some(0x2a), "vector {v}");
            assert_eq!(exception_error_code(v, Some(0x2a), false), None, "vector {v} in real mode");
        }
    }

    #[test]
    fn cr3_reserved_bits_follow_maxphyaddr() {
        let f = features();
        assert_eq!(cr3_reserved(&f), 0x7fff_0000_0000_0000);
        let narrow = GuestFeatures::from_cpuid(|l, s| if l == 0x8000_0008 { [39, 0, 0, 0] } else { full(l, s) });
        assert_eq!(cr3_reserved(&narrow) & (1 << 39), 1 << 39);
        assert_eq!(cr3_reserved(&narrow) & (1 << 38), 0);
    }
}
