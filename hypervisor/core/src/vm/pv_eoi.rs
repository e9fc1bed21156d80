//! The paravirtual EOI, as KVM defines it (`Documentation/virt/kvm/x86/msr.rst`,
//! MSR_KVM_PV_EOI_EN; offered by `KVM_FEATURE_PV_EOI` in CPUID 0x4000_0101): an unmodified
//! Linux guest ends an interrupt by clearing a flag in its own memory instead of writing the
//! local APIC's EOI register, which costs an MMIO exit (a nested page fault, the faulting
//! instruction fetched and decoded) on every interrupt, the timer tick's included.
//!
//! The guest writes MSR 0x4b564d04 with bit 0 = enable and bits 63:2 = the 4-byte-aligned
//! guest-physical address of a 32-bit word (bit 1 is reserved: #GP). Before each entry Bastion
//! sets bit 0 of that word when the guest may skip its EOI — the vector in service is
//! edge-triggered (no I/O APIC waits for its EOI) and nothing waits in the IRR that the EOI
//! would let through (`IrqChip::eoi_can_be_skipped`), as KVM's `apic_sync_pv_eoi_to_guest`
//! decides — and clears it when that no longer holds. The guest test-and-clears the bit and
//! skips the EOI write when it was set (Linux's `kvm_guest_apic_eoi_write`); it may also write
//! the register anyway, which is just as legal. At every exit while the flag is armed Bastion
//! looks again ([`sync_from_guest`]), before anything decides what the vCPU can take: the bit
//! cleared while the vector it was set for is still in service means the guest ended that
//! interrupt, and Bastion performs the EOI for it. (Looking only before the next entry is not
//! enough: a vCPU that ends an interrupt this way and then halts would be judged by an ISR
//! that still holds the vector, and sleep past the interrupts the EOI lets through — an SMP
//! Linux guest hung at boot that way.)
//!
//! Written by hand: this is KVM's ABI, not a library's.

use super::guest_mem::GuestPhys;
use crate::devices::irq::IrqChip;

/// MSR_KVM_PV_EOI_EN.
pub const MSR_PV_EOI_EN: u32 = 0x4b56_4d04;
/// Bit 0 of the MSR: enabled; bit 1: reserved.
const ENABLE: u64 = 1; // bit 0
const RESERVED: u64 = 1 << 1;
/// Bit 0 of the guest's word: the EOI may be skipped.
const SKIP: u32 = 1;

/// One vCPU's paravirtual-EOI state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PvEoi {
    /// What the guest last wrote to the MSR (read back as written).
    pub msr: u64,
    /// The vector Bastion last set the flag for, while the flag is set.
    pub armed: Option<u8>,
}

impl PvEoi {
    /// WRMSR: `Err` (#GP) with reserved bit 1 set. Disabling forgets an armed flag: the
    /// guest then ends its interrupts by writing the register.
    pub fn write_msr(&mut self, value: u64) -> Result<(), ()> {
        if value & RESERVED != 0 {
            return Err(());
        }
        self.msr = value;
        if value & ENABLE == 0 {
            self.armed = None;
        }
        Ok(())
    }

    fn word(&self) -> Option<u64> {
        (self.msr & ENABLE != 0).then_some(self.msr & !3)
    }
}

/// After an exit: if the flag was armed for a vector and the guest cleared it, the guest ended
/// that interrupt: the EOI happens now. If the guest wrote the EOI register instead (the vector
/// is no longer in service), the flag is taken back. A word that is no longer RAM disarms.
pub fn sync_from_guest(pv: &mut PvEoi, chip: &mut IrqChip, v: usize, mem: &mut dyn GuestPhys) {
    let (Some(vector), Some(gpa)) = (pv.armed, pv.word()) else { return };
    let Some(word) = mem.read_u32(gpa) else {
        pv.armed = None;
        return;
    };
    if chip.in_service(v) != Some(vector) {
        // Ended by a register write: the flag must not end the next interrupt too (cleared
        // whether or not the guest already did).
        mem.write(gpa, &(word & !SKIP).to_le_bytes());
        pv.armed = None;
    } else if word & SKIP == 0 {
        chip.eoi(v);
        pv.armed = None;
    }
}

