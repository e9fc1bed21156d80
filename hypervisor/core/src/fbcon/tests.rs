use super::*;
use alloc::boxed::Box;
use alloc::vec;

/// A framebuffer in memory; padding bytes (stride beyond width, the 4th byte) start as 0xAA so
/// a test sees whether drawing touched them.
struct Fb {
    geo: Geometry,
    bytes: Vec<u8>,
}

impl Fb {
    fn new(width: usize, height: usize, stride: usize, bytes_per_pixel: usize, format: PixelFormat) -> Fb {
        let geo = Geometry { width, height, stride, bytes_per_pixel, format };
        Fb { geo, bytes: vec![0xaa; stride * height * bytes_per_pixel] }
    }

    fn intensity(&self, x: usize, y: usize) -> u8 {
        self.bytes[y * self.geo.stride * self.geo.bytes_per_pixel + x * self.geo.bytes_per_pixel]
    }

    fn text(&self, s: &Screen) -> Vec<String> {
        let (cols, rows) = s.text_size();
        read_text(|x, y| self.intensity(x, y), cols, rows)
    }
}

/// A console sized for `s`, its screen cleared and drawn once.
fn setup(fb: &mut Fb) -> (Screen, Box<TextConsole>, Box<Frame>) {
    let s = Screen::new(fb.geo, fb.bytes.len()).unwrap();
    let mut c = Box::new(TextConsole::new());
    let (cols, rows) = s.text_size();
    c.resize(cols, rows);
    let mut f = Box::new(Frame::new());
    s.clear(&mut f, &mut fb.bytes);
    c.take_frame(&mut f);
    s.draw(&mut f, &mut fb.bytes);
    (s, c, f)
}

fn draw(c: &mut TextConsole, f: &mut Frame, s: &Screen, fb: &mut Fb) {
    c.take_frame(f);
    s.draw(f, &mut fb.bytes);
}

/// 10 columns, 4 rows of BGR pixels, 4 bytes each, rows padded by 3 pixels.
fn small() -> Fb {
    Fb::new(10 * CELL_W + 5, 4 * CELL_H + 7, 10 * CELL_W + 8, 4, PixelFormat::Bgr)
}

#[test]
fn the_font_is_a_monospace_grid_whose_printable_ascii_glyphs_differ() {
    // Reading a screenshot back relies on this: one glyph per cell, no two alike.
    let glyphs: Vec<_> = (0x20u8..=0x7e).map(|b| get_raster(char::from(b), WEIGHT, HEIGHT).unwrap()).collect();
    for g in &glyphs {
        assert_eq!((g.width(), g.height()), (CELL_W, CELL_H));
    }
    for (i, a) in glyphs.iter().enumerate() {
        for b in &glyphs[i + 1..] {
            assert_ne!(a.pixels(), b.pixels());
        }
    }
    assert!((6..=10).contains(&CELL_W) && CELL_H == 16, "{CELL_W}x{CELL_H}");
}

#[test]
fn geometry_gives_whole_cells_and_refuses_what_it_cannot_draw_on() {
    let g = Geometry { width: 1280, height: 720, stride: 1280, bytes_per_pixel: 4, format: PixelFormat::Bgr };
    assert_eq!(g.text_size(1280 * 720 * 4), Ok((1280 / CELL_W, 45)));
    // The last row need not be padded to the stride.
    let padded = Geometry { stride: 1300, ..g };
    assert_eq!(padded.text_size(1300 * 719 * 4 + 1280 * 4), Ok((1280 / CELL_W, 45)));
    assert_eq!(padded.text_size(1300 * 719 * 4 + 1280 * 4 - 1), Err(GeometryError::Short { need: 1300 * 719 * 4 + 1280 * 4, have: 1300 * 719 * 4 + 1280 * 4 - 1 }));
    assert_eq!(Geometry { stride: 1279, ..g }.text_size(usize::MAX), Err(GeometryError::Stride { width: 1280, stride: 1279 }));
    assert_eq!(Geometry { width: CELL_W - 1, ..g }.text_size(usize::MAX), Err(GeometryError::TooSmall { width: CELL_W - 1, height: 720 }));
    assert_eq!(Geometry { height: CELL_H - 1, ..g }.text_size(usize::MAX), Err(GeometryError::TooSmall { width: 1280, height: CELL_H - 1 }));
    assert_eq!(Geometry { width: CELL_W, height: CELL_H, stride: CELL_W, ..g }.text_size(CELL_W * CELL_H * 4), Ok((1, 1)));
    // RGB needs three bytes a pixel; grey one.
    assert_eq!(Geometry { bytes_per_pixel: 2, ..g }.text_size(usize::MAX), Err(GeometryError::PixelSize { format: PixelFormat::Bgr, bytes_per_pixel: 2 }));
    assert_eq!(Geometry { bytes_per_pixel: 3, format: PixelFormat::Rgb, ..g }.text_size(1280 * 720 * 3), Ok((1280 / CELL_W, 45)));
    assert_eq!(Geometry { bytes_per_pixel: 1, format: PixelFormat::Grey, ..g }.text_size(1280 * 720), Ok((1280 / CELL_W, 45)));
    assert_eq!(Geometry { bytes_per_pixel: 0, format: PixelFormat::Grey, ..g }.text_size(usize::MAX), Err(GeometryError::PixelSize { format: PixelFormat::Grey, bytes_per_pixel: 0 }));
    // A screen larger than the text arrays uses its top-left part.
    let huge = Geometry { width: 4096, height: 2160, stride: 4096, ..g };
    assert_eq!(huge.text_size(4096 * 2160 * 4), Ok((MAX_COLS, MAX_ROWS)));
    assert_eq!(GeometryError::Short { need: 10, have: 4 }.to_string(), "the buffer has 4 bytes, the mode needs 10");
}

