//! Bastion's own GDT and TSS. The bootloader's GDT is gone once its memory is reused, and the
//! TSS is what gives #DF, NMI and #MC their own known-good stacks (Interrupt Stack Table,
//! Intel SDM Vol. 3A 6.14.5): a double fault caused by a stack overflow would otherwise
//! fault again on the same broken stack and triple-fault the machine. VMX also requires a
//! non-null host TR selector (SDM 26.2.3), which this TSS provides.

use spin::Lazy;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT entry, 0-based in the TSS array).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; 3] = [const { Stack([0; IST_STACK_SIZE]) }; 3];

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    for (i, slot) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK].into_iter().enumerate() {
        // SAFETY: each IST stack is used by exactly one CPU's TSS (the boot CPU's, for now);
        // only its end address is taken here.
        let top = unsafe { (&raw mut IST_STACKS[i]).add(1) } as u64;
        tss.interrupt_stack_table[slot as usize] = VirtAddr::new(top);
    }
    tss
});

pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

static GDT: Lazy<(GlobalDescriptorTable, Selectors)> = Lazy::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (gdt, Selectors { code, data, tss })
});

/// Loads the GDT and TSS on the boot CPU and reloads every segment register.
pub fn init() {
    GDT.0.load();
    let s = &GDT.1;
    // SAFETY: the selectors come from the GDT just loaded.
    unsafe {
        CS::set_reg(s.code);
        SS::set_reg(s.data);
        DS::set_reg(s.data);
        ES::set_reg(s.data);
        load_tss(s.tss);
    }
}
