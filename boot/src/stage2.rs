//! A fix, applied to every BIOS image, for a bug in the `bootloader` crate's BIOS stage 2
//! (0.11.15, pinned): it loads its GDT once, when it starts, and far-jumps through GDTR to
//! stage 3 after hundreds of INT 13h disk reads. A BIOS that copies with INT 15h AH=87h — or a
//! disk emulator such as syslinux's MEMDISK, which is how a BIOS host boots a disk image over
//! the network (PXELINUX → MEMDISK → this image) — loads its own GDT to do so and leaves it in
//! GDTR. Stage 2's `ljmp $0x8` then takes selector 8 from that table (in MEMDISK's, a data
//! segment): #GP, double fault, triple fault, and the host resets before Bastion says a word.
//!
//! The rule: after setting CR0.PE, the far jump that reloads CS reads the descriptor from the
//! table GDTR points at *then* (Intel SDM Vol. 3A 10.9.1 "Switching to Protected Mode", steps
//! 2–4: LGDT, set PE, far JMP), so the table must be loaded right before it, not once at the
//! start of a program that calls firmware in between.
//!
//! The fix reloads stage 2's own GDT in the few instructions before the jump. Written by hand
//! because no crate does it and the stage is built by the pinned crate's build script (it
//! cannot take a source patch): the code before the jump is re-encoded shorter, to the same
//! effect, with `lgdt` added, and the jump itself stays where it was, so nothing after it
//! moves. Every byte is matched before it is changed; a stage 2 compiled differently (another
//! toolchain) is left alone and reported, never guessed at.

use std::fmt;

/// Where the boot sector loads stage 2 (the first partition, whole): the sector after itself
/// (`boot-sector-link.ld` and `stage-2-link.ld`: `0x7c00 + 512`).
const STAGE2_LOAD: u32 = 0x7e00;

/// Stage 2's GDT (`GdtProtectedMode`): null, then flat 4 GiB code and data, both present,
/// DPL 0, 32-bit, 4 KiB granular (SDM Vol. 3A 3.4.5, Figure 3-8). Little-endian bytes of
/// 0, 0x00cf9a000000ffff, 0x00cf92000000ffff.
const GDT: [u8; 24] = [
    0, 0, 0, 0, 0, 0, 0, 0, //
    0xff, 0xff, 0, 0, 0, 0x9a, 0xcf, 0, //
    0xff, 0xff, 0, 0, 0, 0x92, 0xcf, 0,
];

/// `enter_protected_mode_and_jump_to_stage_3` as compiled (16-bit code): `cli; mov eax, cr0;
/// or eax, 1; mov cr0, eax; mov eax, 0x100000 (stage 3); and esp, 0xffffff00; push edx (the
/// BiosInfo); push eax; ljmp 0x8:` — the 4 bytes of the jump's target follow.
const BEFORE: [u8; 29] = [
    0xfa, // cli
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0x66, 0x83, 0xc8, 0x01, // or eax, 1
    0x0f, 0x22, 0xc0, // mov cr0, eax
    0x66, 0xb8, 0x00, 0x00, 0x10, 0x00, // mov eax, 0x100000
    0x66, 0x81, 0xe4, 0x00, 0xff, 0xff, 0xff, // and esp, 0xffffff00
    0x66, 0x52, // push edx
    0x66, 0x50, // push eax
    0xea, // ljmp ptr16:16
];

/// What follows the jump (32-bit code, its target): `mov eax, 0x10; mov ds/es/ss, ax; pop ecx;
/// call ecx` (stage 3, which never returns), then two loops nothing jumps to but themselves:
/// `jmp $` after the call and `hlt; jmp` after the function. The patch keeps the GDT's pointer
/// in their 5 bytes.
const AFTER: [u8; 20] = [
    0xb8, 0x10, 0x00, 0x00, 0x00, // mov eax, 0x10
    0x8e, 0xd8, // mov ds, ax
    0x8e, 0xc0, // mov es, ax
    0x8e, 0xd0, // mov ss, ax
    0x59, // pop ecx
    0xff, 0xd1, // call ecx
    0xeb, 0xfe, // 1: jmp 1b
    0xf4, // 2: hlt
    0xeb, 0xfd, // jmp 2b
    0x66, // (the next function; not changed)
];

/// Offset in [`AFTER`] of the unreachable loops that hold the pointer.
const POINTER_AT: usize = 14;

/// What [`patch_bios_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patched {
    /// The jump at this (linear) address now has stage 2's GDT loaded right before it.
    Now { jump: u32, gdt: u32 },
    /// The image had the fix already.
    Already,
}

/// Why an image was left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPatched {
    NoPartitionTable,
    /// The first partition (stage 2) lies outside the image.
    Stage2OutOfImage { lba: u32, sectors: u32 },
    /// The GDT or the jump's code is not there exactly once (`what`, and how many were found).
    Pattern { what: &'static str, found: usize },
    /// The GDT lies where a 16-bit LGDT cannot point (its base has 24 bits).
    GdtTooHigh(u32),
    /// The jump does not land right after itself through selector 8 (not the code we know).
    Jump { target: u16, selector: u16 },
}

