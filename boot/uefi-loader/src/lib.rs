//! Host-testable part of the UEFI loader (`hv-loader.efi`). The firmware-
//! facing code is in the binary (`main.rs`, `efi.rs`, `jump.rs`); everything
//! that decides something from untrusted input lives in [`logic`].
#![cfg_attr(not(test), no_std)]

pub mod logic;
