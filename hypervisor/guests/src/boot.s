//! Boot code of every test guest: real mode -> 32-bit protected mode -> 64-bit long mode.
//
// Assembled by `global_asm!` in boot.rs (Intel syntax, LLVM's integrated assembler), which
// defines COM1, EXIT_PORT, STACK_TOP, BOOT_STACK_SIZE, STACKS, STACK_SIZE, MAX_VCPUS,
// ENTRY_STATE_SIZE and EXIT_FAIL before this text. No braces may appear in this file: the
// text is a format template for `global_asm!`.
//
// Entry state (the guest ABI): real mode, CS:IP = 0:0x8000, DS=ES=SS=FS=GS=0, SP=0x7000,
// IF=0, CR0=0x10, A20 enabled, no BIOS and no IVT contents. A guest may have several vCPUs:
// every one of them starts here in that same state, at about the same time, and learns its
// index from CPUID leaf 1, EBX bits 31:24 (the initial APIC ID, which the hypervisor sets
// to the vCPU index 0..n-1). Nothing tells a vCPU how many there are, and nothing here needs
// to know: vCPU 0 does the one-time work and the others wait for it.
//
// Multi-vCPU protocol (boot.rs documents it for Rust; the addresses are in link.ld):
//  - Stacks. Every vCPU starts with SP = 0x7000, so the ABI's stack cannot be shared: before
//    its first PUSH or CALL each vCPU reads its index and moves to its own boot stack,
//    top = STACK_TOP - index * BOOT_STACK_SIZE (vCPU 0: 0x7000, vCPU 1: 0x6C00, ...,
//    vCPU 15: 0x3400; 1 KiB each), used by the 16- and 32-bit code. The 64-bit code moves
//    to the vCPU's long-mode stack, top = STACKS + (index + 1) * STACK_SIZE (vCPU 0:
//    0x104000, vCPU 1: 0x108000, ...; 16 KiB each), on which Rust runs: 1 KiB is too little
//    for Rust's formatting (boot.rs). An index >= MAX_VCPUS has no stack: that vCPU prints a
//    FAIL line with stack-free code and parks (CLI; HLT).
//  - The index stays in EBP through all three modes (nothing else in the boot code uses
//    EBP) and becomes the argument of `guest_rust_entry`.
//  - One-time work is vCPU 0's: zeroing .bss and building the page tables (and printing the
//    trace lines). It then sets `boot_tables_ready`; the other vCPUs spin (PAUSE) on that
//    flag in 32-bit code before they load CR3. Each vCPU then enables PAE, loads CR3, sets
//    EFER.LME and CR0.PG itself (control registers and MSRs are per CPU) using the shared
//    GDT, IDTs and page tables, which are read-only from then on.
//  - Everything the vCPUs share before .bss is zeroed lives in .data.boot, which is part of
//    the image and so has defined contents at every (re)start: the ready flag, the serial
//    lock and the per-vCPU entry states. .bss must not hold any of them: its contents are
//    undefined until vCPU 0 zeroes it, which may happen while another vCPU is already
//    polling. (The protocol relies on the ABI reloading the image on every start.)
//  - Console lines from several vCPUs must not interleave: every line (here and in Rust,
//    serial.rs) is printed holding `boot_serial_lock`, 0 when free, else the owner's
//    index + 1. A vCPU that already holds it (a fault while printing) prints anyway, so the
//    report of that fault cannot deadlock.
//
// Steps:
//  16-bit  read the vCPU index (CPUID) and switch to this vCPU's boot stack, record the entry
//          state (per vCPU), load our own IVT (exceptions print and fail), optionally print
//          "<guest>: real mode" (vCPU 0), load the GDT, set CR0.PE, far jump to 32-bit code.
//  32-bit  load flat segments and the 32-bit IDT; vCPU 0: zero .bss, optionally print
//          "<guest>: protected mode"; all: check CPUID for long mode; vCPU 0: build an
//          identity map of the first 4 GiB with 2 MiB pages and set the ready flag; the
//          others: wait for the flag; all: enable PAE, load CR3, set EFER.LME, set CR0.PG,
//          far jump to 64-bit code.
//  64-bit  switch to this vCPU's long-mode stack, load the 64-bit IDT and call Rust
//          (`guest_rust_entry(vcpu index)`).
//
// An exception in any mode prints "<guest>: FAIL unexpected exception <vector> at <address>
// (<mode>)" and ends the test with code 1. Each mode loads its IDT with its first
// instruction (after the stack switch, in real mode), so the only unguarded instructions
// are the few register moves and CPUID before it, and the far jumps that follow the MOV CR0
// setting PE and the one setting PG.
//
// Section use: .text.boot (code), .data.boot (GDT, IDTs, strings, entry states, the ready
// flag, the serial lock) and .bss.boot (page tables); link.ld puts the first two at 0x8000,
// below 64 KiB as real mode needs, and .bss.boot at 0x70000.

