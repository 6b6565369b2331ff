//! The MMIO test device of the scenarios (x86 at [`TESTDEV_BASE`], arm64 at
//! `vm::ARM64_TESTDEV_BASE`). Its first 4 KiB behave like a small RAM that
//! lives outside guest RAM, so every access is a decoded MMIO exit. A store
//! of any size keeps its bytes; a load returns the stored bytes
//! (little-endian). Accesses that run past the end read as all ones in the
//! missing bytes and drop them on write (the bus never sends those, but the
//! device does not trust it).
//!
//! A device created with an interrupt line ([`TestDev::with_line`], the
//! arm64 board's, SPI 48) has a second 4 KiB page of 32-bit registers at
//! [`IRQ_REGS`] (other widths and offsets: RAZ/WI):
//!
//! | offset | name | |
//! |---|---|---|
//! | 0x00 | `LEVEL` | bit 0 drives the line (read: bit 0 = the line now) |
//! | 0x04 | `EVENTS` | write N: N events; the line is high while any is left, and each EOI of the line takes one (the resample path); read: events left |
//! | 0x08 | `EOIS` | EOIs of the line the device heard of (write: clears) |
//! | 0x0c | `PULSE` | a write sends one edge |
//! | 0x10 | `LINE` | the line's number (arm64 INTID) |
//!
//! The line is `LEVEL | (EVENTS > 0)`.

use crate::bus::{BusDevice, IoOutcome};
use crate::irq::IrqLine;
use crate::regs::AccessSize;

pub const TESTDEV_BASE: u64 = 0xfeb8_0000;
/// The RAM-like page.
pub const TESTDEV_SIZE: u64 = 0x1000;
/// The interrupt registers' page (devices with a line), after the RAM page.
pub const IRQ_REGS: u64 = 0x1000;
/// Bytes a device with a line claims.
pub const TESTDEV_SIZE_WITH_IRQ: u64 = 0x2000;
pub const REG_LEVEL: u64 = 0x00;
pub const REG_EVENTS: u64 = 0x04;
pub const REG_EOIS: u64 = 0x08;
pub const REG_PULSE: u64 = 0x0c;
pub const REG_LINE: u64 = 0x10;

pub struct TestDev {
    bytes: [u8; TESTDEV_SIZE as usize],
    irq: Option<TestIrq>,
}

struct TestIrq {
    line: IrqLine,
    level: bool,
    events: u32,
    eois: u32,
    /// What the line was last driven to.
    driven: bool,
}

impl TestIrq {
    fn update(&mut self) {
        let want = self.level || self.events > 0;
        if want != self.driven {
            self.driven = want;
            self.line.set(want);
        }
    }
}

impl Default for TestDev {
    fn default() -> Self {
        TestDev {
            bytes: [0; TESTDEV_SIZE as usize],
            irq: None,
        }
    }
}

impl TestDev {
    /// The device with its interrupt registers driving `line`.
    pub fn with_line(line: IrqLine) -> TestDev {
        TestDev {
            irq: Some(TestIrq {
                line,
                level: false,
                events: 0,
                eois: 0,
                driven: false,
            }),
            ..TestDev::default()
        }
    }

    fn reg_read(&self, off: u64, size: AccessSize) -> u64 {
        let Some(i) = &self.irq else {
            return size.mask();
        };
        if size != AccessSize::B4 || !off.is_multiple_of(4) {
            return 0;
        }
        u64::from(match off {
            REG_LEVEL => u32::from(i.driven),
            REG_EVENTS => i.events,
            REG_EOIS => i.eois,
            REG_LINE => i.line.line(),
            _ => 0,
        })
    }

    fn reg_write(&mut self, off: u64, size: AccessSize, value: u64) {
        let Some(i) = &mut self.irq else { return };
        if size != AccessSize::B4 || !off.is_multiple_of(4) {
            return;
        }
        let v = value as u32;
        match off {
            REG_LEVEL => i.level = v & 1 != 0,
            REG_EVENTS => i.events = v,
            REG_EOIS => i.eois = 0,
            REG_PULSE => i.line.pulse(),
            _ => {}
        }
        i.update();
    }
}