#[test]
fn text_written_is_read_back_from_the_pixels() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    assert_eq!(s.text_size(), (10, 4));
    c.write(b"Bastion\nok: 1 ~|}\n");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["Bastion", "ok: 1 ~|}", "", ""]);
    assert_eq!(c.row_text(0), "Bastion");
    assert_eq!(c.cursor(), (0, 2));
}

#[test]
fn drawing_touches_only_the_visible_pixels_and_grey_needs_no_colour_order() {
    for (bpp, format) in [(4, PixelFormat::Bgr), (4, PixelFormat::Rgb), (3, PixelFormat::Rgb), (5, PixelFormat::Bgr), (1, PixelFormat::Grey), (2, PixelFormat::Grey)] {
        let mut fb = Fb::new(3 * CELL_W, 2 * CELL_H, 3 * CELL_W + 2, bpp, format);
        let (s, mut c, mut f) = setup(&mut fb);
        // A line of exactly `cols` characters does not leave an empty line after it.
        c.write(b"#@#\nW");
        draw(&mut c, &mut f, &s, &mut fb);
        assert_eq!(fb.text(&s), ["#@#", "W"], "{format:?}");
        let pitch = fb.geo.stride * bpp;
        for y in 0..fb.geo.height {
            for x in 0..fb.geo.stride {
                let px = &fb.bytes[y * pitch + x * bpp..y * pitch + (x + 1) * bpp];
                if x >= fb.geo.width {
                    assert!(px.iter().all(|&b| b == 0xaa), "padding at ({x}, {y}) drawn on: {px:?}");
                } else if format == PixelFormat::Grey {
                    // One intensity byte; any further bytes of the pixel 0.
                    assert!(px[1..].iter().all(|&b| b == 0), "{format:?}/{bpp} ({x}, {y}): {px:?}");
                } else {
                    // Grey: every colour component the same; further bytes (reserved) 0.
                    assert!(px[0] == px[1] && px[1] == px[2], "{format:?} ({x}, {y}): {px:?}");
                    assert!(px[3..].iter().all(|&b| b == 0), "{format:?}/{bpp} ({x}, {y}): {px:?}");
                }
            }
        }
    }
}

#[test]
fn long_lines_wrap_and_control_bytes_move_the_cursor_as_a_terminal_does() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    c.write(b"0123456789abcdefghijKL\n");
    // \r: column 0; backspace: one left (the line editor's erase is "\x08 \x08"); tab: next
    // multiple of 8, over what is there; a bell, ESC and DEL draw nothing.
    c.write(b"xyz\rA\x08B\tC\x07\x1b\x7f");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["0123456789", "abcdefghij", "KL", "Byz     C"]);
    // Backspace stops at column 0; a tab at the last stop fills the line without wrapping.
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    c.write(b"\x08\x08q\rab\x08\x08\x08c\n12345678\tZ");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["cb", "12345678", "Z", ""]);
    assert_eq!(c.cursor(), (1, 2));
    // A full line's cursor stays in the last column until the next character wraps.
    c.write(b"\r0123456789");
    assert_eq!(c.cursor(), (9, 2));
    c.write(b"!");
    assert_eq!(c.cursor(), (1, 3));
}

