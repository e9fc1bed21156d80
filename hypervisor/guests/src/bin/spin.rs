//! Test guest `spin` (2 vCPUs, meant to share one host CPU): the vCPUs hand a token back and
//! forth 100 times, each waiting for its turn in a PAUSE loop, as vCPUs spinning on a lock
//! whose holder is not running do. A waiting vCPU can only go on once the other has run: on a
//! shared CPU without pause-loop exiting (VMX) or a PAUSE filter (SVM) every handoff waits for
//! the spinning vCPU's slice to end; with them it gives up its slice early (`pause` exits).
//!
//! Output: `spin: 100 handoffs, <n> TSC cycles each`, then `spin: PASS`; exit code 0. A
//! handoff that never comes (about 20 s of TSC) prints a FAIL line and exits with 1.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
use test_guests::{cpu, say};

test_guests::guest!(name = "spin", main = main);

/// Handoffs in all: vCPU `i` takes the turns with `TURN % 2 == i`.
const HANDOFFS: u32 = 100;
/// The turn count; the vCPU whose turn it is increments it.
static TURN: AtomicU32 = AtomicU32::new(0);
/// vCPUs that reached `main`: the handoffs start once both have.
static PRESENT: AtomicU32 = AtomicU32::new(0);

fn main(vcpu: u32) -> u32 {
    if vcpu > 1 {
        cpu::park();
    }
    PRESENT.fetch_add(1, SeqCst);
    if !cpu::wait_until(20, || PRESENT.load(SeqCst) == 2) {
        say!("FAIL vcpu {vcpu}: the other vCPU never started");
        return 1;
    }
    let start = cpu::rdtsc();
    let mut turn = vcpu;
    while turn < HANDOFFS {
        if !cpu::wait_until(20, || TURN.load(SeqCst) == turn) {
            say!("FAIL vcpu {vcpu} waited for turn {turn} in vain (turn {})", TURN.load(SeqCst));
            return 1;
        }
        TURN.store(turn + 1, SeqCst);
        turn += 2;
    }
    if vcpu == 1 {
        cpu::park();
    }
    if !cpu::wait_until(20, || TURN.load(SeqCst) == HANDOFFS) {
        say!("FAIL the last handoff never came (turn {})", TURN.load(SeqCst));
        return 1;
    }
    let cycles = cpu::rdtsc().wrapping_sub(start);
    say!("{HANDOFFS} handoffs, {} TSC cycles each", cycles / u64::from(HANDOFFS));
    say!("PASS");
    0
}
