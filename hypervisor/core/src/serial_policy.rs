//! When the host services its console UART, and the proof that it loses no input: the timing
//! rules the kernel's serial code and run loop follow, with a host test that replays a paste
//! at line speed against a modelled 16-byte receive FIFO.
//!
//! The rules: the CPU that services the console (CPU 0) never runs a guest for longer than
//! [`CONSOLE_TICK_NS`] without an exit (its slices are cut, its idle waits too), and after an
//! exit it polls the UART when the last poll is [`POLL_NS`] old. A 16550 receive FIFO holds
//! 16 bytes (PC16550D datasheet, "FIFO Control Register"); at 115200 baud 8N1 a byte takes
//! 10 bits = 86.8 µs, so the FIFO fills in 1.39 ms. Exits come at least every
//! CONSOLE_TICK_NS and a poll happens at the first exit once POLL_NS has passed, so the
//! longest gap between two polls is max(CONSOLE_TICK_NS, POLL_NS) = 1 ms < 1.39 ms.
//!
//! That rule costs a guest on CPU 0 a VM exit every millisecond, whether anyone types or not.
//! Where the host's I/O APIC can route COM1's IRQ 4 to CPU 0 (the kernel's `ioapic.rs`), the
//! UART interrupts instead: at [`RX_TRIGGER_BYTES`] in the FIFO, or after four character
//! times without a new byte while the FIFO holds fewer (PC16550D, "FIFO Interrupt Mode
//! Operation"). The interrupt ends the guest's run at once (host interrupts always exit) and
//! the poll follows that exit, so the FIFO is emptied within [`RX_TRIGGER_BYTES`] byte times
//! of the trigger plus that latency; CPU 0 then needs the tick only while output waits for the
//! line ([`console_tick_needed`]).

/// Longest time CPU 0 runs a guest (or idles) without returning to the console.
pub const CONSOLE_TICK_NS: u64 = 1_000_000;
/// Input is polled after an exit when the last poll is at least this old.
pub const POLL_NS: u64 = 500_000;
/// The host's input ring.
pub const INPUT_RING_BYTES: usize = 4096;
/// The 16550's receive FIFO.
pub const RX_FIFO_BYTES: usize = 16;
/// The receive FIFO's interrupt trigger level the host sets (FCR bits 7:6 = 10).
pub const RX_TRIGGER_BYTES: usize = 8;

/// Whether CPU 0 must end its guest runs and idle waits within [`CONSOLE_TICK_NS`]: while
/// input is polled (no receive interrupt), or while output waits for the line (the transmit
/// side is polled either way).
pub fn console_tick_needed(rx_interrupt: bool, output_pending: bool) -> bool {
    !rx_interrupt || output_pending
}

/// Whether a poll is due at `now` after the last one at `last` (or output is waiting).
pub fn poll_due(now: u64, last: u64, output_pending: bool) -> bool {
    output_pending || now.wrapping_sub(last) >= POLL_NS
}

