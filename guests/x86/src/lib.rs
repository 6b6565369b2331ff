//! Shared code of the x86 test guests: the 64-bit entry (our ELF64 boot
//! convention: long mode, 4 GiB identity map, RDI = command line, RSI = RAM
//! size), COM1 output through port I/O, isa-debug-exit, the hypercall ABI of
//! `vmm::hypercall` over VMMCALL, and a GDT + IDT whose handlers record an
//! exception and skip the faulting instruction when a test expects one.
//!
//! Every check prints `ok: ...` or `FAIL: ...`; [`finish`] prints
//! `PASS`/`FAILED` and leaves through debug-exit: value 0x10 (exit status
//! 33) on success, 0x11 (35) on failure.
#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "none")]
mod imp;
#[cfg(target_os = "none")]
pub use imp::*;
/// Interrupts: IDT gates, local APIC (xAPIC / x2APIC, timer), I/O APIC.
#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod multiboot;
/// Application processors started by INIT-SIPI-SIPI.
#[cfg(target_os = "none")]
pub mod smp;

pub const COM1: u16 = 0x3f8;
pub const DEBUG_EXIT: u16 = 0xf4;
/// vmm `devices::testdev::TESTDEV_BASE`.
pub const TESTDEV_BASE: u64 = 0xfeb8_0000;
/// The hypervisor's virtio-mmio slots (vmm `board::X86_VIRTIO_BASE`):
/// slot n at `VIRTIO_BASE + n * 0x200` on I/O APIC pin `VIRTIO_GSI + n`.
pub const VIRTIO_BASE: u64 = 0xfeb0_0000;
pub const VIRTIO_GSI: u32 = 17;
/// An address with nothing behind it (below the 4 GiB identity map's end).
pub const UNBACKED: u64 = 0xfe00_0000;

pub const HC_CONSOLE_WRITE: u64 = 0;
pub const HC_EXIT: u64 = 1;
pub const HC_YIELD: u64 = 2;
