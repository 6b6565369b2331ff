//! The arch-neutral core of the hypervisor: everything that is policy.
//!
//! `vmm` defines the interface a hardware backend provides (see DESIGN.md)
//! and implements VMs, guest memory, I/O buses, devices and loaders on top of
//! it. It contains no unsafe code and is tested on the host.
//!
//! - [`exit`]: the normalized exit every backend reports, and [`event`]: what
//!   the vmm injects back (with payloads applied at delivery).
//! - [`backend`]: the `Vcpu` and `Stage2` traits the backends implement.
//! - [`mem`]: the guest memory map, the only way to touch guest memory.
//! - [`bus`] and [`devices`]: port and MMIO buses with master-abort default.
//! - [`loader`]: ELF and Multiboot1 loaders producing a [`backend::BootState`].
//! - [`vm`]: VM lifecycle and exit dispatch; [`hypercall`]: the guest ABI.
//! - [`x86`]: x86 platform devices: local APIC, I/O APIC and interrupt
//!   routing, legacy PIC, PIT and CMOS/RTC (pure state machines).
//! - [`irq`]: the arch-neutral interrupt-controller interface (lines,
//!   messages, wake-up condition, EOI notification).
//! - [`virtio`]: the virtio-mmio transport, split virtqueues and the
//!   virtio device models (entropy, block).
//! - [`arm64`]: the vGICv3 and generic-timer models (pure state machines)
//!   and their wiring into a VM.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod arm64;
pub mod backend;
pub mod board;
pub mod bus;
pub mod config;
pub mod console;
pub mod devices;
pub mod event;
pub mod exit;
pub mod fdt;
pub mod gdb;
pub mod hvconsole;
pub mod hypercall;
pub mod irq;
pub mod loader;
pub mod mem;
pub mod psci;
pub mod regs;
pub mod sched;
pub mod smccc;
pub mod stats;
pub mod virtio;
pub mod vm;
pub mod x86;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(any(test, feature = "testing"))]
pub mod checks;

#[cfg(test)]
mod proptests;
