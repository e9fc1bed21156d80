use super::*;

/// Where the synthetic stage puts the jump's code and the GDT (the real stage 2 of 0.11.15:
/// the jump at 0x982e, the GDT at 0x13e14, above 64 KiB as here).
const CODE_AT: usize = 0x1a12;
const GDT_AT: usize = 0xc014;

/// A disk image as the bootloader lays it out: MBR (partition 0 = stage 2 at LBA 1), then a
/// stage of `sectors` sectors holding the jump's code and the GDT.
fn image(sectors: u32) -> Vec<u8> {
    let mut img = vec![0u8; 512 * (1 + sectors as usize) + 4096];
    img[510] = 0x55;
    img[511] = 0xaa;
    img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    let stage = &mut img[512..];
    // Filler that is neither pattern, so that "exactly once" is tested against noise.
    for (i, b) in stage.iter_mut().take(sectors as usize * 512).enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    stage[CODE_AT..CODE_AT + BEFORE.len()].copy_from_slice(&BEFORE);
    let target = (0x7e00 + CODE_AT + BEFORE.len() + 4) as u16;
    stage[CODE_AT + BEFORE.len()..][..4].copy_from_slice(&[target as u8, (target >> 8) as u8, 8, 0]);
    stage[CODE_AT + BEFORE.len() + 4..][..AFTER.len()].copy_from_slice(&AFTER);
    stage[GDT_AT..GDT_AT + 24].copy_from_slice(&GDT);
    img
}

const SECTORS: u32 = 0xd000 / 512;

#[test]
fn the_gdt_is_loaded_right_before_the_far_jump_and_the_jump_does_not_move() {
    // SDM Vol. 3A 10.9.1: LGDT, set CR0.PE, far JMP — the jump reads selector 8 from the
    // table loaded then.
    let orig = image(SECTORS);
    let mut img = orig.clone();
    let jump = (0x7e00 + CODE_AT + BEFORE.len() - 1) as u32;
    let gdt = (0x7e00 + GDT_AT) as u32;
    assert_eq!(patch_bios_image(&mut img), Ok(Patched::Now { jump, gdt }));
    let stage = &img[512..];
    let code = &stage[CODE_AT..CODE_AT + 33];
    // The jump: same place (the last 5 bytes of the block), same target, selector 8.
    assert_eq!(code[28..], orig[512 + CODE_AT + 28..512 + CODE_AT + 33]);
    assert_eq!(code[28], 0xea);
    // cli, then LGDT m16&24 (0F 01 /2, ModRM 0x16 = [disp16]) before CR0.PE is set (0F 22 C0).
    let lgdt = code.windows(3).position(|w| w == [0x0f, 0x01, 0x16]).expect("an lgdt");
    let set_pe = code.windows(3).position(|w| w == [0x0f, 0x22, 0xc0]).expect("mov cr0, eax");
    assert!(code[..lgdt].contains(&0xfa), "interrupts off first");
    assert!(lgdt < set_pe);
    // Its operand: limit 23 (three descriptors) and the GDT's linear address (24 bits).
    let pointer = u16::from_le_bytes([code[lgdt + 3], code[lgdt + 4]]) as usize - 0x7e00;
    let g = gdt.to_le_bytes();
    assert_eq!(stage[pointer..pointer + 5], [23, 0, g[0], g[1], g[2]]);
    assert_eq!(stage[gdt as usize - 0x7e00..][..24], GDT);
    // Only the block and the pointer's 5 bytes (in the loops after `call`) changed.
    let changed: Vec<usize> = (0..img.len()).filter(|&i| img[i] != orig[i]).collect();
    let block = 512 + CODE_AT..512 + CODE_AT + 33;
    let ptr = 512 + pointer..512 + pointer + 5;
    assert!(changed.iter().all(|i| block.contains(i) || ptr.contains(i)), "{changed:x?}");
    assert_eq!(ptr.start, 512 + CODE_AT + 33 + POINTER_AT);
}

#[test]
fn the_new_code_has_the_old_effect_in_the_sdm_encodings() {
    // The replacement, instruction by instruction (SDM Vol. 2, opcode tables, 16-bit code):
    // 0C ib OR AL,imm8 (CR0.PE is bit 0); 81 /4 iw AND r/m16,imm16 with ModRM E4 (mod 11,
    // reg 4, rm 4 = SP); 66 68 id PUSH imm32 (operand-size prefix); EA iw iw JMP ptr16:16.
    let r = replacement(0x1234, 0x9833);
    assert_eq!(r.len(), BEFORE.len() + 4, "the jump stays where it was");
    assert_eq!(r[3..8], [0x0f, 0x01, 0x16, 0x34, 0x12]);
    assert_eq!(r[11..13], [0x0c, 0x01]);
    assert_eq!(r[16..20], [0x81, 0xe4, 0x00, 0xff]);
    assert_eq!(r[22..28], [0x66, 0x68, 0x00, 0x00, 0x10, 0x00], "stage 3's address, 0x100000");
    assert_eq!(r[28..], [0xea, 0x33, 0x98, 0x08, 0x00]);
    // The values pushed are the ones the original pushed, in its order: edx, then stage 3.
    assert_eq!(BEFORE[12..17], [0xb8, 0x00, 0x00, 0x10, 0x00]);
    assert_eq!(BEFORE[24..28], [0x66, 0x52, 0x66, 0x50]);
}

