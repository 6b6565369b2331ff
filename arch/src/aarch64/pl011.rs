//! Arm PrimeCell UART (PL011), polled.
//!
//! Registers from the PL011 TRM (DDI 0183): UARTDR at +0x00, UARTFR at
//! +0x18 with TXFF (bit 5, transmit FIFO full), RXFE (bit 4, receive FIFO
//! empty) and BUSY (bit 3). The firmware (or QEMU, which needs none) has
//! set the baud rate.

use core::ptr::{read_volatile, write_volatile};

const UARTDR: usize = 0x00;
const UARTFR: usize = 0x18;
const FR_TXFF: u32 = 1 << 5;
const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;

/// A PL011 at a fixed physical (= virtual: identity map) address.
#[derive(Clone, Copy, Debug)]
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the register block of a PL011 that is accessible (MMU
    /// off, or mapped as Device memory) for as long as the value is used.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    pub fn base(&self) -> usize {
        self.base
    }

    fn fr(&self) -> u32 {
        // SAFETY: `new`'s contract: UARTFR is a readable device register.
        unsafe { read_volatile((self.base + UARTFR) as *const u32) }
    }

    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn putc(&self, b: u8) {
        while self.fr() & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: `new`'s contract: UARTDR is a writable device register.
        unsafe { write_volatile((self.base + UARTDR) as *mut u32, b as u32) };
    }

    /// A received byte, if one is waiting (UARTDR bits 7:0; the error
    /// flags in bits 11:8 are dropped).
    pub fn getc(&self) -> Option<u8> {
        if self.fr() & FR_RXFE != 0 {
            return None;
        }
        // SAFETY: `new`'s contract: UARTDR is a readable device register;
        // the FIFO holds a byte (RXFE clear), which the read takes.
        Some(unsafe { read_volatile((self.base + UARTDR) as *const u32) } as u8)
    }

    /// Waits until every queued byte has left the transmitter (before
    /// powering off, so the last line is not lost).
    pub fn flush(&self) {
        while self.fr() & FR_BUSY != 0 {
            core::hint::spin_loop();
        }
    }
}
