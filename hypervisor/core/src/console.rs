//! Serial console multiplexer: the guests' UARTs and Bastion's monitor on one host serial port.
//!
//! Bastion runs several guests, each with its own virtual UART, but the host has one serial
//! port. This module decides what appears on that port and where the bytes typed on it go.
//! It is pure logic: the kernel feeds it host input bytes ([`Console::input`]) and guest output
//! bytes ([`Console::guest_output`]), and prints or delivers what comes back, in order.
//!
//! # Guest output
//!
//! - Every line a guest prints appears on the host console as `[NAME] text`, whichever guest
//!   has the input focus. Lines are buffered per guest, so two guests printing at once never
//!   mix within a line.
//! - Carriage returns are dropped (guests end lines with `\r\n`; the host adds its own).
//! - A line longer than 240 bytes continues on a new `[NAME] ` line.
//! - Bytes that are not printable ASCII, other than tab, are shown as `\xNN` (so `ESC` shows
//!   as `\x1b`): a guest cannot move the cursor, change colours, retitle the window or
//!   otherwise drive the host terminal. UTF-8 text shows as escapes too.
//! - When a guest stops, the line it had not finished is printed as it is.
//! - Each guest keeps a history: the last `history_bytes` bytes (a [`Console::new`] argument,
//!   e.g. 4096) of its raw output. When a guest gets the input focus, its history is replayed,
//!   formatted like live output, so you see what it printed while you were elsewhere. The
//!   first replayed line may start mid-line once older output has been dropped, and the last
//!   one may be a line the guest has not finished yet.
//!
//! # Typing: the input focus
//!
//! What you type goes to exactly one target, the *input focus*: a guest or the monitor. At
//! start the focus is the first guest that takes input (stopped guests do not), else the
//! monitor. **Ctrl-A pressed three times in a row** moves the focus to the next target: the
//! guests in order, skipping those that do not take input, then the monitor, then the first
//! guest again. Each move prints a notice:
//!
//! ```text
//! [bastion] input focus: web (Ctrl-A x3 to switch)
//! [bastion] input focus: monitor (type 'help')
//! ```
//!
//! One or two Ctrl-As followed by any other key are not swallowed: they reach the focused
//! target before that key, so a program in a guest that uses Ctrl-A (`screen`, Emacs, a
//! shell's start-of-line) still gets it. A Ctrl-A is held back until the next key shows
//! whether it starts a switch. Every other byte, Ctrl-C included, reaches the focused guest
//! unchanged. When the focused guest stops or is removed, the focus moves on by itself, with a
//! notice saying why.
//!
//! # The monitor
//!
//! The monitor's prompt is `bastion> `. Printable characters are echoed, Backspace or DEL
//! erases one, Ctrl-C abandons the line, Enter (CR, LF or CR LF) runs it; cursor keys and other
//! control keys are ignored. A line typed at the monitor and not yet run is kept while the
//! focus is elsewhere and shown again on return. Commands:
//!
//! | command | what it does |
//! |---|---|
//! | `help` | lists the commands |
//! | `list` | every guest with its state, vCPUs, host CPUs, memory and VM-exit count |
//! | `stats NAME` | the VM exits of guest NAME by reason, most frequent first |
//! | `pause NAME` | stops running NAME's vCPUs, keeping its state |
//! | `resume NAME` | runs a paused guest again |
//! | `reset NAME` | restarts NAME from its initial state |
//! | `kill NAME` | stops NAME for good |
//!
//! Mistakes are answered with a hint: `unknown command 'foo'; type 'help'`,
//! `stats needs a guest name; usage: stats NAME`, `no guest named 'x'; type 'list'`.
//!
//! # For the kernel
//!
//! Perform the [`Event`]s of one call in order: a [`Event::Command`] is followed by the
//! prompt's [`Event::Echo`], so the command's reply lines (see [`format_list`] and
//! [`format_stats`]) must be printed while handling the command. Guest indices returned by
//! [`Console::add_guest`] stay valid for the life of the console; a removed guest's index is
//! never reused.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The switch key: Ctrl-A, as `screen` and Xen's console use.
pub const CTRL_A: u8 = 0x01;
/// How many Ctrl-As in a row move the focus. Three, not two as in `screen`, so that a program
/// in a guest that itself uses Ctrl-A twice (e.g. `screen` running inside the guest) still works.
pub const SWITCH_PRESSES: u8 = 3;
/// Longest guest line, in guest bytes, before it continues on a new host line. It also bounds
/// the memory a guest that never prints a newline can make us hold.
pub const MAX_LINE_BYTES: usize = 240;
/// The monitor's prompt, printed with no newline after it.
pub const PROMPT: &str = "bastion> ";
/// Longest monitor line; further characters are ignored (no command comes close).
pub const MONITOR_LINE_MAX: usize = 128;

const BACKSPACE: u8 = 0x08;
const DEL: u8 = 0x7f;
const CTRL_C: u8 = 0x03;
const ESC: u8 = 0x1b;
/// Erases the character left of the cursor on any terminal: back, overwrite, back.
const ERASE: &[u8] = b"\x08 \x08";
const NEWLINE: &[u8] = b"\r\n";

/// The monitor's answer to `help`.
const HELP: &[&str] = &[
    "commands:",
    "  help          this list",
    "  list          guests with state, vCPUs, CPUs, memory and VM exits",
    "  stats NAME    VM exits of guest NAME by reason",
    "  pause NAME    stop running NAME's vCPUs, keeping its state",
    "  resume NAME   run a paused guest again",
    "  reset NAME    restart NAME from its initial state",
    "  kill NAME     stop NAME for good",
    "Ctrl-A three times moves the input focus: the guests in order, then this monitor.",
];

/// Where host input goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The guest with this index (from [`Console::add_guest`]).
    Guest(usize),
    /// Bastion's command monitor.
    Monitor,
}

