//! The two devices the kernel itself uses on x86: the COM1 UART (through
//! `uart_16550`, polled) and QEMU's `isa-debug-exit` port.

use super::instr::{inb, outb, outl};
use uart_16550::SerialPort;

pub const COM1: u16 = 0x3f8;
/// Line Status Register offset and its "transmitter empty" bit (TEMT):
/// both the holding register and the shift register are empty.
const LSR: u16 = 5;
const LSR_TEMT: u8 = 1 << 6;

fn com1() -> SerialPort {
    // SAFETY: 0x3F8 is the standard COM1 base on PC platforms; the
    // hypervisor owns the UART (guests only ever see an emulated one).
    unsafe { SerialPort::new(COM1) }
}

/// Programs COM1: 115200 8N1, FIFOs on (what GRUB and Linux consoles use).
pub fn serial_init() {
    com1().init();
    // uart_16550 programs 38400 baud (divisor 3); divisor 1 is 115200
    // (1.8432 MHz / 16). LCR.DLAB opens the divisor latch at +0/+1.
    // SAFETY: COM1 belongs to the hypervisor (see `com1`); these writes
    // only change its line speed, with the 8N1 format kept.
    unsafe {
        super::instr::outb(COM1 + 3, 0x80 | 0x03);
        super::instr::outb(COM1, 1);
        super::instr::outb(COM1 + 1, 0);
        super::instr::outb(COM1 + 3, 0x03);
    }
}

/// Sends one byte, waiting while the transmit holding register is full.
pub fn serial_putc(b: u8) {
    com1().send_raw(b);
}

/// LSR bit 0, Data Ready: the receive buffer holds a byte.
const LSR_DR: u8 = 1 << 0;

/// A byte typed on COM1, if one is waiting (polled: the hypervisor
/// console reads between VM turns).
pub fn serial_getc() -> Option<u8> {
    // SAFETY: COM1 belongs to the hypervisor (see `com1`); reading LSR has
    // no side effect, and reading the receive buffer only when DR is set
    // takes the byte that is there.
    unsafe { (inb(COM1 + LSR) & LSR_DR != 0).then(|| inb(COM1)) }
}

/// Waits until every byte sent so far has left the UART, so that nothing
/// is lost when the emulator exits right after (seen with Bochs).
pub fn serial_flush() {
    for _ in 0..1_000_000 {
        // SAFETY: reading COM1's line status register has no side effects.
        if unsafe { inb(COM1 + LSR) } & LSR_TEMT != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// I/O port of QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Values written for success / failure: QEMU exits with `(v << 1) | 1`,
/// i.e. 33 and 35.
pub const DEBUG_EXIT_SUCCESS: u32 = 0x10;
pub const DEBUG_EXIT_FAILURE: u32 = 0x11;

/// Asks QEMU to exit with `(value << 1) | 1`. Without the device the write
/// is ignored and this returns.
///
/// # Safety
/// Port 0xF4 must not belong to a real device: only call this when the
/// command line asked for `exit=debugexit`.
pub unsafe fn debug_exit(value: u32) {
    // SAFETY: the caller vouches that port 0xF4 is QEMU's debug-exit device.
    unsafe { outl(DEBUG_EXIT_PORT, value) };
}

/// Ends a run under Bochs (kernel option `exit=bochs`): success with the
/// magic breakpoint `xchg bx, bx` (Bochs' `magic_break: enabled=1` stops
/// in its debugger, whose script then quits: status 0), failure with
/// "Shutdown" on port 0x8900 (a Bochs panic: status 1). On anything else
/// both do nothing and the caller halts.
pub fn bochs_exit(success: bool) {
    if success {
        // SAFETY: `xchg bx, bx` only swaps a register with itself.
        unsafe { core::arch::asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) };
    }
    for b in b"Shutdown" {
        // SAFETY: port 0x8900 is Bochs' shutdown port, unused elsewhere.
        unsafe { outb(0x8900, *b) };
    }
}

/// The host's CMOS clock: register B and the time registers (seconds,
/// minutes, hours, day of week, day, month, year, century), read between
/// updates (UIP clear, read twice until both reads agree), for
/// `vmm::x86::rtc::unix_time_of`.
pub fn read_cmos_clock() -> (u8, [u8; 8]) {
    const REGS: [u8; 8] = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32];
    fn read(index: u8) -> u8 {
        // SAFETY: ports 0x70/0x71 select and read a CMOS register; bit 7
        // of the index (NMI disable) is kept clear; the hypervisor is the
        // only user of the host's RTC.
        unsafe {
            super::instr::outb(0x70, index & 0x7f);
            inb(0x71)
        }
    }
    let snapshot = || {
        // Bounded wait for the end of an update cycle (at most ~2 ms).
        for _ in 0..100_000 {
            if read(0x0a) & 0x80 == 0 {
                break;
            }
        }
        REGS.map(read)
    };
    let mut last = snapshot();
    for _ in 0..4 {
        let now = snapshot();
        if now == last {
            break;
        }
        last = now;
    }
    (read(0x0b), last)
}
