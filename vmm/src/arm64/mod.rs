//! arm64 interrupt controller and timer models, as pure state machines the
//! core and the EL2 backend drive (issue 12, "arm64 devices"):
//!
//! - [`lr`]: the ICH_* register encodings (list registers, HCR, VTR, VMCR,
//!   MISR) and their system-register IDs;
//! - [`timer`]: the EL1 virtual and physical timers of one vCPU.
//!
//! Nothing here locks, allocates after construction, or knows about the
//! bus, the VM or the backend: time, register values and list registers are
//! arguments.

pub mod lr;
pub mod timer;
