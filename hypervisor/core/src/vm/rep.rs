//! The REP prefix's loop, written once for the two kinds of string instruction Bastion
//! emulates: port strings (INS/OUTS exits, [`super::string_io`]) and memory strings on device
//! memory (MOVS/STOS/LODS, [`super::insn`]).
//!
//! With REP the instruction repeats while rCX — at the address size: CX, ECX or RCX — is not
//! zero, counting it down after each element; rCX = 0 at the start means no element at all
//! (SDM Vol. 2B "REP/REPE/REPZ/REPNE/REPNZ"). Without REP it runs once and rCX is untouched.
//! A REP string instruction is interruptible between elements, the state then saying how far
//! it got; Bastion uses that to bound an exit: after [`MAX_PER_EXIT`] elements the guest is
//! resumed at the same instruction, which carries on where it stopped.

/// Elements done in one exit before the guest executes the instruction again for the rest.
pub const MAX_PER_EXIT: u64 = 1024;

/// How one element ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element<B> {
    /// Done: on to the next.
    Next,
    /// Not done (a fault before it took effect): stop, rCX not counted for it.
    Fault(B),
    /// Done, and the instruction ends here (the element stopped the guest): rCX counted.
    Last(B),
}

/// How the instruction's run in this exit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepEnd<B> {
    /// Every element done: the instruction is complete.
    Done,
    /// The budget ran out with elements left: execute the instruction again.
    Again,
    /// An element ended it ([`Element::Fault`] or [`Element::Last`]).
    Stopped(B),
}

/// Runs the elements of a string instruction on `s`: once without REP; with REP while
/// `count(s)` (rCX at the address size) is not zero, at most [`MAX_PER_EXIT`] of them,
/// writing the count less one through `set_count` after each. A `for` over the budget: the
/// loop ends whatever `element` and the count do.
pub fn run<S: ?Sized, B>(
    s: &mut S,
    rep: bool,
    count: impl Fn(&mut S) -> u64,
    set_count: impl Fn(&mut S, u64),
    mut element: impl FnMut(&mut S) -> Element<B>,
) -> RepEnd<B> {
    let budget = if rep { MAX_PER_EXIT } else { 1 };
    for _ in 0..budget {
        if rep && count(s) == 0 {
            return RepEnd::Done;
        }
        let end = element(s);
        if let Element::Fault(b) = end {
            return RepEnd::Stopped(b);
        }
        if rep {
            let left = count(s).wrapping_sub(1);
            set_count(s, left);
        }
        if let Element::Last(b) = end {
            return RepEnd::Stopped(b);
        }
    }
    if rep && count(s) != 0 {
        RepEnd::Again
    } else {
        RepEnd::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string instruction's state for the driver: rCX and the elements done.
    struct State {
        rcx: u64,
        done: u64,
    }

    fn go(rcx: u64, rep: bool, mut element: impl FnMut(&mut State) -> Element<&'static str>) -> (RepEnd<&'static str>, u64, u64) {
        let mut s = State { rcx, done: 0 };
        let end = run(&mut s, rep, |s| s.rcx, |s, v| s.rcx = v, |s| {
            s.done += 1;
            element(s)
        });
        (end, s.rcx, s.done)
    }

    #[test]
    fn rep_runs_until_rcx_is_zero_and_none_at_all_when_it_starts_at_zero() {
        assert_eq!(go(3, true, |_| Element::Next), (RepEnd::Done, 0, 3));
        assert_eq!(go(0, true, |_| Element::Next), (RepEnd::Done, 0, 0), "rCX = 0: no element");
        assert_eq!(go(1, true, |_| Element::Next), (RepEnd::Done, 0, 1));
    }

    #[test]
    fn without_rep_one_element_and_rcx_untouched() {
        assert_eq!(go(0, false, |_| Element::Next), (RepEnd::Done, 0, 1));
        assert_eq!(go(7, false, |_| Element::Next), (RepEnd::Done, 7, 1));
        assert_eq!(go(7, false, |_| Element::Last("stop")), (RepEnd::Stopped("stop"), 7, 1));
    }

    #[test]
    fn an_exit_does_at_most_1024_elements_then_the_instruction_runs_again() {
        assert_eq!(MAX_PER_EXIT, 1024);
        assert_eq!(go(1024 + 5, true, |_| Element::Next), (RepEnd::Again, 5, 1024));
        // Exactly the budget: all done in this exit.
        assert_eq!(go(1024, true, |_| Element::Next), (RepEnd::Done, 0, 1024));
    }

    #[test]
    fn a_fault_leaves_its_element_uncounted_and_a_last_element_is_counted() {
        // The third element faults: two done, rCX says one more is left to do (SDM Vol. 2B
        // REP: after a fault the registers point at the element that faulted).
        let mut n = 0;
        let third_faults = |_: &mut State| {
            n += 1;
            if n == 3 { Element::Fault("#PF") } else { Element::Next }
        };
        assert_eq!(go(5, true, third_faults), (RepEnd::Stopped("#PF"), 3, 3));
        let mut n = 0;
        let third_stops = |_: &mut State| {
            n += 1;
            if n == 3 { Element::Last("off") } else { Element::Next }
        };
        assert_eq!(go(5, true, third_stops), (RepEnd::Stopped("off"), 2, 3));
    }

    #[test]
    fn the_loop_ends_even_if_the_count_never_moves() {
        let mut s = State { rcx: 9, done: 0 };
        let end = run(&mut s, true, |s| s.rcx, |_, _| {}, |s| {
            s.done += 1;
            Element::<()>::Next
        });
        assert_eq!((end, s.done), (RepEnd::Again, MAX_PER_EXIT));
    }
}
