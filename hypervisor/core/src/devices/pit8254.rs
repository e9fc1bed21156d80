//! Intel 8254 programmable interval timer of the PC (ports 0x40-0x43; counter 2's gate and OUT on 0x61), counting from time, not ticks.
//!
//! Every guest owns one [`Pit`]. The exit handler forwards guest `IN`/`OUT` on ports 0x40-0x43
//! to [`Pit::read`] / [`Pit::write`] and on port 0x61 to [`Pit::read_port_b`] /
//! [`Pit::write_port_b`], each with the host's monotonic time in nanoseconds. Counter 0 drives
//! IRQ 0: before each VM entry (and whenever it wakes up) the hypervisor asks
//! [`Pit::irq0_edges`] how many rising edges OUT0 made since it last asked, and a halted vCPU
//! sleeps until [`Pit::next_irq0_deadline`]. Nothing here reads a clock or touches hardware, so
//! all of it is tested on the host.
//!
//! The rules follow the Intel 8254 datasheet ("8254 Programmable Interval Timer", order number
//! 231164; its sections "Control Word Format", "Write Operations", "Read Operations", "Counter
//! Latch Command", "Read-Back Command", "Status Byte", "Null Count", "Mode 0" to "Mode 5",
//! "Operation Common to All Modes" and Figure "Gate Pin Operations Summary" are cited by name
//! below). Port 0x61 is the PC/AT's "system control port B". Where the datasheet leaves room, the
//! model does what QEMU's `hw/timer/i8254.c` does, because that is what guests are known to work
//! with; the few places where QEMU differs from the datasheet (OUT levels of modes 1, 2, 4, 5,
//! reprogramming in modes 2/3) follow the datasheet.
//!
//! # Counting from time
//!
//! On the PC every counter's CLK input is 1.193182 MHz ([`PIT_HZ`]). The model never ticks:
//! when a count is loaded, the counter remembers the instant (ns) and the count N; any read
//! computes how many CLK periods (1e9 / 1193182 ns) have passed, `floor((now - loaded) *
//! 1193182 / 1e9)`, and derives the count and OUT from that. Tick `k` after a load therefore
//! happens at `loaded + ceil(k * 1e9 / 1193182)` ns, and that is also the instant a deadline
//! reports. All of it is integer arithmetic in `u128`, so any `u64` time works; an instant that
//! would lie beyond `u64::MAX` ns (584 years) is never reached and reported as no deadline.
//!
//! **Time going backwards.** The caller promises a monotonic clock. If a `now_ns` is ever
//! smaller than one the model has already seen, it is taken as that larger time: the PIT looks
//! frozen until the caller's clock catches up, counts never run backwards and no edge is
//! reported twice.
//!
//! **The load instant.** On the chip the CLK runs freely and a new count reaches the counting
//! element on the *next* CLK pulse, so in mode 0 OUT rises N+1 pulses after the write ("Mode
//! 0"), i.e. between N and N+1 periods after it. The model starts counting at the write
//! itself, so OUT rises exactly N periods after it: the programmed time, less than one period
//! (838 ns) earlier than the chip, and what QEMU does. The same holds for every mode.
//!
//! # Modes
//!
//! With N the initial count (a written 0 means 65536 in binary and 10000 in BCD; "Write
//! Operations"), and `p` the periods since the load (or trigger):
//!
//! | mode | starts | OUT | count read |
//! |---|---|---|---|
//! | 0 interrupt on terminal count | count written | low, high from `p = N` on | N - p, wrapping to FFFF/9999 |
//! | 1 retriggerable one-shot | rising gate edge | low for `p < N` | N - p, wrapping |
//! | 2 rate generator (also 6) | count written | low when `p mod N = N-1` | N - (p mod N) |
//! | 3 square wave (also 7) | count written | high for ceil(N/2), low for floor(N/2) | decrements by 2 |
//! | 4 software strobe | count written | low only at `p = N` | N - p, wrapping |
//! | 5 hardware strobe | rising gate edge | low only at `p = N` | N - p, wrapping |
//!
//! Writing a control word resets the counter: OUT goes low in mode 0 and high in every other
//! mode, and nothing counts until a count is written ("Operation Common to All Modes"). A new
//! count restarts modes 0 and 4 at once (in mode 0 the first byte of a two-byte count already
//! stops counting and drops OUT); in modes 2 and 3 it takes effect at the end of the current
//! period, or at a gate trigger if one comes first; in modes 1 and 5 at the next trigger
//! ("Mode 1" to "Mode 5"). Mode 3's count sequences follow "Mode 3": for even N the count goes
//! N, N-2, ..., 2 in each half; for odd N it goes N-1, ..., 0 while OUT is high and N-1, ..., 2
//! while it is low.
//!
//! Count 1 is illegal in mode 2 ("Mode 2"); the model then keeps OUT high and never strobes
//! (rather than an interrupt every 838 ns). In mode 3 a count of 1 gives ceil(1/2) = 1 period
//! high and none low, so OUT also stays high.
//!
//! # Gates
//!
//! Counters 0 and 1 have GATE tied high on the PC; counter 2's gate is port 0x61 bit 0.
//! Following "Gate Pin Operations Summary": in modes 0 and 4 a low gate suspends counting
//! (the count holds, OUT keeps its level); in modes 1 and 5 a rising edge (re)triggers the
//! counter with the latest count, the level does nothing else; in modes 2 and 3 a low gate stops
//! counting and forces OUT high at once, and a rising edge reloads the initial count and starts
//! a new period. The fraction of a period that had passed when a gate suspends counting is
//! dropped (the chip's free-running CLK would keep it): under one period of error.
//!
//! # Reading and the flip-flops
//!
//! The access mode of the control word (LSB, MSB, or LSB then MSB) applies to writes and to
//! reads, each side with its own flip-flop, both reset by a control word ("Write Operations",
//! "Read Operations": reads and writes may interleave). A counter latch command (access bits 00)
//! or a read-back command copies the count into the output latch, which holds it while time
//! passes until it has been read in full (one byte, or LSB then MSB); a second latch before
//! then is ignored ("Counter Latch Command"). The read-back command can latch the count and/or
//! the status byte of several counters at once; if both are latched, the first read returns
//! the status, whichever was latched first ("Read-Back Command"). Reprogramming a counter
//! discards its latches ("the count is held in the latch until it is read ... or until the
//! Counter is reprogrammed").
//!
//! The status byte ("Status Byte") is OUT (bit 7), null count (bit 6) and the control word's
//! bits 5-0 as written (so modes 6 and 7 read back as 6 and 7). Null count is set by a control
//! word and by a complete count write, and cleared when the count reaches the counting element
//! ("Null Count"): at once in modes 0 and 4 and for the first count in modes 2 and 3, at the
//! end of the period for a new count in modes 2 and 3, and at the trigger in modes 1 and 5.
//!
//! # IRQ 0: edges, coalescing and deadlines
//!
//! The 8259 latches IRQ 0 on a rising edge of OUT0. [`Pit::irq0_edges`] returns how many rising
//! edges OUT0 made since the previous call, exactly, saturating at `u32::MAX` (after 3.6e9
//! edges: about 41 days of a 1 kHz timer nobody asked about). The model coalesces nothing: a
//! periodic mode-2/3 timer asked five periods late answers 5. Besides the edges time makes
//! (mode 0: at `p = N`; mode 4: at `p = N + 1`, the end of the strobe; modes 2 and 3: at every
//! `p = kN`), a control word that moves OUT0 from low to high (a mode-0 count still running
//! when another mode is selected) is an edge too, as on the chip. Counter 0's modes 1 and 5
//! never start (its gate has no rising edge), so they make no edges.
//!
//! The PIC can hold only one pending IRQ 0 edge, so the caller delivers a non-zero answer as
//! one edge: `pic.set_irq(0, false); pic.set_irq(0, true)` (lowering first makes the second
//! call an edge even if the line was left high; the line then stays high until the next
//! delivery, as the 8259 wants its inputs held until acknowledged). That coalesces all missed
//! periods into one interrupt, which is what a real PC does when interrupts stay masked for
//! longer than a period and what Linux expects (its tick code catches up from the clocksource).
//! A caller that wants catch-up delivery instead (KVM's "reinject") can keep the count as a
//! backlog and deliver one per acknowledge.
//!
//! [`Pit::next_irq0_deadline`] is the instant of the first rising edge of OUT0 not yet
//! reported by `irq0_edges`: the hypervisor arms its host timer for it and sleeps a halted vCPU
//! until then. Called right after `irq0_edges(now)` it is always later than `now`; a value not
//! later than `now` means an edge is already waiting. `None` means OUT0 will not rise again
//! by itself: never programmed, mode 0 after terminal count, mode 4 after its strobe, modes 1
//! and 5, a mode-2 count of 1, a count still being written, or an edge beyond `u64::MAX` ns.
//!
//! # Port 0x61
//!
//! Reads return bits 3-0 as last written (bit 0 counter 2 gate, bit 1 speaker data enable,
//! bits 2 and 3 the parity and channel check disables), bit 4 the refresh toggle, bit 5 OUT2,
//! and 0 in bits 7-6 (no parity or channel-check errors here). The refresh bit is the output of
//! counter 1 dividing DRAM refresh requests on the AT; nothing refreshes here, so it toggles on
//! every read (as QEMU does) and loops that wait for it to change progress. Writes keep bits
//! 3-0; bits 7-4 are read-only.
//!
//! # Left out
//!
//! * The speaker: bit 1 of port 0x61 is stored and read back; no sound is made.
//! * Reading the control word port returns [`UNMAPPED`] (the 8254 leaves its data bus in
//!   3-state for A1 A0 = 11 reads, "Read Operations"), as does any port the PIT does not decode.
//! * Power-on state: the datasheet leaves it undefined. The model starts every counter as if
//!   control word 0x36 for it ("LSB then MSB, mode 3, binary", what PC firmware programs) had
//!   been written and no count yet: OUT high, count 0, null count set; counter 2's gate is low.
//!   Nothing counts and no IRQ 0 comes until the guest programs counter 0, which is what a
//!   guest started without a BIOS expects; and since OUT0 starts high, its first control word
//!   is not an edge (from a low OUT it would be, see "IRQ 0" above).
//! * Counts whose BCD digits are A-F (undefined on the chip): each such digit is read as 9.

/// Input clock of each counter on the PC: 1.193182 MHz (the 14.31818 MHz crystal / 12).
pub const PIT_HZ: u64 = 1_193_182;
/// Nanoseconds in a second.
const NS_PER_SECOND: u64 = 1_000_000_000;

/// Counter 0 (IRQ 0 on the PC).
pub const COUNTER0_PORT: u16 = 0x40;
/// Counter 1 (DRAM refresh on the PC/AT; free for the guest here).
pub const COUNTER1_PORT: u16 = 0x41;
/// Counter 2 (speaker; gate and OUT on port 0x61).
pub const COUNTER2_PORT: u16 = 0x42;
/// Control word register (write only).
pub const CONTROL_PORT: u16 = 0x43;
/// PC/AT system control port B: counter 2's gate and OUT, speaker enable, refresh toggle.
pub const PORT_B: u16 = 0x61;
/// Value read from a port the PIT does not decode (or the write-only control port).
pub const UNMAPPED: u8 = 0xff;
/// Number of counters.
pub const COUNTERS: usize = 3;

// Control word ("Control Word Format"): SC1 SC0 RW1 RW0 M2 M1 M0 BCD.