// GDT selectors (see boot_gdt below).
.set CODE32_SEL, 0x08
.set DATA_SEL, 0x10
.set CODE64_SEL, 0x18

// ---------------------------------------------------------------------------------------
// Serial and exit helpers, assembled twice: once as 16-bit code (prefix rm) and once as
// 32-bit code (prefix pm). The same source is correct in both because it only uses 32-bit
// registers explicitly (the assembler adds operand/address-size prefixes in .code16), keeps
// every push matched by a pop of the same size, and never uses LOOP (whose counter, CX or
// ECX, depends on the address size). Addresses used in 16-bit code are below 64 KiB, so
// [esi] stays within the real-mode segment limit (SDM Vol. 3A 20.1.1).
// In .code16, LLVM encodes CALL and RET with a 32-bit operand size (66 E8 rel32 / 66 C3):
// they push and pop a 4-byte return address, always in pairs, which real mode accepts as
// long as the target is within the 64 KiB code segment.
// ---------------------------------------------------------------------------------------
.macro SERIAL_HELPERS p
// putc: print AL. The ABI's UART: wait for LSR.THRE (bit 5 of port COM1+5), then write
// the byte to THR (port COM1). Preserves all registers.
\p\()_putc:
    push edx
    push eax
    mov dx, COM1 + 5
2:
    in al, dx
    test al, 0x20
    jz 2b
    pop eax
    mov dx, COM1
    out dx, al
    pop edx
    ret

// puts: print the NUL-terminated string at ESI. Preserves all registers.
\p\()_puts:
    push eax
    push esi
2:
    mov al, byte ptr [esi]
    test al, al
    jz 3f
    call \p\()_putc
    inc esi
    jmp 2b
3:
    pop esi
    pop eax
    ret

// put_hex: print EAX as 0x... without leading zeros. Preserves all registers.
\p\()_put_hex:
    push eax
    push ebx
    push ecx
    mov ebx, eax
    mov al, 0x30                    // '0'
    call \p\()_putc
    mov al, 0x78                    // 'x'
    call \p\()_putc
    mov ecx, 8                      // nibbles left
2:                                  // skip leading zero nibbles, keep at least one
    cmp ecx, 1
    je 3f
    test ebx, 0xF0000000
    jnz 3f
    shl ebx, 4
    dec ecx
    jmp 2b
3:
    rol ebx, 4
    mov al, bl
    and al, 0x0F
    add al, 0x30                    // '0'..'9'
    cmp al, 0x39
    jbe 4f
    add al, 0x61 - 0x3A             // 'a'..'f'
4:
    call \p\()_putc
    dec ecx
    jnz 3b
    pop ecx
    pop ebx
    pop eax
    ret

// put_dec: print EAX in decimal. Preserves all registers.
\p\()_put_dec:
    push eax
    push ebx
    push ecx
    push edx
    mov ebx, 10
    xor ecx, ecx
2:                                  // push the digits, least significant first
    xor edx, edx
    div ebx
    push edx
    inc ecx
    test eax, eax
    jnz 2b
3:
    pop eax
    add al, 0x30
    call \p\()_putc
    dec ecx
    jnz 3b
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

// lock_line: take the console line lock `boot_serial_lock` (spinning with PAUSE while
// another vCPU holds it), before the first byte of a line. The owner value is this vCPU's
// index + 1, read again with CPUID so that it is right wherever this is called from (EBP
// may not hold the index yet). LOCK CMPXCHG makes test-and-set one atomic step (SDM Vol. 2A
// CMPXCHG; Vol. 3A "Locked Atomic Operations"). If this vCPU already holds the lock (a fault
// while printing a line), go ahead: the report that follows ends the test anyway.
// Preserves all registers.
\p\()_lock_line:
    push eax
    push ebx
    push ecx
    push edx
    mov eax, 1
    cpuid
    shr ebx, 24
    inc ebx                         // owner value: index + 1
2:
    xor eax, eax
    lock cmpxchg dword ptr [boot_serial_lock], ebx
    je 3f                           // it was free, now ours
    cmp eax, ebx
    je 3f                           // already ours
    pause                           // SDM Vol. 2B PAUSE: the spin-wait hint
    jmp 2b
3:
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

// unlock_line: release the line lock after the line's "\n". A plain store releases: x86
// does not reorder a store with older loads or stores (SDM Vol. 3A "Memory Ordering in P6
// and More Recent Processor Families"), and an OUT completes before the next instruction
// starts (SDM Vol. 1 "Ordering I/O"), so the line is out before another vCPU can take the
// lock. Preserves all registers.
\p\()_unlock_line:
    mov dword ptr [boot_serial_lock], 0
    ret

// exit: the ABI's test exit, a 32-bit OUT of EAX to port EXIT_PORT (0 = pass). The
// hypervisor stops the guest there; halt forever in case it does not.
\p\()_exit:
    mov dx, EXIT_PORT
    out dx, eax
