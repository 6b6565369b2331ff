//! The arch-neutral core of the hypervisor: everything that is policy.
//!
//! `vmm` defines the interface a hardware backend provides (see DESIGN.md)
//! and implements VMs, guest memory, I/O buses, devices and loaders on top of
//! it. It contains no unsafe code and is tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
