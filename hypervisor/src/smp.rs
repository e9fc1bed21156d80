//! Starting the application processors: the INIT-SIPI-SIPI sequence (Intel SDM Vol. 3A 9.4.4,
//! MultiProcessor Specification B.4) and a real-mode trampoline that takes each AP straight to
//! long mode and into `ap_main`.
//!
//! A SIPI starts the AP in real mode at a 4 KiB page below 1 MiB. The trampoline there loads a
//! temporary GDT, enables PAE and long mode with a temporary PML4 (below 4 GiB, since it is
//! loaded while still in 32-bit terms) that identity-maps the first 2 MiB — so the code keeps
//! running when paging turns on — and shares every other entry with the boot CPU's tables, so
//! the kernel, its heap and the physical mapping are all there. `ap_main` then switches to
//! the boot CPU's CR3 and sets the CPU up like the boot CPU.

use crate::{lapic, memory, time};
use alloc::vec::Vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

// AT&T syntax: LLVM's Intel-syntax parser rejects label differences in memory operands,
// which this position-independent code needs everywhere.
global_asm!(
    r#"
.section .rodata.bastion_ap_trampoline, "a"
.global bastion_ap_trampoline_start
.global bastion_ap_trampoline_end
.code16
bastion_ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx
    leal (tr_gdt - bastion_ap_trampoline_start)(%ebx), %eax
    movl %eax, (tr_gdtr - bastion_ap_trampoline_start + 2)
    lgdtl (tr_gdtr - bastion_ap_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (tr_pml4 - bastion_ap_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    leal (tr_long - bastion_ap_trampoline_start)(%ebx), %eax
    movl %eax, (tr_farptr - bastion_ap_trampoline_start)
    ljmpl *(tr_farptr - bastion_ap_trampoline_start)
.code64
tr_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (tr_stack - bastion_ap_trampoline_start)(%rbx), %rsp
    movq (tr_arg - bastion_ap_trampoline_start)(%rbx), %rdi
    movq (tr_entry - bastion_ap_trampoline_start)(%rbx), %rax
    jmpq *%rax
.balign 8
tr_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
tr_gdtr:
    .word 23
    .long 0
tr_farptr:
    .long 0
    .word 0x08
.balign 8
tr_pml4:
    .quad 0
tr_stack:
    .quad 0
tr_arg:
    .quad 0
tr_entry:
    .quad 0
bastion_ap_trampoline_end:
.text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static bastion_ap_trampoline_start: u8;
    static bastion_ap_trampoline_end: u8;
}

/// Offsets of the data slots from the end of the trampoline: pml4, stack, argument and entry,
/// 8 bytes each, are its last 32 bytes.
const SLOT_ENTRY_FROM_END: usize = 8;
const SLOT_ARG_FROM_END: usize = 16;
const SLOT_STACK_FROM_END: usize = 24;
const SLOT_PML4_FROM_END: usize = 32;

const AP_STACK_FRAMES: u64 = 16; // 64 KiB
pub const AP_STACK_KIB: u64 = AP_STACK_FRAMES * 4;

/// Where each AP's stack starts (its lowest address, as a kernel virtual address), by CPU
/// index; 0 for the boot CPU, whose stack the bootloader made with a guard page below it.
/// AP stacks come zeroed from the frame allocator and have no guard page (the physical map
/// uses 2 MiB pages), so how deep a stack has ever been is where its lowest non-zero byte is,
/// and [`check_stack`] notices a CPU that came close to its end before it writes over
/// whatever lies below.
static AP_STACK_BOTTOM: [AtomicU64; crate::vmm::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::vmm::MAX_CPUS];

/// Bytes at the bottom of an AP stack that must stay untouched: a CPU that has used them has
/// had less than this left, and the next deeper path would overflow.
const STACK_RED_ZONE: usize = 512;

/// Ends the run with a report if CPU `cpu_index` has ever used the last [`STACK_RED_ZONE`]
/// bytes of its stack. Called once per scheduling round: a handful of loads.
pub fn check_stack(cpu_index: usize) {
    let bottom = AP_STACK_BOTTOM.get(cpu_index).map_or(0, |b| b.load(Ordering::Relaxed));
    if bottom == 0 {
        return;
    }
    let words = bottom as *const u64;
    // SAFETY: the red zone lies inside this CPU's own stack allocation.
    let used = (0..STACK_RED_ZONE / 8).any(|i| unsafe { words.add(i).read_volatile() } != 0);
    if used {
        crate::platform::exit(
            bastion_core::exit::ExitStatus::Fail,
            &alloc::format!("CPU {cpu_index} came within {STACK_RED_ZONE} bytes of the end of its {} KiB stack (a hypervisor bug)", AP_STACK_KIB),
        );
    }
}

/// The deepest each AP's stack has been, in bytes, by CPU index (APs only).
pub fn stack_peaks() -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for (cpu, b) in AP_STACK_BOTTOM.iter().enumerate() {
        let bottom = b.load(Ordering::Relaxed);
        if bottom == 0 {
            continue;
        }
        let len = AP_STACK_FRAMES * 4096;
        // SAFETY: reads inside the CPU's stack allocation; a CPU running meanwhile only makes
        // the figure a moment old.
        let untouched = (0..len).find(|&i| unsafe { (bottom as *const u8).add(i as usize).read_volatile() } != 0).unwrap_or(len);
        out.push((cpu, len - untouched));
    }
    out
}

/// The low page the trampoline runs in, reserved at boot before low memory is used up.
static TRAMPOLINE: AtomicU64 = AtomicU64::new(0);
/// Set by an AP once it runs Rust code; the boot CPU waits for it.
static STARTED: AtomicU64 = AtomicU64::new(u64::MAX);
/// What every AP needs from the boot CPU.
static BOOT_CR3: AtomicU64 = AtomicU64::new(0);

/// Reserves the trampoline page below 1 MiB. Call right after the frame allocator exists.
pub fn reserve_trampoline() -> bool {
    match memory::alloc_below(1, 4096, 0x10_0000) {
        Some(p) => {
            TRAMPOLINE.store(p, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Starts every AP in `apic_ids` (the boot CPU excluded). Returns the APIC IDs that came up.
pub fn start_aps(apic_ids: &[u32]) -> Vec<u32> {
    let mut up = Vec::new();
    let page = TRAMPOLINE.load(Ordering::Relaxed);
    if apic_ids.is_empty() {
        return up;
    }
    if page == 0 {
        log::warn!("smp: no page below 1 MiB for the AP trampoline; running on the boot CPU only");
        return up;
    }
    let Some(pml4) = temporary_pml4() else {
        log::warn!("smp: no memory below 4 GiB for the AP page tables; running on the boot CPU only");
        return up;
    };
    // SAFETY: the trampoline page is reserved for this; the code is position-independent
    // (every address it uses is computed from CS).
    let (start, end) = (&raw const bastion_ap_trampoline_start as usize, &raw const bastion_ap_trampoline_end as usize);
    let len = end - start;
    let dst = memory::phys_to_virt(page);
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, dst, len) };
    let slot = |from_end: usize| dst.wrapping_add(len - from_end);
    let cr3: u64;
    // SAFETY: reading CR3.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3) };
    BOOT_CR3.store(cr3, Ordering::Relaxed);

    for (index, &apic) in apic_ids.iter().enumerate() {
        let cpu_index = index + 1;
        let Some(stack) = memory::alloc_zeroed(AP_STACK_FRAMES, 4096) else {
            log::warn!("smp: no memory for CPU {cpu_index}'s stack");
            break;
        };
        let stack_top = memory::phys_to_virt(stack) as u64 + AP_STACK_FRAMES * 4096;
        // SAFETY: writing the data slots of our trampoline copy.
        unsafe {
            (slot(SLOT_PML4_FROM_END) as *mut u32).write_unaligned(pml4 as u32);
            (slot(SLOT_STACK_FROM_END) as *mut u64).write_unaligned(stack_top);
            (slot(SLOT_ARG_FROM_END) as *mut u64).write_unaligned(cpu_index as u64);
            (slot(SLOT_ENTRY_FROM_END) as *mut u64).write_unaligned(ap_entry as *const () as u64);
        }
        STARTED.store(u64::MAX, Ordering::SeqCst);
        lapic::send_init(apic);
        time::pit_delay_us(10_000);
        let mut came_up = false;
        for _ in 0..2 {
            lapic::send_sipi(apic, (page >> 12) as u8);
            // Up to 100 ms for the AP to reach Rust code.
            for _ in 0..1000 {
                if STARTED.load(Ordering::SeqCst) == cpu_index as u64 {
                    came_up = true;
                    break;
                }
                time::pit_delay_us(100);
            }
            if came_up {
                break;
            }
        }
        if came_up {
            AP_STACK_BOTTOM[cpu_index].store(memory::phys_to_virt(stack) as u64, Ordering::Relaxed);
            up.push(apic);
        } else {
            log::warn!("smp: CPU with APIC ID {apic} did not start");
            memory::free(stack, AP_STACK_FRAMES);
        }
    }
    up
}

/// PML4 for the trampoline: identity map of 0-2 MiB in slot 0, the boot CPU's entries in all
/// other slots.
fn temporary_pml4() -> Option<u64> {
    const LIMIT: u64 = 1 << 32;
    let pml4 = memory::alloc_below(1, 4096, LIMIT)?;
    let pdpt = memory::alloc_below(1, 4096, LIMIT)?;
    let pd = memory::alloc_below(1, 4096, LIMIT)?;
    let cr3: u64;
    // SAFETY: reading CR3; writing three page-table frames we just allocated.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) cr3);
        let boot = memory::phys_to_virt(cr3 & 0x000f_ffff_ffff_f000) as *const u64;
        let new = memory::phys_to_virt(pml4) as *mut u64;
        for i in 1..512 {
            *new.add(i) = *boot.add(i);
        }
        *new = pdpt | 0x3;
        *(memory::phys_to_virt(pdpt) as *mut u64) = pd | 0x3;
        *(memory::phys_to_virt(pd) as *mut u64) = 0x83; // 2 MiB page at 0: present, writable, large
    }
    Some(pml4)
}

/// First Rust code on an AP, entered from the trampoline with its own stack.
extern "C" fn ap_entry(cpu_index: u64) -> ! {
    // SAFETY: the boot CPU's page tables map everything the kernel uses; this CPU leaves the
    // temporary tables for them before touching anything else.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) BOOT_CR3.load(Ordering::Relaxed)) };
    crate::gdt::init_ap();
    crate::interrupts::init_ap();
    lapic::enable();
    STARTED.store(cpu_index, Ordering::SeqCst);
    crate::ap_main(cpu_index as usize)
}