#[test]
fn utf8_is_decoded_and_what_the_font_lacks_is_marked() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    // The banner's em dash reads as '-'; é (not in the font's Basic Latin) as U+FFFD.
    c.write("a\u{2014}b\u{2013}é\n".as_bytes());
    // A cut sequence is marked and the byte that cut it is kept; a lone continuation byte,
    // C0/C1 (overlong leads) and F5..FF (beyond U+10FFFF) are marked.
    c.write(b"\xe2\x80A\x80\xc0\xf5\xff\n");
    // A 4-byte sequence (U+1F600, not in the font).
    c.write(b"\xf0\x9f\x98\x80z");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["a-b-\u{fffd}", "\u{fffd}A\u{fffd}\u{fffd}\u{fffd}\u{fffd}", "\u{fffd}z", ""]);
    // A sequence takes exactly as many continuation bytes as its lead says (RFC 3629): one
    // more is a stray, marked on its own. An overlong form (E0 80 80 for U+0000) and a
    // surrogate (ED A0 80) are errors, marked once.
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    c.write(b"\xc3\xa9\x80|\xe2\x80\x94\x80|\xf0\x9f\x98\x80\x80\n\xe0\x80\x80|\xed\xa0\x80|");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s)[..2], ["\u{fffd}\u{fffd}|-\u{fffd}|\u{fffd}\u{fffd}", "\u{fffd}|\u{fffd}|"]);
    assert_eq!(glyph_char('x'), 'x');
    assert_eq!(glyph_char('\u{20ac}'), char::REPLACEMENT_CHARACTER);
}

/// A deterministic byte stream of printable text, newlines, tabs and control bytes.
fn stream(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            match (x >> 33) % 20 {
                0..=2 => b'\n',
                3 => b'\t',
                4 => b'\r',
                5 => 0x08,
                _ => 0x20 + ((x >> 40) % 95) as u8,
            }
        })
        .collect()
}

#[test]
fn a_screen_drawn_frame_by_frame_equals_one_drawn_once_from_the_same_text() {
    // Scrolling moves the pixels already drawn and repaints only the changed rows; whatever
    // the frames were, the result must be the pixels of the final text drawn from scratch.
    for seed in 0..40u64 {
        let bytes = stream(seed, 600);
        let mut fb = small();
        let (s, mut c, mut f) = setup(&mut fb);
        let mut at = 0;
        let mut k = seed;
        while at < bytes.len() {
            // Chunks from 1 byte up to several screens' worth of lines between two frames.
            k = k.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
            let n = 1 + (k >> 33) as usize % 90;
            let end = (at + n).min(bytes.len());
            c.write(&bytes[at..end]);
            draw(&mut c, &mut f, &s, &mut fb);
            at = end;
        }
        let mut once = small();
        let (s2, mut c2, mut f2) = setup(&mut once);
        c2.write(&bytes);
        draw(&mut c2, &mut f2, &s2, &mut once);
        assert!(fb.bytes == once.bytes, "seed {seed}: incremental drawing differs");
        let text: Vec<String> = (0..4).map(|r| c.row_text(r)).collect();
        assert_eq!(fb.text(&s), text, "seed {seed}");
    }
}

#[test]
fn scrolling_keeps_the_newest_lines_in_order() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    for i in 0..6 {
        c.write(format!("line {i}\n").as_bytes());
    }
    // Six lines and the cursor's empty one on four rows: the last three stay.
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["line 3", "line 4", "line 5", ""]);
    // One more line between frames: the drawn text moves up one row.
    c.write(b"line 6\n");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["line 4", "line 5", "line 6", ""]);
    // Exactly a screenful (4 lines) and more than one between frames.
    c.write(b"a\nb\nc\nd\n");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["b", "c", "d", ""]);
    c.write(b"e\nf\ng\nh\ni\nj\nk");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!(fb.text(&s), ["h", "i", "j", "k"]);
}

#[test]
fn a_frame_for_another_size_draws_nothing_and_clear_keeps_the_padding() {
    let mut fb = small();
    let (s, _, _) = setup(&mut fb);
    let before = fb.bytes.clone();
    let mut c = Box::new(TextConsole::new());
    c.resize(9, 4);
    c.write(b"xxxxxxxxx");
    let mut f = Box::new(Frame::new());
    c.take_frame(&mut f);
    s.draw(&mut f, &mut fb.bytes);
    assert!(fb.bytes == before);
    // resize clamps to the arrays' bounds and to at least one cell.
    c.resize(0, 10_000);
    assert_eq!(c.size(), (1, MAX_ROWS));
    c.resize(10_000, 0);
    assert_eq!(c.size(), (MAX_COLS, 1));
    // Clearing blacks out the visible pixels only.
    let mut fb = small();
    let s = Screen::new(fb.geo, fb.bytes.len()).unwrap();
    s.clear(&mut f, &mut fb.bytes);
    let pitch = fb.geo.stride * 4;
    for y in 0..fb.geo.height {
        assert!(fb.bytes[y * pitch..y * pitch + fb.geo.width * 4].iter().all(|&b| b == 0));
        assert!(fb.bytes[y * pitch + fb.geo.width * 4..(y + 1) * pitch].iter().all(|&b| b == 0xaa));
    }
    assert_eq!(Screen::new(Geometry { width: 1, ..fb.geo }, fb.bytes.len()), Err(GeometryError::TooSmall { width: 1, height: fb.geo.height }));
}

