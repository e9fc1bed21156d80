//! The framebuffer console: Bastion's own output (boot log, guest list, monitor) drawn as text
//! on the linear framebuffer the firmware set up and the bootloader handed over, for the person
//! at a machine whose COM1 is missing or unwatched. Guests' consoles stay on COM1 (like ESXi's
//! status screen, this is the host's console, not a guest's).
//!
//! Written by hand: no no_std crate keeps a scrolling text console on a raw framebuffer in the
//! bootloader's pixel formats. The glyphs come from `noto-sans-mono-bitmap` (the font the
//! bootloader itself draws with: one intensity byte per pixel, grey on black here).
//!
//! It is split for the kernel's sake. [`TextConsole`] takes bytes — cheap, done under the
//! serial console's lock by whoever prints — and hands out what changed as a [`Frame`];
//! [`Screen::draw`] moves and paints pixels (a full screen is megabytes: milliseconds under
//! emulation), done outside that lock a few times a second. Scrolling costs one move of the
//! framebuffer per drawn frame however many lines scrolled in between, and only rows whose
//! text changed are painted. [`read_text`] reads a drawn screen back into text (exact glyph
//! matching), for tests that check a screenshot.

use alloc::string::String;
use alloc::vec::Vec;
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const WEIGHT: FontWeight = FontWeight::Regular;
const HEIGHT: RasterHeight = RasterHeight::Size16;
/// A character cell's width in pixels (the font's advance: spacing included).
pub const CELL_W: usize = get_raster_width(WEIGHT, HEIGHT);
/// A character cell's height in pixels.
pub const CELL_H: usize = HEIGHT.val();
/// At most this many columns and rows are used (a 4K screen's top-left 2048x1536 pixels):
/// the text lives in fixed arrays, because the console starts before the heap does.
pub const MAX_COLS: usize = 256;
pub const MAX_ROWS: usize = 96;
const TAB: usize = 8;
/// An empty cell. NUL rather than a space so that the text arrays start as zeros: a static
/// console then lies in `.bss` instead of adding 300 KB of spaces to the kernel image (which
/// the BIOS loader reads slowly). It is drawn as a space.
const BLANK: char = '\0';
/// Ten frames a second: smooth enough to read a scrolling log.
pub const REFRESH_NS: u64 = 100_000_000;
/// A frame's drawing may take at most a tenth of the time until the next one.
const DRAW_SHARE: u64 = 10;

/// When the next frame may be drawn, for one started at `started_ns` that took `took_ns`:
/// every [`REFRESH_NS`], or less often where drawing is slow (a framebuffer behind an
/// emulator's device model), so the screen never takes more than a tenth of a CPU.
pub fn next_frame_ns(started_ns: u64, took_ns: u64) -> u64 {
    started_ns.saturating_add(REFRESH_NS.max(took_ns.saturating_mul(DRAW_SHARE)))
}

/// How a pixel's bytes are laid out (the bootloader's `PixelFormat` without `Unknown`, which
/// Bastion cannot draw on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Red, green, blue in bytes 0, 1, 2 (a fourth byte, if any, is reserved).
    Rgb,
    /// Blue, green, red.
    Bgr,
    /// One grey-scale byte.
    Grey,
}

/// The framebuffer as the bootloader describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    /// Pixels from the start of one row to the next (at least `width`).
    pub stride: usize,
    pub bytes_per_pixel: usize,
    pub format: PixelFormat,
}

/// Why a framebuffer cannot carry the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// Fewer pixels than one character cell.
    TooSmall { width: usize, height: usize },
    /// A row shorter than its visible width.
    Stride { width: usize, stride: usize },
    /// Fewer bytes per pixel than the format has components.
    PixelSize { format: PixelFormat, bytes_per_pixel: usize },
    /// The buffer ends before the last visible pixel.
    Short { need: usize, have: usize },
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooSmall { width, height } => write!(f, "{width}x{height} pixels hold no {CELL_W}x{CELL_H} character"),
            Self::Stride { width, stride } => write!(f, "stride {stride} pixels is less than the width {width}"),
            Self::PixelSize { format, bytes_per_pixel } => write!(f, "{bytes_per_pixel} bytes per pixel cannot hold {format:?}"),
            Self::Short { need, have } => write!(f, "the buffer has {have} bytes, the mode needs {need}"),
        }
    }
}

impl Geometry {
    /// Bytes of one pixel row.
    fn pitch(&self) -> usize {
        self.stride * self.bytes_per_pixel
    }