2:
    cli
    hlt
    jmp 2b

// fail: print "<guest>: FAIL <string at ESI>\n" and exit with EXIT_FAIL.
\p\()_fail:
    call \p\()_lock_line              // never released: the exit ends the guest
    push esi
    mov esi, offset GUEST_NAME
    call \p\()_puts
    mov esi, offset boot_str_fail
    call \p\()_puts
    pop esi
    call \p\()_puts
    mov al, 0x0A
    call \p\()_putc
    mov eax, EXIT_FAIL
    jmp \p\()_exit

// report_exception: EAX = vector, EBX = address of the faulting instruction, EDI = the mode
// (a string). Prints "<guest>: FAIL unexpected exception <vector> at <address> (<mode>)" and
// exits with EXIT_FAIL.
\p\()_report_exception:
    call \p\()_lock_line              // never released: the exit ends the guest
    mov esi, offset GUEST_NAME
    call \p\()_puts
    mov esi, offset boot_str_unexpected
    call \p\()_puts
    call \p\()_put_dec
    mov esi, offset boot_str_at
    call \p\()_puts
    mov eax, ebx
    call \p\()_put_hex
    mov esi, offset boot_str_open
    call \p\()_puts
    mov esi, edi
    call \p\()_puts
    mov esi, offset boot_str_close
    call \p\()_puts
    mov eax, EXIT_FAIL
    jmp \p\()_exit
.endm

// Exceptions that push an error code (SDM Vol. 3A 6.15, "Exception and Interrupt Reference";
// 29 #VC and 30 #SX are AMD's, APM Vol. 2 8.2): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP.
// In real mode no exception pushes one (SDM Vol. 3A 20.1.4).
.macro PUSH_DUMMY_ERROR_CODE_UNLESS_CPU_DOES vec
    .if !((\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30))
    push 0
    .endif
.endm

// Stack-free printing for real mode (for `rm_no_stack_for_vcpu`): the byte in AH, or the
// NUL-terminated string at DS:SI, or the hex digit for the value 0..15 in AH. They change
// AX, DX and SI, and nothing in memory.
.macro RM_NO_STACK_PUTC
    mov dx, COM1 + 5
10:
    in al, dx
    test al, 0x20                   // LSR.THRE
    jz 10b
    mov al, ah
    mov dx, COM1
    out dx, al
.endm
.macro RM_NO_STACK_PUTS
11:
    mov ah, byte ptr [si]
    test ah, ah
    jz 12f
    RM_NO_STACK_PUTC
    inc si
    jmp 11b
12:
.endm
.macro RM_NO_STACK_PUT_NIBBLE
    add ah, 0x30                    // '0'..'9'
    cmp ah, 0x39
    jbe 13f
    add ah, 0x61 - 0x3A             // 'a'..'f'
13:
    RM_NO_STACK_PUTC
.endm

// =======================================================================================
// 16-bit real mode
// =======================================================================================
// The real-mode entry, assembled twice: at `_start` (0x8000, where a flat image is entered)
// and at `sipi_entry` (0xA000, where an application processor started with STARTUP vector
// 0x0A begins: CS = 0x0A00 with base 0xA000, IP = 0, SDM Vol. 3A 9.4.4.1). It keeps what the
// entry state records and the next instructions would change (SP in BP, SS in SI, CS in DI;
// none of these moves changes FLAGS, which is recorded later) and far-jumps to the common
// code with CS = 0, which every absolute address in the boot code assumes.
.macro RM_ENTRY
    mov bp, sp
    mov si, ss
    mov di, cs
    // jmp far 0000:.Lrm_start (EA ptr16:16)
    .byte 0xEA
    .word .Lrm_start
    .word 0
.endm

    .section .text.boot.flat, "ax", @progbits
    .code16
    .global _start
_start:
    // Every guest is a flat image and a Multiboot kernel at once. The flat image is entered
    // here; a Multiboot loader loads the file only from `boot_multiboot_header` (0x9600) on
    // and enters at `mb_entry` (link.ld has the layout and why).
    RM_ENTRY

// The Multiboot 1 header (spec 3.1.2, 3.1.3) with the address fields ("a.out kludge", flag
// 16): the loaded part of the file starts with this header (load_addr = header_addr =
// 0x9600, at file offset 0x1600, within the first 8 KiB as spec 3.1.1 requires) and runs up
// to __image_end, then zeros up to __bss_end; a Multiboot loader enters at `mb_entry`. It
// puts its boot information and modules after __bss_end (below the EBDA, when they fit) or,
// as QEMU's does, at 0x9000..0x9558, below the header.
    .section .text.boot.multiboot, "ax", @progbits
    .balign 4
    .global boot_multiboot_header
