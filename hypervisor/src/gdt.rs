//! Bastion's own GDT and TSS, one pair per CPU. The bootloader's GDT is gone once its memory is
//! reused, and the TSS is what gives #DF, NMI and #MC their own known-good stacks (Interrupt
//! Stack Table, Intel SDM Vol. 3A 6.14.5): a double fault caused by a stack overflow would
//! otherwise fault again on the same broken stack and triple-fault the machine. VMX also
//! requires a non-null host TR selector (SDM 26.2.3), which this TSS provides.

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT entry, 0-based in the TSS array).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// The boot CPU's IST stacks: static, because the boot CPU loads its GDT before the heap
/// exists. Other CPUs get theirs from the heap.
static mut BSP_IST_STACKS: [Stack; 3] = [const { Stack([0; IST_STACK_SIZE]) }; 3];
static mut BSP_TSS: TaskStateSegment = TaskStateSegment::new();
static mut BSP_GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();

fn fill_tss(tss: &mut TaskStateSegment, stack_tops: [u64; 3]) {
    for (slot, top) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK].into_iter().zip(stack_tops) {
        tss.interrupt_stack_table[slot as usize] = VirtAddr::new(top);
    }
}

fn load(gdt: &'static mut GlobalDescriptorTable, tss: &'static TaskStateSegment) {
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_sel);
    }
}

/// Loads the boot CPU's GDT and TSS and reloads every segment register. Runs once, first.
pub fn init() {
    // SAFETY: runs once on the boot CPU before anything else touches these statics.
    unsafe {
        let stacks = &raw mut BSP_IST_STACKS;
        let tops = [0, 1, 2].map(|i| (&raw mut (*stacks)[i]).add(1) as u64);
        let tss = &mut *(&raw mut BSP_TSS);
        fill_tss(tss, tops);
        load(&mut *(&raw mut BSP_GDT), &*(&raw const BSP_TSS));
    }
}

/// Loads a fresh GDT and TSS, with their own IST stacks, on an application processor.
pub fn init_ap() {
    let tops = [0, 1, 2].map(|_| {
        let stack: &'static mut Stack = Box::leak(Box::new(Stack([0; IST_STACK_SIZE])));
        (stack as *mut Stack).wrapping_add(1) as u64
    });
    let tss: &'static mut TaskStateSegment = Box::leak(Box::new(TaskStateSegment::new()));
    fill_tss(tss, tops);
    load(Box::leak(Box::new(GlobalDescriptorTable::new())), tss);
}
