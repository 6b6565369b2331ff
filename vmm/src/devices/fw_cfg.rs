//! QEMU's firmware configuration interface, legacy I/O-port form (QEMU
//! docs/specs/fw_cfg.rst): a 16-bit write to the selector port picks an item,
//! byte reads from the data port return it sequentially, and reads past an
//! item's end (or of an unknown item) return 0. No DMA interface (the ID item
//! says so). Items: signature "QEMU", ID, RAM size, number of CPUs, the
//! command line, and an empty file directory.

use alloc::vec::Vec;

use crate::bus::{BusDevice, IoOutcome};
use crate::regs::AccessSize;

/// Selector port; the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;
pub const FW_CFG_PORTS: u64 = 2;

// Item keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h).
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Selector bit 14: the deprecated write channel; ignored for lookup.
const WRITE_CHANNEL: u16 = 0x4000;

pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    /// Index into `items`, or `None` for an unknown key.
    current: Option<usize>,
    offset: usize,
}

impl FwCfg {
    pub fn new(ram_size: u64, cpus: u16, cmdline: &str) -> FwCfg {
        let mut cmd = Vec::from(cmdline.as_bytes());
        cmd.push(0);
        let items = alloc::vec![
            (FW_CFG_SIGNATURE, Vec::from(&b"QEMU"[..])),
            // Bit 0: traditional interface; bit 1 (DMA) clear.
            (FW_CFG_ID, Vec::from(&1u32.to_le_bytes()[..])),
            (FW_CFG_RAM_SIZE, Vec::from(&ram_size.to_le_bytes()[..])),
            (FW_CFG_NB_CPUS, Vec::from(&cpus.to_le_bytes()[..])),
            (FW_CFG_MAX_CPUS, Vec::from(&cpus.to_le_bytes()[..])),
            (
                FW_CFG_CMDLINE_SIZE,
                Vec::from(&(cmd.len() as u32).to_le_bytes()[..])
            ),
            (FW_CFG_CMDLINE_DATA, cmd),
            // The file directory's count is big-endian; no files.
            (FW_CFG_FILE_DIR, Vec::from(&0u32.to_be_bytes()[..])),
        ];
        FwCfg {
            items,
            current: Some(0),
            offset: 0,
        }
    }

    fn select(&mut self, key: u16) {
        let key = key & !WRITE_CHANNEL;
        self.current = self.items.iter().position(|(k, _)| *k == key);
        self.offset = 0;
    }

    fn next_byte(&mut self) -> u8 {
        let Some(item) = self.current.and_then(|i| self.items.get(i)) else {
            return 0;
        };
        match item.1.get(self.offset) {
            Some(&b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }
}

impl BusDevice for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    /// Data reads are byte-wide (QEMU `fw_cfg_comb_valid`: reads of size 1
    /// only); wider reads are invalid and read as all ones.
    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        match (offset, size) {
            (1, AccessSize::B1) => u64::from(self.next_byte()),
            _ => size.mask(),
        }
    }

    /// A 16-bit write to the selector port selects; data writes are ignored
    /// (QEMU ≥ 2.4); anything else is dropped.
    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        if (offset, size) == (0, AccessSize::B2) {
            self.select(value as u16);
        }
        IoOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessSize::*;

    fn read_item(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(0, B2, u64::from(key));
        (0..n).map(|_| f.read(1, B1) as u8).collect()
    }

    #[test]
    fn standard_items() {
        let mut f = FwCfg::new(256 << 20, 2, "console=ttyS0");
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, FW_CFG_ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read_item(&mut f, FW_CFG_RAM_SIZE, 8),
            (256u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&mut f, FW_CFG_NB_CPUS, 2), [2, 0]);
        assert_eq!(read_item(&mut f, FW_CFG_CMDLINE_SIZE, 4), [14, 0, 0, 0]);
        assert_eq!(
            read_item(&mut f, FW_CFG_CMDLINE_DATA, 14),
            b"console=ttyS0\0"
        );
        assert_eq!(read_item(&mut f, FW_CFG_FILE_DIR, 4), [0, 0, 0, 0]);
        // The write-channel bit is ignored for lookup.
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE | 0x4000, 4), b"QEMU");
    }

    #[test]
    fn past_end_and_unknown_read_zero() {
        let mut f = FwCfg::new(1 << 20, 1, "");
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE, 8), b"QEMU\0\0\0\0");
        assert_eq!(read_item(&mut f, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut f, 0xffff, 3), [0, 0, 0]);
        // Reselecting restarts at offset 0.
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE, 1), b"Q");
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE, 1), b"Q");
    }

    #[test]
    fn hostile_access_sizes() {
        let mut f = FwCfg::new(1 << 20, 1, "");
        // Selection is reset to the signature at power-on.
        assert_eq!(f.read(1, B1), u64::from(b'Q'));
        // Byte/dword writes to the selector, data writes: ignored.
        f.write(0, B1, 0x03);
        f.write(0, B4, 0x03);
        f.write(1, B1, 0x55);
        f.write(1, B2, 0x03);
        assert_eq!(f.read(1, B1), u64::from(b'E'));
        // Wide data reads and selector reads are invalid: all ones, no advance.
        assert_eq!(f.read(1, B2), 0xffff);
        assert_eq!(f.read(0, B1), 0xff);
        assert_eq!(f.read(1, B1), u64::from(b'M'));
    }
}
