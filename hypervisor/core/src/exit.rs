//! How a Bastion run ends: the one protocol shared by the kernel, the test harness and xtask.
//!
//! Every run that ends prints one line `BASTION EXIT: PASS` or `BASTION EXIT: FAIL (<reason>)`
//! on the serial console, then stops the machine the way the platform allows:
//!
//! | platform | how | what the host sees |
//! |---|---|---|
//! | QEMU | `isa-debug-exit` device at port 0xf4 | exit status 33 (pass) or 35 (fail) |
//! | Bochs | "Shutdown" written to port 0x8900 | exit status 1 always: the serial line carries the result |
//! | real hardware | halt (or reset, as configured) | the serial line |
//!
//! QEMU computes its exit status as `(code << 1) | 1`, so no code can produce 0; we pick codes
//! whose statuses are distinct from QEMU's own failure statuses (1 = normal quit, 2+ = error).

/// Prefix of the final serial line of every run that ends on its own.
pub const EXIT_MARKER: &str = "BASTION EXIT:";

/// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;
/// Code written for a pass; QEMU then exits with status 33.
pub const QEMU_PASS_CODE: u32 = 0x10;
/// Code written for a failure; QEMU then exits with status 35.
pub const QEMU_FAIL_CODE: u32 = 0x11;

/// Bochs's shutdown port: writing the bytes of "Shutdown" there ends the emulator.
pub const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;
/// Bochs's `port_e9_hack`: bytes written to port 0xE9 appear on the emulator's stdout, and a
/// read returns 0xE9 (which is how Bastion detects it).
pub const E9_PORT: u16 = 0xe9;

/// The outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Pass,
    Fail,
}

impl ExitStatus {
    /// The value written to QEMU's debug-exit port.
    pub const fn qemu_code(self) -> u32 {
        match self {
            ExitStatus::Pass => QEMU_PASS_CODE,
            ExitStatus::Fail => QEMU_FAIL_CODE,
        }
    }

    /// The host-side process status QEMU reports for this outcome.
    pub const fn qemu_process_status(self) -> i32 {
        // Bit 0 of `code << 1` is clear, so this is QEMU's `| 1`.
        ((self.qemu_code() << 1) + 1) as i32
    }

    /// Decodes a QEMU process exit status; `None` when QEMU ended for another reason.
    pub const fn from_qemu_process_status(status: i32) -> Option<ExitStatus> {
        if status == ExitStatus::Pass.qemu_process_status() {
            Some(ExitStatus::Pass)
        } else if status == ExitStatus::Fail.qemu_process_status() {
            Some(ExitStatus::Fail)
        } else {
            None
        }
    }
}

/// Parses a serial line: `Some(status)` when it is the final exit line.
pub fn parse_exit_line(line: &str) -> Option<ExitStatus> {
    let rest = line.trim_end().split_once(EXIT_MARKER)?.1.trim_start();
    if rest == "PASS" {
        Some(ExitStatus::Pass)
    } else if rest.starts_with("FAIL") {
        Some(ExitStatus::Fail)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_statuses_round_trip_and_differ() {
        assert_eq!(ExitStatus::Pass.qemu_process_status(), 33);
        assert_eq!(ExitStatus::Fail.qemu_process_status(), 35);
        for s in [ExitStatus::Pass, ExitStatus::Fail] {
            assert_eq!(ExitStatus::from_qemu_process_status(s.qemu_process_status()), Some(s));
        }
        assert_eq!(ExitStatus::from_qemu_process_status(0), None);
        assert_eq!(ExitStatus::from_qemu_process_status(1), None);
    }

    #[test]
    fn exit_lines_parse() {
        assert_eq!(parse_exit_line("BASTION EXIT: PASS\r"), Some(ExitStatus::Pass));
        assert_eq!(parse_exit_line("[ 1.2] BASTION EXIT: FAIL (page fault)"), Some(ExitStatus::Fail));
        assert_eq!(parse_exit_line("BASTION EXIT: maybe"), None);
        assert_eq!(parse_exit_line("booting"), None);
    }
}
