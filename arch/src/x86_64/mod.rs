//! x86_64: CPU setup, paging formats, exceptions, SVM (and the first steps of VMX).
//!
//! Pure parts (descriptor encodings, exception frames and reports, CPUID
//! decoding) compile everywhere and are host-tested; the parts that execute
//! privileged instructions are only built for the bare-metal target.
//!
//! The virtualization backends are [`svm`] (and later `vmx`); what they
//! share about the guest (instruction decode, guest page walk, CPUID/MSR
//! policy, debug registers, FPU/PKRU) is in [`guest`], generic over the
//! [`guest::GuestState`] trait that each backend implements for its control
//! block (VMCB, VMCS).

pub mod cpuid;
pub mod descriptors;
pub mod exception;
/// Guest-side code shared by the x86 backends (its decoder dependency is
/// x86-only).
#[cfg(target_arch = "x86_64")]
pub mod guest;
pub mod kmap;
pub mod lapic;
/// Second-stage tables (NPT, EPT) as a `vmm` Stage2.
pub mod stage2;
/// AMD SVM + NPT backend (its decoder dependency is x86-only).
#[cfg(target_arch = "x86_64")]
pub mod svm;
/// Intel VMX (first steps: capabilities, VMXON, EPT).
pub mod vmx;
pub mod xstate;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod devices;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod instr;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod tables;
