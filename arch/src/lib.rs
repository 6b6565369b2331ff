//! The hardware layer. One module per architecture; inside each, pure
//! computations (encodings, level arithmetic) are plain functions tested on
//! the host, and everything that executes privileged instructions is gated on
//! `target_os = "none"` and kept in small `unsafe` functions with a
//! `// SAFETY:` comment each.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod copy;
pub mod entropy;
pub mod hostirq;
pub mod paging;

pub mod percpu;

pub mod x86_64;

pub mod aarch64;

#[cfg(test)]
mod proptests;
