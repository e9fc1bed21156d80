//! The screen console: Bastion's own output (everything printed except guests' console lines)
//! drawn on the framebuffer the bootloader hands over (`bastion_core::fbcon` keeps the text
//! and draws it). COM1 stays the primary console; this is for the person at a machine.
//!
//! Printing only updates the text (under the serial console's lock, cheap). The pixels are
//! drawn by [`refresh`], which the console pump after each VM exit and CPU 0's loop call: ten
//! frames a second at most (fewer where drawing is slow), by whichever CPU gets there first, outside the serial lock, so a burst of
//! log lines costs one framebuffer move and a few painted rows, and no printer waits for the
//! screen.

use bastion_core::fbcon::{Frame, Geometry, GeometryError, PixelFormat, Screen, TextConsole};
use bootloader_api::info::{FrameBuffer, PixelFormat as BootFormat};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// The text, written under the serial console's lock (lock order: serial, then this).
static TEXT: Mutex<TextConsole> = Mutex::new(TextConsole::new());
/// The framebuffer and what draws on it; held while drawing.
static SCREEN: Mutex<Drawing> = Mutex::new(Drawing { target: None, frame: Frame::new() });
/// There is a screen: printers update the text.
static ON: AtomicBool = AtomicBool::new(false);
/// The text changed since the last frame was taken.
static CHANGED: AtomicBool = AtomicBool::new(false);
/// When the next frame may be drawn (`bastion_core::fbcon::next_frame_ns`).
static NEXT_NS: AtomicU64 = AtomicU64::new(0);

struct Drawing {
    target: Option<(Screen, &'static mut [u8])>,
    /// In the static, not on a stack: it is as large as the text.
    frame: Frame,
}

/// What [`init`] found, for the boot log (the logger and the heap are not up when it runs).
pub enum Report {
    Ready { width: usize, height: usize, format: PixelFormat, cols: usize, rows: usize },
    Format(BootFormat),
    Unusable { width: usize, height: usize, error: GeometryError },
}

impl core::fmt::Display for Report {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Report::Ready { width, height, format, cols, rows } => write!(f, "screen: {width}x{height} {format:?} framebuffer, {cols}x{rows} characters of Bastion's console"),
            Report::Format(p) => write!(f, "screen: the framebuffer's pixel format {p:?} cannot be drawn on; the console is on COM1 only"),
            Report::Unusable { width, height, error } => write!(f, "screen: the {width}x{height} framebuffer is unusable ({error}); the console is on COM1 only"),
        }
    }
}

/// Takes the bootloader's framebuffer, if there is one Bastion can draw on, and clears it.
pub fn init(fb: Option<FrameBuffer>) -> Option<Report> {
    let fb = fb?;
    let info = fb.info();
    let format = match info.pixel_format {
        BootFormat::Rgb => PixelFormat::Rgb,
        BootFormat::Bgr => PixelFormat::Bgr,
        BootFormat::U8 => PixelFormat::Grey,
        // Grey needs the three colour components equal, wherever they are: a layout with
        // each in one of the first three bytes is drawn as RGB.
        BootFormat::Unknown { red_position: r, green_position: g, blue_position: b }
            if [r, g, b].iter().all(|p| p % 8 == 0 && *p < 24) && r != g && g != b && r != b =>
        {
            PixelFormat::Rgb
        }
        other => return Some(Report::Format(other)),
    };
    let (width, height) = (info.width, info.height);
    let geo = Geometry { width, height, stride: info.stride, bytes_per_pixel: info.bytes_per_pixel, format };
    let screen = match Screen::new(geo, info.byte_len) {
        Ok(s) => s,
        Err(error) => return Some(Report::Unusable { width, height, error }),
    };
    let buf = fb.into_buffer();
    let (cols, rows) = screen.text_size();
    TEXT.lock().resize(cols, rows);
    let mut d = SCREEN.lock();
    screen.clear(&mut d.frame, buf);
    d.target = Some((screen, buf));
    drop(d);
    ON.store(true, Ordering::Release);
    Some(Report::Ready { width, height, format, cols, rows })
}

/// Whether Bastion's output reaches a screen.
pub fn active() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Adds printed bytes to the screen's text. Called by the serial console with its lock held.
pub fn put(bytes: &[u8]) {
    if ON.load(Ordering::Relaxed) {
        TEXT.lock().write(bytes);
        CHANGED.store(true, Ordering::Relaxed);
    }
}

/// [`put`] for the crash path: skips the screen rather than wait for a lock a dead CPU may
/// hold.
pub fn put_emergency(bytes: &[u8]) {
    if ON.load(Ordering::Relaxed) {
        if let Some(mut t) = TEXT.try_lock() {
            t.write(bytes);
            CHANGED.store(true, Ordering::Relaxed);
        }
    }
}

/// Draws what changed when the next frame is due (ten a second, fewer where drawing is
/// slow); returns at once if another CPU is drawing. Cheap when nothing changed.
pub fn refresh(now_ns: u64) {
    if !CHANGED.load(Ordering::Relaxed) || now_ns < NEXT_NS.load(Ordering::Relaxed) {
        return;
    }
    draw(now_ns);
}

/// Draws what changed now (before the machine halts, or a crash report).
pub fn refresh_now() {
    if CHANGED.load(Ordering::Relaxed) {
        draw(crate::time::now_ns());
    }
}

fn draw(now_ns: u64) {
    // No interrupt handler takes SCREEN (the crash path only tries it), so painting — up to
    // a hundred milliseconds under emulation — runs with interrupts on; only the text, which
    // printers hold with interrupts off, is taken with them off.
    let Some(mut guard) = SCREEN.try_lock() else { return };
    let d = &mut *guard;
    let Some((screen, fb)) = d.target.as_mut() else { return };
    // Until this frame is drawn no other is due.
    NEXT_NS.store(u64::MAX, Ordering::Relaxed);
    let taken = x86_64::instructions::interrupts::without_interrupts(|| {
        let Some(mut t) = TEXT.try_lock() else { return false };
        CHANGED.store(false, Ordering::Relaxed);
        t.take_frame(&mut d.frame);
        true
    });
    if !taken {
        NEXT_NS.store(now_ns, Ordering::Relaxed);
        return;
    }
    screen.draw(&mut d.frame, fb);
    let took = crate::time::now_ns().saturating_sub(now_ns);
    NEXT_NS.store(bastion_core::fbcon::next_frame_ns(now_ns, took), Ordering::Relaxed);
}
