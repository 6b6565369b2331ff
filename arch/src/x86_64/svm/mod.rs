//! AMD SVM with nested paging (AMD APM Vol. 2 ch. 15).
//!
//! - [`vmcb`]: VMCB layout, intercept bits, exit codes (pure).
//! - [`npt`]: nested page tables as a [`vmm::backend::Stage2`] (pure over a
//!   [`crate::paging::TableAccess`]).
//! - [`walk`], [`decode`]: guest page-table walk and instruction decoding
//!   for MMIO and debug-register exits (pure).
//! - [`policy`]: the CPUID view and MSR allow-list ([`vmm::vm::ExitPolicy`]).
//! - [`vcpu`]: the vCPU ([`vmm::backend::Vcpu`]) over a [`vcpu::Hw`].
//! - `hw` (bare metal only): enabling SVM, the VMRUN assembly, physical access.
//!
//! Under QEMU TCG there are no NRIPS, decode assists, VMCB clean bits or
//! flush-by-ASID (CPUID 8000_000A EDX); each is detected and optional.

pub mod decode;
pub mod npt;
pub mod policy;
pub mod vcpu;
pub mod vmcb;
pub mod walk;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod hw;