impl fmt::Display for NotPatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPatched::NoPartitionTable => write!(f, "no MBR boot signature"),
            NotPatched::Stage2OutOfImage { lba, sectors } => {
                write!(f, "stage 2's partition (LBA {lba}, {sectors} sectors) lies outside the image")
            }
            NotPatched::Pattern { what, found } => write!(f, "stage 2 holds {what} {found} times, not once"),
            NotPatched::GdtTooHigh(a) => write!(f, "stage 2's GDT at {a:#x} is above 16 MiB"),
            NotPatched::Jump { target, selector } => {
                write!(f, "the far jump goes to {selector:#x}:{target:#x}, not through selector 8 to the next instruction")
            }
        }
    }
}

/// The indexes where `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
}

/// The replacement for [`BEFORE`] and the jump's 4 bytes, same length, the jump at the same
/// place: `nop; nop; cli; lgdt [pointer]; mov eax, cr0; or al, 1; mov cr0, eax; and sp,
/// 0xff00; push edx; push dword 0x100000; ljmp 0x8:target`. `and sp` clears the same bits as
/// `and esp` (ESP's top half is untouched by both); `push dword imm` pushes what `mov eax` and
/// `push eax` did (EAX is dead: the target reloads it). A 16-bit LGDT takes a 16-bit limit and
/// a 24-bit base from 5 bytes (SDM Vol. 2A, LGDT/LIDT).
fn replacement(pointer: u16, target: u16) -> [u8; 33] {
    let [p0, p1] = pointer.to_le_bytes();
    let [t0, t1] = target.to_le_bytes();
    [
        0x90, 0x90, // nop; nop
        0xfa, // cli
        0x0f, 0x01, 0x16, p0, p1, // lgdt [pointer]
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x0c, 0x01, // or al, 1
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0x81, 0xe4, 0x00, 0xff, // and sp, 0xff00
        0x66, 0x52, // push edx
        0x66, 0x68, 0x00, 0x00, 0x10, 0x00, // push dword 0x100000
        0xea, t0, t1, 0x08, 0x00, // ljmp 0x8:target
    ]
}

/// Applies the fix to a whole BIOS disk image made by the `bootloader` crate.
pub fn patch_bios_image(image: &mut [u8]) -> Result<Patched, NotPatched> {
    if image.len() < 512 || image[510..512] != [0x55, 0xaa] {
        return Err(NotPatched::NoPartitionTable);
    }
    // The first entry of the MBR partition table (offset 446): LBA at +8, sectors at +12.
    let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
    let (lba, sectors) = (word(446 + 8), word(446 + 12));
    let start = lba as usize * 512;
    let end = start + sectors as usize * 512;
    if lba == 0 || end > image.len() {
        return Err(NotPatched::Stage2OutOfImage { lba, sectors });
    }
    let stage = &mut image[start..end];
    let once = |what: &'static str, hits: Vec<usize>| match hits[..] {
        [at] => Ok(at),
        _ => Err(NotPatched::Pattern { what, found: hits.len() }),
    };
    let gdt = STAGE2_LOAD + once("its GDT", find_all(stage, &GDT))? as u32;
    if gdt >= 1 << 24 {
        return Err(NotPatched::GdtTooHigh(gdt));
    }
    let jump_code = find_all(stage, &BEFORE);
    if jump_code.is_empty() && !find_all(stage, &replacement(0, 0)[8..29]).is_empty() {
        return Ok(Patched::Already);
    }
    let at = once("the jump to stage 3", jump_code)?;
    let after = at + BEFORE.len() + 4;
    let half = |i: usize| u16::from_le_bytes([stage[i], stage[i + 1]]);
    let (target, selector) = (half(at + BEFORE.len()), half(at + BEFORE.len() + 2));
    if selector != 8 || u32::from(target) != STAGE2_LOAD + after as u32 {
        return Err(NotPatched::Jump { target, selector });
    }
    if stage.get(after..after + AFTER.len()) != Some(&AFTER[..]) {
        return Err(NotPatched::Pattern { what: "the jump's target code", found: 0 });
    }
    let pointer = STAGE2_LOAD + (after + POINTER_AT) as u32;
    // Real-mode code runs with DS = 0 and 16-bit offsets: the pointer must be below 64 KiB.
    let Ok(pointer16) = u16::try_from(pointer) else {
        return Err(NotPatched::Pattern { what: "the jump below 64 KiB", found: 0 });
    };
    // A 16-bit limit (3 descriptors: 23) and the 24-bit base.
    let limit = (GDT.len() as u16 - 1).to_le_bytes();
    let base = gdt.to_le_bytes();
    stage[after + POINTER_AT..after + POINTER_AT + 5].copy_from_slice(&[limit[0], limit[1], base[0], base[1], base[2]]);
    stage[at..after].copy_from_slice(&replacement(pointer16, target));
    Ok(Patched::Now { jump: STAGE2_LOAD + (after - 5) as u32, gdt })
}

#[cfg(test)]
mod tests;