boot_multiboot_header:
    .long 0x1BADB002                          // magic
    .long 0x00010000                          // flags: address fields valid
    .long -(0x1BADB002 + 0x00010000)          // checksum: magic + flags + checksum = 0
    .long boot_multiboot_header               // header_addr
    .long boot_multiboot_header               // load_addr
    .long __image_end                         // load_end_addr
    .long __bss_end                           // bss_end_addr
    .long mb_entry                            // entry_addr

// The Multiboot 2 header (spec 3.1), right after the first one: 8-byte aligned, inside the
// first 32 KiB (file offset 0x1620). Its address tag (3.1.5) loads the same bytes to the same
// place (load_addr 0x9600 is 0x20 before this header_addr), the entry address tag (3.1.6)
// enters at the same `mb_entry` (EAX = 0x36D76289 then, EBX the 8-byte-aligned information,
// 3.2), and the information request tag (3.1.4, not optional) asks for what the `multiboot`
// guest prints: command line, boot loader name, modules, basic memory, memory map. A loader
// that cannot give one of those must refuse the kernel rather than start it without.
    .balign 8
    .global boot_multiboot2_header
boot_multiboot2_header:
    .long 0xE85250D6                          // magic
    .long 0                                   // architecture: i386 protected mode
    .long .Lmb2_end - boot_multiboot2_header  // header_length
    .long 0x100000000 - (0xE85250D6 + 0 + (.Lmb2_end - boot_multiboot2_header)) // checksum
    .balign 8
    .word 1, 0                                // information request, required
    .long 8 + 5 * 4
    .long 1, 2, 3, 4, 6                       // cmdline, loader name, modules, meminfo, mmap
    .balign 8
    .word 2, 0                                // address
    .long 24
    .long boot_multiboot2_header              // header_addr
    .long boot_multiboot_header               // load_addr
    .long __image_end                         // load_end_addr
    .long __bss_end                           // bss_end_addr
    .balign 8
    .word 3, 0                                // entry address
    .long 12
    .long mb_entry
    .balign 8
    .word 0, 0                                // end
    .long 8
.Lmb2_end:

// STARTUP vector 0x0A's page (link.ld puts this section at 0xA000): where an application
// processor begins when a Multiboot-loaded guest starts it with INIT-SIPI-SIPI, as a PC's
// kernel starts its APs (the `ipi` guest). A flat image's vCPUs all start at `_start`.
    .section .text.boot.sipi, "ax", @progbits
    .code16
    .global sipi_entry
sipi_entry:
    RM_ENTRY

    .section .text.boot, "ax", @progbits
    .code16
.Lrm_start:
    // No PUSH or CALL (and so no CALL-using helper) before SS:SP are this vCPU's own: every
    // vCPU starts with SP = 0x7000, and vCPU 0 may already have return addresses there.
    // Interrupts are disabled (the ABI's IF = 0), so nothing else touches the stack either.
    // What the entry state needs is kept in registers CPUID leaves alone: the entry SP in BP,
    // the entry SS in SI and the entry CS in DI (RM_ENTRY put them there; the other segment
    // registers, CR0 and FLAGS do not change until they are recorded; CPUID changes no
    // flag, SDM Vol. 2A CPUID).
    // CPUID leaf 1: EBX bits 31:24 are the initial APIC ID (SDM Vol. 2A CPUID, Table 3-8),
    // which the hypervisor sets to the vCPU index.
    mov eax, 1
    cpuid
    shr ebx, 24
    cmp ebx, MAX_VCPUS
    jae rm_no_stack_for_vcpu
    // Stack top = STACK_TOP - index * BOOT_STACK_SIZE, computed before SS changes: MOV SS
    // blocks interrupts and debug traps until after the next instruction, so the MOV SP
    // right after it completes the pair (SDM Vol. 3A 6.8.3); IF is 0 anyway.
    imul cx, bx, -BOOT_STACK_SIZE
    add cx, STACK_TOP
    xor ax, ax
    mov ss, ax
    mov sp, cx
    pushf
    pop cx                          // FLAGS at entry (IF included: no CLI yet)
    cli
    cld

    // Record the entry state in this vCPU's `boot_entry_states` slot, for the `modes` and
    // `ipi` guests to check. CS overrides (CS = 0 since RM_ENTRY's far jump) keep the stores
    // right even if DS is not 0; EDX (zero-extended from the index) addresses the slot.
    imul edx, ebx, ENTRY_STATE_SIZE
    mov word ptr cs:[edx + boot_entry_states + 4], bp      // SP
    mov word ptr cs:[edx + boot_entry_states + 6], cx      // FLAGS
    mov word ptr cs:[edx + boot_entry_states + 8], di      // CS
    mov word ptr cs:[edx + boot_entry_states + 10], ds
    mov word ptr cs:[edx + boot_entry_states + 12], es
    mov word ptr cs:[edx + boot_entry_states + 14], fs
    mov word ptr cs:[edx + boot_entry_states + 16], gs
    mov word ptr cs:[edx + boot_entry_states + 18], si     // SS
    mov eax, cr0
    mov dword ptr cs:[edx + boot_entry_states + 0], eax    // CR0
    // The vCPU index, in EBP from here to the call into Rust.
    mov ebp, ebx

    // The ABI's segments, made explicit (SS is done).
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax

    // There is no BIOS and the IVT at 0 is empty: point IDTR at our own IVT so that an
    // exception in real mode reports itself instead of jumping to 0000:0000 (in real mode
    // IDTR holds the IVT base and limit, SDM Vol. 3A 20.1.4).
    lidt [boot_rm_idtr]

    // CR0.PE set at entry would mean we are not in real mode at all.
    mov eax, cr0
    test al, 1                      // CR0.PE
    jz .Lrm_is_real
    mov esi, offset boot_str_not_real
    jmp rm_fail
