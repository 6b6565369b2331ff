//! x86 guests under AMD SVM (QEMU TCG: `-cpu max` or `EPYC,+svm,+npt`).
//! Guest images: `guests/x86` (package `x86-guests`), one `[[bin]]` each.
//!
//! Example:
//! ```ignore
//! Scenario {
//!     cpu: Some("EPYC,+svm,+npt"),
//!     append: "exitcode=guest",
//!     expect_status: 33, // the guest wrote 0x10 to isa-debug-exit
//!     ..guests("svm-hello", Arch::X86_64, &[vm("hello", "hello")], &["[hello] hello"])
//! }
//! ```

#[allow(unused_imports)]
use super::*;

pub fn scenarios() -> Vec<Scenario> {
    vec![]
}
