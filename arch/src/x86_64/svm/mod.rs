//! AMD SVM with nested paging (AMD APM Vol. 2 ch. 15).
//!
//! - [`vmcb`]: VMCB layout, intercept bits, exit codes (pure), and the
//!   VMCB as the shared code's [`GuestState`](crate::x86_64::guest::GuestState).
//! - [`npt`]: nested page tables as a [`vmm::backend::Stage2`] (pure over a
//!   [`crate::paging::TableAccess`]).
//! - [`decode`]: a nested page fault's EXITINFO1 to an MMIO exit, over the
//!   shared decoder (pure).
//! - [`vcpu`]: the vCPU ([`vmm::backend::Vcpu`]) over a [`vcpu::Hw`].
//! - `hw` (bare metal only): enabling SVM, the VMRUN assembly, physical access.
//!
//! What is not SVM-specific lives in [`crate::x86_64::guest`] for the VMX
//! backend to share: instruction decoding, the guest page walk and the
//! byte-at-RIP memo, the CPUID/MSR policy, debug-register emulation and the
//! FPU/PKRU switch.
//!
//! Under QEMU TCG there are no NRIPS, decode assists, VMCB clean bits or
//! flush-by-ASID (CPUID 8000_000A EDX); each is detected and optional.

pub mod decode;
pub mod npt;
pub mod vcpu;
pub mod vmcb;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod hw;