.Lrm_is_real:
    // The trace lines are vCPU 0's: one "real mode" line per guest, not per vCPU.
    test ebp, ebp
    jnz .Lrm_to_pm
    cmp byte ptr [GUEST_TRACE_MODES], 0
    je .Lrm_to_pm
    call rm_lock_line
    mov esi, offset GUEST_NAME
    call rm_puts
    mov esi, offset boot_str_real
    call rm_puts
    call rm_unlock_line

.Lrm_to_pm:
    // Real -> protected mode, SDM Vol. 3A 9.9.1 "Switching to Protected Mode" (AMD APM
    // Vol. 2 14.4): interrupts off (done), LGDT, set CR0.PE, then immediately a far JMP,
    // which loads CS from the new GDT and flushes instructions decoded in real mode.
    // With a 16-bit operand size LGDT loads a 24-bit base; ours is below 64 KiB.
    lgdt [boot_gdtr]
    mov eax, cr0
    or eax, 1                       // CR0.PE
    mov cr0, eax
    // jmp far 0x08:pm_entry with a 32-bit offset (66 EA ptr16:32), written out so the
    // encoding does not depend on the assembler's far-jump syntax.
    .byte 0x66, 0xEA
    .long pm_entry
    .word CODE32_SEL

    SERIAL_HELPERS rm

// A vCPU whose index is MAX_VCPUS or more has no stack of its own (the next one down would
// reach below 0x3000 and, for large indexes, the IVT area and wrap around 0). It cannot
// CALL, so it prints its FAIL line with the stack-free macros below, holding the line
// lock, then parks (CLI; HLT: finished, for the hypervisor). The guest goes on without it.
// EBX = the index; the entry state is not recorded.
rm_no_stack_for_vcpu:
    cli
    cld
    xor ax, ax
    mov ds, ax
    lea ecx, [ebx + 1]              // owner value: index + 1
2:
    xor eax, eax
    lock cmpxchg dword ptr [boot_serial_lock], ecx
    je 3f
    pause
    jmp 2b
3:
    mov si, offset GUEST_NAME
    RM_NO_STACK_PUTS
    mov si, offset boot_str_no_stack
    RM_NO_STACK_PUTS
    mov ah, 0x30                    // '0'
    RM_NO_STACK_PUTC
    mov ah, 0x78                    // 'x'
    RM_NO_STACK_PUTC
    mov ah, bl
    shr ah, 4
    RM_NO_STACK_PUT_NIBBLE
    mov ah, bl
    and ah, 0x0F
    RM_NO_STACK_PUT_NIBBLE
    mov si, offset boot_str_no_stack_end
    RM_NO_STACK_PUTS
    mov dword ptr [boot_serial_lock], 0
4:
    cli
    hlt
    jmp 4b

// Real-mode exception stubs: the CPU pushed FLAGS, CS, IP (no error code); each stub pushes
// its vector.
.macro RM_STUB vec
rm_exc_\vec:
    push \vec
    jmp rm_exc_common
.endm
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    RM_STUB \v
.endr

rm_exc_common:
    xor eax, eax
    pop ax                          // vector
    xor ebx, ebx
    pop bx                          // IP
    xor ecx, ecx
    pop cx                          // CS
    shl ecx, 4
    add ebx, ecx                    // linear address CS * 16 + IP
    mov edi, offset boot_str_real_mode
    jmp rm_report_exception

// =======================================================================================
// 32-bit protected mode (paging off)
// =======================================================================================
    .code32
// The Multiboot entry (spec 3.2 "Machine state", the same in both versions): 32-bit
// protected mode, paging off, flat segments with the loader's selectors, EAX = 0x2BADB002
// (Multiboot 1) or 0x36D76289 (Multiboot 2), EBX = the boot information, GDTR
// and IDTR undefined, ESP undefined. Only the boot processor enters here (the others wait
// for INIT-SIPI, as on a PC, and come in at `sipi_entry` once the guest starts them), so the
// vCPU index is 0 and no other vCPU shares anything yet. Record EAX and EBX for Rust (multiboot.rs), load our GDT
// and reload CS through it, then continue as a flat image does once in protected mode.
// Nothing here can fault with flat segments, before pm_entry loads the 32-bit IDT.
    .pushsection .text.boot.multiboot, "ax", @progbits