    /// Columns and rows of text this framebuffer of `byte_len` bytes shows.
    pub fn text_size(&self, byte_len: usize) -> Result<(usize, usize), GeometryError> {
        let (cols, rows) = (self.width / CELL_W, self.height / CELL_H);
        if cols == 0 || rows == 0 {
            return Err(GeometryError::TooSmall { width: self.width, height: self.height });
        }
        if self.stride < self.width {
            return Err(GeometryError::Stride { width: self.width, stride: self.stride });
        }
        let components = if self.format == PixelFormat::Grey { 1 } else { 3 };
        if self.bytes_per_pixel < components {
            return Err(GeometryError::PixelSize { format: self.format, bytes_per_pixel: self.bytes_per_pixel });
        }
        // The last row need not be padded to the stride.
        let need = (self.height - 1) * self.pitch() + self.width * self.bytes_per_pixel;
        if byte_len < need {
            return Err(GeometryError::Short { need, have: byte_len });
        }
        Ok((cols.min(MAX_COLS), rows.min(MAX_ROWS)))
    }
}

/// The character a glyph is drawn for: itself if the font has it, an ASCII stand-in for the
/// dashes Bastion's banner uses, otherwise U+FFFD.
pub fn glyph_char(c: char) -> char {
    match c {
        '\u{2013}' | '\u{2014}' => '-',
        c if get_raster(c, WEIGHT, HEIGHT).is_some() => c,
        _ => char::REPLACEMENT_CHARACTER,
    }
}

/// The text on the screen: a ring of lines, the cursor, and what changed since the last
/// [`Frame`].
pub struct TextConsole {
    cols: usize,
    rows: usize,
    /// Lines by ring index; screen row `r` shows line `(top + r) % rows`.
    cells: [[char; MAX_COLS]; MAX_ROWS],
    top: usize,
    /// Cursor: screen row and column. `col == cols` means the line is full and the next
    /// character wraps first (so a line of exactly `cols` characters leaves no empty line).
    row: usize,
    col: usize,
    /// Lines (by ring index) changed since the last frame.
    dirty: [bool; MAX_ROWS],
    /// Lines scrolled since the last frame (at most `rows`: more is a full redraw anyway).
    scrolled: usize,
    /// A UTF-8 sequence in progress: its bytes so far and how many it has in all.
    utf8: ([u8; 4], u8, u8),
}

impl TextConsole {
    /// An empty 0x0 console (it takes no text) until [`Self::resize`] gives it the screen's
    /// size.
    pub const fn new() -> Self {
        TextConsole {
            cols: 0,
            rows: 0,
            cells: [[BLANK; MAX_COLS]; MAX_ROWS],
            top: 0,
            row: 0,
            col: 0,
            dirty: [false; MAX_ROWS],
            scrolled: 0,
            utf8: ([0; 4], 0, 0),
        }
    }

    /// Empties the console and gives it `cols` x `rows` cells (clamped to 1..=MAX); every line
    /// is dirty, so the next frame paints the whole text area.
    pub fn resize(&mut self, cols: usize, rows: usize) {
        self.cols = cols.clamp(1, MAX_COLS);
        self.rows = rows.clamp(1, MAX_ROWS);
        // In place: the arrays are 100 KiB, too much for a temporary on a kernel stack.
        for line in self.cells.iter_mut() {
            line.fill(BLANK);
        }
        self.top = 0;
        self.row = 0;
        self.col = 0;
        self.dirty = [true; MAX_ROWS];
        self.scrolled = 0;
        self.utf8 = ([0; 4], 0, 0);
    }

    pub fn size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// The cursor (column, row).
    pub fn cursor(&self) -> (usize, usize) {
        (self.col.min(self.cols.saturating_sub(1)), self.row)
    }