impl BusDevice for TestDev {
    fn name(&self) -> &'static str {
        "testdev"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        if let Some(off) = offset.checked_sub(IRQ_REGS) {
            return self.reg_read(off, size);
        }
        let mut v = [0xffu8; 8];
        for (i, b) in v.iter_mut().take(size.bytes()).enumerate() {
            if let Some(x) = offset
                .checked_add(i as u64)
                .and_then(|o| self.bytes.get(o as usize))
            {
                *b = *x;
            }
        }
        u64::from_le_bytes(v) & size.mask()
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        if let Some(off) = offset.checked_sub(IRQ_REGS) {
            self.reg_write(off, size, value);
            return IoOutcome::Done;
        }
        for (i, b) in value.to_le_bytes().iter().take(size.bytes()).enumerate() {
            if let Some(x) = offset
                .checked_add(i as u64)
                .and_then(|o| self.bytes.get_mut(o as usize))
            {
                *x = *b;
            }
        }
        IoOutcome::Done
    }

    /// The guest ended an interrupt of our (level) line: one event is
    /// serviced, and the line follows what is left.
    fn irq_eoi(&mut self, line: u32) {
        let Some(i) = &mut self.irq else { return };
        if line != i.line.line() {
            return;
        }
        i.eois = i.eois.wrapping_add(1);
        i.events = i.events.saturating_sub(1);
        i.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessSize::*;

    #[test]
    fn stores_and_returns_values() {
        let mut d = TestDev::default();
        assert_eq!(d.write(0x10, B8, 0x1122_3344_5566_7788), IoOutcome::Done);
        assert_eq!(d.read(0x10, B8), 0x1122_3344_5566_7788);
        assert_eq!(d.read(0x10, B1), 0x88);
        assert_eq!(d.read(0x12, B2), 0x5566);
        d.write(0x11, B1, 0xabcd);
        assert_eq!(d.read(0x10, B4), 0x5566_cd88);
        // Past the end: missing bytes read as ones, writes dropped; offsets
        // that overflow do not panic.
        d.write(0xffe, B4, 0x0102_0304);
        assert_eq!(d.read(0xffe, B4), 0xffff_0304);
        assert_eq!(d.read(u64::MAX, B8), u64::MAX);
        d.write(u64::MAX - 2, B8, 0);
        // Without a line, the register page reads as all ones (as if
        // unclaimed) and ignores writes.
        assert_eq!(d.read(IRQ_REGS + REG_LINE, B4), 0xffff_ffff);
        d.write(IRQ_REGS + REG_LEVEL, B4, 1);
    }

    #[derive(Default)]
    struct Lines(spin::Mutex<Vec<(u32, &'static str)>>);

    impl crate::irq::IrqSink for Lines {
        fn set_line(&self, line: u32, level: bool) {
            self.0
                .lock()
                .push((line, if level { "high" } else { "low" }));
        }
        fn pulse_line(&self, line: u32) {
            self.0.lock().push((line, "pulse"));
        }
        fn signal_msi(&self, _msi: crate::irq::Msi) -> bool {
            false
        }
    }

    #[test]
    fn interrupt_registers_drive_the_line_and_hear_eois() {
        use alloc::sync::Arc;
        let lines = Arc::new(Lines::default());
        let line = IrqLine::new(lines.clone(), 48, crate::irq::Trigger::Level);
        let mut d = TestDev::with_line(line);
        let r = |d: &mut TestDev, off| d.read(IRQ_REGS + off, B4);
        assert_eq!(r(&mut d, REG_LINE), 48);
        d.write(IRQ_REGS + REG_LEVEL, B4, 0xff);
        assert_eq!(r(&mut d, REG_LEVEL), 1);
        // EOIs while the level is held: counted, the line stays high.
        d.irq_eoi(48);
        d.irq_eoi(47); // not ours
        assert_eq!(r(&mut d, REG_EOIS), 1);
        d.write(IRQ_REGS + REG_LEVEL, B4, 0);
        assert_eq!(r(&mut d, REG_LEVEL), 0);
        // Three events: the line stays high until the third EOI.
        d.write(IRQ_REGS + REG_EVENTS, B4, 3);
        d.irq_eoi(48);
        d.irq_eoi(48);
        assert_eq!((r(&mut d, REG_EVENTS), r(&mut d, REG_LEVEL)), (1, 1));
        d.irq_eoi(48);
        assert_eq!((r(&mut d, REG_EVENTS), r(&mut d, REG_LEVEL)), (0, 0));
        d.irq_eoi(48); // a stray one does not underflow
        assert_eq!(r(&mut d, REG_EOIS), 5);
        d.write(IRQ_REGS + REG_EOIS, B4, 0);
        assert_eq!(r(&mut d, REG_EOIS), 0);
        d.write(IRQ_REGS + REG_PULSE, B4, 0);
        // Other widths and offsets: RAZ/WI.
        d.write(IRQ_REGS + REG_LEVEL, B8, 1);
        d.write(IRQ_REGS + 0x802, B4, 1);
        assert_eq!(d.read(IRQ_REGS + REG_LINE, B2), 0);
        assert_eq!(d.read(IRQ_REGS + 0xffc, B4), 0);
        // The RAM page is unchanged in behaviour.
        d.write(0x10, B4, 0x1234_5678);
        assert_eq!(d.read(0x10, B4), 0x1234_5678);
        // The line moved only when its level changed.
        assert_eq!(
            *lines.0.lock(),
            vec![
                (48, "high"),
                (48, "low"),
                (48, "high"),
                (48, "low"),
                (48, "pulse")
            ]
        );
    }
}