/// Control word bits 7-6, SC: the counter it addresses (11 = read-back command).
pub const CW_SELECT_MASK: u8 = 0xc0;
/// Shift of the SC field.
const CW_SELECT_SHIFT: u32 = 6;
/// SC = 11: read-back command.
pub const CW_READ_BACK: u8 = 0xc0;
/// Control word bits 5-4, RW: the access mode.
pub const CW_ACCESS_MASK: u8 = 0x30;
/// RW = 00: counter latch command.
pub const CW_ACCESS_LATCH: u8 = 0x00;
/// RW = 01: read/write the least significant byte only.
pub const CW_ACCESS_LSB: u8 = 0x10;
/// RW = 10: read/write the most significant byte only.
pub const CW_ACCESS_MSB: u8 = 0x20;
/// RW = 11: least significant byte first, then most significant byte.
pub const CW_ACCESS_LSB_MSB: u8 = 0x30;
/// Control word bits 3-1, M2-M0: the mode (6 and 7 are modes 2 and 3).
pub const CW_MODE_MASK: u8 = 0x0e;
/// Shift of the mode field.
const CW_MODE_SHIFT: u32 = 1;
/// Control word bit 0: count in BCD (4 decades) instead of 16-bit binary.
pub const CW_BCD: u8 = 0x01;
/// The control word bits a counter keeps (RW, mode, BCD): bits 5-0 of its status byte.
const CW_PROGRAM_MASK: u8 = 0x3f;
/// What each counter holds at power-on: LSB then MSB, mode 3, binary (module docs, "Left out").
const POWER_ON_PROGRAM: u8 = CW_ACCESS_LSB_MSB + (3 << CW_MODE_SHIFT);

// Read-back command ("Read-Back Command"): 1 1 COUNT STATUS CNT2 CNT1 CNT0 0.

/// Read-back bit 5, COUNT (active low): 0 latches the count of the selected counters.
pub const RB_NO_COUNT: u8 = 0x20;
/// Read-back bit 4, STATUS (active low): 0 latches the status of the selected counters.
pub const RB_NO_STATUS: u8 = 0x10;
/// Read-back bit 1: select counter 0 (counter `i` is bit `i + 1`).
pub const RB_COUNTER0: u8 = 0x02;
/// Read-back bit 2: select counter 1.
pub const RB_COUNTER1: u8 = 0x04;
/// Read-back bit 3: select counter 2.
pub const RB_COUNTER2: u8 = 0x08;

// Status byte ("Status Byte"): OUTPUT NULL-COUNT RW1 RW0 M2 M1 M0 BCD.

/// Status bit 7: the level of OUT when the status was latched.
pub const STATUS_OUT: u8 = 0x80;
/// Status bit 6: the last count written has not reached the counting element yet.
pub const STATUS_NULL_COUNT: u8 = 0x40;

// Port 0x61, PC/AT system control port B.

/// Port 0x61 bit 0 (read/write): counter 2's GATE input.
pub const PORT_B_GATE2: u8 = 0x01;
/// Port 0x61 bit 1 (read/write): speaker data enable (OUT2 reaches the speaker).
pub const PORT_B_SPEAKER: u8 = 0x02;
/// Port 0x61 bit 2 (read/write): parity check disable (stored only).
pub const PORT_B_PARITY_CHECK_DISABLE: u8 = 0x04;
/// Port 0x61 bit 3 (read/write): I/O channel check disable (stored only).
pub const PORT_B_CHANNEL_CHECK_DISABLE: u8 = 0x08;
/// Port 0x61 bit 4 (read only): refresh toggle; flips on every read here.
pub const PORT_B_REFRESH: u8 = 0x10;
/// Port 0x61 bit 5 (read only): counter 2's OUT.
pub const PORT_B_OUT2: u8 = 0x20;
/// Port 0x61 bit 6 (read only): I/O channel check error; always 0 here.
pub const PORT_B_CHANNEL_CHECK: u8 = 0x40;
/// Port 0x61 bit 7 (read only): parity error; always 0 here.
pub const PORT_B_PARITY_ERROR: u8 = 0x80;
/// The bits of port 0x61 a write sets (single bits, so `+`).
const PORT_B_WRITABLE: u8 = PORT_B_GATE2 + PORT_B_SPEAKER + PORT_B_PARITY_CHECK_DISABLE + PORT_B_CHANNEL_CHECK_DISABLE;

/// A written count of 0 in binary: 2^16 periods.
pub const BINARY_MODULUS: u32 = 0x1_0000;
/// A written count of 0 in BCD: 10^4 periods.
pub const BCD_MODULUS: u32 = 10_000;

/// Whole CLK periods in `[from, to)` ns: `floor((to - from) * PIT_HZ / 1e9)`, 0 if `to < from`.
/// At most 2.2e16 for any `u64` span, so the result always fits.
fn ticks_between(from: u64, to: u64) -> u64 {
    let span = u128::from(to.saturating_sub(from));
    u64::try_from(span * u128::from(PIT_HZ) / u128::from(NS_PER_SECOND)).unwrap_or(u64::MAX)
}

/// Nanoseconds from a load to its `ticks`-th CLK period: `ceil(ticks * 1e9 / PIT_HZ)`, the
/// first instant at which [`ticks_between`] reaches `ticks`.
fn ns_for_ticks(ticks: u64) -> u128 {
    (u128::from(ticks) * u128::from(NS_PER_SECOND)).div_ceil(u128::from(PIT_HZ))
}

/// Four BCD digits as a number; digits A-F count as 9 (undefined on the chip).
fn bcd_to_binary(value: u16) -> u32 {
    let mut result = 0;
    for shift in [12u32, 8, 4, 0] {
        let digit = u32::from((value >> shift) & 0xf).min(9);
        result = result * 10 + digit;
    }
    result
}

/// The low four decimal digits of `value` as four BCD digits (callers give it a count below
/// 10000: it is taken modulo the counter's modulus).
fn binary_to_bcd(value: u32) -> u16 {
    let mut value = value;
    let mut result = 0u16;
    for shift in [0u32, 4, 8, 12] {
        // value % 10 < 10 fits in a u16.
        result |= ((value % 10) as u16) << shift;
        value /= 10;
    }
    result
}

/// The six counter modes ("Mode 0" to "Mode 5"); control-word modes 6 and 7 are 2 and 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Mode 0: interrupt on terminal count.
    InterruptOnTerminalCount,
    /// Mode 1: hardware retriggerable one-shot.
    OneShot,
    /// Mode 2: rate generator.
    RateGenerator,
    /// Mode 3: square wave.
    SquareWave,
    /// Mode 4: software triggered strobe.
    SoftwareStrobe,
    /// Mode 5: hardware triggered (retriggerable) strobe.
    HardwareStrobe,
}

impl Mode {
    /// The mode selected by control-word bits M2-M0 (`bits` in 0..=7; higher bits ignored).
    pub fn from_bits(bits: u8) -> Mode {
        match bits & 0x7 {
            0 => Mode::InterruptOnTerminalCount,
            1 => Mode::OneShot,
            2 | 6 => Mode::RateGenerator,
            3 | 7 => Mode::SquareWave,
            4 => Mode::SoftwareStrobe,
            _ => Mode::HardwareStrobe,
        }
    }

    /// Modes 2 and 3 repeat; their reloads are periods.
    fn periodic(self) -> bool {
        matches!(self, Mode::RateGenerator | Mode::SquareWave)
    }
}

/// A stretch of counting with one initial count: it began `start` periods into its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    /// Periods into the run at which this count was loaded.
    start: u64,
    /// The initial count N, 1..=65536.
    count: u32,
}

/// A counter that is counting (or holds a count, suspended by its gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// Instant at which `origin_tick` periods had passed.
    origin_ns: u64,
    /// Periods counted before `origin_ns` (non-zero after a gate suspended and resumed counting).
    origin_tick: u64,
    /// Counting; false while a low gate holds it (modes 0, 2, 3, 4).
    running: bool,
    /// The count in effect.
    seg: Segment,
    /// Modes 2 and 3: a new count waiting for the end of the current period.
    next: Option<Segment>,
    /// Counter 0: rising edges of OUT at periods up to this one have been reported.
    reported: u64,
}

impl Run {
    fn new(now: u64, count: u32, running: bool) -> Run {
        Run {
            origin_ns: now,
            origin_tick: 0,
            running,
            seg: Segment { start: 0, count },
            next: None,
            reported: 0,
        }
    }

    /// Periods counted by `now`.
    fn elapsed(&self, now: u64) -> u64 {
        if self.running {
            self.origin_tick
                .saturating_add(ticks_between(self.origin_ns, now))
        } else {
            self.origin_tick
        }
    }

    /// The segment in effect after `elapsed` periods.
    fn segment_at(&self, elapsed: u64) -> Segment {
        match self.next {
            Some(next) if elapsed >= next.start => next,
            _ => self.seg,
        }
    }

    /// The instant at which period `tick` of the run is reached, if it will be (the run is
    /// counting and the instant fits in a `u64`).
    fn tick_time(&self, tick: u64) -> Option<u64> {
        if tick <= self.origin_tick {
            return Some(self.origin_ns);
        }
        if !self.running {
            return None;
        }
        let at = u128::from(self.origin_ns) + ns_for_ticks(tick - self.origin_tick);
        u64::try_from(at).ok()
    }
}

/// What the counting element is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After a control word (or power-on), or in mode 0 between the two bytes of a count:
    /// not counting, holding `ce`, OUT at `out`.
    Idle { ce: u16, out: bool },
    /// Modes 1 and 5: a count is written and waits for a rising gate edge. OUT is high.
    Armed { ce: u16 },
    /// Counting.
    Counting(Run),
}

/// The output latch: a count latched and not yet read in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Latch {
    value: u16,
    /// LSB-then-MSB access: the LSB has been read, the MSB comes next.
    msb_next: bool,
}

/// One of the three counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counter {
    /// Control word bits 5-0 as last written: access mode, mode (as written, 0-7), BCD.
    program: u8,
    /// Count register CR, assembled from the writes.
    cr: u16,
    /// Write flip-flop: the next byte of an LSB-then-MSB count is the MSB.
    write_msb_next: bool,
    /// Read flip-flop for unlatched reads: the next byte read is the MSB.
    read_msb_next: bool,
    /// Output latch (counter latch or read-back command).
    latch: Option<Latch>,
    /// Latched status byte (read-back command).
    status: Option<u8>,
    /// "Null Count": CR holds a count not yet loaded into the counting element.
    null_count: bool,
    /// GATE input level.
    gate: bool,
    state: State,
}

impl Counter {
    fn new(gate: bool) -> Counter {
        Counter {
            program: POWER_ON_PROGRAM,
            cr: 0,
            write_msb_next: false,
            read_msb_next: false,
            latch: None,
            status: None,
            null_count: true,
            gate,
            state: State::Idle { ce: 0, out: true },
        }
    }

    fn access(&self) -> u8 {
        self.program & CW_ACCESS_MASK
    }

    fn mode(&self) -> Mode {
        Mode::from_bits((self.program & CW_MODE_MASK) >> CW_MODE_SHIFT)
    }

    fn bcd(&self) -> bool {
        self.program & CW_BCD != 0
    }

    /// 65536 or 10000: where counts wrap.
    fn modulus(&self) -> u32 {
        if self.bcd() {
            BCD_MODULUS
        } else {
            BINARY_MODULUS
        }
    }

    /// The initial count N that CR stands for: 1..=65536 (binary) or 1..=10000 (BCD).
    fn initial_count(&self) -> u32 {
        let value = if self.bcd() {
            bcd_to_binary(self.cr)
        } else {
            u32::from(self.cr)
        };
        if value == 0 {
            self.modulus()
        } else {
            value
        }
    }