/// Before an entry, after the interrupt for it is injected: arms the flag when the guest may
/// skip its EOI, disarms it when it may not.
pub fn sync_to_guest(pv: &mut PvEoi, chip: &IrqChip, v: usize, mem: &mut dyn GuestPhys) {
    let Some(gpa) = pv.word() else { return };
    let want = chip.eoi_can_be_skipped(v);
    if want == pv.armed {
        return;
    }
    let Some(word) = mem.read_u32(gpa) else { return };
    let new = if want.is_some() { word | SKIP } else { word & !SKIP };
    if mem.write(gpa, &new.to_le_bytes()) {
        pv.armed = want;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::lapic::{LAPIC_BASE, REG_EOI, REG_ICR_LOW, REG_ISR};

    struct Ram(Vec<u8>);
    impl GuestPhys for Ram {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
            let Some(src) = self.0.get(gpa as usize..gpa as usize + buf.len()) else { return false };
            buf.copy_from_slice(src);
            true
        }
        fn write(&mut self, gpa: u64, buf: &[u8]) -> bool {
            let Some(dst) = self.0.get_mut(gpa as usize..gpa as usize + buf.len()) else { return false };
            dst.copy_from_slice(buf);
            true
        }
    }

    const WORD: u64 = 0x100;

    fn flag(ram: &Ram) -> u32 {
        u32::from_le_bytes(ram.0[WORD as usize..WORD as usize + 4].try_into().unwrap())
    }

    /// A self IPI with `vector`, acknowledged (in service), as after an injection.
    fn in_service(chip: &mut IrqChip, vector: u8) {
        chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &((1u32 << 18) | u32::from(vector)).to_le_bytes());
        assert_eq!(chip.acknowledge(0), Some(vector));
    }

    fn isr_word(chip: &mut IrqChip, vector: u8) -> u32 {
        let mut b = [0u8; 4];
        chip.lapic_read(0, LAPIC_BASE + REG_ISR + 16 * u64::from(vector >> 5), &mut b);
        u32::from_le_bytes(b)
    }

    fn setup() -> (PvEoi, IrqChip, Ram) {
        let mut pv = PvEoi::default();
        pv.write_msr(WORD | 1).unwrap();
        (pv, IrqChip::new(1, || 0), Ram(vec![0; 0x1000]))
    }

    #[test]
    fn an_edge_interrupt_in_service_arms_the_flag_and_the_guest_clearing_it_ends_the_interrupt() {
        // msr.rst: "Value of 1 means that guest can skip writing EOI to the apic"; the guest
        // test-and-clears it; the hypervisor then does the EOI (KVM's pv_eoi_clr_pending).
        let (mut pv, mut chip, mut ram) = setup();
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (1, Some(0x40)));
        // Nothing changes while the guest has not cleared it.
        sync_from_guest(&mut pv, &mut chip, 0, &mut ram);
        assert_ne!(isr_word(&mut chip, 0x40) & 1, 0, "still in service");
        ram.0[WORD as usize] = 0; // the guest's test-and-clear
        sync_from_guest(&mut pv, &mut chip, 0, &mut ram);
        assert_eq!(isr_word(&mut chip, 0x40), 0, "the EOI was done for the guest");
        assert_eq!(pv.armed, None);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!(flag(&ram), 0, "nothing in service: not armed again");
    }

    #[test]
    fn a_pending_interrupt_keeps_the_flag_down_so_the_eoi_exits() {
        // An EOI that unblocks a waiting vector must reach Bastion at once (KVM: irr_pending).
        let (mut pv, mut chip, mut ram) = setup();
        in_service(&mut chip, 0x50);
        chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &((1u32 << 18) | 0x41u32).to_le_bytes());
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (0, None));
    }

    #[test]
    fn a_level_triggered_vector_in_service_keeps_the_flag_down() {
        // SDM 11.8.5: its EOI is broadcast to the I/O APIC, which Bastion must see.
        let (mut pv, mut chip, mut ram) = setup();
        chip.ioapic.write_register(0x10 + 2 * 9, (1 << 15) | 0x49);
        chip.set_isa_irq(9, true);
        assert_eq!(chip.acknowledge(0), Some(0x49));
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!(flag(&ram), 0);
    }

    #[test]
    fn an_eoi_written_to_the_register_instead_takes_the_flag_back() {
        // Writing the register is "also legal": the flag must not end the next interrupt.
        let (mut pv, mut chip, mut ram) = setup();
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        in_service(&mut chip, 0x60); // nested, higher
        chip.lapic_write(0, LAPIC_BASE + REG_EOI, &0u32.to_le_bytes()); // ends 0x60
        chip.lapic_write(0, LAPIC_BASE + REG_EOI, &0u32.to_le_bytes()); // ends 0x40
        sync_from_guest(&mut pv, &mut chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (0, None));
        // The flag was armed for 0x40; with 0x60 in service instead, a cleared flag must not
        // end 0x60.
        let (mut pv, mut chip, mut ram) = setup();
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        in_service(&mut chip, 0x60);
        ram.0[WORD as usize] = 0;
        sync_from_guest(&mut pv, &mut chip, 0, &mut ram);
        assert_ne!(isr_word(&mut chip, 0x60) & 1, 0, "0x60 stays in service");
    }

    #[test]
    fn the_flag_follows_nested_vectors_and_keeps_the_words_other_bits() {
        // Only bit 0 of the word is the flag (msr.rst); Bastion leaves bits 31:1 as they are.
        let (mut pv, mut chip, mut ram) = setup();
        ram.0[WORD as usize] = 0xa0;
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (0xa1, Some(0x40)));
        // A higher vector nests: still skippable, now for it; the flag stays up.
        in_service(&mut chip, 0x60);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (0xa1, Some(0x60)));
        // 0x51 waits, and ending 0x60 would let it through: the flag comes down.
        chip.lapic_write(0, LAPIC_BASE + REG_ICR_LOW, &((1u32 << 18) | 0x51u32).to_le_bytes());
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!((flag(&ram), pv.armed), (0xa0, None));
    }

    #[test]
    fn the_msr_reads_back_refuses_bit_1_and_disabling_disarms() {
        let mut pv = PvEoi::default();
        assert_eq!(pv.write_msr(WORD | 3), Err(()));
        assert_eq!(pv.write_msr(WORD | 1), Ok(()));
        assert_eq!(pv.msr, WORD | 1);
        pv.armed = Some(0x40);
        pv.write_msr(WORD).unwrap();
        assert_eq!(pv.armed, None);
        // Disabled: nothing is ever written.
        let (mut chip, mut ram) = (IrqChip::new(1, || 0), Ram(vec![0; 0x1000]));
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!(flag(&ram), 0);
    }

    #[test]
    fn a_word_outside_ram_is_never_armed() {
        let (mut pv, mut chip, mut ram) = setup();
        pv.write_msr(0x10_0000 | 1).unwrap();
        in_service(&mut chip, 0x40);
        sync_to_guest(&mut pv, &chip, 0, &mut ram);
        assert_eq!(pv.armed, None);
    }
}
