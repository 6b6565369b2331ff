//! EL2 exception vectors and the crash report.
//!
//! VBAR_EL2 points at [`__el2_vectors`]: 16 entries of 0x80 bytes (Arm ARM
//! D1.3.1 "Exception vectors"): {current EL with SP_EL0, current EL with
//! SP_ELx, lower EL AArch64, lower EL AArch32} × {synchronous, IRQ, FIQ,
//! SError}. Each entry saves x0-x30, the interrupted SP, ELR/SPSR/ESR/FAR
//! into an [`ExceptionFrame`] on the stack and calls [`el2_exception`]; if
//! that returns, the registers are restored and `eret` resumes. For now
//! every exception is fatal: a report, `HV-EXIT: failure`, exit.
//!
//! Stack overflow: every EL2 stack is [`STACK_SIZE`] bytes aligned to twice
//! that, with the [`STACK_SIZE`] below it unmapped (the boot stack: see
//! `kernel/linker-aarch64.ld`; any later per-CPU stack MUST follow the same
//! rule). Bit [`STACK_SHIFT`] of SP is then 0 inside a stack and 1 inside
//! its guard. The vector entry tests that bit without touching memory (the
//! `add sp, sp, x0` trick Linux uses in `kernel_ventry`) and, on overflow,
//! switches to a dedicated crash stack instead of faulting again forever.

use super::{halt, platform_uart, psci_off_or_halt};
use crate::ExitStatus;
use arch::aarch64::esr::{spsr_mode_name, Esr, ExceptionClass};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Size of every EL2 stack (and of the guard below it): per-CPU stacks
/// allocated later must use it (see the module documentation).
pub const STACK_SIZE: u64 = 1 << STACK_SHIFT;
/// log2 of [`STACK_SIZE`]; the vector entry tests this bit of SP.
pub const STACK_SHIFT: u32 = 16;
/// Size of the stack the crash report runs on after a stack overflow.
const CRASH_STACK_SIZE: usize = 16 * 1024;

/// Registers saved by the vector entry (layout shared with the assembly).
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub x: [u64; 31],
    /// SP at the moment of the exception (SP_EL2 for current-EL entries).
    pub sp: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<ExceptionFrame>();
const _: () = assert!(FRAME_SIZE == 288 && FRAME_SIZE.is_multiple_of(16));

#[repr(C, align(16))]
struct CrashStack([u8; CRASH_STACK_SIZE]);

#[no_mangle]
#[allow(non_upper_case_globals)]
static mut el2_crash_stack: CrashStack = CrashStack([0; CRASH_STACK_SIZE]);

