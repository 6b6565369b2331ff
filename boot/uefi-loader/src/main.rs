//! `hv-loader.efi`: loads `hypervisor.elf` (plus `cmdline.txt` and the files
//! listed in `modules.txt`) from the ESP it was started from, exits boot
//! services and enters the kernel with a `boot::handoff::Handoff`.
//! Progress lines start with `loader:` and go to the firmware console.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod efi;
#[cfg(target_os = "uefi")]
mod jump;

#[cfg(target_os = "uefi")]
#[uefi::entry]
fn main() -> uefi::Status {
    match efi::run() {
        Ok(never) => match never {},
        Err(efi::Fail(status)) => status,
    }
}

/// Host builds (`cargo build --workspace`) get a stub that says what this is.
#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!(
        "hv-loader is a UEFI application: build it with --target x86_64-unknown-uefi or aarch64-unknown-uefi"
    );
    std::process::exit(2);
}
