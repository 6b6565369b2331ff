//! arm64 guests at EL1 under the EL2 backend (QEMU TCG `virt,virtualization=on`,
//! `-cpu max` or `cortex-a72`). Guest images: `guests/arm64` (package
//! `arm64-guests`), one `[[bin]]` each.
//!
//! Example:
//! ```ignore
//! Scenario {
//!     cpu: Some("cortex-a72"),
//!     ..guests("arm64-hello", Arch::Aarch64, &[vm("hello", "hello")], &["[hello] hello", "HV-EXIT: success"])
//! }
//! ```

#[allow(unused_imports)]
use super::*;

pub fn scenarios() -> Vec<Scenario> {
    vec![]
}
