//! A 16550A UART (National Semiconductor PC16550D datasheet; behaviour
//! cross-checked with QEMU hw/char/serial.c), enough for Linux's 8250 driver
//! (including its autoconfig probes: scratch register, FIFO detection through
//! IIR bits 7:6, loopback through MCR/MSR) and for polling drivers.
//!
//! Transmission is instantaneous: THR is always empty (LSR.THRE and TEMT
//! set), transmitted bytes go to a [`LineOutput`]. The interrupt output
//! ([`Uart16550::irq_line`]: a pending interrupt gated by MCR.OUT2, as on
//! PC boards) drives an [`IrqLine`] when one is wired (COM1's IRQ 4), after
//! every access and every byte received.

use crate::bus::{BusDevice, IoOutcome};
use crate::devices::{LineOutput, RxFifo, RX_FIFO_LEN};
use crate::irq::IrqLine;
use crate::regs::AccessSize;

/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
pub const UART_PORTS: u64 = 8;

// Register bits (PC16550D §8).
const IER_RDI: u8 = 1 << 0;
const IER_THRI: u8 = 1 << 1;
const IER_RLSI: u8 = 1 << 2;
const IER_MSI: u8 = 1 << 3;
const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_FIFO_ON: u8 = 0xc0;
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;

pub struct Uart16550 {
    out: LineOutput,
    rx: RxFifo,
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    overrun: bool,
    /// MSR delta bits (3:0), cleared by reading MSR.
    msr_delta: u8,
    /// THR-empty interrupt condition (cleared by reading IIR or writing THR).
    thr_ipending: bool,
    line: Option<IrqLine>,
    /// The level `line` was last driven to.
    driven: bool,
}

impl Uart16550 {
    pub fn new(out: LineOutput) -> Uart16550 {
        Uart16550 {
            out,
            rx: RxFifo::new(),
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            // 115200 baud from the 1.8432 MHz clock, a typical firmware default.
            dll: 1,
            dlm: 0,
            overrun: false,
            msr_delta: 0,
            thr_ipending: false,
            line: None,
            driven: false,
        }
    }

    /// The UART with its interrupt output wired to `line`.
    pub fn with_line(out: LineOutput, line: IrqLine) -> Uart16550 {
        Uart16550 {
            line: Some(line),
            ..Uart16550::new(out)
        }
    }

    /// Drives the line to the interrupt output when it changed.
    fn update_line(&mut self) {
        let level = self.irq_line();
        if let Some(l) = &self.line {
            if level != self.driven {
                self.driven = level;
                l.set(level);
            }
        }
    }

    /// Whether the guest waits for input with the receive interrupt
    /// enabled and reaching the line (IER.RDI, MCR.OUT2, a wired line): a
    /// byte typed for it can wake it.
    pub fn waits_for_input(&self) -> bool {
        self.line.is_some() && self.ier & IER_RDI != 0 && self.mcr & MCR_OUT2 != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fcr & FCR_ENABLE != 0 {
            RX_FIFO_LEN
        } else {
            1
        }
    }

    /// Host → guest input; returns how many bytes were accepted. Bytes that
    /// do not fit set the overrun error, as on the real chip.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.rx.push_slice(bytes, self.rx_capacity());
        if n < bytes.len() {
            // The byte that did not fit is lost: overrun, as on the chip.
            self.receive(bytes[n]);
        }
        self.update_line();
        n
    }

    fn receive(&mut self, b: u8) -> bool {
        let ok = self.rx.push(b, self.rx_capacity());
        self.overrun |= !ok;
        ok
    }

    fn pop(&mut self) -> u8 {
        self.rx.pop().unwrap_or(0)
    }

    fn clear_rx(&mut self) {
        self.rx.clear();
    }

    fn lsr(&self) -> u8 {
        let mut v = LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.overrun {
            v |= LSR_OE;
        }
        v
    }

    /// Modem status lines: wired back from MCR in loopback mode (PC16550D
    /// §8.6.3), otherwise a connected terminal (DCD, DSR, CTS) as in QEMU.
    fn msr_lines(mcr: u8) -> u8 {
        if mcr & MCR_LOOP != 0 {
            let mut v = 0;
            if mcr & MCR_RTS != 0 {
                v |= MSR_CTS;
            }
            if mcr & MCR_DTR != 0 {
                v |= MSR_DSR;
            }
            if mcr & MCR_OUT1 != 0 {
                v |= MSR_RI;
            }
            if mcr & MCR_OUT2 != 0 {
                v |= MSR_DCD;
            }
            v
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        }
    }

    /// The highest-priority pending interrupt ID (PC16550D Table IV).
    fn iir_id(&self) -> u8 {
        if self.ier & IER_RLSI != 0 && self.overrun {
            IIR_RLSI
        } else if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr_delta != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    /// The level of the UART's interrupt output as seen on a PC: an
    /// interrupt is pending and OUT2 (the IRQ enable on PC boards) is set.
    pub fn irq_line(&self) -> bool {
        self.iir_id() != IIR_NO_INT && self.mcr & MCR_OUT2 != 0
    }

    fn write_thr(&mut self, b: u8) {
        if self.mcr & MCR_LOOP != 0 {
            self.receive(b);
        } else {
            self.out.push(b);
        }
        // Sent at once: THR is empty again.
        self.thr_ipending = true;
    }

    fn write_mcr(&mut self, v: u8) {
        let v = v & 0x1f;
        let old = Self::msr_lines(self.mcr);
        let new = Self::msr_lines(v);
        let changed = old ^ new;
        // DCTS, DDSR, DDCD on any change; TERI on RI's trailing edge.
        self.msr_delta |= (changed & (MSR_CTS | MSR_DSR | MSR_DCD)) >> 4;
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_delta |= 1 << 2;
        }
        self.mcr = v;
    }

    /// Emits any partial output line (when the VM stops).
    pub fn flush(&mut self) {
        self.out.flush();
    }
}