    /// Takes output bytes: UTF-8 text, `\n` (new line), `\r` (column 0), backspace (one column
    /// left, as the monitor's line editor uses it), tab (the cursor to the next multiple of 8); other
    /// control bytes draw nothing.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.rows == 0 {
            return;
        }
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        let (mut seq, have, len) = self.utf8;
        if have > 0 {
            if b & 0xc0 == 0x80 {
                seq[usize::from(have)] = b;
                self.utf8 = (seq, have + 1, len);
                if have + 1 == len {
                    // core's decoder judges the sequence (overlong forms, surrogates and
                    // code points past U+10FFFF are errors, RFC 3629 section 3).
                    let c = core::str::from_utf8(&seq[..usize::from(len)]).ok().and_then(|s| s.chars().next());
                    self.utf8 = ([0; 4], 0, 0);
                    self.put(c.unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                return;
            }
            // A sequence cut short: mark it, then take this byte afresh.
            self.utf8 = ([0; 4], 0, 0);
            self.put(char::REPLACEMENT_CHARACTER);
        }
        match b {
            b'\n' => self.newline(),
            b'\r' => self.col = 0,
            0x08 => self.col = self.col.min(self.cols).saturating_sub(1),
            // As a terminal's tab: the cursor moves, what it passes over stays.
            b'\t' => self.col = ((self.col / TAB + 1) * TAB).min(self.cols),
            0x20..=0x7e => self.put(char::from(b)),
            // Lead bytes (RFC 3629 section 4): the sequence's length.
            0xc2..=0xdf => self.utf8 = ([b, 0, 0, 0], 1, 2),
            0xe0..=0xef => self.utf8 = ([b, 0, 0, 0], 1, 3),
            0xf0..=0xf4 => self.utf8 = ([b, 0, 0, 0], 1, 4),
            0x80..=0xff => self.put(char::REPLACEMENT_CHARACTER),
            _ => {}
        }
    }

    fn line(&self, row: usize) -> usize {
        (self.top + row) % self.rows
    }

    fn put(&mut self, c: char) {
        if self.col >= self.cols {
            self.newline();
        }
        let l = self.line(self.row);
        self.cells[l][self.col] = glyph_char(c);
        self.dirty[l] = true;
        self.col += 1;
    }

    fn newline(&mut self) {
        self.col = 0;
        if self.row + 1 < self.rows {
            self.row += 1;
            return;
        }
        // The top line leaves; it comes back, blank, as the bottom one.
        let l = self.top;
        self.top = (self.top + 1) % self.rows;
        self.cells[l].fill(BLANK);
        self.dirty[l] = true;
        self.scrolled = (self.scrolled + 1).min(self.rows);
    }

    /// The text of screen row `row` (none past the last), trailing blanks removed.
    pub fn row_text(&self, row: usize) -> String {
        if row >= self.rows {
            return String::new();
        }
        let s: String = self.cells[self.line(row)][..self.cols].iter().map(|&c| if c == BLANK { ' ' } else { c }).collect();
        String::from(s.trim_end())
    }

    /// Moves what changed since the last frame into `f` (which must then be drawn before the
    /// next one is taken: frames are deltas).
    pub fn take_frame(&mut self, f: &mut Frame) {
        f.cols = self.cols;
        f.rows = self.rows;
        f.scroll = self.scrolled;
        for r in 0..self.rows {
            let l = self.line(r);
            f.dirty[r] = self.dirty[l];
            if self.dirty[l] {
                f.cells[r][..self.cols].copy_from_slice(&self.cells[l][..self.cols]);
                self.dirty[l] = false;
            }
        }
        self.scrolled = 0;
    }
}

impl Default for TextConsole {
    fn default() -> Self {
        Self::new()
    }
}

/// What changed on the screen between two frames — first move the drawn text up `scroll`
/// lines, then bring the `dirty` rows (screen order) to their `cells` — and what the screen
/// shows, so that only cells whose character changed are painted (painting is what costs:
/// under Bochs a full 800x600 screen took 140 ms).
pub struct Frame {
    cols: usize,
    rows: usize,
    scroll: usize,
    dirty: [bool; MAX_ROWS],
    cells: [[char; MAX_COLS]; MAX_ROWS],
    /// The character drawn in each cell of the screen (blank after [`Screen::clear`]).
    shown: [[char; MAX_COLS]; MAX_ROWS],
}

impl Frame {
    pub const fn new() -> Self {
        Frame { cols: 0, rows: 0, scroll: 0, dirty: [false; MAX_ROWS], cells: [[BLANK; MAX_COLS]; MAX_ROWS], shown: [[BLANK; MAX_COLS]; MAX_ROWS] }
    }
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

/// Draws frames on one framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    geo: Geometry,
    cols: usize,
    rows: usize,
}

impl Screen {
    /// Checks the framebuffer (see [`Geometry::text_size`]).
    pub fn new(geo: Geometry, byte_len: usize) -> Result<Self, GeometryError> {
        let (cols, rows) = geo.text_size(byte_len)?;
        Ok(Screen { geo, cols, rows })
    }

