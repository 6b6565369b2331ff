//! QEMU's `isa-debug-exit` device: a guest write of `v` ends the VM with exit
//! code `(v << 1) | 1` (QEMU hw/misc/debugexit.c), so a guest can never
//! report 0 by accident. Reads return 0, as in QEMU.

use crate::bus::{BusDevice, IoOutcome};
use crate::regs::AccessSize;

/// The conventional port (QEMU `-device isa-debug-exit,iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports claimed: `iosize=4`, so `outb`, `outw` and `outl` to 0xf4 all work.
pub const DEBUG_EXIT_SIZE: u64 = 4;

#[derive(Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn name(&self) -> &'static str {
        "isa-debug-exit"
    }

    fn read(&mut self, _offset: u64, _size: AccessSize) -> u64 {
        0
    }

    fn write(&mut self, _offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        let v = value & size.mask();
        IoOutcome::Stop {
            // v < 2^32 for port I/O; wrapping keeps a 64-bit MMIO use defined.
            code: (v << 1) | 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_as_qemu() {
        let mut d = DebugExit;
        assert_eq!(
            d.write(0, AccessSize::B1, 0x10),
            IoOutcome::Stop { code: 33 }
        );
        assert_eq!(
            d.write(0, AccessSize::B4, 0x11),
            IoOutcome::Stop { code: 35 }
        );
        assert_eq!(
            d.write(0, AccessSize::B1, 0x1ff),
            IoOutcome::Stop { code: 0x1ff }
        );
        assert_eq!(
            d.write(0, AccessSize::B4, 0xffff_ffff),
            IoOutcome::Stop {
                code: 0x1_ffff_ffff
            }
        );
        assert_eq!(
            d.write(0, AccessSize::B8, u64::MAX),
            IoOutcome::Stop { code: u64::MAX }
        );
        assert_eq!(d.read(0, AccessSize::B4), 0);
    }
}