impl BusDevice for Uart16550 {
    fn name(&self) -> &'static str {
        "uart16550"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        let v = self.read_reg(offset, size);
        self.update_line();
        v
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        let r = self.write_reg(offset, size, value);
        self.update_line();
        r
    }
}

impl Uart16550 {
    fn read_reg(&mut self, offset: u64, _size: AccessSize) -> u64 {
        let dlab = self.lcr & LCR_DLAB != 0;
        let v = match offset {
            0 if dlab => self.dll,
            0 => self.pop(),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let id = self.iir_id();
                if id == IIR_THRI {
                    // Reading IIR with THRE as the source clears it (§8.4).
                    self.thr_ipending = false;
                }
                let fifo = if self.fcr & FCR_ENABLE != 0 {
                    IIR_FIFO_ON
                } else {
                    0
                };
                id | fifo
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr();
                self.overrun = false;
                v
            }
            6 => {
                let v = Self::msr_lines(self.mcr) | self.msr_delta;
                self.msr_delta = 0;
                v
            }
            7 => self.scr,
            _ => 0xff,
        };
        u64::from(v)
    }

    fn write_reg(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let v = value as u8;
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = v,
            0 => self.write_thr(v),
            1 if dlab => self.dlm = v,
            1 => {
                let v = v & 0x0f;
                let enabled = v & !self.ier;
                self.ier = v;
                if enabled & IER_THRI != 0 {
                    // THR is empty, so enabling THRI raises it (QEMU, and
                    // Linux's 8250 relies on this).
                    self.thr_ipending = true;
                }
            }
            2 => {
                if (v ^ self.fcr) & FCR_ENABLE != 0 || v & FCR_CLEAR_RX != 0 {
                    self.clear_rx();
                }
                // Keep the enable and trigger-level bits; the clear bits self-reset.
                self.fcr = v & 0xc9;
            }
            3 => self.lcr = v,
            4 => self.write_mcr(v),
            7 => self.scr = v,
            _ => {} // LSR, MSR: read-only.
        }
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CollectSink;
    use alloc::sync::Arc;
    use AccessSize::B1;

    fn uart() -> (Uart16550, Arc<CollectSink>) {
        let sink = Arc::new(CollectSink::default());
        (
            Uart16550::new(LineOutput::new("guest".into(), sink.clone())),
            sink,
        )
    }

    fn rd(u: &mut Uart16550, r: u64) -> u8 {
        u.read(r, B1) as u8
    }

    fn wr(u: &mut Uart16550, r: u64, v: u8) {
        assert_eq!(u.write(r, B1, u64::from(v)), IoOutcome::Done);
    }

    #[test]
    fn polled_output_becomes_lines() {
        let (mut u, sink) = uart();
        for &b in b"Hello\nworld" {
            while rd(&mut u, 5) & LSR_THRE == 0 {}
            wr(&mut u, 0, b);
        }
        assert_eq!(sink.lines(), ["guest: Hello"]);
        u.flush();
        assert_eq!(sink.lines(), ["guest: Hello", "guest: world"]);
    }

    #[test]
    fn dlab_switches_divisor_latch() {
        let (mut u, sink) = uart();
        wr(&mut u, 3, 0x80);
        wr(&mut u, 0, 0x0c);
        wr(&mut u, 1, 0x00);
        assert_eq!(rd(&mut u, 0), 0x0c);
        wr(&mut u, 3, 0x03); // 8N1, DLAB off
        assert_eq!(rd(&mut u, 3), 0x03);
        assert_eq!(rd(&mut u, 1), 0); // IER, not DLM
        wr(&mut u, 3, 0x83);
        assert_eq!(rd(&mut u, 0), 0x0c);
        assert!(sink.lines().is_empty()); // divisor writes are not output
    }

    #[test]
    fn linux_autoconfig_probes() {
        let (mut u, _) = uart();
        // Scratch register.
        wr(&mut u, 7, 0xa5);
        assert_eq!(rd(&mut u, 7), 0xa5);
        // IER write/read-back test: only the low nibble sticks.
        wr(&mut u, 1, 0xff);
        assert_eq!(rd(&mut u, 1), 0x0f);
        wr(&mut u, 1, 0);
        // FIFO detection: 16550A reports 0b11 in IIR bits 7:6.
        wr(&mut u, 2, 0x01);
        assert_eq!(rd(&mut u, 2) & 0xc0, 0xc0);
        wr(&mut u, 2, 0x00);
        assert_eq!(rd(&mut u, 2) & 0xc0, 0);
        // Loopback: MCR = LOOP|OUT2|RTS gives MSR high nibble 0x90.
        wr(&mut u, 4, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(rd(&mut u, 6) & 0xf0, 0x90);
        wr(&mut u, 4, MCR_LOOP);
        assert_eq!(rd(&mut u, 6) & 0xf0, 0);
    }

    #[test]
    fn loopback_and_input() {
        let (mut u, sink) = uart();
        wr(&mut u, 2, 0x07); // FIFO on, cleared
        wr(&mut u, 4, MCR_LOOP);
        wr(&mut u, 0, b'x');
        assert_eq!(rd(&mut u, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, 0), b'x');
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
        wr(&mut u, 4, 0);
        assert!(sink.lines().is_empty());
        // Host input fills the FIFO; the 17th byte overruns.
        assert_eq!(u.push_input(&[b'a'; 20]), 16);
        assert_eq!(rd(&mut u, 5) & (LSR_DR | LSR_OE), LSR_DR | LSR_OE);
        assert_eq!(rd(&mut u, 5) & LSR_OE, 0); // cleared by the read
        for _ in 0..16 {
            assert_eq!(rd(&mut u, 0), b'a');
        }
        assert_eq!(rd(&mut u, 0), 0); // empty FIFO reads harmlessly
                                      // Without FIFO the buffer is one byte.
        wr(&mut u, 2, 0);
        assert_eq!(u.push_input(b"ab"), 1);
    }

    #[test]
    fn interrupt_identification() {
        let (mut u, _) = uart();
        assert_eq!(rd(&mut u, 2), IIR_NO_INT);
        wr(&mut u, 4, MCR_OUT2);
        // Enabling THRI with THR empty raises it; reading IIR clears it.
        wr(&mut u, 1, IER_THRI);
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, 2), IIR_THRI);
        assert_eq!(rd(&mut u, 2), IIR_NO_INT);
        assert!(!u.irq_line());
        // Writing THR raises it again.
        wr(&mut u, 0, b'a');
        assert_eq!(rd(&mut u, 2), IIR_THRI);
        // Received data has priority over THRE.
        wr(&mut u, 2, FCR_ENABLE);
        wr(&mut u, 1, IER_THRI | IER_RDI | IER_RLSI);
        u.push_input(b"zz");
        assert_eq!(rd(&mut u, 2), IIR_RDI | IIR_FIFO_ON);
        assert_eq!(rd(&mut u, 2), IIR_RDI | IIR_FIFO_ON); // level: until read
                                                          // Overrun (line status) is highest.
        assert_eq!(u.push_input(&[b'q'; 15]), 14);
        assert_eq!(rd(&mut u, 2), IIR_RLSI | IIR_FIFO_ON);
        rd(&mut u, 5);
        assert_eq!(rd(&mut u, 2), IIR_RDI | IIR_FIFO_ON);
        // OUT2 gates the line on a PC.
        wr(&mut u, 4, 0);
        assert!(!u.irq_line());
        for _ in 0..16 {
            rd(&mut u, 0);
        }
        // Modem status deltas: leaving "terminal connected" for loopback
        // with only DTR changes CTS and DCD (DCTS, DDCD).
        wr(&mut u, 1, IER_MSI);
        wr(&mut u, 4, MCR_LOOP | MCR_DTR);
        assert_eq!(rd(&mut u, 2), IIR_MSI | IIR_FIFO_ON);
        assert_eq!(rd(&mut u, 6), MSR_DSR | 0x9);
        assert_eq!(rd(&mut u, 2), IIR_NO_INT | IIR_FIFO_ON);
        // RI trailing edge sets TERI.
        wr(&mut u, 4, MCR_LOOP | MCR_OUT1);
        rd(&mut u, 6);
        wr(&mut u, 4, MCR_LOOP);
        assert_eq!(rd(&mut u, 6) & 0x4, 0x4);
    }

    #[test]
    fn hostile_offsets_and_values() {
        let (mut u, _) = uart();
        for off in [8u64, 100, u64::MAX] {
            assert_eq!(u.read(off, B1), 0xff);
            assert_eq!(u.write(off, B1, u64::MAX), IoOutcome::Done);
        }
        // LSR/MSR writes are ignored.
        wr(&mut u, 5, 0);
        assert_eq!(rd(&mut u, 5) & LSR_THRE, LSR_THRE);
        wr(&mut u, 6, 0xff);
        assert_eq!(rd(&mut u, 6), 0xb0);
        // Garbage FCR: reserved bits dropped.
        wr(&mut u, 2, 0xff);
        assert_eq!(rd(&mut u, 2) & 0xc0, 0xc0);
        wr(&mut u, 4, 0xff);
        assert_eq!(rd(&mut u, 4), 0x1f);
    }
}
