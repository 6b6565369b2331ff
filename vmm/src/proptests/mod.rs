//! Property tests (proptest) of the code that reads guest- or
//! user-controlled data: hypercall and PSCI arguments, the kernel loaders
//! (ELF and position-independent ELF, Multiboot, arm64 Image, arm64 raw
//! binaries), the `vms.conf` parser, and virtqueues, virtio-blk requests
//! and the virtio-mmio transport. The properties
//! themselves are in [`crate::checks`], shared with the fuzz targets of
//! `vmm/fuzz` (`cargo xtask fuzz`); here proptest generates the inputs, a
//! few hundred cases per property so that `cargo test` stays fast.

mod config;
mod hypercall;
mod irq;
mod loaders;
mod psci;
mod virtio;

/// A bounded run that writes no regression files into the tree (a shrunk
/// failure becomes a plain unit test next to the fix).
pub(crate) fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// Turns a checker's verdict into a proptest failure.
pub(crate) fn verdict(
    r: Result<(), alloc::string::String>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    r.map_err(proptest::test_runner::TestCaseError::fail)
}