    /// Columns and rows of text.
    pub fn text_size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// Blacks out every visible pixel (what the firmware and bootloader left there) and
    /// records the screen as blank in `f`.
    pub fn clear(&self, f: &mut Frame, fb: &mut [u8]) {
        let pitch = self.geo.pitch();
        let visible = self.geo.width * self.geo.bytes_per_pixel;
        for y in 0..self.geo.height {
            fb[y * pitch..y * pitch + visible].fill(0);
        }
        for line in f.shown.iter_mut() {
            line.fill(BLANK);
        }
    }

    /// Applies a frame taken from a console of this screen's size. A frame of another size
    /// (the console was not resized to this screen) draws nothing.
    pub fn draw(&self, f: &mut Frame, fb: &mut [u8]) {
        if (f.cols, f.rows) != (self.cols, self.rows) {
            return;
        }
        let line = CELL_H * self.geo.pitch();
        // Nothing to move without a scroll, nor after a screenful (every row is new).
        if (1..self.rows).contains(&f.scroll) {
            // Whole pixel rows: the stride's padding moves along, which is harmless; the last
            // one ends with the text (a buffer need not pad its last row). The bottom `scroll`
            // rows keep their pixels (and so their `shown` characters).
            let end = self.rows * line - self.geo.pitch() + self.cols * CELL_W * self.geo.bytes_per_pixel;
            fb.copy_within(f.scroll * line..end, 0);
            f.shown.copy_within(f.scroll..self.rows, 0);
        }
        for r in (0..self.rows).filter(|&r| f.dirty[r]) {
            for c in 0..self.cols {
                let ch = f.cells[r][c];
                if f.shown[r][c] != ch {
                    self.paint_cell(r, c, ch, fb);
                    f.shown[r][c] = ch;
                }
            }
        }
    }

    fn paint_cell(&self, row: usize, col: usize, c: char, fb: &mut [u8]) {
        let (bpp, pitch) = (self.geo.bytes_per_pixel, self.geo.pitch());
        let c = if c == BLANK { ' ' } else { c };
        let Some(glyph) = get_raster(c, WEIGHT, HEIGHT) else { return };
        for (y, pixels) in glyph.rows().enumerate() {
            let start = (row * CELL_H + y) * pitch + col * CELL_W * bpp;
            let dst = &mut fb[start..start + CELL_W * bpp];
            // Grey: the same intensity in each colour component, so RGB and BGR agree; a
            // fourth byte is reserved (0).
            match (self.geo.format, bpp) {
                (PixelFormat::Grey, 1) => dst.copy_from_slice(pixels),
                (PixelFormat::Rgb | PixelFormat::Bgr, 4) => {
                    for (px, &v) in dst.chunks_exact_mut(4).zip(pixels) {
                        px.copy_from_slice(&(u32::from(v) * 0x01_0101).to_le_bytes());
                    }
                }
                (format, _) => {
                    let n = if format == PixelFormat::Grey { 1 } else { 3 };
                    for (px, &v) in dst.chunks_exact_mut(bpp).zip(pixels) {
                        for (i, b) in px.iter_mut().enumerate() {
                            *b = if i < n { v } else { 0 };
                        }
                    }
                }
            }
        }
    }
}

/// Reads text back from a drawn screen of `cols` x `rows` cells whose pixel intensity at (x, y)
/// is `pixel(x, y)`: each cell is matched exactly against the font's printable ASCII glyphs
/// (and U+FFFD); a cell that matches none reads as `\u{1}`. Lines lose trailing blanks.
pub fn read_text(pixel: impl Fn(usize, usize) -> u8, cols: usize, rows: usize) -> Vec<String> {
    let candidates: Vec<(char, &'static [u8])> = (0x20u8..=0x7e)
        .map(char::from)
        .chain([char::REPLACEMENT_CHARACTER])
        .filter_map(|c| get_raster(c, WEIGHT, HEIGHT).map(|g| (c, g.pixels())))
        .collect();
    let mut cell = [0u8; CELL_W * CELL_H];
    (0..rows)
        .map(|r| {
            let s: String = (0..cols)
                .map(|c| {
                    for (i, v) in cell.iter_mut().enumerate() {
                        *v = pixel(c * CELL_W + i % CELL_W, r * CELL_H + i / CELL_W);
                    }
                    candidates.iter().find(|(_, g)| *g == cell).map_or('\u{1}', |&(ch, _)| ch)
                })
                .collect();
            String::from(s.trim_end())
        })
        .collect()
}

#[cfg(test)]
mod tests;