/// A monitor command for the kernel to carry out. Guest names have been checked: `guest` is
/// the index of a guest that exists. (`help` never reaches the kernel; the console answers it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print [`format_list`] of all guests.
    List,
    /// Print [`format_stats`] of one guest.
    Stats { guest: usize },
    /// Stop running the guest's vCPUs, keeping its state.
    Pause { guest: usize },
    /// Run a paused guest again.
    Resume { guest: usize },
    /// Restart the guest from its initial state.
    Reset { guest: usize },
    /// Stop the guest for good.
    Kill { guest: usize },
}

/// What one monitor line means; see [`Console::parse_line`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing but blanks: the prompt is shown again.
    Empty,
    /// `help`, which the console answers itself.
    Help,
    /// A command for the kernel.
    Command(Command),
    /// A mistake, as a one-line message for the user.
    Error(String),
}

/// Something for the kernel to do, returned by the [`Console`] methods. Perform them in the
/// order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Put these bytes into the guest's virtual UART receive queue, as typed.
    ToGuest { guest: usize, bytes: Vec<u8> },
    /// Print this line from Bastion itself (a focus change), followed by a newline.
    Notice(String),
    /// Print these lines, each followed by a newline: the guest's recent output, formatted like
    /// live output, replayed because it just got the focus. May be empty.
    Replay { guest: usize, lines: Vec<String> },
    /// Write these bytes to the host console exactly as they are, with no newline added: the
    /// monitor's echo of typed characters, its erase sequences, line ends and prompt.
    Echo(Vec<u8>),
    /// Print these lines, each followed by a newline: the monitor's own answer (`help`, or a
    /// message about a mistake).
    Reply(Vec<String>),
    /// Carry out this command, printing its answer as lines.
    Command(Command),
}

/// One row of the `list` table; plain data so the kernel fills it from whatever it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestRow {
    pub name: String,
    /// `running`, `paused`, `halted`, `stopped` or `crashed`.
    pub state: &'static str,
    pub vcpus: u32,
    /// Host CPUs the guest runs on, e.g. `"0,1"`.
    pub cpus: String,
    pub memory_mib: u32,
    /// VM exits so far, all reasons.
    pub exits: u64,
    /// Why a guest that is no longer running stopped (as its `stopped:` line says); empty
    /// while it runs.
    pub reason: String,
}

/// Per-guest state.
struct Guest {
    name: String,
    accepts_input: bool,
    /// The line being printed, without its `\r`s; at most [`MAX_LINE_BYTES`].
    partial: Vec<u8>,
    /// Raw output, at most `Console::history_bytes` bytes, oldest first.
    history: VecDeque<u8>,
}

/// Where the monitor is in a terminal escape sequence (what cursor and function keys send).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// After `ESC`.
    Started,
    /// After `ESC [` or `ESC O`, until the final byte.
    Sequence,
}

/// The multiplexer: guests' output lines and history, the input focus and the monitor's line
/// editor. See the module documentation for the behaviour.
pub struct Console {
    /// Indexed by guest index; `None` once removed, so indices stay stable.
    guests: Vec<Option<Guest>>,
    history_bytes: usize,
    /// `None` until the focus is first used ([`Console::announce`], a key, a switch): until
    /// then it follows the guests being added, so the kernel can add them one by one and still
    /// start on the first. Afterwards a guest added later does not steal the focus.
    focus: Option<Focus>,
    /// Ctrl-As pressed in a row and not delivered yet.
    ctrl_a: u8,
    /// The monitor's line being typed; printable ASCII only.
    edit: Vec<u8>,
    /// The last byte the monitor got was `\r`, so a `\n` right after it ends no second line.
    after_cr: bool,
    escape: Escape,
    /// The monitor's prompt has been printed and its line not yet ended, so anything else
    /// printed must first end that line.
    prompt_open: bool,
}

impl Console {
    /// A console with no guests, keeping the last `history_bytes` bytes of each guest's output
    /// (0: no history).
    pub fn new(history_bytes: usize) -> Self {
        Console {
            guests: Vec::new(),
            history_bytes,
            focus: None,
            ctrl_a: 0,
            edit: Vec::new(),
            after_cr: false,
            escape: Escape::None,
            prompt_open: false,
        }
    }

    /// Adds a guest that takes input; returns its index. Names should be unique (the
    /// configuration guarantees it); monitor commands find the first guest with a name.
    pub fn add_guest(&mut self, name: &str) -> usize {
        self.guests.push(Some(Guest {
            name: String::from(name),
            accepts_input: true,
            partial: Vec::new(),
            history: VecDeque::new(),
        }));
        self.guests.len() - 1
    }

    /// Removes a guest: its name is no longer known to the monitor and its output is ignored.
    /// Call [`Console::flush_partial`] first to print what it left unfinished. If it had the
    /// focus, the focus moves on; the events announce it.
    pub fn remove_guest(&mut self, guest: usize) -> Vec<Event> {
        let Some(removed) = self.guests.get_mut(guest).and_then(Option::take) else {
            return Vec::new();
        };
        self.leave_guest(guest, &format!("{} was removed; ", escaped(removed.name.as_bytes())))
    }

    /// Marks whether a guest takes input (a stopped one does not). A guest that does not is
    /// skipped by the Ctrl-A rotation; if it had the focus, the focus moves on and the events
    /// announce it.
    pub fn set_accepts_input(&mut self, guest: usize, accepts: bool) -> Vec<Event> {
        let Some(g) = self.guest_mut(guest) else {
            return Vec::new();
        };
        g.accepts_input = accepts;
        if accepts {
            return Vec::new();
        }
        let reason = format!("{} no longer takes input; ", escaped(g.name.as_bytes()));
        self.leave_guest(guest, &reason)
    }

    /// The index of the first existing guest with this name.
    pub fn find_guest(&self, name: &str) -> Option<usize> {
        self.guests.iter().position(|g| g.as_ref().is_some_and(|g| g.name == name))
    }

    /// Where input goes now.
    pub fn focus(&self) -> Focus {
        self.focus.unwrap_or_else(|| self.next_after(Focus::Monitor))
    }