/// The time a byte takes on the line at `baud` with 8N1 framing (10 bits), in ns.
pub fn byte_time_ns(baud: u32) -> u64 {
    10 * 1_000_000_000 / baud.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::ByteRing;

    /// Replays `n` bytes arriving back to back at `baud` into a 16-byte FIFO, while CPU 0
    /// exits every `exit_every_ns` (a guest that never exits by itself, so only the slice cut
    /// ends its runs) and polls per [`poll_due`]. Returns (bytes delivered in order, bytes
    /// lost to FIFO overrun).
    fn replay(n: usize, baud: u32, exit_every_ns: u64) -> (usize, usize) {
        let per_byte = byte_time_ns(baud);
        let mut fifo: std::collections::VecDeque<u8> = Default::default();
        let mut ring = ByteRing::<INPUT_RING_BYTES>::new();
        let (mut lost, mut next_byte, mut t, mut last_poll) = (0usize, 0usize, 0u64, 0u64);
        let mut delivered = Vec::new();
        let end = n as u64 * per_byte + 10 * CONSOLE_TICK_NS;
        // A bound on the simulation, so that a wrong byte time fails instead of running on.
        assert!(end < 60_000_000_000, "{n} bytes at {baud} baud: more than a minute of line time");
        while t <= end {
            // Bytes that completed on the line by now enter the FIFO (or overrun it).
            while next_byte < n && (next_byte as u64 + 1) * per_byte <= t {
                if fifo.len() < RX_FIFO_BYTES {
                    fifo.push_back((next_byte % 251) as u8);
                } else {
                    lost += 1;
                }
                next_byte += 1;
            }
            if poll_due(t, last_poll, false) {
                last_poll = t;
                while let Some(b) = fifo.pop_front() {
                    assert!(ring.push(b), "the 4 KiB ring holds a 4 KiB paste");
                }
            }
            // The console code consumes the ring between slices.
            while let Some(b) = ring.pop() {
                delivered.push(b);
            }
            t += exit_every_ns;
        }
        if lost == 0 {
            for (i, b) in delivered.iter().enumerate() {
                assert_eq!(*b, (i % 251) as u8, "order");
            }
        }
        (delivered.len(), lost)
    }

    #[test]
    fn a_4k_paste_at_115200_baud_loses_nothing_while_guests_keep_cpu0_busy() {
        // CPU 0's guest never exits on its own: only the CONSOLE_TICK_NS cut ends its runs.
        assert_eq!(replay(4096, 115_200, CONSOLE_TICK_NS), (4096, 0));
        // With the exit coming sooner (guests that exit often) it only gets better.
        assert_eq!(replay(4096, 115_200, 50_000), (4096, 0));
    }

    #[test]
    fn the_old_10ms_poll_would_lose_most_of_a_paste() {
        // The rule is what makes the difference: polled every 10 ms (the slice length), the
        // 16-byte FIFO overflows (~115 bytes arrive per 10 ms).
        let (got, lost) = replay(4096, 115_200, 10_000_000);
        assert!(lost > 3000 && got + lost == 4096, "{got} delivered, {lost} lost");
    }

    /// Replays `n` bytes at `baud` into the FIFO with the receive interrupt on: it fires at
    /// the trigger level or four character times after the last byte (PC16550D), and the poll
    /// follows `latency_ns` later (the VM exit it causes). No periodic tick at all. Returns
    /// (delivered, lost).
    fn replay_with_interrupts(n: usize, baud: u32, latency_ns: u64) -> (usize, usize) {
        let per_byte = byte_time_ns(baud);
        let (mut fifo, mut delivered, mut lost) = (0usize, 0usize, 0usize);
        let mut poll_at: Option<u64> = None;
        let mut last_byte_at = 0u64;
        let step = 1_000;
        let end = n as u64 * per_byte + 20 * per_byte + latency_ns;
        assert!(end < 60_000_000_000, "{n} bytes at {baud} baud: more than a minute of line time");
        let mut t = 0;
        let mut next = 0usize;
        while t <= end {
            while next < n && (next as u64 + 1) * per_byte <= t {
                if fifo < RX_FIFO_BYTES {
                    fifo += 1;
                } else {
                    lost += 1;
                }
                next += 1;
                last_byte_at = t;
            }
            let trigger = fifo >= RX_TRIGGER_BYTES || (fifo > 0 && t >= last_byte_at + 4 * per_byte);
            if trigger && poll_at.is_none() {
                poll_at = Some(t + latency_ns);
            }
            if poll_at.is_some_and(|p| t >= p) {
                delivered += fifo;
                fifo = 0;
                poll_at = None;
            }
            t += step;
        }
        (delivered + fifo, lost)
    }

    #[test]
    fn with_the_receive_interrupt_a_paste_needs_no_tick_while_the_exit_comes_within_8_bytes() {
        // Trigger at 8 of 16 bytes: 8 byte times (694 us at 115200) for the exit and poll.
        assert_eq!(replay_with_interrupts(4096, 115_200, 100_000), (4096, 0));
        assert_eq!(replay_with_interrupts(4096, 115_200, 600_000), (4096, 0));
        // A single typed key: the character timeout delivers it.
        assert_eq!(replay_with_interrupts(1, 115_200, 100_000), (1, 0));
        // The rule is what makes the difference: a poll 2 ms after the trigger overflows.
        let (_, lost) = replay_with_interrupts(4096, 115_200, 2_000_000);
        assert!(lost > 0);
        assert!(RX_TRIGGER_BYTES < RX_FIFO_BYTES);
    }

    #[test]
    fn cpu0_needs_its_tick_only_while_input_is_polled_or_output_waits() {
        assert!(console_tick_needed(false, false));
        assert!(console_tick_needed(true, true));
        assert!(console_tick_needed(false, true));
        assert!(!console_tick_needed(true, false));
    }

    #[test]
    fn the_gap_between_polls_stays_below_the_fifo_fill_time() {
        // 16 bytes at 115200 baud: 1.389 ms.
        let fill = RX_FIFO_BYTES as u64 * byte_time_ns(115_200);
        assert!(CONSOLE_TICK_NS.max(POLL_NS) < fill, "{fill}");
        assert!(poll_due(POLL_NS, 0, false) && !poll_due(POLL_NS - 1, 0, false) && poll_due(1, 0, true));
        assert_eq!(byte_time_ns(115_200), 86_805);
    }
}
