//! x86 platform devices as pure state machines: no locks, no globals, no
//! clock reads (time is an input, nanoseconds of guest time), no allocation
//! per access. The core owns them, serializes access and wires their ports,
//! lines and deadlines.
//!
//! - [`pic`]: the 8259A pair with the ELCR.
//! - [`pit`]: the 8254 interval timer and port 0x61.
//! - [`rtc`]: the MC146818 CMOS RTC and its NVRAM.

pub mod pic;
pub mod pit;
pub mod rtc;
