//! The 8259A pair: guest reads and writes of its ports (and their neighbours), interrupt lines
//! raised and lowered, acknowledge cycles, in any order. Rules checked (8259A datasheet,
//! "Interrupt Sequence" and "Initialization Command Words"): an acknowledge cycle answers a
//! vector only once the master has had its ICW1..ICW4 sequence, always then (a spurious IR7
//! when nothing may be delivered), and INT is never raised before that sequence.
#![no_main]
use bastion_core::devices::pic8259::Pic;
use libfuzzer_sys::fuzz_target;

const PORTS: [u16; 8] = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x22, 0xa2];

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut pic = Pic::new();
    while !u.is_empty() {
        let port = PORTS[u.int_in_range(0..=7usize).unwrap_or(0)];
        match u.int_in_range(0..=3u8).unwrap_or(0) {
            0 => {
                let _ = pic.read(port);
            }
            1 => pic.write(port, u.arbitrary().unwrap_or(0)),
            2 => pic.set_irq(u.int_in_range(0..=17).unwrap_or(0), u.arbitrary().unwrap_or(false)),
            _ => {
                let had = pic.has_interrupt();
                let v = pic.acknowledge();
                assert_eq!(v.is_some(), pic.is_initialised(), "acknowledge answered {v:?}");
                assert!(!had || v.is_some(), "INT was raised but the acknowledge cycle answered nothing");
            }
        }
        assert!(!pic.has_interrupt() || pic.is_initialised(), "INT raised before initialisation");
    }
});
