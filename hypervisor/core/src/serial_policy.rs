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

/// Longest time CPU 0 runs a guest (or idles) without returning to the console.
pub const CONSOLE_TICK_NS: u64 = 1_000_000;
/// Input is polled after an exit when the last poll is at least this old.
pub const POLL_NS: u64 = 500_000;
/// The host's input ring.
pub const INPUT_RING_BYTES: usize = 4096;
/// The 16550's receive FIFO.
pub const RX_FIFO_BYTES: usize = 16;

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

    #[test]
    fn the_gap_between_polls_stays_below_the_fifo_fill_time() {
        // 16 bytes at 115200 baud: 1.389 ms.
        let fill = RX_FIFO_BYTES as u64 * byte_time_ns(115_200);
        assert!(CONSOLE_TICK_NS.max(POLL_NS) < fill, "{fill}");
        assert!(poll_due(POLL_NS, 0, false) && !poll_due(POLL_NS - 1, 0, false) && poll_due(1, 0, true));
        assert_eq!(byte_time_ns(115_200), 86_805);
    }
}
