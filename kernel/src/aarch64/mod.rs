//! aarch64 platform layer of the kernel (entry, early init, console, exit).
//!
//! Interface used by `main.rs` (every arch provides the same items):
//! - `ARCH_NAME`, `FRAME_FLOOR` (lowest physical address the frame allocator may use)
//! - `console_putc(u8)`: raw, polled UART output; usable from the first instruction of Rust code
//! - `init_memory(&BootInfo, &mut FrameAllocator)`: the kernel's own page tables
//! - `report_platform(&BootInfo)`: banner with CPU vendor, virtualization features, CPU list
//! - `deliberate_fault()`: test hook for the crash-report scenarios
//! - `exit(ExitStatus, ExitMethod) -> !`
#![allow(dead_code, unused_variables)]

use crate::options::ExitMethod;
use crate::ExitStatus;
use boot::frame::FrameAllocator;
use boot::BootInfo;

pub const ARCH_NAME: &str = "aarch64";
pub const FRAME_FLOOR: u64 = 0x10_0000;

pub fn console_putc(_b: u8) {}

pub fn init_memory(_info: &BootInfo, _frames: &mut FrameAllocator) {}

pub fn report_platform(_info: &BootInfo) {}

pub fn deliberate_fault() {}

pub fn exit(_status: ExitStatus, _method: ExitMethod) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
