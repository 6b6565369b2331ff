//! A 4 KiB MMIO test device for x86 guests at [`TESTDEV_BASE`]: it behaves
//! like a small RAM that lives outside guest RAM, so every access is a
//! decoded MMIO exit. A store of any size keeps its bytes; a load returns
//! the stored bytes (little-endian). Accesses that run past the end read
//! as all ones in the missing bytes and drop them on write (the bus never
//! sends those, but the device does not trust it).

use crate::bus::{BusDevice, IoOutcome};
use crate::regs::AccessSize;

pub const TESTDEV_BASE: u64 = 0xfeb8_0000;
pub const TESTDEV_SIZE: u64 = 0x1000;

pub struct TestDev {
    bytes: [u8; TESTDEV_SIZE as usize],
}

impl Default for TestDev {
    fn default() -> Self {
        TestDev {
            bytes: [0; TESTDEV_SIZE as usize],
        }
    }
}

impl BusDevice for TestDev {
    fn name(&self) -> &'static str {
        "testdev"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
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
    }
}