    /// Fixes the initial focus and returns the events that announce it (notice, then the
    /// guest's replay or the monitor's prompt). The kernel calls it once, after adding the
    /// guests and before feeding input.
    pub fn announce(&mut self) -> Vec<Event> {
        let focus = self.focus();
        self.switch_to(focus, "")
    }

    /// Takes bytes the guest wrote to its UART; returns the host lines they complete, each to
    /// be printed followed by a newline. Output of an unknown or removed guest is ignored.
    pub fn guest_output(&mut self, guest: usize, bytes: &[u8]) -> Vec<String> {
        let history_bytes = self.history_bytes;
        let Some(g) = self.guest_mut(guest) else {
            return Vec::new();
        };
        push_history(&mut g.history, history_bytes, bytes);
        let Guest { name, partial, .. } = g;
        let mut lines = Vec::new();
        split_lines(partial, bytes, |text| lines.push(host_line(name, text)));
        lines
    }

    /// The line the guest has started and not ended, as a host line, and forgets it; `None`
    /// when there is none. Called when a guest stops, so its last words are not lost.
    pub fn flush_partial(&mut self, guest: usize) -> Option<String> {
        let g = self.guest_mut(guest)?;
        if g.partial.is_empty() {
            return None;
        }
        let line = host_line(&g.name, &g.partial);
        g.partial.clear();
        Some(line)
    }

    /// The guest's history as host lines, formatted like live output, including an unfinished
    /// last line. Empty for an unknown guest.
    pub fn history(&self, guest: usize) -> Vec<String> {
        let Some(g) = self.guest(guest) else {
            return Vec::new();
        };
        // The history is kept raw and formatted on demand: replays are rare, and a raw ring
        // makes "the last N bytes" exact whatever the line lengths.
        let (front, back) = g.history.as_slices();
        let mut partial = Vec::new();
        let mut lines = Vec::new();
        split_lines(&mut partial, front, |text| lines.push(host_line(&g.name, text)));
        split_lines(&mut partial, back, |text| lines.push(host_line(&g.name, text)));
        if !partial.is_empty() {
            lines.push(host_line(&g.name, &partial));
        }
        lines
    }

    /// Takes one byte typed on the host console; returns what to do with it.
    pub fn input(&mut self, byte: u8) -> Vec<Event> {
        // The first key fixes the focus, so a guest added from now on does not take it away.
        self.focus = Some(self.focus());
        if byte == CTRL_A {
            self.ctrl_a += 1;
            if self.ctrl_a < SWITCH_PRESSES {
                // Held back: the next key decides whether this is a switch.
                return Vec::new();
            }
            self.ctrl_a = 0;
            let next = self.next_after(self.focus());
            return self.switch_to(next, "");
        }
        // Not a switch after all: the held Ctrl-As were meant for the target; deliver them
        // first so nothing typed is lost.
        let mut bytes = alloc::vec![CTRL_A; usize::from(self.ctrl_a)];
        self.ctrl_a = 0;
        bytes.push(byte);
        match self.focus() {
            Focus::Guest(guest) => alloc::vec![Event::ToGuest { guest, bytes }],
            Focus::Monitor => {
                let mut events = Vec::new();
                for b in bytes {
                    self.monitor_byte(b, &mut events);
                }
                events
            }
        }
    }

    /// The monitor's prompt and the line typed so far, when the prompt is the open last line of
    /// the host console. A kernel that prints other lines meanwhile (guest output) should end
    /// that line with `\r\n` first and print this text again afterwards, so the user can go on
    /// typing where they were.
    pub fn open_prompt(&self) -> Option<String> {
        self.prompt_open.then(|| self.prompt_text())
    }

    /// What a monitor line means. Command words are case-insensitive; guest names are not.
    pub fn parse_line(&self, line: &str) -> Parsed {
        let mut words = line.split_ascii_whitespace();
        let Some(word) = words.next() else {
            return Parsed::Empty;
        };
        let args: Vec<&str> = words.collect();
        let command = word.to_ascii_lowercase();
        let with_guest: fn(usize) -> Command = match command.as_str() {
            "help" | "list" if !args.is_empty() => {
                return Parsed::Error(format!("{command} takes no arguments"))
            }
            "help" => return Parsed::Help,
            "list" => return Parsed::Command(Command::List),
            "stats" => |guest| Command::Stats { guest },
            "pause" => |guest| Command::Pause { guest },
            "resume" => |guest| Command::Resume { guest },
            "reset" => |guest| Command::Reset { guest },
            "kill" => |guest| Command::Kill { guest },
            _ => {
                return Parsed::Error(format!(
                    "unknown command '{}'; type 'help'",
                    escaped(word.as_bytes())
                ))
            }
        };
        match args.as_slice() {
            [] => Parsed::Error(format!("{command} needs a guest name; usage: {command} NAME")),
            [name] => match self.find_guest(name) {
                Some(guest) => Parsed::Command(with_guest(guest)),
                None => Parsed::Error(format!(
                    "no guest named '{}'; type 'list'",
                    escaped(name.as_bytes())
                )),
            },
            _ => Parsed::Error(format!("{command} takes one guest name; usage: {command} NAME")),
        }
    }

    fn guest(&self, guest: usize) -> Option<&Guest> {
        self.guests.get(guest).and_then(Option::as_ref)
    }

    fn guest_mut(&mut self, guest: usize) -> Option<&mut Guest> {
        self.guests.get_mut(guest).and_then(Option::as_mut)
    }