    /// Moves a mode-2/3 count that waited for the end of a period into effect once that end
    /// has passed (the count has then reached the counting element: null count clears).
    fn settle(&mut self, now: u64) {
        if let State::Counting(run) = &mut self.state {
            if let Some(next) = run.next {
                if run.elapsed(now) >= next.start {
                    run.seg = next;
                    run.next = None;
                    self.null_count = false;
                }
            }
        }
    }

    /// The counting element's value at `now`, as the 16 bits a read shows.
    fn count_at(&self, now: u64) -> u16 {
        let run = match self.state {
            State::Idle { ce, .. } | State::Armed { ce } => return ce,
            State::Counting(run) => run,
        };
        let elapsed = run.elapsed(now);
        let seg = run.segment_at(elapsed);
        let p = elapsed.saturating_sub(seg.start);
        let n = u64::from(seg.count);
        let m = u64::from(self.modulus());
        let value = match self.mode() {
            // "Operation Common to All Modes": in modes 0, 1, 4 and 5 the counter wraps around
            // to FFFF (9999 in BCD) after terminal count and keeps counting.
            Mode::InterruptOnTerminalCount
            | Mode::OneShot
            | Mode::SoftwareStrobe
            | Mode::HardwareStrobe => n + m - p % m,
            // "Mode 2": N, N-1, ..., 1, reload.
            Mode::RateGenerator => n - p % n,
            // "Mode 3": decrement by two; odd counts load N-1. This one formula gives both
            // halves for even and odd N (see the module documentation).
            // (p < 2^55: periods in 2^64 ns; 2p cannot overflow.)
            Mode::SquareWave => (n - (2 * p) % n) & !1,
        };
        // N = m (a written 0) reads as 0, and modes 0, 1, 4, 5 wrap: both taken here.
        let value = u32::try_from(value % m).unwrap_or(0);
        if self.bcd() {
            binary_to_bcd(value)
        } else {
            u16::try_from(value).unwrap_or(0)
        }
    }

    /// The level of OUT at `now`.
    fn out_at(&self, now: u64) -> bool {
        let run = match self.state {
            State::Idle { out, .. } => return out,
            State::Armed { .. } => return true,
            State::Counting(run) => run,
        };
        let mode = self.mode();
        // "Gate Pin Operations Summary": in modes 2 and 3 a low gate sets OUT high at once.
        if mode.periodic() && !self.gate {
            return true;
        }
        let elapsed = run.elapsed(now);
        let seg = run.segment_at(elapsed);
        let p = elapsed.saturating_sub(seg.start);
        let n = u64::from(seg.count);
        match mode {
            // Mode 0: low until terminal count, then high until reprogrammed. Mode 1: low from
            // the trigger until terminal count.
            Mode::InterruptOnTerminalCount | Mode::OneShot => p >= n,
            // Low for the one period in which the count is 1 (count 1 is illegal: held high).
            Mode::RateGenerator => n < 2 || p % n != n - 1,
            // High for ceil(N/2) periods, low for floor(N/2).
            Mode::SquareWave => p % n < n.div_ceil(2),
            // Low for one period when the count reaches 0, once per count.
            Mode::SoftwareStrobe | Mode::HardwareStrobe => p != n,
        }
    }

    /// Rising edges OUT makes with time in periods `(from, to]` of the current run (the gate
    /// held high, as counter 0's is).
    fn time_edges(&self, from: u64, to: u64) -> u64 {
        let State::Counting(run) = self.state else {
            return 0;
        };
        if to <= from {
            return 0;
        }
        let seg = run.seg;
        let n = u64::from(seg.count);
        let once_at = |edge: u64| u64::from(from < edge && edge <= to);
        match self.mode() {
            Mode::InterruptOnTerminalCount | Mode::OneShot => once_at(seg.start.saturating_add(n)),
            // The strobe ends (OUT rises) one period after the count reached 0.
            Mode::SoftwareStrobe | Mode::HardwareStrobe => {
                once_at(seg.start.saturating_add(n).saturating_add(1))
            }
            Mode::RateGenerator | Mode::SquareWave => match run.next {
                None => periodic_edges(seg, from, to),
                Some(next) => {
                    periodic_edges(seg, from, to.min(next.start))
                        + periodic_edges(next, from.max(next.start), to)
                }
            },
        }
    }

    /// The first period after `after` at which OUT rises by itself (gate held high).
    fn next_edge(&self, after: u64) -> Option<u64> {
        let State::Counting(run) = self.state else {
            return None;
        };
        let seg = run.seg;
        let n = u64::from(seg.count);
        let once = |edge: u64| (edge > after).then_some(edge);
        match self.mode() {
            Mode::InterruptOnTerminalCount | Mode::OneShot => once(seg.start.checked_add(n)?),
            Mode::SoftwareStrobe | Mode::HardwareStrobe => {
                once(seg.start.checked_add(n)?.checked_add(1)?)
            }
            Mode::RateGenerator | Mode::SquareWave => match run.next {
                None => first_periodic_edge(seg, after),
                Some(next) => {
                    // An edge of the old count up to the new count's start (none once `after`
                    // has passed that start: the edge found lies beyond it).
                    if let Some(edge) = first_periodic_edge(seg, after) {
                        if edge <= next.start {
                            return Some(edge);
                        }
                    }
                    first_periodic_edge(next, after.max(next.start))
                }
            },
        }
    }

    /// Counter latch command: latch the count unless a latched count is still unread.
    fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            self.latch = Some(Latch {
                value: self.count_at(now),
                msb_next: false,
            });
        }
    }

    /// Read-back status latch, unless a latched status is still unread.
    fn latch_status(&mut self, now: u64) {
        self.settle(now);
        if self.status.is_none() {
            let mut status = self.program;
            if self.out_at(now) {
                status |= STATUS_OUT;
            }
            if self.null_count {
                status |= STATUS_NULL_COUNT;
            }
            self.status = Some(status);
        }
    }

    /// A read of the counter's port: latched status, else the latched count, else the live
    /// count, a byte at a time as the access mode says.
    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let access = self.access();
        if let Some(latch) = self.latch {
            let [lsb, msb] = latch.value.to_le_bytes();
            return match access {
                CW_ACCESS_LSB => {
                    self.latch = None;
                    lsb
                }
                CW_ACCESS_MSB => {
                    self.latch = None;
                    msb
                }
                _ if latch.msb_next => {
                    self.latch = None;
                    msb
                }
                _ => {
                    self.latch = Some(Latch {
                        msb_next: true,
                        ..latch
                    });
                    lsb
                }
            };
        }
        let [lsb, msb] = self.count_at(now).to_le_bytes();
        match access {
            CW_ACCESS_LSB => lsb,
            CW_ACCESS_MSB => msb,
            _ => {
                let msb_next = self.read_msb_next;
                self.read_msb_next = !msb_next;
                if msb_next {
                    msb
                } else {
                    lsb
                }
            }
        }
    }

    /// A control word selecting a mode for this counter ("Operation Common to All Modes").
    fn write_control(&mut self, value: u8, now: u64) {
        let ce = self.count_at(now);
        self.program = value & CW_PROGRAM_MASK;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latch = None;
        self.status = None;
        self.null_count = true;
        let out = self.mode() != Mode::InterruptOnTerminalCount;
        self.state = State::Idle { ce, out };
    }

    /// A count byte written to the counter's port ("Write Operations").
    fn write_count(&mut self, value: u8, now: u64) {
        self.settle(now);
        match self.access() {
            CW_ACCESS_LSB => self.cr = u16::from(value),
            CW_ACCESS_MSB => self.cr = u16::from(value) << 8,
            _ if !self.write_msb_next => {
                self.cr = (self.cr & 0xff00) + u16::from(value);
                self.write_msb_next = true;
                if self.mode() == Mode::InterruptOnTerminalCount {
                    // "Mode 0": writing the first byte disables counting and sets OUT low at
                    // once; the second byte loads the new count.
                    let ce = self.count_at(now);
                    self.state = State::Idle { ce, out: false };
                }
                return;
            }
            _ => {
                self.cr = (self.cr & 0x00ff) + (u16::from(value) << 8);
                self.write_msb_next = false;
            }
        }
        self.load(now);
    }

    /// A complete count has been written to CR: hand it to the counting element as the mode
    /// says ("Mode 0" to "Mode 5").
    fn load(&mut self, now: u64) {
        self.null_count = true;
        let count = self.initial_count();
        match self.mode() {
            Mode::InterruptOnTerminalCount | Mode::SoftwareStrobe => {
                self.state = State::Counting(Run::new(now, count, self.gate));
                self.null_count = false;
            }
            // A new count waits for the next trigger; until the first one, nothing counts.
            Mode::OneShot | Mode::HardwareStrobe => {
                if !matches!(self.state, State::Counting(_)) {
                    self.state = State::Armed {
                        ce: self.count_at(now),
                    };
                }
            }
            Mode::RateGenerator | Mode::SquareWave => match &mut self.state {
                // Counting: "the new count will be loaded at the end of the current counting
                // cycle". Held by a low gate, too: there the cycle does not end while it is
                // held, and the gate's rising edge starts a new run from CR (`set_gate`), so
                // the change planned here never takes effect and the held count stays
                // readable. One rule for both.
                State::Counting(run) => {
                    let elapsed = run.elapsed(now);
                    let seg = run.segment_at(elapsed);
                    let n = u64::from(seg.count);
                    let periods = elapsed.saturating_sub(seg.start) / n + 1;
                    let start = seg.start.saturating_add(periods.saturating_mul(n));
                    run.next = Some(Segment { start, count });
                }
                // The first count after a control word is loaded at once.
                _ => {
                    self.state = State::Counting(Run::new(now, count, self.gate));
                    self.null_count = false;
                }
            },
        }
    }

    /// A change of the GATE input ("Gate Pin Operations Summary").
    fn set_gate(&mut self, level: bool, now: u64) {
        if self.gate == level {
            return;
        }
        self.settle(now);
        self.gate = level;
        let mode = self.mode();
        match mode {
            Mode::InterruptOnTerminalCount | Mode::SoftwareStrobe => {
                if let State::Counting(run) = &mut self.state {
                    // A run of these modes counts exactly while the gate is high (`load`
                    // starts it with the gate's level), and the gate just changed.
                    debug_assert_eq!(run.running, !level);
                    if level {
                        // Counting resumes from the held count.
                        run.origin_ns = now;
                        run.running = true;
                    } else {
                        // Counting is suspended; OUT keeps its level.
                        run.origin_tick = run.elapsed(now);
                        run.origin_ns = now;
                        run.running = false;
                    }
                }
            }
            _ if level => {
                // Modes 1 and 5: the rising edge triggers; modes 2 and 3: it reloads the
                // initial count. Either way the latest CR starts a new run.
                if !matches!(self.state, State::Idle { .. }) {
                    let count = self.initial_count();
                    self.state = State::Counting(Run::new(now, count, true));
                    self.null_count = false;
                }
            }
            Mode::RateGenerator | Mode::SquareWave => {
                // A low gate stops counting (and forces OUT high, see `out_at`).
                if let State::Counting(run) = &mut self.state {
                    if run.running {
                        run.origin_tick = run.elapsed(now);
                        run.origin_ns = now;
                        run.running = false;
                    }
                }
            }
            // Modes 1 and 5: the gate's level does nothing.
            Mode::OneShot | Mode::HardwareStrobe => {}
        }
    }
}

/// Rising edges of a mode-2/3 segment in periods `(from, to]`: at `start + k * N`, `k >= 1`
/// (none for N = 1, where OUT never leaves high).
fn periodic_edges(seg: Segment, from: u64, to: u64) -> u64 {
    let n = u64::from(seg.count);
    if n < 2 || to <= from {
        return 0;
    }
    let upto = |x: u64| x.saturating_sub(seg.start) / n;
    upto(to) - upto(from)
}