#[test]
fn a_patched_image_is_recognised_and_left_alone() {
    let mut img = image(SECTORS);
    patch_bios_image(&mut img).unwrap();
    let once = img.clone();
    assert_eq!(patch_bios_image(&mut img), Ok(Patched::Already));
    assert!(img == once);
}

#[test]
fn code_that_is_not_exactly_the_known_stage_is_left_alone_with_the_reason() {
    let check = |img: &mut Vec<u8>, want: NotPatched| {
        let before = img.clone();
        assert_eq!(patch_bios_image(img), Err(want));
        assert!(*img == before, "nothing written");
    };
    let mut img = image(SECTORS);
    img[511] = 0;
    check(&mut img, NotPatched::NoPartitionTable);
    check(&mut vec![0u8; 100], NotPatched::NoPartitionTable);

    let mut img = image(SECTORS);
    img[446 + 12..446 + 16].copy_from_slice(&(SECTORS + 9).to_le_bytes());
    check(&mut img, NotPatched::Stage2OutOfImage { lba: 1, sectors: SECTORS + 9 });
    let mut img = image(SECTORS);
    img[446 + 8..446 + 12].copy_from_slice(&0u32.to_le_bytes());
    check(&mut img, NotPatched::Stage2OutOfImage { lba: 0, sectors: SECTORS });

    // A second GDT, or none.
    let mut img = image(SECTORS);
    img[512 + 0x100..512 + 0x100 + 24].copy_from_slice(&GDT);
    check(&mut img, NotPatched::Pattern { what: "its GDT", found: 2 });
    let mut img = image(SECTORS);
    img[512 + GDT_AT + 13] = 0x9b;
    check(&mut img, NotPatched::Pattern { what: "its GDT", found: 0 });
    // The GDT outside the stage (past its last sector) does not count.
    let mut img = image(GDT_AT as u32 / 512);
    check(&mut img, NotPatched::Pattern { what: "its GDT", found: 0 });

    // Other registers, another selector, another target, other code after the jump.
    let mut img = image(SECTORS);
    img[512 + CODE_AT + 25] = 0x51;
    check(&mut img, NotPatched::Pattern { what: "the jump to stage 3", found: 0 });
    let mut img = image(SECTORS);
    img[512 + CODE_AT + BEFORE.len() + 2] = 0x10;
    check(&mut img, NotPatched::Jump { target: (0x7e00 + CODE_AT + 33) as u16, selector: 0x10 });
    let mut img = image(SECTORS);
    img[512 + CODE_AT + BEFORE.len()] += 1;
    check(&mut img, NotPatched::Jump { target: (0x7e00 + CODE_AT + 34) as u16, selector: 8 });
    // The loops that hold the pointer must be exactly the unreachable ones.
    for i in [POINTER_AT, POINTER_AT + 4, AFTER.len() - 1] {
        let mut img = image(SECTORS);
        img[512 + CODE_AT + 33 + i] ^= 1;
        check(&mut img, NotPatched::Pattern { what: "the jump's target code", found: 0 });
    }
}

#[test]
fn a_gdt_above_16_mib_cannot_be_reached_by_a_16_bit_lgdt() {
    let sectors = (17 << 20) / 512;
    let mut img = image(sectors);
    img[512 + GDT_AT..512 + GDT_AT + 24].fill(0);
    let at = (16 << 20) - 0x7e00;
    img[512 + at..512 + at + 24].copy_from_slice(&GDT);
    assert_eq!(patch_bios_image(&mut img), Err(NotPatched::GdtTooHigh(1 << 24)));
    let at = at - 1;
    img[512 + at..512 + at + 25].fill(0);
    img[512 + at..512 + at + 24].copy_from_slice(&GDT);
    assert!(matches!(patch_bios_image(&mut img), Ok(Patched::Now { gdt: 0xff_ffff, .. })));
}

#[test]
fn the_messages_say_what_was_found() {
    assert_eq!(NotPatched::Pattern { what: "its GDT", found: 2 }.to_string(), "stage 2 holds its GDT 2 times, not once");
    assert_eq!(NotPatched::GdtTooHigh(0x100_0000).to_string(), "stage 2's GDT at 0x1000000 is above 16 MiB");
    assert_eq!(
        NotPatched::Jump { target: 0x9834, selector: 8 }.to_string(),
        "the far jump goes to 0x8:0x9834, not through selector 8 to the next instruction"
    );
    assert_eq!(
        NotPatched::Stage2OutOfImage { lba: 1, sectors: 9 }.to_string(),
        "stage 2's partition (LBA 1, 9 sectors) lies outside the image"
    );
    assert_eq!(NotPatched::NoPartitionTable.to_string(), "no MBR boot signature");
}