    /// The target after `current` in the rotation: the next guest taking input, then the
    /// monitor, then the first guest taking input again.
    fn next_after(&self, current: Focus) -> Focus {
        let start = match current {
            Focus::Guest(g) => g + 1,
            Focus::Monitor => 0,
        };
        self.guests
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, g)| g.as_ref().is_some_and(|g| g.accepts_input))
            .map_or(Focus::Monitor, |(i, _)| Focus::Guest(i))
    }

    /// After `guest` stopped taking input or was removed: moves the focus on if it was there.
    fn leave_guest(&mut self, guest: usize, reason: &str) -> Vec<Event> {
        // Before the focus is fixed it follows the guests by itself and nobody has been told
        // where it is, so there is nothing to announce.
        if self.focus != Some(Focus::Guest(guest)) {
            return Vec::new();
        }
        // Ctrl-As held for the guest that went away are dropped: a switch half typed for it
        // should not complete on the new target.
        self.ctrl_a = 0;
        let next = self.next_after(Focus::Guest(guest));
        self.switch_to(next, reason)
    }

    /// Moves the focus to `target` and returns the events announcing it.
    fn switch_to(&mut self, target: Focus, reason: &str) -> Vec<Event> {
        let mut events = Vec::new();
        if self.prompt_open {
            // The prompt line is unfinished on screen; the notice must not be glued to it.
            push_echo(&mut events, NEWLINE);
            self.prompt_open = false;
        }
        self.focus = Some(target);
        self.after_cr = false;
        self.escape = Escape::None;
        match target {
            Focus::Guest(guest) => {
                let name = self.guest(guest).map_or(String::new(), |g| escaped(g.name.as_bytes()));
                events.push(Event::Notice(format!(
                    "[bastion] {reason}input focus: {name} (Ctrl-A x3 to switch)"
                )));
                events.push(Event::Replay { guest, lines: self.history(guest) });
            }
            Focus::Monitor => {
                events.push(Event::Notice(format!(
                    "[bastion] {reason}input focus: monitor (type 'help')"
                )));
                self.show_prompt(&mut events);
            }
        }
        events
    }

    fn prompt_text(&self) -> String {
        let mut text = String::from(PROMPT);
        // `edit` holds printable ASCII only.
        text.extend(self.edit.iter().map(|&b| char::from(b)));
        text
    }

    fn show_prompt(&mut self, events: &mut Vec<Event>) {
        let text = self.prompt_text();
        push_echo(events, text.as_bytes());
        self.prompt_open = true;
    }

    /// One byte for the monitor's line editor.
    fn monitor_byte(&mut self, byte: u8, events: &mut Vec<Event>) {
        // Cursor and function keys arrive as `ESC [ ... final` or `ESC O final`; without this
        // an arrow key would type "[A" into the line.
        match self.escape {
            Escape::Started => {
                self.escape =
                    if byte == b'[' || byte == b'O' { Escape::Sequence } else { Escape::None };
                return;
            }
            Escape::Sequence => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return;
            }
            Escape::None => {}
        }
        let after_cr = core::mem::replace(&mut self.after_cr, byte == b'\r');
        match byte {
            // Terminals send CR for Enter, some CR LF, pipes LF: each ends one line.
            b'\n' if after_cr => {}
            b'\r' | b'\n' => self.submit(events),
            BACKSPACE | DEL => {
                if self.edit.pop().is_some() {
                    push_echo(events, ERASE);
                }
            }
            CTRL_C => {
                self.edit.clear();
                push_echo(events, b"^C\r\n");
                self.show_prompt(events);
            }
            ESC => self.escape = Escape::Started,
            // Past the maximum, characters fall through to the arm below and are dropped.
            0x20..=0x7e if self.edit.len() < MONITOR_LINE_MAX => {
                self.edit.push(byte);
                push_echo(events, &[byte]);
            }
            // Other control bytes (a held Ctrl-A, tab, bytes above 0x7f) mean nothing here, and
            // echoing them would garble the host terminal.
            _ => {}
        }
    }

    /// Enter: ends the line on screen, runs it, shows the prompt again.
    fn submit(&mut self, events: &mut Vec<Event>) {
        push_echo(events, NEWLINE);
        self.prompt_open = false;
        let line: String = self.edit.drain(..).map(char::from).collect();
        match self.parse_line(&line) {
            Parsed::Empty => {}
            Parsed::Help => {
                events.push(Event::Reply(HELP.iter().map(|&l| String::from(l)).collect()))
            }
            Parsed::Command(command) => events.push(Event::Command(command)),
            Parsed::Error(message) => events.push(Event::Reply(alloc::vec![message])),
        }
        self.show_prompt(events);
    }
}

/// Appends bytes to an `Echo`, merging with the previous one so a key gives one write.
fn push_echo(events: &mut Vec<Event>, bytes: &[u8]) {
    if let Some(Event::Echo(last)) = events.last_mut() {
        last.extend_from_slice(bytes);
    } else {
        events.push(Event::Echo(bytes.to_vec()));
    }
}

/// Appends `bytes` to a ring holding at most `limit` bytes, dropping the oldest.
fn push_history(history: &mut VecDeque<u8>, limit: usize, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(limit)..];
    let overflow = (history.len() + bytes.len()).saturating_sub(limit);
    history.drain(..overflow);
    history.extend(bytes);
}

/// Feeds guest output into the unfinished line `partial`, calling `emit` with each line that
/// is complete: ended by `\n`, or full at [`MAX_LINE_BYTES`] with more to come.
fn split_lines(partial: &mut Vec<u8>, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
    for &b in bytes {
        match b {
            b'\r' => {}
            b'\n' => {
                emit(partial);
                partial.clear();
            }
            _ => {
                // Split only when a further byte arrives, so a line of exactly the maximum
                // followed by its newline is one line, not a line and an empty one.
                if partial.len() == MAX_LINE_BYTES {
                    emit(partial);
                    partial.clear();
                }
                partial.push(b);
            }
        }
    }
}

/// `[NAME] text`, sanitized.
fn host_line(name: &str, text: &[u8]) -> String {
    let mut line = String::with_capacity(name.len() + text.len() + 3);
    line.push('[');
    push_escaped(&mut line, name.as_bytes());
    line.push_str("] ");
    push_escaped(&mut line, text);
    line
}

fn escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    push_escaped(&mut text, bytes);
    text
}

