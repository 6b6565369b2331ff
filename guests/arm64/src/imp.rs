use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

/// Boot arguments: x0 = DTB address, x4 = command line (our ELF ABI).
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub dtb: u64,
    pub cmdline: u64,
    /// SP_EL1 at entry: 0 when the loader gave no stack (a raw binary or an
    /// Image, entered as QEMU enters one), and `_start` used its own.
    pub entry_sp: u64,
}

impl Boot {
    /// The NUL-terminated command line the loader placed in RAM.
    pub fn cmdline(&self) -> &'static str {
        if self.cmdline == 0 {
            return "";
        }
        let mut n = 0usize;
        // SAFETY: the loader wrote a NUL-terminated string at this address
        // inside our RAM; we stop at the NUL or after 4 KiB.
        unsafe {
            while n < 4096 && core::ptr::read_volatile((self.cmdline as *const u8).add(n)) != 0 {
                n += 1;
            }
            let s = core::slice::from_raw_parts(self.cmdline as *const u8, n);
            core::str::from_utf8(s).unwrap_or("")
        }
    }

    /// The number of `key=N` on the command line, `default` without one
    /// (or when N is not a number).
    pub fn arg(&self, key: &str, default: u64) -> u64 {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The DTB's big-endian magic word, if there is a DTB.
    pub fn dtb_magic(&self) -> Option<u32> {
        if self.dtb == 0 {
            return None;
        }
        Some(u32::from_be(read32(self.dtb)))
    }
}

global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    // The ELF loader sets SP_EL1 and x4 = command line. A raw binary or an
    // Image is entered as QEMU -kernel enters one: x0 = DTB, x1-x3 = 0, no
    // stack (SP 0). Then zero our BSS (the file does not cover it) and use
    // our own stack in it; there is no command-line pointer (x4 = 0).
    mov     x9, sp
    cbnz    x9, 3f
    mov     x4, xzr
    adrp    x10, __bss_start
    add     x10, x10, :lo12:__bss_start
    adrp    x11, __bss_end
    add     x11, x11, :lo12:__bss_end
1:  cmp     x10, x11
    b.hs    2f
    str     xzr, [x10], #8
    b       1b
2:  adrp    x10, __guest_boot_stack_top
    add     x10, x10, :lo12:__guest_boot_stack_top
    mov     sp, x10
3:  mov     x1, x4
    mov     x2, x9
    bl      __guest_entry
4:  wfi
    b       4b

    .section .bss.boot_stack, "aw", @nobits
    .balign 16
    .skip   16384
__guest_boot_stack_top:
"#
);

extern "Rust" {
    fn guest_main(boot: Boot);
}

#[no_mangle]
extern "C" fn __guest_entry(dtb: u64, cmdline: u64, entry_sp: u64) -> ! {
    install_vectors();
    // SAFETY: `guest_main` is defined by the binary through `entry!`.
    unsafe {
        guest_main(Boot {
            dtb,
            cmdline,
            entry_sp,
        })
    };
    system_off()
}

/// Defines the guest's main function: `entry!(main);` with
/// `fn main(boot: Boot)`. Returning powers the VM off.
#[macro_export]
macro_rules! entry {
    ($f:path) => {
        #[no_mangle]
        fn guest_main(boot: $crate::Boot) {
            let f: fn($crate::Boot) = $f;
            f(boot)
        }
    };
}