#[test]
fn a_buffer_that_ends_with_the_last_visible_pixel_scrolls_within_it() {
    // Geometry::text_size accepts a last row not padded to the stride; moving the text must
    // stay inside such a buffer (height a whole number of cells, stride wider than the width).
    let (w, h, stride) = (4 * CELL_W, 3 * CELL_H, 4 * CELL_W + 3);
    let len = (h - 1) * stride * 4 + w * 4;
    let mut fb = Fb { geo: Geometry { width: w, height: h, stride, bytes_per_pixel: 4, format: PixelFormat::Bgr }, bytes: vec![0xaa; len] };
    let (s, mut c, mut f) = setup(&mut fb);
    for i in 0..7 {
        c.write(format!("r{i}\n").as_bytes());
        draw(&mut c, &mut f, &s, &mut fb);
    }
    assert_eq!(fb.text(&s), ["r5", "r6", ""]);
}

#[test]
fn a_console_before_its_size_is_known_takes_nothing() {
    let mut c = Box::new(TextConsole::new());
    assert_eq!(c.size(), (0, 0));
    c.write(b"lost\n");
    assert_eq!((c.cursor(), c.row_text(0)), ((0, 0), String::new()));
    let mut f = Box::new(Frame::new());
    c.take_frame(&mut f);
    c.resize(5, 2);
    c.write(b"ab");
    assert_eq!((c.row_text(0), c.row_text(1), c.row_text(2)), ("ab".into(), String::new(), String::new()));
}

#[test]
fn a_cell_that_is_no_glyph_reads_as_unknown() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    c.write(b"AB");
    draw(&mut c, &mut f, &s, &mut fb);
    // One pixel of the 'B' changed.
    let x = CELL_W + CELL_W / 2;
    let i = (CELL_H / 2) * fb.geo.stride * 4 + x * 4;
    fb.bytes[i] ^= 0x55;
    assert_eq!(fb.text(&s)[0], "A\u{1}");
}

#[test]
fn frames_come_every_tenth_of_a_second_or_slower_when_drawing_is_slow() {
    assert_eq!(REFRESH_NS, 100_000_000);
    // A 1 ms frame: the next 100 ms after this one started.
    assert_eq!(next_frame_ns(5_000_000_000, 1_000_000), 5_100_000_000);
    assert_eq!(next_frame_ns(5_000_000_000, 10_000_000), 5_100_000_000);
    // A 140 ms frame (Bochs, full screen): 1.4 s, so drawing takes a tenth of one CPU.
    assert_eq!(next_frame_ns(5_000_000_000, 140_000_000), 6_400_000_000);
    assert_eq!(next_frame_ns(u64::MAX - 5, 1), u64::MAX);
    assert_eq!(next_frame_ns(0, u64::MAX), u64::MAX);
}

#[test]
fn only_cells_whose_character_changed_are_painted() {
    let mut fb = small();
    let (s, mut c, mut f) = setup(&mut fb);
    c.write(b"ab");
    draw(&mut c, &mut f, &s, &mut fb);
    // Mark a pixel of the 'a' and of a blank cell, then write the same text over them: the
    // row is dirty but its characters did not change, so the marks stay.
    let pitch = fb.geo.stride * 4;
    let (a, blank) = (3 * pitch + 2 * 4, 3 * pitch + (5 * CELL_W + 2) * 4);
    fb.bytes[a] = 0x42;
    fb.bytes[blank] = 0x42;
    c.write(b"\rab   ");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_eq!((fb.bytes[a], fb.bytes[blank]), (0x42, 0x42));
    // A changed character is painted whole.
    c.write(b"\rX");
    draw(&mut c, &mut f, &s, &mut fb);
    assert_ne!(fb.bytes[a], 0x42);
    // (The marked blank cell was never repainted: it reads as no glyph.)
    assert_eq!(fb.text(&s)[0], "Xb   \u{1}");
}
