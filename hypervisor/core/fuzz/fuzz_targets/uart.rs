//! The 16550A UART: guest reads and writes of any offset and value, typed input and host
//! drains in any order. Rules checked (PC16550D datasheet): the TX FIFO holds at most 16 bytes,
//! LSR.THRE (bit 5) and LSR.TEMT (bit 6) are set exactly while it is empty (section 8.4; this
//! model has no shift register, so TEMT equals THRE), the IIR's identification is one of the
//! six of Table IV, the interrupt line is low whenever IIR says none is pending, and a drain
//! returns bytes the guest wrote, never more.
#![no_main]
use bastion_core::devices::uart16550::{Uart16550, FIFO_SIZE, IIR, IIR_NONE, LSR, THR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let mut uart = Uart16550::new();
    let mut written = 0usize;
    let mut drained = 0usize;
    while !u.is_empty() {
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => {
                let offset: u8 = u.int_in_range(0..=9).unwrap_or(0);
                let v = uart.read(offset);
                if offset == LSR {
                    assert_eq!(v & 0x20 != 0, uart.tx_pending() == 0, "LSR.THRE {v:#x} with {} bytes queued", uart.tx_pending());
                    assert_eq!(v & 0x40 != 0, v & 0x20 != 0, "LSR.TEMT differs from THRE: {v:#x}");
                }
                if offset == IIR {
                    assert!(matches!(v & 0x0f, 0x01 | 0x06 | 0x04 | 0x0c | 0x02 | 0x00), "IIR {v:#x}");
                }
            }
            1 => {
                let offset: u8 = u.int_in_range(0..=9).unwrap_or(0);
                let value: u8 = u.arbitrary().unwrap_or(0);
                if offset == THR {
                    written += 1;
                }
                uart.write(offset, value);
            }
            2 => {
                let n = u.int_in_range(0..=40usize).unwrap_or(0);
                let bytes = u.bytes(n).unwrap_or(&[]);
                let room = uart.rx_space();
                let took = uart.receive(bytes);
                assert!(took <= bytes.len() && took <= room, "took {took} of {} with room for {room}", bytes.len());
            }
            3 => {
                let max = u.int_in_range(0..=20usize).unwrap_or(0);
                let mut out = Vec::new();
                let n = uart.drain_output(&mut out, max);
                assert!(n <= max && n == out.len());
                drained += n;
            }
            4 => drained += uart.take_output().len(),
            _ => {
                let _ = uart.interrupt_line();
                let _ = uart.divisor();
            }
        }
        assert!(uart.tx_pending() <= FIFO_SIZE, "{} bytes in a 16-byte FIFO", uart.tx_pending());
        assert!(uart.rx_space() <= FIFO_SIZE);
        // Every byte that left was written to THR (DLAB writes and loopback take some away;
        // none is invented).
        assert!(drained <= written, "drained {drained} of {written} THR writes");
        // Read IIR's state without the read's side effect: a clone answers.
        if uart.clone().read(IIR) & 0x0f == IIR_NONE {
            assert!(!uart.interrupt_line(), "INTR high with no interrupt pending");
        }
    }
});