/// Printable ASCII and tab as they are, every other byte as `\xNN`: whatever a guest sends,
/// the host terminal receives no control sequence.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'\t' || (0x20..=0x7e).contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// The `list` table: a header, then one row per guest, columns aligned (numbers to the right),
/// the stop reason of a guest that no longer runs last (`virsh domstate --reason` shows the
/// same: what ended it, without searching the log).
///
/// ```text
/// NAME  STATE    VCPUS  CPUS  MEMORY  EXITS  REASON
/// web   running      2  0,1   64 MiB  12345
/// db    crashed      1  -      8 MiB    212  triple fault
/// ```
pub fn format_list(rows: &[GuestRow]) -> Vec<String> {
    const HEADER: [&str; 7] = ["NAME", "STATE", "VCPUS", "CPUS", "MEMORY", "EXITS", "REASON"];
    const RIGHT: [bool; 7] = [false, false, true, false, true, true, false];
    let mut cells: Vec<[String; 7]> = Vec::with_capacity(rows.len() + 1);
    cells.push(HEADER.map(String::from));
    for row in rows {
        cells.push([
            escaped(row.name.as_bytes()),
            String::from(row.state),
            format!("{}", row.vcpus),
            escaped(row.cpus.as_bytes()),
            format!("{} MiB", row.memory_mib),
            format!("{}", row.exits),
            escaped(row.reason.as_bytes()),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut lines: Vec<String> = cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let width = widths[i];
                let _ = if RIGHT[i] {
                    write!(line, "{cell:>width$}")
                } else {
                    write!(line, "{cell:<width$}")
                };
            }
            String::from(line.trim_end())
        })
        .collect();
    if rows.is_empty() {
        lines.push(String::from("(no guests)"));
    }
    lines
}

