//! An Arm PrimeCell PL011 UART (Arm DDI 0183, PL011 TRM r1p5; behaviour
//! cross-checked with QEMU hw/char/pl011.c), enough for Linux's amba-pl011
//! driver and earlycon, and for polling drivers.
//!
//! Transmission is instantaneous (FR.TXFE always set, TXFF never). Interrupt
//! status is level-computed: RX while the receive FIFO holds data, TX after
//! each transmitted character until cleared through ICR (as in QEMU). With
//! an interrupt line ([`Pl011::with_line`]; SPI 33 on arm64 boards) the
//! combined output UARTINTR (any unmasked status bit) drives it as a level.

use crate::bus::{BusDevice, IoOutcome};
use crate::devices::{LineOutput, RxFifo, RX_FIFO_LEN};
use crate::irq::IrqLine;
use crate::regs::AccessSize;

/// Base address and size on QEMU's `virt` machine; ours uses the same.
pub const PL011_BASE: u64 = 0x0900_0000;
pub const PL011_SIZE: u64 = 0x1000;

// Register offsets (TRM §3.2).
const DR: u64 = 0x000;
const RSR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;

const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;
const LCR_H_FEN: u32 = 1 << 4;
const CR_LBE: u32 = 1 << 7;
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_OE: u32 = 1 << 10;

/// PeriphID0-3 then PCellID0-3 at 0xFE0..0xFFC (TRM §3.3.14-15), QEMU's values.
const ID: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

pub struct Pl011 {
    out: LineOutput,
    rx: RxFifo,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ilpr: u32,
    dmacr: u32,
    /// Latched interrupt bits (TX, overrun); RX is computed from the FIFO.
    latched: u32,
    /// UARTINTR's line and the level it was last driven to.
    line: Option<IrqLine>,
    driven: bool,
}

impl Pl011 {
    pub fn new(out: LineOutput) -> Pl011 {
        Pl011 {
            out,
            rx: RxFifo::new(),
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // Reset value: TXE and RXE set, UART disabled (TRM §3.3.8).
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
            ilpr: 0,
            dmacr: 0,
            latched: 0,
            line: None,
            driven: false,
        }
    }

    /// The UART with UARTINTR wired to `line`.
    pub fn with_line(out: LineOutput, line: IrqLine) -> Pl011 {
        Pl011 {
            line: Some(line),
            ..Pl011::new(out)
        }
    }

    /// Whether the guest waits for input with the receive interrupt
    /// unmasked (and the line wired): a byte typed for it can wake it.
    pub fn waits_for_input(&self) -> bool {
        self.line.is_some() && self.imsc & INT_RX != 0
    }

    /// Drives the interrupt line to UARTINTR when it changed.
    fn update_line(&mut self) {
        let level = self.irq_line();
        if let Some(l) = &self.line {
            if level != self.driven {
                self.driven = level;
                l.set(level);
            }
        }
    }

    fn rx_capacity(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            RX_FIFO_LEN
        } else {
            1
        }
    }

    /// Host → guest input; returns how many bytes were accepted.
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
        if !ok {
            self.latched |= INT_OE;
        }
        ok
    }

    fn ris(&self) -> u32 {
        let rx = if self.rx.is_empty() { 0 } else { INT_RX };
        self.latched | rx
    }

    /// The combined interrupt output (UARTINTR): any unmasked status bit.
    pub fn irq_line(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= self.rx_capacity() {
            fr |= FR_RXFF;
        }
        fr
    }

    pub fn flush(&mut self) {
        self.out.flush();
    }
}