mb_entry:
    mov dword ptr [boot_multiboot_magic], eax
    mov dword ptr [boot_multiboot_info], ebx
    lgdt [boot_gdtr]
    // jmp far CODE32_SEL:.Lmb_reloaded (EA ptr16:32)
    .byte 0xEA
    .long .Lmb_reloaded
    .word CODE32_SEL
.Lmb_reloaded:
    mov eax, 1
    cpuid
    shr ebx, 24                     // the initial APIC ID: the vCPU index
    mov ebp, ebx
    jmp pm_entry
    .popsection

pm_entry:
    // The 32-bit IDT first, so that even a fault in the segment loads below is reported
    // (DS still has its real-mode base 0, which is all LIDT needs here). Then, SDM Vol. 3A
    // 9.9.1: reload the data segment registers (they still hold real-mode values) and the
    // stack pointer (this vCPU's boot stack, from the index in EBP).
    lidt [boot_pm_idtr]
    mov ax, DATA_SEL
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    imul esp, ebp, -BOOT_STACK_SIZE
    add esp, STACK_TOP

    // Only vCPU 0 zeroes .bss and prints the trace line.
    test ebp, ebp
    jnz .Lpm_check_lm

    // .bss (page tables, Rust statics) is not in the flat image and RAM contents are not
    // specified: zero it before anything uses it.
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    cmp byte ptr [GUEST_TRACE_MODES], 0
    je .Lpm_check_lm
    call pm_lock_line
    mov esi, offset GUEST_NAME
    call pm_puts
    mov esi, offset boot_str_protected
    call pm_puts
    call pm_unlock_line

.Lpm_check_lm:
    // Long mode must be reported by CPUID 0x8000_0001 EDX bit 29 (LM) before EFER.LME may be
    // set (SDM Vol. 3A 9.8.5; AMD APM Vol. 2 14.6.1); otherwise the WRMSR would #GP. Every
    // vCPU checks for itself: it is about to set its own EFER.
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lpm_no_lm
    mov eax, 0x80000001
    cpuid
    bt edx, 29
    jc .Lpm_paging
.Lpm_no_lm:
    mov esi, offset boot_str_no_lm
    jmp pm_fail

.Lpm_paging:
    test ebp, ebp
    jnz .Lpm_wait_for_tables
    // Identity map of 0..4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] -> four PDs,
    // PD entries with PS=1 (4-level paging, SDM Vol. 3A 4.5, Tables 4-15, 4-17 and 4-18).
    // Flags: P (bit 0) | R/W (bit 1), plus PS (bit 7) in PDEs. Only 0..2 MiB is RAM; the
    // rest is mapped so a guest can touch it on purpose (the `overrun` guest reads 1 GiB)
    // and the hypervisor, not the guest's paging, decides what happens.
    mov dword ptr [boot_pml4], offset boot_pdpt + 3
    mov dword ptr [boot_pdpt + 0], offset boot_pd + 0x0000 + 3
    mov dword ptr [boot_pdpt + 8], offset boot_pd + 0x1000 + 3
    mov dword ptr [boot_pdpt + 16], offset boot_pd + 0x2000 + 3
    mov dword ptr [boot_pdpt + 24], offset boot_pd + 0x3000 + 3
    mov edi, offset boot_pd
    xor ecx, ecx                    // PDE index 0..2047, maps ecx * 2 MiB
