//! The I/O APIC: MMIO accesses of any size to its page (IOREGSEL, IOWIN, the EOI register),
//! indirect register writes, input lines and EOIs, in any order. Rules checked (82093AA
//! datasheet, 3.2): the version register always reads the same, pins 0-23 exist and no other,
//! the ID register keeps only bits 27:24, and the message queue stays bounded.
#![no_main]
use bastion_core::devices::bus::BusDevice;
use bastion_core::devices::ioapic::{IoApic, IOAPIC_PINS, IOAPIC_VERSION, MAX_QUEUED_MESSAGES, REG_ID, REG_VER};
use bastion_core_fuzz::access_len;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut io = IoApic::new();
    while !u.is_empty() {
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => {
                let offset = [0x00, 0x10, 0x40, 0x04, 0x13, 0x20, 0xff8][u.int_in_range(0..=6usize).unwrap_or(0)];
                let mut buf = [0u8; 8];
                io.read(offset, &mut buf[..access_len(&mut u)]);
            }
            1 => {
                let offset = [0x00, 0x10, 0x40, 0x04, 0x13, 0x20, 0xff8][u.int_in_range(0..=6usize).unwrap_or(0)];
                let len = access_len(&mut u);
                let bytes = u.bytes(len).unwrap_or(&[0; 8][..len]).to_vec();
                let _ = io.write(offset, &bytes);
            }
            2 => io.write_register(u.int_in_range(0..=0x40).unwrap_or(0), u.arbitrary().unwrap_or(0)),
            3 => io.set_irq(u.int_in_range(0..=25).unwrap_or(0), u.arbitrary().unwrap_or(false)),
            4 => io.eoi(u.arbitrary().unwrap_or(0)),
            _ => {
                let _ = io.take_messages();
            }
        }
        assert_eq!(io.read_register(REG_VER), IOAPIC_VERSION);
        assert_eq!(io.read_register(REG_ID) & !0x0f00_0000, 0, "ID {:#x}", io.read_register(REG_ID));
        assert!(io.redirection_entry(IOAPIC_PINS - 1).is_some() && io.redirection_entry(IOAPIC_PINS).is_none());
        assert!(io.clone().take_messages().len() <= MAX_QUEUED_MESSAGES);
    }
});
