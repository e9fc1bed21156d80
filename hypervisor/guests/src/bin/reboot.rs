//! Test guest `reboot`: checks the 8042 keyboard controller's self-test (0xAA answers 0x55 on
//! port 0x60, IBM PC AT Technical Reference, "Keyboard Controller"), prints
//! `reboot: booted, 8042 self-test 0x55`, then resets the machine the way Linux's `reboot=k`
//! does: command 0xFE pulses the CPU reset line. The hypervisor restarts or stops the guest
//! per its `on_reboot`. vCPU 0 only.
#![no_std]
#![no_main]

use test_guests::cpu::{inb, outb};
use test_guests::say;

test_guests::guest!(name = "reboot", main = main);

const STATUS_OBF: u8 = 1;

fn main() -> u32 {
    outb(0x64, 0xaa);
    let mut answer = None;
    for _ in 0..1000 {
        if inb(0x64) & STATUS_OBF != 0 {
            answer = Some(inb(0x60));
            break;
        }
    }
    match answer {
        Some(b) => say!("booted, 8042 self-test {b:#04x}"),
        None => say!("booted, 8042 self-test gave no answer"),
    }
    outb(0x64, 0xfe);
    say!("FAIL: still running after the reset pulse");
    1
}