.Lpm_pde:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83                    // P | R/W | PS
    mov dword ptr [edi + ecx * 8], eax
    mov eax, ecx
    shr eax, 11                     // bits 63:32 of ecx * 2 MiB
    mov dword ptr [edi + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jb .Lpm_pde

    // Release the other vCPUs: .bss is zeroed and the tables are complete. XCHG with memory
    // is locked (SDM Vol. 3A "Locked Atomic Operations") and so a full barrier: every store
    // above, the REP STOSD ones included (fast-string stores may be out of order among
    // themselves, never with a later store: SDM Vol. 3A "Memory-Ordering Model for String
    // Operations on Write-Back (WB) Memory"), is visible before the flag is.
    mov eax, 1
    xchg dword ptr [boot_tables_ready], eax
    jmp .Lpm_enable_long_mode

.Lpm_wait_for_tables:
    // The other vCPUs: wait, with PAUSE in the loop (SDM Vol. 2B PAUSE; it also keeps a
    // hypervisor's pause-loop exiting informed), until vCPU 0 has set the flag. Loads are
    // not reordered with older loads, and MOV CR3 below is serializing (SDM Vol. 3A
    // "Serializing Instructions"), so the page-table walks come after the flag was seen.
    cmp dword ptr [boot_tables_ready], 0
    jne .Lpm_enable_long_mode
    pause
    jmp .Lpm_wait_for_tables

.Lpm_enable_long_mode:
    // Protected -> long mode, SDM Vol. 3A 9.8.5 "Initializing IA-32e Mode" (AMD APM Vol. 2
    // 14.6 "Enabling and Activating Long Mode"): with paging off, set CR4.PAE, load CR3 with
    // the PML4, set EFER.LME (MSR 0xC000_0080 bit 8), then set CR0.PG; the CPU sets
    // EFER.LMA. The MOV CR0 and the code after it run identity-mapped, as the SDM requires.
    // Then a far JMP to a code segment with L=1 leaves compatibility mode for 64-bit mode.
    mov eax, cr4
    or eax, 1 << 5                  // CR4.PAE
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080             // IA32_EFER
    rdmsr
    or eax, 1 << 8                  // EFER.LME
    wrmsr
    // CD and NW are cleared too: a processor that has only ever been reset or INITed may
    // start with caching disabled (CR0 = 0x60000010 after reset, SDM Vol. 3A 10.1.1 Table
    // 10-1), which a vCPU never needs.
    mov eax, cr0
    and eax, 0x9FFFFFFF             // ~(CR0.CD | CR0.NW)
    or eax, 0x80000001              // CR0.PG | CR0.PE
    mov cr0, eax
    // jmp far 0x18:lm_entry (EA ptr16:32)
    .byte 0xEA
    .long lm_entry
    .word CODE64_SEL

    SERIAL_HELPERS pm

// 32-bit exception stubs: the CPU pushed EFLAGS, CS, EIP and maybe an error code; each
// stub makes the frame uniform (dummy error code) and pushes its vector.
.macro PM_STUB vec
pm_exc_\vec:
    PUSH_DUMMY_ERROR_CODE_UNLESS_CPU_DOES \vec
    push \vec
    jmp pm_exc_common
.endm
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    PM_STUB \v
.endr

pm_exc_common:
    pop eax                         // vector
    pop ebx                         // error code (ignored)
    pop ebx                         // EIP
    mov edi, offset boot_str_protected_mode
    jmp pm_report_exception

// =======================================================================================
// 64-bit long mode
// =======================================================================================
    .code64
lm_entry:
    // A defined RSP (the upper half of a register is not preserved across the switch into
    // 64-bit mode, SDM Vol. 1 3.4.1.1) and the 64-bit IDT before anything that could fault:
    // the 32-bit gates still loaded are invalid in IA-32e mode (SDM Vol. 3A 6.14.1).
    // This vCPU's long-mode stack, top = STACKS + (index + 1) * STACK_SIZE: 32-bit
    // operations zero-extend into RSP, and EBP (the index) is read as 32 bits only. Every
    // stack top is 16-byte aligned.
    lea esp, [ebp + 1]
    imul esp, esp, STACK_SIZE
    add esp, STACKS
    lidt [rip + boot_lm_idtr]
    // In 64-bit mode DS/ES/SS bases and limits are ignored, but they must hold usable
    // selectors; reload them from this GDT (SDM Vol. 3A 3.4.4).
    mov ax, DATA_SEL
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    // guest_rust_entry(vcpu: u32) (System V: first argument in EDI). Rust never returns
    // from here (the guest ends with a test exit, or the vCPU parks).
    mov edi, ebp
    call guest_rust_entry
    ud2

// 64-bit exception stubs: uniform frame = vector, error code, RIP, CS, RFLAGS, RSP, SS.
// The CPU aligned RSP to 16 before pushing its 5 (or 6) quadwords (SDM Vol. 3A 6.14.2), so
// after the stub's 2 pushes (7 quadwords in all) and the 15 general registers below, RSP is
// 16-byte aligned at the CALL, as the System V ABI requires.
.macro LM_STUB vec
lm_exc_\vec:
    PUSH_DUMMY_ERROR_CODE_UNLESS_CPU_DOES \vec
    push \vec
    jmp lm_exc_common
.endm
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    LM_STUB \v
.endr

// Saves the general registers in the order of `exceptions::Frame` and calls
// `exception_dispatch(&mut Frame)`, which either resumes an expected fault at the address
// armed for it (by rewriting the saved RIP) or reports the exception and ends the test.
// Global: the interrupt stubs of interrupts.rs (vectors 0x20..0x2F, for a guest that takes
// PIC interrupts) push the same two words and enter here too, so an interrupt handler
// preserves every general register of the code it interrupted.
    .global lm_exc_common
lm_exc_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld                             // the System V ABI expects DF = 0 at calls
    mov rdi, rsp
    call exception_dispatch
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16                     // vector and error code
    iretq

// =======================================================================================
// Data: GDT, IDTs, strings, entry state
// =======================================================================================
    .section .data.boot, "aw", @progbits
    .balign 8
// Flat 4 GiB segments, base 0 (SDM Vol. 3A 3.4.5, Figure 3-8; 64-bit code segment:
// L=1, D=0, SDM Vol. 3A 5.2.1). Types are preset "accessed" (0x9B, 0x93) so the CPU never
// needs to write the descriptors (SDM Vol. 3A 3.4.5.1).
boot_gdt:
    .quad 0                         // 0x00: null
    .quad 0x00CF9B000000FFFF        // 0x08: 32-bit code, G=1 D=1, limit 0xFFFFF
    .quad 0x00CF93000000FFFF        // 0x10: data, G=1 B=1, limit 0xFFFFF
    .quad 0x00AF9B000000FFFF        // 0x18: 64-bit code, G=1 L=1
boot_gdt_end:

    .balign 8
    .word 0                         // pad, so the base below is 4-byte aligned
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

// Real-mode IVT: 32 far pointers, offset then segment (SDM Vol. 3A 20.1.4, Figure 20-2).
    .balign 4
boot_rm_ivt:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .word rm_exc_\v, 0
.endr
    .balign 4
    .word 0
boot_rm_idtr:
    .word 32 * 4 - 1
    .long boot_rm_ivt

// 32-bit IDT: interrupt gates (SDM Vol. 3A 6.11, Figure 6-2): offset 15:0, selector,
// 0, P=1 DPL=0 type 0xE, offset 31:16. Offsets 31:16 are 0 because .boot ends below 64 KiB
// (link.ld checks it, and lld rejects a `.word` relocation that does not fit).
    .balign 8
boot_pm_idt:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .word pm_exc_\v, CODE32_SEL
    .byte 0, 0x8E
    .word 0
.endr
    .balign 4
    .word 0
boot_pm_idtr:
    .word 32 * 8 - 1
    .long boot_pm_idt

// 64-bit IDT: 16-byte interrupt gates (SDM Vol. 3A 6.14.1, Figure 6-8): offset 15:0,
// selector, IST=0, P=1 DPL=0 type 0xE, offset 31:16, offset 63:32, reserved. Vectors 0-31
// only: interrupts stay disabled, so anything else would be a bug and raises #GP (beyond
// the IDT limit), which is reported. Global: a guest that enables interrupts loads a larger
// IDT that starts with a copy of these 32 gates (interrupts.rs).
    .balign 16
    .global boot_lm_idt
boot_lm_idt:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .word lm_exc_\v, CODE64_SEL
    .byte 0, 0x8E
    .word 0
    .long 0, 0
.endr
    .balign 8
    .word 0, 0, 0
boot_lm_idtr:
    .word 32 * 16 - 1
    .quad boot_lm_idt

// Entry states, one `boot::EntryState` (ENTRY_STATE_SIZE bytes: CR0, SP, FLAGS, CS, DS,
// ES, FS, GS, SS) per vCPU, indexed by the vCPU index; each vCPU writes only its own.
    .balign 4
    .global boot_entry_states
boot_entry_states:
    .skip MAX_VCPUS * ENTRY_STATE_SIZE

// What a Multiboot loader passed in EAX and EBX (mb_entry); 0 when entered as a flat image.
    .balign 4
    .global boot_multiboot_magic
boot_multiboot_magic:
    .long 0
    .global boot_multiboot_info
boot_multiboot_info:
    .long 0

// Set to 1 by vCPU 0 once .bss is zeroed and the page tables are built; the other vCPUs
// wait for it before loading CR3. 0 in the image, so 0 at every start.
    .balign 4
    .global boot_tables_ready
boot_tables_ready:
    .long 0

// The console line lock: 0 = free, else the index + 1 of the vCPU printing a line. Taken
// around every line, by the boot code (lock_line) and by Rust (serial.rs).
    .balign 4
    .global boot_serial_lock
boot_serial_lock:
    .long 0

boot_str_real:              .asciz ": real mode\n"
boot_str_protected:         .asciz ": protected mode\n"
boot_str_fail:              .asciz ": FAIL "
boot_str_not_real:          .asciz "not started in real mode (CR0.PE = 1)"
boot_str_no_lm:             .asciz "no long mode (CPUID 0x80000001 EDX bit 29 clear)"
boot_str_unexpected:        .asciz ": FAIL unexpected exception "
boot_str_at:                .asciz " at "
boot_str_open:              .asciz " ("
boot_str_close:             .asciz ")\n"
boot_str_real_mode:         .asciz "real mode"
boot_str_protected_mode:    .asciz "protected mode"
boot_str_no_stack:          .asciz ": FAIL vCPU "
boot_str_no_stack_end:      .asciz " has no stack (the boot code has stacks for 16 vCPUs); it parks\n"

// =======================================================================================
// Page tables (zeroed with the rest of .bss by pm_entry; link.ld places them at 0x70000)
// =======================================================================================
    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:  .skip 4096
    .global boot_pdpt
boot_pdpt:  .skip 4096
    .global boot_pd
boot_pd:    .skip 4 * 4096

// Back to the defaults for any assembly that follows in this module.
    .text
    .code64