/// The `stats NAME` answer: VM exits by reason, most frequent first (ties by reason), with
/// each reason's share; reasons never seen are left out; a total closes the list.
///
/// ```text
/// web: VM exits by reason
///   io          1200   96.8%
///   cpuid         40    3.2%
///   total       1240
/// ```
pub fn format_stats(name: &str, counts: &[(&str, u64)]) -> Vec<String> {
    let mut rows: Vec<(&str, u64)> = counts.iter().copied().filter(|&(_, n)| n > 0).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total = rows.iter().fold(0u64, |sum, &(_, n)| sum.saturating_add(n));
    let reason_width = rows.iter().map(|(r, _)| r.len()).max().unwrap_or(0).max("total".len());
    let count_width = format!("{total}").len();
    let mut lines = Vec::with_capacity(rows.len() + 3);
    lines.push(format!("{}: VM exits by reason", escaped(name.as_bytes())));
    if rows.is_empty() {
        lines.push(String::from("  (none yet)"));
    }
    for &(reason, count) in &rows {
        // Tenths of a percent, rounded; u128 so huge counts cannot overflow.
        let tenths = (u128::from(count) * 1000 + u128::from(total) / 2) / u128::from(total);
        let share = format!("{}.{}%", tenths / 10, tenths % 10);
        lines.push(format!(
            "  {:<reason_width$}  {count:>count_width$}  {share:>6}",
            escaped(reason.as_bytes())
        ));
    }
    lines.push(format!("  {:<reason_width$}  {total:>count_width$}", "total"));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn console(names: &[&str]) -> Console {
        let mut c = Console::new(4096);
        for name in names {
            c.add_guest(name);
        }
        c
    }

    fn feed(c: &mut Console, bytes: &[u8]) -> Vec<Event> {
        bytes.iter().flat_map(|&b| c.input(b)).collect()
    }

    fn notices(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Notice(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn echoed(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Echo(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn to_guests(events: &[Event]) -> Vec<(usize, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ToGuest { guest, bytes } => Some((*guest, bytes.clone())),
                _ => None,
            })
            .collect()
    }

    fn replies(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Reply(lines) => Some(lines.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn commands(events: &[Event]) -> Vec<Command> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Command(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    const SWITCH: &[u8] = &[CTRL_A, CTRL_A, CTRL_A];

    /// A console with guests "web" and "db", the focus moved to the monitor.
    fn at_monitor() -> Console {
        let mut c = console(&["web", "db"]);
        feed(&mut c, SWITCH);
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        c
    }

    #[test]
    fn output_lines_are_prefixed_and_buffered_until_newline() {
        let mut c = console(&["web"]);
        assert_eq!(c.guest_output(0, b"hello\nwor"), vec!["[web] hello"]);
        assert!(c.guest_output(0, b"ld").is_empty());
        assert_eq!(c.guest_output(0, b"\n\nx\n"), vec!["[web] world", "[web] ", "[web] x"]);
    }

    #[test]
    fn partial_lines_of_two_guests_do_not_mix() {
        let mut c = console(&["web", "db"]);
        assert!(c.guest_output(0, b"web sa").is_empty());
        assert!(c.guest_output(1, b"db sa").is_empty());
        assert_eq!(c.guest_output(0, b"ys\n"), vec!["[web] web says"]);
        assert_eq!(c.guest_output(1, b"ys\n"), vec!["[db] db says"]);
    }

    #[test]
    fn carriage_returns_are_stripped() {
        let mut c = console(&["web"]);
        assert_eq!(c.guest_output(0, b"a\r\nb\r"), vec!["[web] a"]);
        assert_eq!(c.guest_output(0, b"\r\n"), vec!["[web] b"]);
        assert_eq!(c.guest_output(0, b"50%\r100%\n"), vec!["[web] 50%100%"]);
    }

    #[test]
    fn long_lines_are_split_at_240_bytes() {
        let mut c = console(&["web"]);
        let exact = [b'a'; MAX_LINE_BYTES];
        let lines = c.guest_output(0, &exact);
        assert!(lines.is_empty(), "a full line waits for what follows");
        let lines = c.guest_output(0, b"\n");
        assert_eq!(lines.len(), 1, "exactly 240 bytes is one line");
        assert_eq!(lines[0].len(), "[web] ".len() + MAX_LINE_BYTES);

        let mut long = vec![b'b'; MAX_LINE_BYTES * 2 + 5];
        long.push(b'\n');
        let lines = c.guest_output(0, &long);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], format!("[web] {}", "b".repeat(MAX_LINE_BYTES)));
        assert_eq!(lines[1], format!("[web] {}", "b".repeat(MAX_LINE_BYTES)));
        assert_eq!(lines[2], "[web] bbbbb");
    }

    #[test]
    fn non_printable_bytes_are_escaped_but_tab_is_kept() {
        let mut c = console(&["web"]);
        let lines = c.guest_output(0, b"\x1b[2Jred\x07\tok \xc3\xa9\x7f\x00\n");
        assert_eq!(lines, vec!["[web] \\x1b[2Jred\\x07\tok \\xc3\\xa9\\x7f\\x00"]);
        assert!(!lines[0].bytes().any(|b| b == 0x1b || b == 0x07 || b >= 0x7f));
    }

    #[test]
    fn flush_partial_emits_an_unterminated_line_once() {
        let mut c = console(&["web"]);
        assert_eq!(c.flush_partial(0), None);
        c.guest_output(0, b"done\nbye\x1b");
        assert_eq!(c.flush_partial(0), Some(String::from("[web] bye\\x1b")));
        assert_eq!(c.flush_partial(0), None);
        assert_eq!(c.guest_output(0, b"next\n"), vec!["[web] next"]);
        assert_eq!(c.flush_partial(7), None);
    }

    #[test]
    fn history_keeps_only_the_last_n_bytes() {
        let mut c = Console::new(10);
        c.add_guest("web");
        c.guest_output(0, b"0123\n");
        assert_eq!(c.history(0), vec!["[web] 0123"]);
        c.guest_output(0, b"abcd\nefgh\n");
        // 15 bytes written: the last 10 are exactly the second write.
        assert_eq!(c.history(0), vec!["[web] abcd", "[web] efgh"]);
        c.guest_output(0, b"0123456789XYZ");
        assert_eq!(c.history(0), vec!["[web] 3456789XYZ"]);

        let mut none = Console::new(0);
        none.add_guest("quiet");
        none.guest_output(0, b"something\n");
        assert!(none.history(0).is_empty());
    }

    #[test]
    fn history_is_sanitized_and_includes_the_unfinished_line() {
        let mut c = console(&["web"]);
        c.guest_output(0, b"boot\r\n\x1b[31mlogin: ");
        assert_eq!(c.history(0), vec!["[web] boot", "[web] \\x1b[31mlogin: "]);
    }

    #[test]
    fn initial_focus_is_the_first_guest_taking_input_else_the_monitor() {
        let mut c = Console::new(64);
        assert_eq!(c.focus(), Focus::Monitor);
        c.add_guest("web");
        assert_eq!(c.focus(), Focus::Guest(0), "the focus follows guests until fixed");
        c.set_accepts_input(0, false);
        c.add_guest("db");
        assert_eq!(c.focus(), Focus::Guest(1));
        let events = c.announce();
        assert_eq!(notices(&events), vec!["[bastion] input focus: db (Ctrl-A x3 to switch)"]);
        c.add_guest("late");
        c.set_accepts_input(0, true);
        assert_eq!(c.focus(), Focus::Guest(1), "once announced, guests do not steal the focus");
    }

    #[test]
    fn announcing_the_monitor_shows_the_prompt() {
        let mut c = Console::new(64);
        let events = c.announce();
        assert_eq!(notices(&events), vec!["[bastion] input focus: monitor (type 'help')"]);
        assert_eq!(echoed(&events), PROMPT.as_bytes());
        assert_eq!(c.open_prompt(), Some(String::from(PROMPT)));
    }

    #[test]
    fn ctrl_a_three_times_rotates_guests_then_monitor() {
        let mut c = console(&["web", "db"]);
        assert_eq!(c.focus(), Focus::Guest(0));
        assert!(feed(&mut c, &[CTRL_A, CTRL_A]).is_empty(), "two Ctrl-As are held back");
        let events = c.input(CTRL_A);
        assert_eq!(c.focus(), Focus::Guest(1));
        assert_eq!(notices(&events), vec!["[bastion] input focus: db (Ctrl-A x3 to switch)"]);
        assert!(to_guests(&events).is_empty(), "the switch keys reach no guest");

        let events = feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        assert_eq!(notices(&events), vec!["[bastion] input focus: monitor (type 'help')"]);
        assert_eq!(echoed(&events), PROMPT.as_bytes());

        let events = feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Guest(0));
        assert_eq!(echoed(&events), b"\r\n", "the prompt line is ended before the notice");
        assert_eq!(notices(&events), vec!["[bastion] input focus: web (Ctrl-A x3 to switch)"]);
        assert!(matches!(events[0], Event::Echo(_)));
        assert_eq!(c.open_prompt(), None);
    }

    #[test]
    fn six_ctrl_as_switch_twice() {
        let mut c = console(&["a", "b", "c"]);
        let events = feed(&mut c, &[CTRL_A; 6]);
        assert_eq!(c.focus(), Focus::Guest(2));
        assert_eq!(notices(&events).len(), 2);
    }

    #[test]
    fn switching_to_a_guest_replays_its_history() {
        let mut c = console(&["web", "db"]);
        c.guest_output(1, b"db up\nready> ");
        let events = feed(&mut c, SWITCH);
        let replay = events.iter().find_map(|e| match e {
            Event::Replay { guest, lines } => Some((*guest, lines.clone())),
            _ => None,
        });
        assert_eq!(
            replay,
            Some((1, vec![String::from("[db] db up"), String::from("[db] ready> ")]))
        );
        // The notice comes first, then the replay.
        assert!(matches!(events[0], Event::Notice(_)));
        assert!(matches!(events[1], Event::Replay { .. }));
    }

    #[test]
    fn one_or_two_ctrl_as_then_a_key_reach_the_focused_guest() {
        let mut c = console(&["web", "db"]);
        assert!(c.input(CTRL_A).is_empty());
        assert_eq!(to_guests(&c.input(b'x')), vec![(0, vec![CTRL_A, b'x'])]);
        assert!(feed(&mut c, &[CTRL_A, CTRL_A]).is_empty());
        assert_eq!(to_guests(&c.input(b'y')), vec![(0, vec![CTRL_A, CTRL_A, b'y'])]);
        // The count starts again after a delivered key: two more Ctrl-As do not switch.
        assert!(feed(&mut c, &[CTRL_A, CTRL_A]).is_empty());
        assert_eq!(c.focus(), Focus::Guest(0));
        assert_eq!(to_guests(&c.input(b'z')), vec![(0, vec![CTRL_A, CTRL_A, b'z'])]);
    }

    #[test]
    fn input_to_a_guest_is_delivered_unchanged() {
        let mut c = console(&["web", "db"]);
        feed(&mut c, SWITCH);
        for byte in (0..=255u8).filter(|&b| b != CTRL_A) {
            assert_eq!(c.input(byte), vec![Event::ToGuest { guest: 1, bytes: vec![byte] }]);
        }
        assert_eq!(c.focus(), Focus::Guest(1));
    }

    #[test]
    fn a_single_guest_switches_to_the_monitor_and_back() {
        let mut c = console(&["solo"]);
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Guest(0));
    }

    #[test]
    fn without_guests_the_monitor_keeps_the_focus() {
        let mut c = Console::new(64);
        let events = feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        assert_eq!(notices(&events), vec!["[bastion] input focus: monitor (type 'help')"]);
    }

    #[test]
    fn guests_not_taking_input_are_skipped() {
        let mut c = console(&["a", "b", "c"]);
        c.set_accepts_input(0, false);
        c.set_accepts_input(1, false);
        assert_eq!(c.focus(), Focus::Guest(2));
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Guest(2));
        c.set_accepts_input(1, true);
        feed(&mut c, SWITCH);
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Guest(1));
    }

    #[test]
    fn focused_guest_stopping_moves_the_focus_with_a_notice() {
        let mut c = console(&["web", "db"]);
        c.announce();
        c.guest_output(1, b"db line\n");
        let events = c.set_accepts_input(0, false);
        assert_eq!(c.focus(), Focus::Guest(1));
        assert_eq!(
            notices(&events),
            vec!["[bastion] web no longer takes input; input focus: db (Ctrl-A x3 to switch)"]
        );
        assert!(
            events.contains(&Event::Replay { guest: 1, lines: vec![String::from("[db] db line")] })
        );

        let events = c.set_accepts_input(1, false);
        assert_eq!(c.focus(), Focus::Monitor);
        assert_eq!(
            notices(&events),
            vec!["[bastion] db no longer takes input; input focus: monitor (type 'help')"]
        );
        // A guest that is not focused stops quietly.
        let mut c = console(&["web", "db"]);
        c.announce();
        assert!(c.set_accepts_input(1, false).is_empty());
        assert_eq!(c.focus(), Focus::Guest(0));
    }

    #[test]
    fn held_ctrl_as_are_dropped_when_the_focused_guest_stops() {
        let mut c = console(&["web", "db"]);
        feed(&mut c, &[CTRL_A, CTRL_A]);
        c.set_accepts_input(0, false);
        assert_eq!(c.focus(), Focus::Guest(1));
        assert_eq!(to_guests(&c.input(CTRL_A)), vec![]);
        assert_eq!(c.focus(), Focus::Guest(1), "the half-typed switch does not complete");
        assert_eq!(to_guests(&c.input(b'q')), vec![(1, vec![CTRL_A, b'q'])]);
    }

    #[test]
    fn removing_the_focused_guest_moves_the_focus_and_forgets_its_name() {
        let mut c = console(&["web", "db"]);
        c.announce();
        let events = c.remove_guest(0);
        assert_eq!(
            notices(&events),
            vec!["[bastion] web was removed; input focus: db (Ctrl-A x3 to switch)"]
        );
        assert_eq!(c.find_guest("web"), None);
        assert!(c.guest_output(0, b"ghost\n").is_empty());
        assert_eq!(c.add_guest("new"), 2, "indices are not reused");
        assert!(c.remove_guest(0).is_empty());
    }

    #[test]
    fn monitor_echoes_and_erases() {
        let mut c = at_monitor();
        assert_eq!(echoed(&feed(&mut c, b"lisx")), b"lisx");
        assert_eq!(echoed(&c.input(0x08)), b"\x08 \x08");
        assert_eq!(echoed(&c.input(0x7f)), b"\x08 \x08");
        assert_eq!(c.open_prompt(), Some(format!("{PROMPT}li")));
        assert_eq!(echoed(&feed(&mut c, b"st")), b"st");
        let events = c.input(b'\r');
        assert_eq!(commands(&events), vec![Command::List]);
        // Erasing an empty line echoes nothing.
        assert!(c.input(0x7f).is_empty());
    }

    #[test]
    fn monitor_runs_a_command_then_shows_the_prompt() {
        let mut c = at_monitor();
        feed(&mut c, b"pause db");
        let events = c.input(b'\r');
        assert_eq!(
            events,
            vec![
                Event::Echo(b"\r\n".to_vec()),
                Event::Command(Command::Pause { guest: 1 }),
                Event::Echo(PROMPT.as_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn cr_lf_submits_once_and_empty_lines_reprint_the_prompt() {
        let mut c = at_monitor();
        feed(&mut c, b"list");
        let events = feed(&mut c, b"\r\n");
        assert_eq!(commands(&events), vec![Command::List]);
        assert_eq!(echoed(&events), format!("\r\n{PROMPT}").as_bytes());
        let events = c.input(b'\n');
        assert_eq!(events, vec![Event::Echo(format!("\r\n{PROMPT}").into_bytes())]);
        let events = feed(&mut c, b"   \n");
        assert!(commands(&events).is_empty() && replies(&events).is_empty());
    }

    #[test]
    fn monitor_ignores_cursor_keys_and_control_bytes() {
        let mut c = at_monitor();
        let events = feed(&mut c, b"ki\x1b[A\x1b[1;5Cl\x1bOPl\t\x02\xff");
        assert_eq!(echoed(&events), b"kill");
        assert_eq!(c.open_prompt(), Some(format!("{PROMPT}kill")));
    }

    #[test]
    fn ctrl_c_abandons_the_monitor_line() {
        let mut c = at_monitor();
        feed(&mut c, b"kill web");
        let events = c.input(CTRL_C);
        assert_eq!(echoed(&events), format!("^C\r\n{PROMPT}").as_bytes());
        assert!(commands(&feed(&mut c, b"\r")).is_empty());
    }

    #[test]
    fn monitor_line_is_kept_while_away() {
        let mut c = at_monitor();
        feed(&mut c, b"sta");
        feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Guest(0));
        assert_eq!(c.open_prompt(), None);
        feed(&mut c, SWITCH);
        let events = feed(&mut c, SWITCH);
        assert_eq!(c.focus(), Focus::Monitor);
        assert_eq!(echoed(&events), format!("{PROMPT}sta").as_bytes());
        feed(&mut c, b"ts web");
        assert_eq!(commands(&c.input(b'\r')), vec![Command::Stats { guest: 0 }]);
    }

    #[test]
    fn monitor_line_length_is_bounded() {
        let mut c = at_monitor();
        let events = feed(&mut c, &[b'x'; MONITOR_LINE_MAX + 10]);
        assert_eq!(echoed(&events).len(), MONITOR_LINE_MAX);
    }

    #[test]
    fn every_command_parses() {
        let c = console(&["web", "db"]);
        assert_eq!(c.parse_line("help"), Parsed::Help);
        assert_eq!(c.parse_line("  list "), Parsed::Command(Command::List));
        assert_eq!(c.parse_line("stats db"), Parsed::Command(Command::Stats { guest: 1 }));
        assert_eq!(c.parse_line("pause web"), Parsed::Command(Command::Pause { guest: 0 }));
        assert_eq!(c.parse_line("resume web"), Parsed::Command(Command::Resume { guest: 0 }));
        assert_eq!(c.parse_line("reset  db"), Parsed::Command(Command::Reset { guest: 1 }));
        assert_eq!(c.parse_line("kill db"), Parsed::Command(Command::Kill { guest: 1 }));
        assert_eq!(c.parse_line("KILL db"), Parsed::Command(Command::Kill { guest: 1 }));
        assert_eq!(c.parse_line(""), Parsed::Empty);
    }

    #[test]
    fn mistakes_get_helpful_messages() {
        let c = console(&["web"]);
        let error = |line: &str| match c.parse_line(line) {
            Parsed::Error(message) => message,
            other => panic!("{line:?} parsed as {other:?}"),
        };
        assert_eq!(error("foo"), "unknown command 'foo'; type 'help'");
        assert_eq!(error("foo\x1b"), "unknown command 'foo\\x1b'; type 'help'");
        assert_eq!(error("stats"), "stats needs a guest name; usage: stats NAME");
        assert_eq!(error("kill"), "kill needs a guest name; usage: kill NAME");
        assert_eq!(error("pause x"), "no guest named 'x'; type 'list'");
        assert_eq!(error("pause WEB"), "no guest named 'WEB'; type 'list'");
        assert_eq!(error("reset web db"), "reset takes one guest name; usage: reset NAME");
        assert_eq!(error("list web"), "list takes no arguments");
        assert_eq!(error("help me"), "help takes no arguments");
    }

    #[test]
    fn monitor_replies_to_mistakes() {
        let mut c = at_monitor();
        let events = feed(&mut c, b"resume nobody\r");
        assert_eq!(replies(&events), vec!["no guest named 'nobody'; type 'list'"]);
        assert!(commands(&events).is_empty());
        assert!(echoed(&events).ends_with(PROMPT.as_bytes()));
    }

    #[test]
    fn help_lists_every_command() {
        let mut c = at_monitor();
        let events = feed(&mut c, b"help\r");
        assert!(commands(&events).is_empty(), "help is answered by the console");
        let help = replies(&events);
        for command in
            ["help", "list", "stats NAME", "pause NAME", "resume NAME", "reset NAME", "kill NAME"]
        {
            assert!(
                help.iter().any(|l| l.trim_start().starts_with(command)),
                "help lacks {command}: {help:?}"
            );
        }
        assert!(help.iter().any(|l| l.contains("Ctrl-A")));
    }

    #[test]
    fn format_list_aligns_columns() {
        let rows = [
            GuestRow {
                name: String::from("web"),
                state: "running",
                vcpus: 2,
                cpus: String::from("0,1"),
                memory_mib: 64,
                exits: 123456,
                reason: String::new(),
            },
            GuestRow {
                name: String::from("database"),
                state: "paused",
                vcpus: 12,
                cpus: String::from("2"),
                memory_mib: 1024,
                exits: 7,
                reason: String::new(),
            },
            GuestRow {
                name: String::from("db\x1b"),
                state: "crashed",
                vcpus: 1,
                cpus: String::from("-"),
                memory_mib: 8,
                exits: 212,
                reason: String::from("triple fault\x1b[2J"),
            },
        ];
        let lines = format_list(&rows);
        assert_eq!(
            lines,
            vec![
                "NAME      STATE    VCPUS  CPUS    MEMORY   EXITS  REASON",
                "web       running      2  0,1     64 MiB  123456",
                "database  paused      12  2     1024 MiB       7",
                "db\\x1b    crashed      1  -        8 MiB     212  triple fault\\x1b[2J",
            ]
        );
        assert_eq!(
            format_list(&[]),
            vec!["NAME  STATE  VCPUS  CPUS  MEMORY  EXITS  REASON", "(no guests)"]
        );
    }

    #[test]
    fn format_stats_sorts_omits_zeros_and_totals() {
        let lines = format_stats("web", &[("cpuid", 40), ("hlt", 0), ("io", 1200), ("msr", 40)]);
        assert_eq!(
            lines,
            vec![
                "web: VM exits by reason",
                "  io     1200   93.8%",
                "  cpuid    40    3.1%",
                "  msr      40    3.1%",
                "  total  1280",
            ]
        );
        assert_eq!(
            format_stats("idle", &[("hlt", 0)]),
            vec!["idle: VM exits by reason", "  (none yet)", "  total  0",]
        );
    }
}