core::arch::global_asm!(
    r#"
    .macro VENTRY idx
    .balign 0x80
    sub     sp, sp, #{frame}
    // x0 <-> SP swap trick: test bit STACK_SHIFT of the new SP without a
    // scratch register or a memory access.
    add     sp, sp, x0              // sp' = sp + x0
    sub     x0, sp, x0              // x0  = sp
    tbnz    x0, #{shift}, 1f
    sub     x0, sp, x0              // x0  = original x0
    sub     sp, sp, x0              // sp  = sp
    stp     x0, x1, [sp, #0]
    mov     x0, #\idx
    mov     x1, #0
    b       el2_vector_common
1:  // Stack overflow: SP is in the guard. Park the faulting SP and x0 in
    // TPIDR_EL0 / TPIDRRO_EL0 (we never return from here), move to the
    // crash stack.
    msr     tpidr_el0, x0
    sub     x0, sp, x0              // original x0
    msr     tpidrro_el0, x0
    adrp    x0, el2_crash_stack + {crash}
    add     x0, x0, :lo12:el2_crash_stack + {crash}
    mov     sp, x0
    sub     sp, sp, #{frame}
    mrs     x0, tpidrro_el0
    stp     x0, x1, [sp, #0]
    mov     x0, #\idx
    mov     x1, #1
    b       el2_vector_common
    .endm

    .section .text.el2_vectors, "ax"
    .balign 0x800
    .global __el2_vectors
__el2_vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15

// x0 = vector index, x1 = overflow flag; x0/x1 of the interrupted context
// are already at [sp, #0].
el2_vector_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    cbz     x1, 1f
    mrs     x2, tpidr_el0
    b       2f
1:  mov     x2, sp
2:  add     x2, x2, #{frame}        // SP before the entry's sub
    stp     x30, x2, [sp, #240]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [sp, #256]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [sp, #272]
    mov     x2, x1
    mov     x1, x0
    mov     x0, sp
    bl      el2_exception
    ldp     x2, x3, [sp, #256]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldr     x30, [sp, #240]
    ldp     x28, x29, [sp, #224]
    ldp     x26, x27, [sp, #208]
    ldp     x24, x25, [sp, #192]
    ldp     x22, x23, [sp, #176]
    ldp     x20, x21, [sp, #160]
    ldp     x18, x19, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const FRAME_SIZE,
    shift = const STACK_SHIFT,
    crash = const CRASH_STACK_SIZE,
);

/// Which of the 16 vector entries was taken.
pub fn vector_name(index: u64) -> (&'static str, &'static str) {
    let source = match index / 4 {
        0 => "current EL with SP_EL0",
        1 => "current EL with SP_ELx",
        2 => "lower EL, AArch64",
        _ => "lower EL, AArch32",
    };
    let kind = match index % 4 {
        0 => "synchronous",
        1 => "IRQ",
        2 => "FIQ",
        _ => "SError",
    };
    (kind, source)
}

/// Crash nesting depth: a fault while reporting a fault must not recurse.
/// Plain loads/stores, no read-modify-write: this may run with the MMU off,
/// where exclusives are not guaranteed to work.
static DEPTH: AtomicU32 = AtomicU32::new(0);

/// The status `exit()` was asked for when it tried semihosting, so that the
/// undefined-instruction fallback can still report it another way.
pub static EXIT_STATUS: AtomicU8 = AtomicU8::new(0);
pub const EXIT_STATUS_SUCCESS: u8 = 1;
pub const EXIT_STATUS_FAILURE: u8 = 2;

/// Called by the vector entry for every exception taken to EL2.
#[no_mangle]
extern "C" fn el2_exception(frame: &mut ExceptionFrame, index: u64, overflow: u64) {
    let depth = DEPTH.load(Ordering::Relaxed);
    DEPTH.store(depth + 1, Ordering::Relaxed);
    if depth > 0 {
        // Faulted while reporting or exiting: stop without touching anything.
        halt();
    }
    let esr = Esr(frame.esr);

    // `hlt #0xf000` from exit=semihosting when the emulator has semihosting
    // off: an undefined instruction at our own HLT. Fall back to PSCI/halt.
    if index == 4
        && esr.class() == ExceptionClass::Unknown
        && frame.elr == arch::aarch64::semihosting::hlt_address()
    {
        crate::console::emergency_println(format_args!(
            "exit=semihosting: the emulator has semihosting off (QEMU needs \
             -semihosting-config enable=on,target=native); trying PSCI SYSTEM_OFF"
        ));
        let status = match EXIT_STATUS.load(Ordering::Relaxed) {
            EXIT_STATUS_SUCCESS => ExitStatus::Success,
            _ => ExitStatus::Failure,
        };
        crate::console::emergency_println(format_args!(
            "(status was: {})",
            if status == ExitStatus::Success {
                "success"
            } else {
                "failure"
            }
        ));
        psci_off_or_halt();
    }

    let _ = report(frame, index, overflow != 0, esr);
    crate::console::emergency_println(format_args!("HV-EXIT: failure"));
    // The exit path itself may fault (e.g. semihosting off): depth > 0 then
    // stops quietly.
    super::exit(ExitStatus::Failure, crate::options::current_exit_method())
}

fn report(frame: &ExceptionFrame, index: u64, overflow: bool, esr: Esr) -> core::fmt::Result {
    let mut w = crate::console::emergency_writer();
    let (kind, source) = vector_name(index);
    writeln!(w)?;
    writeln!(
        w,
        "*** EXCEPTION at EL2: {kind} from {source} (VBAR_EL2+{:#05x})",
        index * 0x80
    )?;
    if overflow {
        writeln!(
            w,
            "*** EL2 STACK OVERFLOW: SP={:#x} is in the guard below its stack; report made on the crash stack",
            frame.sp
        )?;
    }
    writeln!(w, "ESR_EL2={esr}")?;
    writeln!(
        w,
        "FAR_EL2={:#018x}  ELR_EL2={:#018x}  SPSR_EL2={:#010x} ({}, DAIF={:#x})",
        frame.far,
        frame.elr,
        frame.spsr,
        spsr_mode_name(frame.spsr),
        (frame.spsr >> 6) & 0xf
    )?;
    writeln!(w, "SP={:#018x}  UART={:#x}", frame.sp, platform_uart())?;
    for row in 0..8 {
        for col in 0..4 {
            let i = row * 4 + col;
            if i < 31 {
                write!(w, "x{i:<2}={:#018x}  ", frame.x[i])?;
            }
        }
        writeln!(w)?;
    }
    writeln!(w, "(x29 = frame pointer, x30 = link register)")?;
    Ok(())
}