pub fn read8(a: u64) -> u8 {
    // SAFETY: tests access their own RAM or emulated/unbacked device IPAs;
    // an access the hypervisor does not emulate comes back as an exception.
    unsafe { core::ptr::read_volatile(a as *const u8) }
}
pub fn read16(a: u64) -> u16 {
    // SAFETY: as in read8.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}
pub fn read32(a: u64) -> u32 {
    // SAFETY: as in read8.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}
pub fn read64(a: u64) -> u64 {
    // SAFETY: as in read8.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}
pub fn write8(a: u64, v: u8) {
    // SAFETY: as in read8.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}
pub fn write16(a: u64, v: u16) {
    // SAFETY: as in read8.
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}
pub fn write32(a: u64, v: u32) {
    // SAFETY: as in read8.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}
pub fn write64(a: u64, v: u64) {
    // SAFETY: as in read8.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

/// Console output through the PL011 (each byte is one trapped store).
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            write32(crate::UART_BASE, u32::from(b));
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Uart, $($arg)*);
    }};
}

/// `HVC #0` with SMCCC registers x0..x3; returns x0.
pub fn hvc(x0: u64, x1: u64, x2: u64, x3: u64) -> u64 {
    let r: u64;
    // SAFETY: a hypervisor call; the hypervisor only writes x0 (and may
    // clobber x1-x3 per SMCCC, declared here).
    unsafe {
        asm!("hvc #0", inout("x0") x0 => r, inout("x1") x1 => _, inout("x2") x2 => _,
             inout("x3") x3 => _, options(nostack))
    };
    r
}

/// `SMC #0` (trapped to the hypervisor by HCR_EL2.TSC).
pub fn smc(x0: u64, x1: u64, x2: u64, x3: u64) -> u64 {
    let r: u64;
    // SAFETY: as for `hvc`.
    unsafe {
        asm!("smc #0", inout("x0") x0 => r, inout("x1") x1 => _, inout("x2") x2 => _,
             inout("x3") x3 => _, options(nostack))
    };
    r
}

pub fn system_off() -> ! {
    hvc(crate::PSCI_SYSTEM_OFF, 0, 0, 0);
    println!("SYSTEM_OFF returned");
    exit(3)
}

/// The EXIT hypercall: the VM stops with `code`.
pub fn exit(code: u64) -> ! {
    hvc(crate::HC_EXIT, code, 0, 0);
    loop {
        // SAFETY: waiting for an interrupt has no memory effects.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Reports a failed check and stops the VM with exit code 1.
pub fn fail(what: fmt::Arguments) -> ! {
    println!("FAIL: {}", what);
    exit(1)
}

#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail(format_args!($($arg)*));
        }
    };
}

/// The shared virtio checks report here: `ok: ...`, or a failure that
/// stops the VM at once (as [`check!`] does).
pub struct Checks;

impl guest_virtio::Report for Checks {
    fn check(&mut self, ok: bool, what: fmt::Arguments) {
        if ok {
            println!("ok: {}", what);
        } else {
            fail(what)
        }
    }
    fn say(&mut self, what: fmt::Arguments) {
        println!("{}", what);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("FAIL: panic: {}", info);
    exit(1)
}

// ---------------------------------------------------------------------------
// EL1 exception vectors.

/// State shared with the exception handler (plain memory, no atomics: the
/// MMU is off).
#[repr(C)]
struct Trap {
    /// 1: synchronous exceptions with EC = `expect_ec` are counted and
    /// skipped; 0: every exception is reported as a failure.
    expect_undef: u64,
    expect_ec: u64,
    undef_count: u64,
    last_esr: u64,
    last_elr: u64,
}

static mut TRAP: Trap = Trap {
    expect_undef: 0,
    expect_ec: 0,
    undef_count: 0,
    last_esr: 0,
    last_elr: 0,
};

fn trap() -> *mut Trap {
    &raw mut TRAP
}

/// Counts UNDEFINED exceptions instead of failing on them.
pub fn expect_undefined(on: bool) {
    expect_sync(on, 0);
}

/// Counts synchronous exceptions with class `ec` (and skips the
/// instruction) instead of failing on them.
pub fn expect_sync(on: bool, ec: u64) {
    // SAFETY: single vCPU, no concurrent access; volatile so the handler's
    // view is the memory's.
    unsafe {
        core::ptr::write_volatile(&raw mut (*trap()).expect_ec, ec);
        core::ptr::write_volatile(&raw mut (*trap()).expect_undef, u64::from(on));
    }
}

/// [`expect_sync`] class that matches every synchronous exception.
pub const ANY_EC: u64 = u64::MAX;

/// (number of UNDEFINED exceptions taken, last ESR_EL1, last ELR_EL1).
pub fn undefined_seen() -> (u64, u64, u64) {
    // SAFETY: as in expect_undefined.
    unsafe {
        let t = trap();
        (
            core::ptr::read_volatile(&raw const (*t).undef_count),
            core::ptr::read_volatile(&raw const (*t).last_esr),
            core::ptr::read_volatile(&raw const (*t).last_elr),
        )
    }
}

global_asm!(
    r#"
    .macro VEC kind
    .balign 0x80
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    mov     x0, #\kind
    b       __guest_vec_common
    .endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global __guest_vectors
__guest_vectors:
    VEC 0
    VEC 1
    VEC 2
    VEC 3
    VEC 4
    VEC 5
    VEC 6
    VEC 7
    VEC 8
    VEC 9
    VEC 10
    VEC 11
    VEC 12
    VEC 13
    VEC 14
    VEC 15

__guest_vec_common:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    bl      __guest_exception
    msr     elr_el1, x0
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    add     sp, sp, #256
    eret
"#
);

extern "C" {
    static __guest_vectors: u8;
}

/// Points this vCPU's VBAR_EL1 at the shared vector table (secondary
/// vCPUs start without one).
pub(crate) fn install_vectors_here() {
    install_vectors();
}

fn install_vectors() {
    let v = &raw const __guest_vectors as u64;
    // SAFETY: VBAR_EL1 points at a valid, 2 KiB aligned vector table.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) v, options(nostack)) };
}

/// Returns the address to resume at.
#[no_mangle]
extern "C" fn __guest_exception(kind: u64, esr: u64, elr: u64, far: u64) -> u64 {
    // IRQ from the current EL (SP_EL0 or SP_ELx): the GIC's, through the
    // handler the test installed.
    if kind == 1 || kind == 5 {
        if crate::gic::dispatch_irqs() {
            return elr;
        }
    }
    let t = trap();
    // SAFETY: see expect_undefined.
    let (expect, ec) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*t).expect_undef),
            core::ptr::read_volatile(&raw const (*t).expect_ec),
        )
    };
    if kind == 4 && (esr >> 26 == ec || ec == ANY_EC) && expect != 0 {
        // SAFETY: as above.
        unsafe {
            let n = core::ptr::read_volatile(&raw const (*t).undef_count);
            core::ptr::write_volatile(&raw mut (*t).undef_count, n + 1);
            core::ptr::write_volatile(&raw mut (*t).last_esr, esr);
            core::ptr::write_volatile(&raw mut (*t).last_elr, elr);
        }
        return elr + 4;
    }
    println!(
        "FAIL: unexpected exception: vector {} ESR_EL1={:#x} (EC {:#x}) ELR_EL1={:#x} FAR_EL1={:#x}",
        kind,
        esr,
        esr >> 26,
        elr,
        far
    );
    exit(2)
}
