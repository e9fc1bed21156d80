//! The host CPU: identity (CPUID, via `raw-cpuid`), MSR access, and fault-tolerant MSR reads.

use core::arch::{global_asm, x86_64::__cpuid_count};
use raw_cpuid::CpuId;

/// The local APIC ID of the CPU running this code (CPUID.1:EBX[31:24], the initial APIC ID).
/// Used as the CPU number in logs and crash reports.
pub fn current_id() -> u32 {
    // CPUID leaf 1 exists on every x86_64 CPU.
    __cpuid_count(1, 0).ebx >> 24
}

pub struct Identity {
    pub vendor_string: heapless_str::Str16,
    pub brand: heapless_str::Str48,
    pub family: u8,
    pub model: u8,
    pub stepping: u8,
    pub has_vmx: bool,
    pub has_svm: bool,
}

/// Small fixed-capacity strings, so identification works before the heap exists.
pub mod heapless_str {
    macro_rules! fixed_str {
        ($name:ident, $n:expr) => {
            #[derive(Clone, Copy)]
            pub struct $name {
                buf: [u8; $n],
                len: usize,
            }
            impl $name {
                pub fn new(s: &str) -> Self {
                    let mut buf = [0u8; $n];
                    let mut len = s.len().min($n);
                    while !s.is_char_boundary(len) {
                        len -= 1;
                    }
                    buf[..len].copy_from_slice(&s.as_bytes()[..len]);
                    Self { buf, len }
                }
                pub fn as_str(&self) -> &str {
                    core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
                }
            }
        };
    }
    fixed_str!(Str16, 16);
    fixed_str!(Str48, 48);
}

pub fn identify() -> Identity {
    let id = CpuId::new();
    let vendor_info = id.get_vendor_info();
    let vendor_string = vendor_info.as_ref().map_or("unknown", |v| v.as_str());
    let brand = id.get_processor_brand_string();
    let fi = id.get_feature_info();
    let ext = id.get_extended_processor_and_feature_identifiers();
    Identity {
        vendor_string: heapless_str::Str16::new(vendor_string),
        brand: heapless_str::Str48::new(brand.as_ref().map_or("", |b| b.as_str().trim())),
        family: fi.as_ref().map_or(0, |f| f.family_id()),
        model: fi.as_ref().map_or(0, |f| f.model_id()),
        stepping: fi.as_ref().map_or(0, |f| f.stepping_id()),
        has_vmx: fi.as_ref().is_some_and(|f| f.has_vmx()),
        has_svm: ext.as_ref().is_some_and(|e| e.has_svm()),
    }
}

/// Raw CPUID.
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

// `rdmsr_safe`: RDMSR that returns instead of crashing when the MSR does not exist.
// The #GP handler recognises a fault at `bastion_rdmsr_insn` and resumes at
// `bastion_rdmsr_fixup` (see `interrupts::try_fixup`). Emulators implement different MSR
// sets (Bochs has no VM_CR), and real firmware can hide MSRs; probing must not be fatal.
global_asm!(
    ".global bastion_rdmsr_safe",
    ".global bastion_rdmsr_insn",
    ".global bastion_rdmsr_fixup",
    "bastion_rdmsr_safe:",
    "    mov ecx, edi",
    "bastion_rdmsr_insn:",
    "    rdmsr",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov qword ptr [rsi], rax",
    "    mov eax, 1",
    "    ret",
    "bastion_rdmsr_fixup:",
    "    xor eax, eax",
    "    ret",
);

unsafe extern "C" {
    fn bastion_rdmsr_safe(msr: u32, out: *mut u64) -> u32;
    static bastion_rdmsr_insn: u8;
    static bastion_rdmsr_fixup: u8;
}

/// Reads an MSR; `None` when the CPU raised #GP (the MSR does not exist).
pub fn rdmsr_safe(msr: u32) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the only possible fault is #GP at the marked instruction, which is fixed up.
    let ok = unsafe { bastion_rdmsr_safe(msr, &mut v) };
    (ok != 0).then_some(v)
}

/// Where `rdmsr_safe` may fault and where it resumes.
pub fn rdmsr_fixup() -> (u64, u64) {
    (&raw const bastion_rdmsr_insn as u64, &raw const bastion_rdmsr_fixup as u64)
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
