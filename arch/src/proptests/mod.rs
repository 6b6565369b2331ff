//! Property tests (proptest) of the decoders that read guest-controlled
//! data: the x86 MMIO / debug-register instruction decoder and the guest
//! page walk (SVM without decode assists), and the arm64 exit decoding
//! from ESR_EL2 / FAR_EL2 / HPFAR_EL2. Each property runs a few hundred
//! cases so the host test run stays fast; `cargo xtask fuzz` explores the
//! same entry points for as long as one wants.

#[cfg(target_arch = "x86_64")]
mod guest_walk;
#[cfg(target_arch = "x86_64")]
mod mmio_decode;

mod arm64_decode;

/// A bounded run that writes no regression files into the tree (a shrunk
/// failure becomes a plain unit test next to the fix).
pub(crate) fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
