//! Shared code of the arm64 test guests: entry, PL011 console at
//! 0x0900_0000, PSCI and our hypercalls over `HVC #0` (SMCCC; see
//! `vmm::hypercall`), and EL1 exception vectors that either report an
//! unexpected exception or, when a test asks for it, count UNDEFINED
//! exceptions and skip the instruction.
//!
//! The guests run at EL1 with the MMU off (as the loader leaves them), so
//! every data access is Device memory: no atomics, no unaligned accesses
//! (the target has +strict-align).
#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "none")]
pub mod gic;
#[cfg(target_os = "none")]
mod imp;
#[cfg(target_os = "none")]
pub use imp::*;
#[cfg(target_os = "none")]
pub mod image;

/// PL011 data register of the VM's UART (vmm `PL011_BASE`).
pub const UART_BASE: u64 = 0x0900_0000;
/// The MMIO test device of arm64 VMs.
pub const TESTDEV_BASE: u64 = 0x0a00_0000;
/// Guest RAM starts here (vmm `ram_base`).
pub const RAM_BASE: u64 = 0x4000_0000;
/// The test device's interrupt registers (vmm `devices::testdev`) and its
/// line, a level SPI.
pub const TESTDEV_IRQ_REGS: u64 = TESTDEV_BASE + 0x1000;
pub const TESTDEV_LEVEL: u64 = TESTDEV_IRQ_REGS;
pub const TESTDEV_EVENTS: u64 = TESTDEV_IRQ_REGS + 0x4;
pub const TESTDEV_EOIS: u64 = TESTDEV_IRQ_REGS + 0x8;
pub const TESTDEV_PULSE: u64 = TESTDEV_IRQ_REGS + 0xc;
pub const TESTDEV_LINE: u64 = TESTDEV_IRQ_REGS + 0x10;
pub const TESTDEV_INTID: u32 = 48;
/// The hypervisor's virtio-mmio slots (vmm `board::ARM64_VIRTIO_BASE`):
/// slot n at `VIRTIO_BASE + n * 0x200` with SPI INTID `VIRTIO_INTID + n`.
pub const VIRTIO_BASE: u64 = 0x0a00_2000;
pub const VIRTIO_INTID: u32 = 64;
/// GICv3 frames (QEMU virt layout, as the guest DTB says).
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICR_BASE: u64 = 0x080a_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Timer PPIs.
pub const VTIMER_INTID: u32 = 27;
pub const PTIMER_INTID: u32 = 30;

pub const PSCI_VERSION: u64 = 0x8400_0000;
pub const PSCI_CPU_SUSPEND_64: u64 = 0xc400_0001;
pub const PSCI_CPU_OFF: u64 = 0x8400_0002;
pub const PSCI_CPU_ON_64: u64 = 0xc400_0003;
pub const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
pub const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
pub const PSCI_FEATURES: u64 = 0x8400_000a;
pub const SMCCC_NOT_SUPPORTED: u64 = -1i64 as u64;

/// Our hypercalls: SMCCC fast SMC64, owner 6, function = number.
pub const HC_CONSOLE_WRITE: u64 = 0xc600_0000;
pub const HC_EXIT: u64 = 0xc600_0001;
pub const HC_YIELD: u64 = 0xc600_0002;
