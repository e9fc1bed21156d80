//! The console side of the run loop: COM1 input into the multiplexer, and the events it
//! returns — output lines, input for guests, and the monitor's commands.

use super::guest::{hv, vcpu_id, After, Cause, HV};
use super::io::{drain_uart, feed_pending_input, uart_output_waiting};
use super::lifecycle::{boot_guest, set_paused, stop_guest, Stop};
use crate::{println, serial};
use alloc::format;
use alloc::vec::Vec;
use bastion_core::console::{format_list, format_stats, Command, Console, Event, GuestRow};
use bastion_core::vm::ExitKind;
use core::sync::atomic::Ordering;

/// Runs `f` on the console and performs the events it returns (outside the lock).
pub(super) fn perform_console(f: impl FnOnce(&mut Console) -> Vec<Event>) {
    let Some(h) = HV.get() else { return };
    let events = f(&mut h.console.lock());
    perform(events);
}

/// Reads what was typed on COM1 and hands it to the console multiplexer.
pub(super) fn poll_console() {
    let h = hv();
    let queued = core::mem::take(&mut *h.console_events.lock());
    perform(queued);
    for g in &h.guests {
        feed_pending_input(g);
        // Output a guest's UART held back while the line had no room moves on as it drains.
        if uart_output_waiting(g) {
            drain_uart(g);
        }
    }
    while let Some(b) = serial::try_read() {
        let events = h.console.lock().input(b);
        perform(events);
    }
}

/// Carries out console events: output lines, input for guests, monitor commands.
pub(super) fn perform(events: Vec<Event>) {
    for e in events {
        match e {
            Event::ToGuest { guest, bytes } => {
                if let Some(g) = HV.get().and_then(|h| h.guests.get(guest)) {
                    g.pending_input.lock().extend_from_slice(&bytes);
                    feed_pending_input(g);
                }
            }
            Event::Notice(s) => println!("{s}"),
            Event::Replay { guest, lines } => {
                // Marked as history, so nobody (person or test) mistakes it for new output.
                let name = HV.get().and_then(|h| h.guests.get(guest)).map_or("?", |g| g.cfg.name.as_str());
                let live = format!("[{name}] ");
                // A guest's lines, history or not, stay off the screen console.
                for l in lines {
                    serial::print_guest(format_args!("[{name} history] {}\n", l.strip_prefix(&live).unwrap_or(&l)));
                }
            }
            Event::Echo(bytes) => serial::write_raw(&bytes),
            Event::Reply(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Event::Command(c) => run_command(c),
        }
    }
}

pub(super) fn run_command(c: Command) {
    let h = hv();
    match c {
        Command::List => {
            let sched = h.sched.lock();
            let rows: Vec<GuestRow> = h
                .guests
                .iter()
                .map(|g| {
                    let mut cpus: Vec<usize> =
                        (0..g.vcpus.len()).filter_map(|v| sched.stats(vcpu_id(g.index, v)).map(|s| s.cpu)).collect();
                    cpus.sort_unstable();
                    cpus.dedup();
                    let ctl = g.ctl.lock();
                    let reason = match &ctl.cause {
                        Some(c) if ctl.status.is_final() => format!("{c}"),
                        _ => alloc::string::String::new(),
                    };
                    GuestRow {
                        name: g.cfg.name.clone(),
                        state: ctl.status.name(),
                        reason,
                        vcpus: g.cfg.vcpus,
                        cpus: if cpus.is_empty() { "-".into() } else { cpus.iter().map(|c| format!("{c}")).collect::<Vec<_>>().join(",") },
                        memory_mib: g.cfg.memory_mib,
                        exits: g.exits.iter().map(|e| e.load(Ordering::Relaxed)).sum(),
                    }
                })
                .collect();
            drop(sched);
            for l in format_list(&rows) {
                println!("{l}");
            }
        }
        Command::Stats { guest } => {
            let g = &h.guests[guest];
            let counts: Vec<(&str, u64)> = ExitKind::ALL.iter().map(|k| (k.name(), g.exits[*k as usize].load(Ordering::Relaxed))).collect();
            for l in format_stats(&g.cfg.name, &counts) {
                println!("{l}");
            }
        }
        Command::Pause { guest } => set_paused(&h.guests[guest], true),
        Command::Resume { guest } => set_paused(&h.guests[guest], false),
        // The decision (stop, or start a guest that is not running) is taken under the
        // guest's lock inside `stop_guest`, so what is printed is what happens.
        Command::Reset { guest } => {
            let g = &h.guests[guest];
            match stop_guest(g, Cause::Reset, After::Restart, (0, 0)) {
                Stop::Started => println!("{}: resetting", g.cfg.name),
                Stop::AlreadyStopping => println!("{}: resetting (after the stop under way)", g.cfg.name),
                Stop::NotRunning | Stop::RestartCancelled => {
                    println!("{}: starting", g.cfg.name);
                    let started = boot_guest(g, false);
                    perform_console(|c| c.set_accepts_input(g.index, started));
                }
            }
        }
        Command::Kill { guest } => {
            let g = &h.guests[guest];
            match stop_guest(g, Cause::Killed, After::Nothing, (0, 0)) {
                Stop::Started => println!("{}: killing", g.cfg.name),
                Stop::AlreadyStopping => println!("{}: killing (it was stopping; it stays off)", g.cfg.name),
                Stop::NotRunning => println!("{} is not running", g.cfg.name),
                Stop::RestartCancelled => println!("{}: killing (it had stopped; its restart is cancelled)", g.cfg.name),
            }
        }
    }
}