/// The first rising edge of a mode-2/3 segment after period `after`.
fn first_periodic_edge(seg: Segment, after: u64) -> Option<u64> {
    let n = u64::from(seg.count);
    if n < 2 {
        return None;
    }
    let periods = after.saturating_sub(seg.start) / n + 1;
    seg.start.checked_add(periods.checked_mul(n)?)
}

/// The PC's 8254 with port 0x61. See the module documentation for the rules it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pit {
    counters: [Counter; COUNTERS],
    /// Port 0x61 bits 3-0 as written.
    port_b: u8,
    /// Port 0x61 bit 4 as last read.
    refresh: bool,
    /// Rising edges of OUT0 counted and not yet taken by `irq0_edges`.
    irq0_pending: u32,
    /// The latest `now_ns` seen: time never runs backwards for the model.
    now_seen: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// The power-on state (see "Left out" in the module documentation): every counter waits
    /// for a count in mode 3 with OUT high; counter 2's gate and the speaker are off.
    pub fn new() -> Self {
        Pit {
            // Counters 0 and 1 have their gate tied high on the PC.
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
            refresh: false,
            irq0_pending: 0,
            now_seen: 0,
        }
    }

    /// A guest read of port 0x40-0x42 (a counter; 0x43 and others read [`UNMAPPED`]) at
    /// `now_ns`.
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        let now = self.clock(now_ns);
        match counter_index(port) {
            Some(i) => {
                self.counters[i].settle(now);
                self.counters[i].read(now)
            }
            None => UNMAPPED,
        }
    }

    /// A guest write of port 0x40-0x42 (a count byte) or 0x43 (a control word) at `now_ns`;
    /// other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        let now = self.clock(now_ns);
        if port == CONTROL_PORT {
            self.write_control(value, now);
        } else if let Some(i) = counter_index(port) {
            self.changing_out0(i, now, |c| c.write_count(value, now));
        }
    }

    /// A guest read of port 0x61 at `now_ns` (see the module documentation for its bits).
    pub fn read_port_b(&mut self, now_ns: u64) -> u8 {
        let now = self.clock(now_ns);
        self.refresh = !self.refresh;
        let mut value = self.port_b & PORT_B_WRITABLE;
        if self.refresh {
            value |= PORT_B_REFRESH;
        }
        if self.counters[2].out_at(now) {
            value |= PORT_B_OUT2;
        }
        value
    }

    /// A guest write of port 0x61 at `now_ns`: bit 0 drives counter 2's gate.
    pub fn write_port_b(&mut self, value: u8, now_ns: u64) {
        let now = self.clock(now_ns);
        self.port_b = value & PORT_B_WRITABLE;
        self.counters[2].set_gate(value & PORT_B_GATE2 != 0, now);
    }

    /// The level of counter `counter`'s OUT at `now_ns` (false for a counter beyond 2).
    pub fn out(&self, counter: usize, now_ns: u64) -> bool {
        let now = now_ns.max(self.now_seen);
        self.counters.get(counter).is_some_and(|c| c.out_at(now))
    }

    /// The number of rising edges of OUT0 (IRQ 0) since the previous call, exactly, up to
    /// `u32::MAX`. See the module documentation for how to deliver them.
    pub fn irq0_edges(&mut self, now_ns: u64) -> u32 {
        let now = self.clock(now_ns);
        self.counters[0].settle(now);
        core::mem::take(&mut self.irq0_pending)
    }

    /// The instant (ns) of the first rising edge of OUT0 that [`irq0_edges`](Self::irq0_edges)
    /// has not reported yet: the time to wake a halted vCPU. At or before `now_ns` if one is
    /// already waiting; `None` if OUT0 will not rise again by itself.
    pub fn next_irq0_deadline(&self, now_ns: u64) -> Option<u64> {
        let now = now_ns.max(self.now_seen);
        if self.irq0_pending > 0 {
            return Some(now);
        }
        let counter = &self.counters[0];
        let State::Counting(run) = counter.state else {
            return None;
        };
        run.tick_time(counter.next_edge(run.reported)?)
    }

    /// `now_ns`, or the latest time already seen if `now_ns` is earlier; remembered. Every
    /// entry point calls this first, and it collects the edges OUT0 made up to then, so that
    /// no later change of counter 0 (a mode-2/3 count taking effect at a period end, a
    /// reprogramming) can lose or double an edge.
    fn clock(&mut self, now_ns: u64) -> u64 {
        self.now_seen = self.now_seen.max(now_ns);
        self.collect_irq0_edges(self.now_seen);
        self.now_seen
    }

    /// Adds the edges OUT0 made with time up to `now` to the pending count.
    fn collect_irq0_edges(&mut self, now: u64) {
        let counter = &self.counters[0];
        let State::Counting(run) = counter.state else {
            return;
        };
        let elapsed = run.elapsed(now);
        if elapsed <= run.reported {
            return;
        }
        let edges = counter.time_edges(run.reported, elapsed);
        self.add_irq0_edges(edges);
        if let State::Counting(run) = &mut self.counters[0].state {
            run.reported = elapsed;
        }
    }

    fn add_irq0_edges(&mut self, edges: u64) {
        let edges = u32::try_from(edges).unwrap_or(u32::MAX);
        self.irq0_pending = self.irq0_pending.saturating_add(edges);
    }

    /// Runs `change` on counter `i` (at `now`, after [`clock`](Self::clock) collected the
    /// edges time made); for counter 0, counts a low-to-high step of OUT0 the change caused.
    fn changing_out0(&mut self, i: usize, now: u64, change: impl FnOnce(&mut Counter)) {
        if i != 0 {
            if let Some(counter) = self.counters.get_mut(i) {
                change(counter);
            }
            return;
        }
        let before = self.counters[0].out_at(now);
        change(&mut self.counters[0]);
        if !before && self.counters[0].out_at(now) {
            self.add_irq0_edges(1);
        }
    }

    /// A write to port 0x43 ("Control Word Format").
    fn write_control(&mut self, value: u8, now: u64) {
        if value & CW_SELECT_MASK == CW_READ_BACK {
            // "Read-Back Command": latch the count and/or status of each selected counter.
            for (i, counter) in self.counters.iter_mut().enumerate() {
                if value & (RB_COUNTER0 << i) == 0 {
                    continue;
                }
                if value & RB_NO_COUNT == 0 {
                    counter.latch_count(now);
                }
                if value & RB_NO_STATUS == 0 {
                    counter.latch_status(now);
                }
            }
            return;
        }
        let i = usize::from((value & CW_SELECT_MASK) >> CW_SELECT_SHIFT);
        if value & CW_ACCESS_MASK == CW_ACCESS_LATCH {
            // "Counter Latch Command": the mode is left alone.
            if let Some(counter) = self.counters.get_mut(i) {
                counter.latch_count(now);
            }
            return;
        }
        self.changing_out0(i, now, |c| c.write_control(value, now));
    }
}