impl BusDevice for Pl011 {
    fn name(&self) -> &'static str {
        "pl011"
    }

    fn read(&mut self, offset: u64, _size: AccessSize) -> u64 {
        let v = match offset {
            DR => self.rx.pop().map_or(0, u32::from),
            RSR => u32::from(self.latched & INT_OE != 0) << 3,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris(),
            MIS => self.ris() & self.imsc,
            DMACR => self.dmacr,
            0xfe0..=0xffc if offset.is_multiple_of(4) => {
                u32::from(ID[((offset - 0xfe0) / 4) as usize])
            }
            _ => 0,
        };
        if offset == DR {
            self.update_line();
        }
        u64::from(v)
    }

    fn write(&mut self, offset: u64, _size: AccessSize, value: u64) -> IoOutcome {
        let v = value as u32;
        match offset {
            DR => {
                let b = v as u8;
                if self.cr & CR_LBE != 0 {
                    self.receive(b);
                } else {
                    self.out.push(b);
                }
                self.latched |= INT_TX;
            }
            RSR => self.latched &= !INT_OE, // error clear register
            ILPR => self.ilpr = v & 0xff,
            IBRD => self.ibrd = v & 0xffff,
            FBRD => self.fbrd = v & 0x3f,
            LCR_H => {
                if (v ^ self.lcr_h) & LCR_H_FEN != 0 {
                    // Changing FEN flushes the FIFOs (TRM §3.3.7).
                    self.rx.clear();
                }
                self.lcr_h = v & 0xff;
            }
            CR => self.cr = v & 0xff87,
            IFLS => self.ifls = v & 0x3f,
            IMSC => self.imsc = v & 0x7ff,
            ICR => self.latched &= !v,
            DMACR => self.dmacr = v & 0x7,
            _ => {} // FR, RIS, MIS, IDs: read-only.
        }
        self.update_line();
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CollectSink;
    use alloc::sync::Arc;
    use AccessSize::B4;

    fn uart() -> (Pl011, Arc<CollectSink>) {
        let sink = Arc::new(CollectSink::default());
        (
            Pl011::new(LineOutput::new("arm".into(), sink.clone())),
            sink,
        )
    }

    #[test]
    fn earlycon_output() {
        let (mut u, sink) = uart();
        for &b in b"Booting Linux\n" {
            while u.read(FR, B4) as u32 & (1 << 5) != 0 {} // TXFF
            u.write(DR, B4, u64::from(b));
        }
        assert_eq!(sink.lines(), ["arm: Booting Linux"]);
    }

    #[test]
    fn id_registers() {
        let (mut u, _) = uart();
        let id: Vec<u8> = (0..8).map(|i| u.read(0xfe0 + 4 * i, B4) as u8).collect();
        assert_eq!(id, ID);
        // amba bus probe: PeriphID part number 0x011, designer 0x41 (Arm).
        let pid = u.read(0xfe0, B4) | u.read(0xfe4, B4) << 8 | u.read(0xfe8, B4) << 16;
        assert_eq!(pid & 0xfff, 0x011);
        assert_eq!((pid >> 12) & 0xff, 0x41);
        assert_eq!(u.read(0xfe2, B4), 0); // misaligned: reads as zero
    }

    #[test]
    fn interrupts_and_loopback() {
        let (mut u, sink) = uart();
        assert!(!u.irq_line());
        u.write(IMSC, B4, u64::from(INT_TX | INT_RX));
        u.write(DR, B4, u64::from(b'a'));
        assert!(u.irq_line());
        assert_eq!(u.read(MIS, B4) as u32, INT_TX);
        u.write(ICR, B4, u64::from(INT_TX));
        assert!(!u.irq_line());
        // Loopback: transmitted data arrives in the RX FIFO, not the console.
        u.write(CR, B4, u64::from(CR_LBE | 0x301));
        u.write(DR, B4, u64::from(b'z'));
        assert_eq!(u.read(RIS, B4) as u32 & INT_RX, INT_RX);
        assert_eq!(u.read(FR, B4) as u32 & FR_RXFE, 0);
        assert_eq!(u.read(DR, B4), u64::from(b'z'));
        assert_eq!(u.read(FR, B4) as u32 & FR_RXFE, FR_RXFE);
        u.flush();
        assert_eq!(sink.lines(), ["arm: a"]);
    }

    #[derive(Default)]
    struct Levels(spin::Mutex<Vec<bool>>);

    impl crate::irq::IrqSink for Levels {
        fn set_line(&self, _line: u32, level: bool) {
            self.0.lock().push(level);
        }
        fn pulse_line(&self, _line: u32) {}
        fn signal_msi(&self, _msi: crate::irq::Msi) -> bool {
            false
        }
    }

    /// UARTINTR drives the line: TX after a character until ICR, RX while
    /// the FIFO holds input, only where IMSC unmasks them.
    #[test]
    fn interrupt_line_follows_uartintr() {
        let levels = Arc::new(Levels::default());
        let sink = Arc::new(CollectSink::default());
        let mut u = Pl011::with_line(
            LineOutput::new("arm".into(), sink),
            IrqLine::new(levels.clone(), 33, crate::irq::Trigger::Level),
        );
        u.write(DR, B4, u64::from(b'a'));
        assert!(levels.0.lock().is_empty(), "TX masked");
        u.write(IMSC, B4, u64::from(INT_TX | INT_RX));
        u.write(ICR, B4, u64::from(INT_TX));
        u.push_input(b"k");
        u.read(DR, B4);
        u.read(FR, B4);
        assert_eq!(*levels.0.lock(), [true, false, true, false]);
    }

    #[test]
    fn rx_fifo_and_overrun() {
        let (mut u, _) = uart();
        assert_eq!(u.push_input(b"ab"), 1); // FIFO off: one-character holding register
        assert_eq!(u.read(RSR, B4), 0x8);
        u.write(RSR, B4, 0);
        assert_eq!(u.read(RSR, B4), 0);
        u.write(LCR_H, B4, u64::from(LCR_H_FEN | 0x60));
        assert_eq!(u.read(FR, B4) as u32 & FR_RXFE, FR_RXFE); // flushed
        assert_eq!(u.push_input(&[b'x'; 20]), 16);
        assert_eq!(u.read(FR, B4) as u32 & FR_RXFF, FR_RXFF);
        assert_eq!(u.read(RIS, B4) as u32 & INT_OE, INT_OE);
        for _ in 0..16 {
            assert_eq!(u.read(DR, B4), u64::from(b'x'));
        }
        assert_eq!(u.read(DR, B4), 0);
    }

    #[test]
    fn hostile_offsets() {
        let (mut u, sink) = uart();
        for off in [0x4c, 0x800, 0xffd, 0x1000, u64::MAX] {
            assert_eq!(u.read(off, B4), 0);
            assert_eq!(u.write(off, B4, u64::MAX), IoOutcome::Done);
        }
        u.write(FR, B4, 0);
        assert_eq!(u.read(FR, B4) as u32, FR_TXFE | FR_RXFE);
        u.write(IBRD, B4, u64::MAX);
        assert_eq!(u.read(IBRD, B4), 0xffff);
        assert!(sink.lines().is_empty());
    }
}