/// The counter behind port 0x40-0x42.
fn counter_index(port: u16) -> Option<usize> {
    match port {
        COUNTER0_PORT => Some(0),
        COUNTER1_PORT => Some(1),
        COUNTER2_PORT => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary start, so no test depends on loads at time 0.
    const T0: u64 = 5_000_000_000;

    /// The instant `ticks` CLK periods after a load at `load_ns`.
    fn at(load_ns: u64, ticks: u64) -> u64 {
        load_ns + u64::try_from(ns_for_ticks(ticks)).unwrap()
    }

    /// Control word for counter `sc`, LSB-then-MSB access, mode `mode`, binary.
    fn cw(sc: u8, mode: u8) -> u8 {
        (sc << 6) | CW_ACCESS_LSB_MSB | (mode << 1)
    }

    /// Programs counter `sc` in `mode` (LSB then MSB, binary) with `count` at `now`.
    fn program(pit: &mut Pit, sc: u8, mode: u8, count: u16, now: u64) {
        let port = COUNTER0_PORT + u16::from(sc);
        pit.write(CONTROL_PORT, cw(sc, mode), now);
        pit.write(port, count as u8, now);
        pit.write(port, (count >> 8) as u8, now);
    }

    /// Latches counter `sc` and reads the 16-bit count (LSB-then-MSB access).
    fn latched(pit: &mut Pit, sc: u8, now: u64) -> u16 {
        let port = COUNTER0_PORT + u16::from(sc);
        pit.write(CONTROL_PORT, sc << 6, now);
        let lsb = pit.read(port, now);
        let msb = pit.read(port, now);
        u16::from_le_bytes([lsb, msb])
    }

    fn status(pit: &mut Pit, sc: u8, now: u64) -> u8 {
        pit.write(
            CONTROL_PORT,
            CW_READ_BACK | RB_NO_COUNT | (RB_COUNTER0 << sc),
            now,
        );
        pit.read(COUNTER0_PORT + u16::from(sc), now)
    }

    fn out2(pit: &mut Pit, now: u64) -> bool {
        pit.read_port_b(now) & PORT_B_OUT2 != 0
    }

    #[test]
    fn tick_arithmetic_is_exact_at_the_period_boundaries() {
        // 1 period = 838.0953... ns; tick k is reached at ceil(k * 1e9 / 1193182).
        assert_eq!(ns_for_ticks(1), 839);
        assert_eq!(ticks_between(0, 838), 0);
        assert_eq!(ticks_between(0, 839), 1);
        assert_eq!(ns_for_ticks(PIT_HZ), 1_000_000_000);
        for k in [2u64, 3, 1000, 11931, 65535, 65536, 1 << 40] {
            let t = u64::try_from(ns_for_ticks(k)).unwrap();
            assert_eq!(ticks_between(0, t), k);
            assert_eq!(ticks_between(0, t - 1), k - 1);
        }
    }

    #[test]
    fn power_on_state_counts_nothing_and_raises_no_irq0() {
        // Module docs, "Left out": as after control word 0x36 with no count: OUT high.
        let mut pit = Pit::new();
        assert_eq!(
            status(&mut pit, 0, T0),
            STATUS_OUT | STATUS_NULL_COUNT | 0x36
        );
        assert_eq!(latched(&mut pit, 1, T0), 0);
        assert!(pit.out(0, T0));
        assert_eq!(pit.irq0_edges(T0 + 1_000_000_000), 0);
        assert_eq!(pit.next_irq0_deadline(T0), None);
        assert_eq!(
            pit.read_port_b(T0) & (PORT_B_GATE2 | PORT_B_OUT2),
            PORT_B_OUT2
        );
        // Programming counter 0 from here is no edge in any mode but 0, which lowers OUT...
        for mode in 1..8 {
            pit.write(CONTROL_PORT, cw(0, mode), T0);
        }
        assert_eq!(pit.irq0_edges(T0), 0);
        // ...so that leaving mode 0 again is one.
        pit.write(CONTROL_PORT, cw(0, 0), T0);
        pit.write(CONTROL_PORT, 0x36, T0);
        assert_eq!(pit.irq0_edges(T0), 1);
    }

    #[test]
    fn mode0_out_low_until_terminal_count_then_high() {
        // "Mode 0": OUT low after the control word, high when the count reaches 0 (here exactly
        // N periods after the write, see "The load instant").
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, cw(0, 0), T0);
        assert!(!pit.out(0, T0));
        pit.write(COUNTER0_PORT, 100, T0);
        pit.write(COUNTER0_PORT, 0, T0);
        assert_eq!(latched(&mut pit, 0, T0), 100);
        assert_eq!(latched(&mut pit, 0, at(T0, 40)), 60);
        assert!(!pit.out(0, at(T0, 100) - 1));
        assert_eq!(latched(&mut pit, 0, at(T0, 100) - 1), 1);
        assert!(pit.out(0, at(T0, 100)));
        assert_eq!(latched(&mut pit, 0, at(T0, 100)), 0);
    }

    #[test]
    fn mode0_counter_wraps_after_terminal_count_and_out_stays_high() {
        // "Operation Common to All Modes": modes 0, 1, 4, 5 wrap to FFFF and keep counting.
        let mut pit = Pit::new();
        program(&mut pit, 0, 0, 10, T0);
        assert_eq!(latched(&mut pit, 0, at(T0, 11)), 0xffff);
        assert_eq!(latched(&mut pit, 0, at(T0, 12)), 0xfffe);
        assert!(pit.out(0, at(T0, 11)));
        assert!(
            pit.out(0, at(T0, 10 + 65536)),
            "still high after a full wrap"
        );
    }

    #[test]
    fn mode0_first_byte_of_a_new_count_stops_counting_and_lowers_out() {
        // "Mode 0": writing the first byte disables counting and sets OUT low immediately;
        // writing the second byte loads the new count.
        let mut pit = Pit::new();
        program(&mut pit, 0, 0, 10, T0);
        assert!(pit.out(0, at(T0, 20)));
        pit.write(COUNTER0_PORT, 50, at(T0, 20));
        assert!(!pit.out(0, at(T0, 20)));
        let held = latched(&mut pit, 0, at(T0, 30));
        assert_eq!(
            held,
            latched(&mut pit, 0, at(T0, 60)),
            "not counting between the bytes"
        );
        let t1 = at(T0, 100);
        pit.write(COUNTER0_PORT, 0, t1);
        assert_eq!(latched(&mut pit, 0, t1), 50);
        assert!(!pit.out(0, at(t1, 49)));
        assert!(pit.out(0, at(t1, 50)));
    }

    #[test]
    fn mode0_gate_low_suspends_counting_of_counter_2() {
        // "Gate Pin Operations Summary": modes 0 and 4 count only while GATE is high.
        let mut pit = Pit::new();
        pit.write_port_b(0, T0);
        program(&mut pit, 2, 0, 1000, T0);
        assert_eq!(
            latched(&mut pit, 2, at(T0, 500)),
            1000,
            "gate low: loaded, not counting"
        );
        let t1 = at(T0, 500);
        pit.write_port_b(PORT_B_GATE2, t1);
        assert_eq!(latched(&mut pit, 2, at(t1, 300)), 700);
        let t2 = at(t1, 300);
        pit.write_port_b(0, t2);
        assert_eq!(latched(&mut pit, 2, at(t2, 5000)), 700, "held while low");
        assert!(!out2(&mut pit, at(t2, 5000)));
        let t3 = at(t2, 5000);
        pit.write_port_b(PORT_B_GATE2, t3);
        assert!(!out2(&mut pit, at(t3, 699)));
        assert!(
            out2(&mut pit, at(t3, 700)),
            "terminal count after 1000 periods of high gate"
        );
    }

    #[test]
    fn mode1_waits_for_a_gate_trigger_then_out_is_low_for_n_periods() {
        // "Mode 1": OUT high; the rising gate edge starts the count and OUT goes low until
        // terminal count. Counter 2 only: counters 0 and 1 have no gate edges.
        let mut pit = Pit::new();
        program(&mut pit, 2, 1, 30, T0);
        assert!(out2(&mut pit, at(T0, 100)), "no trigger yet");
        let t1 = at(T0, 100);
        pit.write_port_b(PORT_B_GATE2, t1);
        assert!(!out2(&mut pit, t1));
        assert_eq!(latched(&mut pit, 2, at(t1, 10)), 20);
        assert!(!out2(&mut pit, at(t1, 29)));
        assert!(out2(&mut pit, at(t1, 30)));
        // The level of the gate does nothing afterwards.
        pit.write_port_b(0, at(t1, 31));
        assert!(out2(&mut pit, at(t1, 40)));
    }

    #[test]
    fn mode1_is_retriggerable_and_takes_a_new_count_at_the_next_trigger() {
        // "Mode 1": a trigger during the one-shot reloads the count; a new count written during
        // the one-shot does not affect it until the next trigger.
        let mut pit = Pit::new();
        program(&mut pit, 2, 1, 30, T0);
        pit.write_port_b(PORT_B_GATE2, T0);
        let t1 = at(T0, 20);
        pit.write_port_b(0, t1);
        pit.write_port_b(PORT_B_GATE2, t1);
        assert!(
            !out2(&mut pit, at(t1, 29)),
            "retriggered: 30 more periods low"
        );
        assert!(out2(&mut pit, at(t1, 30)));
        pit.write(COUNTER2_PORT, 5, at(t1, 40));
        pit.write(COUNTER2_PORT, 0, at(t1, 40));
        assert!(
            out2(&mut pit, at(t1, 41)),
            "a new count alone does not trigger"
        );
        assert_ne!(status(&mut pit, 2, at(t1, 41)) & STATUS_NULL_COUNT, 0);
        let t2 = at(t1, 50);
        pit.write_port_b(0, t2);
        pit.write_port_b(PORT_B_GATE2, t2);
        assert_eq!(status(&mut pit, 2, t2) & STATUS_NULL_COUNT, 0);
        assert!(!out2(&mut pit, at(t2, 4)));
        assert!(out2(&mut pit, at(t2, 5)));
    }

    #[test]
    fn counter0_modes_1_and_5_never_start_without_a_gate_edge() {
        // Counter 0's gate is tied high on the PC: no rising edge, no trigger, no IRQ 0.
        for mode in [1, 5] {
            let mut pit = Pit::new();
            program(&mut pit, 0, mode, 10, T0);
            assert!(pit.out(0, at(T0, 1000)));
            assert_eq!(pit.irq0_edges(at(T0, 1000)), 0);
            assert_eq!(pit.next_irq0_deadline(T0), None);
        }
    }

    #[test]
    fn mode2_out_is_low_for_one_period_each_cycle() {
        // "Mode 2": OUT high, low for one CLK when the count reaches 1, then reload.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 5, T0);
        let expected = [
            (0, 5, true),
            (1, 4, true),
            (3, 2, true),
            (4, 1, false),
            (5, 5, true),
            (9, 1, false),
            (10, 5, true),
        ];
        for (tick, count, out) in expected {
            assert_eq!(latched(&mut pit, 0, at(T0, tick)), count, "tick {tick}");
            assert_eq!(pit.out(0, at(T0, tick)), out, "tick {tick}");
        }
    }

    #[test]
    fn mode2_new_count_takes_effect_at_the_end_of_the_current_period() {
        // "Mode 2": writing a new count while counting does not affect the current period;
        // the new count is loaded at its end. Null count stays set until then ("Null Count").
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 100, T0);
        assert_eq!(pit.irq0_edges(at(T0, 130)), 1);
        pit.write(COUNTER0_PORT, 10, at(T0, 130));
        pit.write(COUNTER0_PORT, 0, at(T0, 130));
        assert_eq!(
            latched(&mut pit, 0, at(T0, 150)),
            50,
            "old period continues"
        );
        assert_ne!(status(&mut pit, 0, at(T0, 150)) & STATUS_NULL_COUNT, 0);
        assert_eq!(pit.next_irq0_deadline(at(T0, 150)), Some(at(T0, 200)));
        assert_eq!(
            latched(&mut pit, 0, at(T0, 200)),
            10,
            "new count from the period end"
        );
        assert_eq!(status(&mut pit, 0, at(T0, 200)) & STATUS_NULL_COUNT, 0);
        assert_eq!(pit.next_irq0_deadline(at(T0, 200)), Some(at(T0, 200)));
        // Edges: the old period's end at 200, then every 10 periods.
        assert_eq!(pit.irq0_edges(at(T0, 235)), 4);
        assert_eq!(pit.next_irq0_deadline(at(T0, 235)), Some(at(T0, 240)));
    }

    #[test]
    fn mode2_and_3_gate_low_forces_out_high_and_the_rising_edge_reloads() {
        // "Gate Pin Operations Summary", modes 2 and 3: GATE low disables counting and sets OUT
        // high immediately; a rising edge reloads the initial count.
        for mode in [2u8, 3] {
            let mut pit = Pit::new();
            pit.write_port_b(PORT_B_GATE2, T0);
            program(&mut pit, 2, mode, 8, T0);
            // Mode 2 is low at tick 7, mode 3 from tick 4 to 7.
            assert!(!out2(&mut pit, at(T0, 7)), "mode {mode}");
            let t1 = at(T0, 7);
            pit.write_port_b(0, t1);
            assert!(out2(&mut pit, t1), "mode {mode}: OUT high at once");
            let held = latched(&mut pit, 2, at(t1, 50));
            assert_eq!(held, latched(&mut pit, 2, at(t1, 100)), "mode {mode}");
            let t2 = at(t1, 1000);
            pit.write_port_b(PORT_B_GATE2, t2);
            assert_eq!(latched(&mut pit, 2, t2), 8, "mode {mode}: reloaded");
            assert!(out2(&mut pit, t2));
            assert!(
                !out2(&mut pit, at(t2, 7)),
                "mode {mode}: a full period again"
            );
        }
    }

    #[test]
    fn mode3_even_count_is_a_symmetric_square_wave_counting_by_two() {
        // "Mode 3", even counts: OUT high for N/2, low for N/2; the count decrements by two.
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 6, T0);
        let expected = [
            (0, 6, true),
            (1, 4, true),
            (2, 2, true),
            (3, 6, false),
            (4, 4, false),
            (5, 2, false),
            (6, 6, true),
        ];
        for (tick, count, out) in expected {
            assert_eq!(latched(&mut pit, 0, at(T0, tick)), count, "tick {tick}");
            assert_eq!(pit.out(0, at(T0, tick)), out, "tick {tick}");
        }
    }

    #[test]
    fn mode3_odd_count_is_high_one_period_longer() {
        // "Mode 3", odd counts: OUT high for (N+1)/2, low for (N-1)/2; N-1 is loaded and
        // counted down by two, to 0 while high and to 2 while low.
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 5, T0);
        let expected = [
            (0, 4, true),
            (1, 2, true),
            (2, 0, true),
            (3, 4, false),
            (4, 2, false),
            (5, 4, true),
        ];
        for (tick, count, out) in expected {
            assert_eq!(latched(&mut pit, 0, at(T0, tick)), count, "tick {tick}");
            assert_eq!(pit.out(0, at(T0, tick)), out, "tick {tick}");
        }
        assert_eq!(pit.irq0_edges(at(T0, 15)), 3, "one rising edge per period");
    }

    #[test]
    fn mode4_strobes_once_after_the_count() {
        // "Mode 4": OUT high; when the count expires OUT goes low for one CLK, then high; the
        // counter wraps and keeps counting but strobes only once per count written.
        let mut pit = Pit::new();
        program(&mut pit, 0, 4, 20, T0);
        assert!(pit.out(0, at(T0, 19)));
        assert!(!pit.out(0, at(T0, 20)));
        assert_eq!(latched(&mut pit, 0, at(T0, 20)), 0);
        assert!(pit.out(0, at(T0, 21)));
        assert_eq!(latched(&mut pit, 0, at(T0, 21)), 0xffff);
        assert!(
            pit.out(0, at(T0, 20 + 65536)),
            "no second strobe after wrapping"
        );
        // The IRQ edge is the end of the strobe.
        assert_eq!(pit.next_irq0_deadline(T0), Some(at(T0, 21)));
        assert_eq!(pit.irq0_edges(at(T0, 21)), 1);
        assert_eq!(pit.next_irq0_deadline(at(T0, 21)), None);
        assert_eq!(pit.irq0_edges(at(T0, 1 << 20)), 0);
    }

    #[test]
    fn mode4_new_count_restarts_and_gate_low_inhibits_counting() {
        // "Mode 4": a new count is loaded on the next CLK and counting continues from it;
        // GATE low disables counting.
        let mut pit = Pit::new();
        program(&mut pit, 0, 4, 20, T0);
        let t1 = at(T0, 10);
        pit.write(COUNTER0_PORT, 50, t1);
        pit.write(COUNTER0_PORT, 0, t1);
        assert!(pit.out(0, at(t1, 20)), "no strobe at the old time");
        assert!(!pit.out(0, at(t1, 50)));
        let mut pit = Pit::new();
        pit.write_port_b(0, T0);
        program(&mut pit, 2, 4, 10, T0);
        assert!(out2(&mut pit, at(T0, 10)), "gate low: nothing counts");
        let t2 = at(T0, 20);
        pit.write_port_b(PORT_B_GATE2, t2);
        assert!(!out2(&mut pit, at(t2, 10)));
        assert!(out2(&mut pit, at(t2, 11)));
    }

    #[test]
    fn mode5_strobes_after_each_gate_trigger() {
        // "Mode 5": counting starts at a rising gate edge; OUT strobes low one CLK when the
        // count expires; retriggerable.
        let mut pit = Pit::new();
        program(&mut pit, 2, 5, 10, T0);
        assert!(out2(&mut pit, at(T0, 10)));
        let t1 = at(T0, 20);
        pit.write_port_b(PORT_B_GATE2, t1);
        assert!(out2(&mut pit, at(t1, 9)));
        assert!(!out2(&mut pit, at(t1, 10)));
        assert!(out2(&mut pit, at(t1, 11)));
        let t2 = at(t1, 30);
        pit.write_port_b(0, t2);
        pit.write_port_b(PORT_B_GATE2, t2);
        assert!(
            !out2(&mut pit, at(t2, 10)),
            "strobes again after a retrigger"
        );
    }

    #[test]
    fn modes_6_and_7_are_modes_2_and_3_but_read_back_as_written() {
        // "Control Word Format": M2 is a don't-care for modes 2 and 3; "Status Byte": bits 5-0
        // are the control word as written.
        let mut pit = Pit::new();
        program(&mut pit, 0, 6, 5, T0);
        assert!(!pit.out(0, at(T0, 4)));
        assert!(pit.out(0, at(T0, 5)));
        assert_eq!(status(&mut pit, 0, at(T0, 1)), STATUS_OUT | cw(0, 6));
        let t1 = at(T0, 10);
        program(&mut pit, 1, 7, 6, t1);
        assert!(pit.out(1, at(t1, 2)));
        assert!(!pit.out(1, at(t1, 3)));
        assert_eq!(status(&mut pit, 1, at(t1, 3)), cw(1, 7) & CW_PROGRAM_MASK);
    }

    #[test]
    fn lsb_only_and_msb_only_access_modes() {
        // "Write Operations": RW = 01 writes only the LSB (MSB 0), RW = 10 only the MSB (LSB 0);
        // reads return the same byte.
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, CW_ACCESS_LSB | (2 << 1), T0);
        pit.write(COUNTER0_PORT, 200, T0);
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 50)), 150);
        assert_eq!(
            pit.read(COUNTER0_PORT, at(T0, 50)),
            150,
            "no flip-flop in LSB mode"
        );
        let t1 = at(T0, 100);
        pit.write(CONTROL_PORT, CW_ACCESS_MSB | (2 << 1), t1);
        pit.write(COUNTER0_PORT, 0x12, t1);
        assert_eq!(pit.read(COUNTER0_PORT, t1), 0x12);
        assert_eq!(pit.read(COUNTER0_PORT, at(t1, 0x100)), 0x11);
        // The interrupt period is the full 0x1200.
        assert_eq!(pit.next_irq0_deadline(t1), Some(at(t1, 0x1200)));
    }

    #[test]
    fn lsb_msb_flip_flop_for_live_reads() {
        // "Read Operations": a two-byte count is read LSB then MSB; an unlatched read returns
        // the count at the moment of each byte.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 0x1000, T0);
        let t = at(T0, 0x10);
        assert_eq!(pit.read(COUNTER0_PORT, t), 0xf0);
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 0x20)), 0x0f, "MSB of 0x0fe0");
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 0x30)), 0xd0, "LSB again");
        // A write between the two reads does not disturb the read flip-flop.
        pit.write(CONTROL_PORT, cw(1, 2), T0);
        pit.write(COUNTER1_PORT, 0x34, T0);
        assert_eq!(pit.read(COUNTER1_PORT, T0), 0x00, "nothing loaded yet");
        pit.write(COUNTER1_PORT, 0x12, T0);
        assert_eq!(pit.read(COUNTER1_PORT, T0), 0x12);
    }

    #[test]
    fn counter_latch_holds_the_value_while_time_passes() {
        // "Counter Latch Command": the count is latched and held until read.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, T0);
        pit.write(CONTROL_PORT, 0x00, at(T0, 100));
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 500)), (900u16 & 0xff) as u8);
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 700)), (900u16 >> 8) as u8);
        // Fully read: live values again.
        assert_eq!(latched(&mut pit, 0, at(T0, 700)), 300);
    }

    #[test]
    fn latching_twice_keeps_the_first_value() {
        // "Counter Latch Command": a second latch before the count is read is ignored.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, T0);
        pit.write(CONTROL_PORT, 0x00, at(T0, 100));
        pit.write(CONTROL_PORT, 0x00, at(T0, 200));
        pit.write(
            CONTROL_PORT,
            CW_READ_BACK | RB_NO_STATUS | RB_COUNTER0,
            at(T0, 300),
        );
        let lsb = pit.read(COUNTER0_PORT, at(T0, 400));
        // Half read: a latch now is still ignored.
        pit.write(CONTROL_PORT, 0x00, at(T0, 450));
        let msb = pit.read(COUNTER0_PORT, at(T0, 500));
        assert_eq!(u16::from_le_bytes([lsb, msb]), 900);
    }

    #[test]
    fn a_control_word_discards_latches_and_resets_the_flip_flops() {
        // "Counter Latch Command": held "until it is read ... or until the Counter is
        // reprogrammed"; a control word resets the read and write flip-flops.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, T0);
        pit.write(CONTROL_PORT, 0x00, at(T0, 100));
        pit.read(COUNTER0_PORT, at(T0, 100));
        pit.write(COUNTER0_PORT, 0x99, at(T0, 100)); // write flip-flop now at MSB
        program(&mut pit, 0, 2, 400, at(T0, 200));
        assert_eq!(latched(&mut pit, 0, at(T0, 200)), 400);
    }

    #[test]
    fn read_back_latches_the_counts_of_several_counters() {
        // "Read-Back Command": COUNT = 0 latches every selected counter at the same instant.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, T0);
        program(&mut pit, 1, 2, 2000, T0);
        program(&mut pit, 2, 0, 3000, T0);
        let cmd = CW_READ_BACK | RB_NO_STATUS | RB_COUNTER0 | RB_COUNTER1 | RB_COUNTER2;
        pit.write(CONTROL_PORT, cmd, at(T0, 10));
        let t = at(T0, 500);
        for (port, expected) in [
            (COUNTER0_PORT, 990u16),
            (COUNTER1_PORT, 1990),
            (COUNTER2_PORT, 3000),
        ] {
            let lsb = pit.read(port, t);
            let msb = pit.read(port, t);
            assert_eq!(u16::from_le_bytes([lsb, msb]), expected, "port {port:#x}");
        }
        // Counter 2's gate is low: mode 0 holds its count.
    }

    #[test]
    fn read_back_status_byte_reports_out_null_count_and_the_program() {
        // "Status Byte": OUT, NULL COUNT, RW1 RW0 M2 M1 M0 BCD.
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, cw(0, 0), T0);
        assert_eq!(status(&mut pit, 0, T0), STATUS_NULL_COUNT | 0x30);
        pit.write(COUNTER0_PORT, 10, T0);
        pit.write(COUNTER0_PORT, 0, T0);
        assert_eq!(status(&mut pit, 0, T0), 0x30, "count loaded, OUT low");
        assert_eq!(status(&mut pit, 0, at(T0, 10)), STATUS_OUT | 0x30);
        pit.write(
            CONTROL_PORT,
            0x80 | CW_ACCESS_LSB | (3 << 1) | CW_BCD,
            at(T0, 10),
        );
        assert_eq!(
            status(&mut pit, 2, at(T0, 10)),
            STATUS_OUT | STATUS_NULL_COUNT | CW_ACCESS_LSB | (3 << 1) | CW_BCD
        );
        // The status holds while OUT changes; a second status latch before the read is ignored.
        let t1 = at(T0, 20);
        program(&mut pit, 0, 0, 10, t1);
        pit.write(CONTROL_PORT, CW_READ_BACK | RB_NO_COUNT | RB_COUNTER0, t1);
        pit.write(
            CONTROL_PORT,
            CW_READ_BACK | RB_NO_COUNT | RB_COUNTER0,
            at(t1, 10),
        );
        assert_eq!(
            pit.read(COUNTER0_PORT, at(t1, 20)),
            0x30,
            "OUT as latched, low"
        );
        assert_eq!(
            pit.read(COUNTER0_PORT, at(t1, 20)),
            0xf6,
            "then the live count's LSB"
        );
    }

    #[test]
    fn read_back_of_status_and_count_returns_the_status_first() {
        // "Read-Back Command": if both are latched, the first read returns the status
        // regardless of which was latched first; then the count.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 0x1234, T0);
        pit.write(CONTROL_PORT, 0x00, T0); // count latched first
        pit.write(
            CONTROL_PORT,
            CW_READ_BACK | RB_NO_COUNT | RB_COUNTER0,
            at(T0, 5),
        );
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 9)), STATUS_OUT | cw(0, 2));
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 9)), 0x34);
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 9)), 0x12);
        // Both in one command.
        pit.write(CONTROL_PORT, CW_READ_BACK | RB_COUNTER0, at(T0, 0x34));
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 0x40)), STATUS_OUT | cw(0, 2));
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 0x40)), 0x00);
        assert_eq!(pit.read(COUNTER0_PORT, at(T0, 0x40)), 0x12);
    }

    #[test]
    fn null_count_follows_the_count_register_and_counting_element() {
        // "Null Count": set by a control word and a count write (after its second byte),
        // cleared when CR reaches CE.
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, cw(0, 2), T0);
        assert_ne!(status(&mut pit, 0, T0) & STATUS_NULL_COUNT, 0);
        pit.write(COUNTER0_PORT, 10, T0);
        assert_ne!(
            status(&mut pit, 0, T0) & STATUS_NULL_COUNT,
            0,
            "half a count"
        );
        pit.write(COUNTER0_PORT, 0, T0);
        assert_eq!(
            status(&mut pit, 0, T0) & STATUS_NULL_COUNT,
            0,
            "first count loads"
        );
    }

    #[test]
    fn bcd_counting_wraps_at_10000() {
        // "Control Word Format" BCD = 1: four decades; a count of 0 is 10^4 ("Write Operations").
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, cw(0, 0) | CW_BCD, T0);
        pit.write(COUNTER0_PORT, 0x00, T0);
        pit.write(COUNTER0_PORT, 0x10, T0); // 1000 decimal
        assert_eq!(latched(&mut pit, 0, at(T0, 1)), 0x0999);
        assert_eq!(latched(&mut pit, 0, at(T0, 995)), 0x0005);
        assert!(pit.out(0, at(T0, 1000)));
        assert_eq!(latched(&mut pit, 0, at(T0, 1001)), 0x9999, "wraps to 9999");
        let t1 = at(T0, 2000);
        assert_eq!(pit.irq0_edges(t1), 1, "mode 0's terminal count");
        pit.write(CONTROL_PORT, cw(0, 2) | CW_BCD, t1);
        pit.write(COUNTER0_PORT, 0, t1);
        pit.write(COUNTER0_PORT, 0, t1);
        assert_eq!(latched(&mut pit, 0, t1), 0x0000);
        assert_eq!(latched(&mut pit, 0, at(t1, 1)), 0x9999);
        assert_eq!(pit.next_irq0_deadline(t1), Some(at(t1, 10_000)));
        // Mode 3 in BCD, counting by two.
        let t2 = at(t1, 20_000);
        pit.write(CONTROL_PORT, cw(0, 3) | CW_BCD, t2);
        pit.write(COUNTER0_PORT, 0x50, t2);
        pit.write(COUNTER0_PORT, 0x00, t2); // 50
        assert_eq!(latched(&mut pit, 0, at(t2, 3)), 0x44);
        assert!(!pit.out(0, at(t2, 25)));
    }

    #[test]
    fn bcd_digits_a_to_f_count_as_nine() {
        // Undefined on the chip; the model reads such a digit as 9 (module docs).
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, cw(0, 2) | CW_BCD, T0);
        pit.write(COUNTER0_PORT, 0xff, T0);
        pit.write(COUNTER0_PORT, 0x1a, T0); // 1 9 9 9
        assert_eq!(latched(&mut pit, 0, T0), 0x1999);
        assert_eq!(pit.next_irq0_deadline(T0), Some(at(T0, 1999)));
    }

    #[test]
    fn reload_value_zero_is_65536() {
        // "Write Operations": 0 is the largest count, 2^16 in binary.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 0, T0);
        assert_eq!(latched(&mut pit, 0, T0), 0);
        assert_eq!(latched(&mut pit, 0, at(T0, 1)), 0xffff);
        assert!(!pit.out(0, at(T0, 65535)));
        assert_eq!(pit.next_irq0_deadline(T0), Some(at(T0, 65536)));
        let t1 = at(T0, 100_000);
        program(&mut pit, 0, 3, 0, t1);
        assert_eq!(latched(&mut pit, 0, at(t1, 1)), 0xfffe);
        assert!(pit.out(0, at(t1, 32767)));
        assert!(!pit.out(0, at(t1, 32768)));
        let t2 = at(t1, 100_000);
        program(&mut pit, 0, 0, 0, t2);
        assert!(!pit.out(0, at(t2, 65535)));
        assert!(pit.out(0, at(t2, 65536)));
    }

    #[test]
    fn mode2_count_of_one_keeps_out_high_and_raises_no_interrupts() {
        // "Mode 2": a count of 1 is illegal; the model holds OUT high (module docs).
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1, T0);
        assert!(pit.out(0, at(T0, 7)));
        assert_eq!(pit.irq0_edges(at(T0, 1000)), 0);
        assert_eq!(pit.next_irq0_deadline(at(T0, 1000)), None);
        // Mode 3 with 1: high for ceil(1/2) = 1 period, low for 0.
        program(&mut pit, 0, 3, 1, T0);
        assert!(pit.out(0, at(T0, 7)));
        assert_eq!(pit.next_irq0_deadline(at(T0, 1000)), None);
    }

    #[test]
    fn port_b_bits() {
        // PC/AT port 0x61: bits 3-0 read back, bit 4 toggles per read, bit 5 is OUT2,
        // bits 7-6 are 0 and bits 7-4 cannot be written.
        let mut pit = Pit::new();
        pit.write_port_b(0xff, T0);
        let first = pit.read_port_b(T0);
        let second = pit.read_port_b(T0);
        assert_eq!(first & 0x0f, 0x0f);
        assert_eq!(
            (first ^ second) & PORT_B_REFRESH,
            PORT_B_REFRESH,
            "refresh toggles"
        );
        assert_eq!(
            (first | second) & (PORT_B_CHANNEL_CHECK | PORT_B_PARITY_ERROR),
            0
        );
        pit.write_port_b(PORT_B_SPEAKER, T0);
        assert_eq!(pit.read_port_b(T0) & 0x0f, PORT_B_SPEAKER);
        // OUT2 follows counter 2 (mode 0 just programmed: low).
        program(&mut pit, 2, 0, 2, T0);
        pit.write_port_b(PORT_B_GATE2, T0);
        assert!(!out2(&mut pit, at(T0, 1)));
        assert!(out2(&mut pit, at(T0, 2)));
    }

    #[test]
    fn linux_pit_calibrate_tsc_sees_out2_after_exactly_the_latch() {
        // arch/x86/kernel/tsc.c pit_calibrate_tsc(): gate high, speaker off, counter 2 in mode
        // 0 (0xb0), CAL_LATCH = PIT_TICK_RATE / (1000 / 10) = 11931, then poll port 0x61 bit 5.
        for latch in [11931u16, 0xffff] {
            let mut pit = Pit::new();
            let port_b = pit.read_port_b(T0);
            pit.write_port_b((port_b & !PORT_B_SPEAKER) | PORT_B_GATE2, T0);
            pit.write(CONTROL_PORT, 0xb0, T0);
            pit.write(COUNTER2_PORT, latch as u8, T0);
            pit.write(COUNTER2_PORT, (latch >> 8) as u8, T0);
            let expected = at(T0, u64::from(latch));
            // The guest's loop: every read is one VM exit, ~1 us apart here.
            let mut now = T0;
            let mut polls = 0u32;
            while pit.read_port_b(now) & PORT_B_OUT2 == 0 {
                now += 997;
                polls += 1;
                assert!(polls < 100_000, "OUT2 never rose");
            }
            assert!(
                now >= expected && now < expected + 997,
                "latch {latch}: {now} vs {expected}"
            );
            // At the exact instant and one ns before it.
            let mut fresh = Pit::new();
            fresh.write_port_b(PORT_B_GATE2, T0);
            program(&mut fresh, 2, 0, latch, T0);
            assert!(!fresh.out(2, expected - 1));
            assert!(fresh.out(2, expected));
        }
    }

    #[test]
    fn linux_quick_pit_calibrate_sees_the_msb_fall_every_256_periods() {
        // arch/x86/kernel/tsc.c quick_pit_calibrate(): mode 0 from 0xffff, then pairs of
        // unlatched reads of port 0x42 (LSB, MSB) waiting for the MSB to reach 0xff - i.
        let mut pit = Pit::new();
        pit.write_port_b(PORT_B_GATE2, T0);
        pit.write(CONTROL_PORT, 0xb0, T0);
        pit.write(COUNTER2_PORT, 0xff, T0);
        pit.write(COUNTER2_PORT, 0xff, T0);
        let mut now = T0;
        for i in 0u64..64 {
            let expected_msb = 0xff - i as u8;
            // MSB 0xff - i from count 0xffff - 256 i down to 0xff00 - 256 i:
            // ticks 256 i .. 256 i + 255.
            let first = at(T0, 256 * i);
            let last = at(T0, 256 * i + 255);
            for t in [first, (first + last) / 2, last] {
                now = now.max(t);
                pit.read(COUNTER2_PORT, now);
                assert_eq!(pit.read(COUNTER2_PORT, now), expected_msb, "i = {i}");
            }
        }
    }

    #[test]
    fn linux_periodic_timer_setup_delivers_hz_edges() {
        // drivers/clocksource/i8253.c pit_set_periodic(): control 0x34 (counter 0, LSB/MSB,
        // mode 2), then PIT_LATCH = (PIT_TICK_RATE + HZ / 2) / HZ, LSB then MSB.
        for hz in [100u64, 250, 1000] {
            let latch = ((PIT_HZ + hz / 2) / hz) as u16;
            let mut pit = Pit::new();
            pit.write(CONTROL_PORT, 0x34, T0);
            pit.write(COUNTER0_PORT, latch as u8, T0);
            pit.write(COUNTER0_PORT, (latch >> 8) as u8, T0);
            let period = u64::from(latch);
            let mut now = T0;
            for k in 1..=hz {
                let deadline = pit.next_irq0_deadline(now).unwrap();
                assert_eq!(deadline, at(T0, k * period), "HZ={hz}, tick {k}");
                assert_eq!(pit.irq0_edges(deadline - 1), 0);
                assert_eq!(pit.irq0_edges(deadline), 1);
                now = deadline;
            }
            // One second of ticks is one second, to within a period of rounding of LATCH.
            let second = now - T0;
            assert!(
                second.abs_diff(1_000_000_000) < 1_000_000_000 / hz,
                "HZ={hz}"
            );
        }
    }

    #[test]
    fn a_late_caller_gets_every_missed_edge_counted() {
        // Module docs, "IRQ 0": nothing is coalesced by the model.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1193, T0);
        assert_eq!(pit.irq0_edges(at(T0, 5 * 1193 + 600)), 5);
        assert_eq!(
            pit.next_irq0_deadline(at(T0, 5 * 1193 + 600)),
            Some(at(T0, 6 * 1193))
        );
        // A deadline asked before collecting reports the first waiting edge (in the past).
        let late = at(T0, 9 * 1193 + 1);
        assert_eq!(pit.next_irq0_deadline(late), Some(at(T0, 6 * 1193)));
        assert_eq!(pit.irq0_edges(late), 4);
        assert_eq!(pit.irq0_edges(late), 0);
        // Mode 3 too, and very late: an hour of 1 kHz ticks.
        program(&mut pit, 0, 3, 1193, late);
        let hour = late + 3_600_000_000_000;
        let expected = ticks_between(late, hour) / 1193;
        assert_eq!(u64::from(pit.irq0_edges(hour)), expected);
        assert!(expected > 3_000_000);
    }

    #[test]
    fn next_deadline_is_none_when_out0_will_not_rise_again() {
        let mut pit = Pit::new();
        assert_eq!(pit.next_irq0_deadline(T0), None, "not programmed");
        program(&mut pit, 0, 0, 100, T0);
        assert_eq!(pit.next_irq0_deadline(T0), Some(at(T0, 100)));
        assert_eq!(pit.irq0_edges(at(T0, 100)), 1);
        assert_eq!(
            pit.next_irq0_deadline(at(T0, 100)),
            None,
            "mode 0 after terminal count"
        );
        assert_eq!(pit.irq0_edges(at(T0, 1 << 30)), 0);
        pit.write(CONTROL_PORT, cw(0, 2), at(T0, 200));
        assert_eq!(
            pit.next_irq0_deadline(at(T0, 200)),
            None,
            "no count written yet"
        );
        pit.write(COUNTER0_PORT, 50, at(T0, 200));
        assert_eq!(pit.next_irq0_deadline(at(T0, 200)), None, "half a count");
    }

    #[test]
    fn linux_oneshot_uses_mode_4_and_the_edge_ends_the_strobe() {
        // drivers/clocksource/i8253.c pit_set_oneshot() (0x38: counter 0, LSB/MSB, mode 4),
        // then pit_next_event() writes the delta LSB, MSB; IRQ 0 is the rising edge.
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, 0x38, T0);
        for (i, delta) in [1193u16, 50, 11931].into_iter().enumerate() {
            let t = T0 + (i as u64) * 20_000_000;
            pit.write(COUNTER0_PORT, delta as u8, t);
            pit.write(COUNTER0_PORT, (delta >> 8) as u8, t);
            let deadline = pit.next_irq0_deadline(t).unwrap();
            assert_eq!(deadline, at(t, u64::from(delta) + 1));
            assert_eq!(pit.irq0_edges(deadline), 1);
            assert_eq!(pit.next_irq0_deadline(deadline), None);
        }
        // pit_shutdown(): 0x30 then 0, 0 (mode 0, 65536): one last edge after 55 ms.
        let t = T0 + 100_000_000;
        pit.write(CONTROL_PORT, 0x30, t);
        pit.write(COUNTER0_PORT, 0, t);
        pit.write(COUNTER0_PORT, 0, t);
        assert_eq!(pit.next_irq0_deadline(t), Some(at(t, 65536)));
    }

    #[test]
    fn a_control_word_that_raises_out0_is_an_irq0_edge() {
        // "Operation Common to All Modes": a control word sets OUT to its initial state,
        // high for modes other than 0: from a running mode-0 count that is a rising edge.
        let mut pit = Pit::new();
        program(&mut pit, 0, 0, 1000, T0);
        pit.write(CONTROL_PORT, cw(0, 2), at(T0, 10));
        assert_eq!(pit.next_irq0_deadline(at(T0, 10)), Some(at(T0, 10)));
        assert_eq!(pit.irq0_edges(at(T0, 10)), 1);
        // A mode-0 control word lowers OUT: no edge; nor does a second high-mode word.
        pit.write(CONTROL_PORT, cw(0, 0), at(T0, 20));
        pit.write(CONTROL_PORT, cw(0, 0), at(T0, 30));
        assert_eq!(pit.irq0_edges(at(T0, 40)), 0);
        pit.write(CONTROL_PORT, cw(0, 3), at(T0, 50));
        pit.write(CONTROL_PORT, cw(0, 4), at(T0, 60));
        assert_eq!(pit.irq0_edges(at(T0, 70)), 1);
        // Counter 1 and 2 changes never count as IRQ 0 edges.
        program(&mut pit, 1, 0, 5, at(T0, 80));
        pit.write(CONTROL_PORT, cw(1, 2), at(T0, 81));
        assert_eq!(pit.irq0_edges(at(T0, 90)), 0);
    }

    #[test]
    fn linux_clocksource_latch_read_of_counter_0() {
        // drivers/clocksource/i8253.c i8253_read(): outb(0x00, PIT_MODE) latches counter 0,
        // then two reads of PIT_CH0 (LSB, MSB).
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, 0x34, T0);
        pit.write(COUNTER0_PORT, (4773u16 & 0xff) as u8, T0);
        pit.write(COUNTER0_PORT, (4773u16 >> 8) as u8, T0);
        for tick in [0u64, 1, 4772, 4773, 4774, 100_000] {
            let expected = 4773 - (tick % 4773) as u16;
            assert_eq!(latched(&mut pit, 0, at(T0, tick)), expected, "tick {tick}");
        }
    }

    #[test]
    fn time_going_backwards_is_taken_as_the_latest_time_seen() {
        // Module docs, "Time going backwards".
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 100, T0);
        let late = at(T0, 250);
        assert_eq!(pit.irq0_edges(late), 2);
        assert_eq!(
            latched(&mut pit, 0, T0),
            50,
            "read at an earlier time: frozen at 250"
        );
        assert_eq!(pit.irq0_edges(T0), 0);
        assert_eq!(pit.next_irq0_deadline(0), Some(at(T0, 300)));
        assert_eq!(pit.irq0_edges(at(T0, 300)), 1);
        // A load at an earlier time starts at the latest time seen.
        program(&mut pit, 0, 0, 10, T0);
        assert_eq!(pit.next_irq0_deadline(T0), Some(at(at(T0, 300), 10)));
    }

    #[test]
    fn extreme_times_neither_overflow_nor_panic() {
        let mut pit = Pit::new();
        let near_end = u64::MAX - 1_000_000;
        program(&mut pit, 0, 2, 0, near_end);
        assert_eq!(
            pit.next_irq0_deadline(near_end),
            None,
            "the edge lies beyond u64::MAX"
        );
        assert_eq!(pit.irq0_edges(u64::MAX), 0);
        assert_eq!(
            latched(&mut pit, 0, u64::MAX),
            (65536 - ticks_between(near_end, u64::MAX)) as u16
        );
        // A load at 0 read at the end of time.
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 2, 0);
        let edges = pit.irq0_edges(u64::MAX);
        assert_eq!(edges, u32::MAX, "saturates");
        assert_eq!(pit.irq0_edges(u64::MAX), 0);
        assert!(pit.next_irq0_deadline(u64::MAX).is_none());
        pit.write_port_b(PORT_B_GATE2, u64::MAX);
        program(&mut pit, 2, 0, 7, u64::MAX);
        assert!(!pit.out(2, u64::MAX));
    }

    #[test]
    fn control_port_reads_and_undecoded_ports_are_unmapped() {
        // "Read Operations": A1 A0 = 11 reads leave the bus in 3-state.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 100, T0);
        let before = pit.clone();
        assert_eq!(pit.read(CONTROL_PORT, T0), UNMAPPED);
        for port in [0x3fu16, 0x44, 0x61, 0x80, 0xffff] {
            assert_eq!(pit.read(port, T0), UNMAPPED);
            pit.write(port, 0x12, T0);
        }
        assert_eq!(pit, before);
    }

    #[test]
    fn any_sequence_of_port_accesses_is_safe() {
        // Every port value, byte and time a guest can produce: no panic, deadlines never
        // earlier than an unreported edge. A fixed LCG keeps the test reproducible.
        let mut pit = Pit::new();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut now = 0u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = state >> 16;
            let value = r as u8;
            // Mostly small steps forward, sometimes backwards or huge.
            now = match (r >> 8) % 16 {
                0 => now.wrapping_sub(r % 1_000_000),
                1 => now.wrapping_add(r),
                _ => now.wrapping_add((r >> 12) % 100_000),
            };
            match (r >> 40) % 8 {
                0 => pit.write(CONTROL_PORT, value, now),
                1 | 2 => pit.write(0x40 + (r >> 44) as u16 % 3, value, now),
                3 => {
                    pit.read(0x40 + (r >> 44) as u16 % 4, now);
                }
                4 => pit.write_port_b(value, now),
                5 => {
                    pit.read_port_b(now);
                }
                6 => {
                    pit.irq0_edges(now);
                    // Right after collecting, the next edge is in the future.
                    if let Some(d) = pit.next_irq0_deadline(now) {
                        assert!(d > pit.now_seen);
                    }
                }
                _ => {
                    pit.next_irq0_deadline(now);
                    pit.out((r >> 44) as usize % 4, now);
                }
            }
        }
    }

    #[test]
    fn a_resumed_run_reaches_later_periods_counted_from_where_it_stopped() {
        // A run that counted 5 periods, was held by its gate and resumed at 1 ms reaches
        // period 8 three periods (of 1/PIT_HZ s each) after 1 ms, and any period it already
        // passed at once.
        let run = Run { origin_ns: 1_000_000, origin_tick: 5, ..Run::new(0, 100, true) };
        assert_eq!(run.tick_time(8), Some(1_000_000 + ns_for_ticks(3) as u64));
        assert_eq!(run.tick_time(5), Some(1_000_000));
        assert_eq!(run.tick_time(2), Some(1_000_000));
        assert_eq!(Run { running: false, ..run }.tick_time(8), None, "held: never");
    }

    #[test]
    fn bcd_conversion_takes_the_low_four_decimal_digits() {
        assert_eq!(binary_to_bcd(1234), 0x1234);
        assert_eq!(binary_to_bcd(9999), 0x9999);
        assert_eq!(binary_to_bcd(0), 0);
        assert_eq!(bcd_to_binary(0x1234), 1234);
    }

    #[test]
    fn mode_2_with_a_count_of_2_is_low_for_the_second_period() {
        // "Mode 2": OUT goes low for one CLK pulse when the count reaches 1; only a count of 1
        // is illegal. With N = 2 that is every second period.
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 2, 0);
        assert!(pit.out(0, at(0, 0)));
        assert!(!pit.out(0, at(0, 1)), "count 1: low");
        assert!(pit.out(0, at(0, 2)), "reloaded: high");
        assert!(!pit.out(0, at(0, 3)));
    }

    #[test]
    fn edges_of_the_old_and_the_new_count_add_up_in_one_collection() {
        // Mode 2, N = 1000; a new count of 50 written mid-period takes over at its end
        // (period 1000), so periods up to 1500 rise once for the old count (at 1000) and ten
        // times for the new (1050 ... 1500).
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, 0);
        assert_eq!(pit.irq0_edges(at(0, 500)), 0);
        pit.write(COUNTER0_PORT, 50, at(0, 500));
        pit.write(COUNTER0_PORT, 0, at(0, 500));
        assert_eq!(pit.irq0_edges(at(0, 1500)), 11);
    }

    #[test]
    fn a_latched_count_in_single_byte_access_is_released_by_its_one_read() {
        // "Counter Latch Command": the latch holds until the count is read; with LSB-only or
        // MSB-only access one read is the whole count, so the next read is live again.
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, CW_ACCESS_LSB | (2 << 1), 0);
        pit.write(COUNTER0_PORT, 200, 0);
        pit.write(CONTROL_PORT, 0, at(0, 50));
        assert_eq!(pit.read(COUNTER0_PORT, at(0, 60)), 150, "latched at 50");
        assert_eq!(pit.read(COUNTER0_PORT, at(0, 100)), 100, "live");
        let mut pit = Pit::new();
        pit.write(CONTROL_PORT, CW_ACCESS_MSB | (2 << 1), 0);
        pit.write(COUNTER0_PORT, 0x05, 0);
        pit.write(CONTROL_PORT, 0, at(0, 256));
        assert_eq!(pit.read(COUNTER0_PORT, at(0, 300)), 0x04, "latched 0x0400: its MSB");
        assert_eq!(pit.read(COUNTER0_PORT, at(0, 512)), 0x03, "live 0x0300");
    }

    #[test]
    fn a_count_written_while_the_gate_holds_mode_2_waits_for_the_gate() {
        // "Mode 2": GATE low suspends counting; GATE rising reloads the counter from CR. A
        // count written meanwhile changes nothing until then: the held count stays readable.
        let mut pit = Pit::new();
        pit.write_port_b(PORT_B_GATE2, 0);
        program(&mut pit, 2, 2, 100, 0);
        pit.write_port_b(0, at(0, 30));
        pit.write(COUNTER0_PORT + 2, 50, at(0, 40));
        pit.write(COUNTER0_PORT + 2, 0, at(0, 40));
        assert_eq!(latched(&mut pit, 2, at(0, 60)), 70, "held at 100 - 30");
        pit.write_port_b(PORT_B_GATE2, at(0, 70));
        assert_eq!(latched(&mut pit, 2, at(0, 80)), 40, "reloaded with 50 at the rising edge");
    }

    #[test]
    fn square_wave_counts_read_right_at_the_end_of_time() {
        // Mode 3 decrements an even count by two each period, also late in the 64-bit time
        // range (periods in the 10^16s).
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 1000, 0);
        let p = ticks_between(0, u64::MAX - 10_000_000);
        let (a, b) = (latched(&mut pit, 0, at(0, p)), latched(&mut pit, 0, at(0, p + 1)));
        assert!(a % 2 == 0 && b % 2 == 0 && a <= 1000 && b <= 1000, "{a} {b}");
        assert_eq!((a + 1000 - b) % 1000, 2, "{a} then {b}");
    }
}
