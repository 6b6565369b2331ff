//! Privileged instructions, each in its own small function.
//!
//! Only compiled for the bare-metal target. The instructions themselves come
//! from the `x86_64` crate (`Cr0`..`Cr4`, `Msr`, `Port`, `tlb`); these thin
//! wrappers keep the raw-`u64` interface the rest of the hypervisor (and the
//! SVM backend's hot path) was written against. Reads of control registers
//! are safe functions (they have no side effects); anything that changes CPU
//! or device state is `unsafe` and says what the caller must guarantee.

use ::x86_64::instructions::port::Port;
use ::x86_64::instructions::{hlt, interrupts, tlb};
use ::x86_64::registers::control::{Cr0, Cr0Flags, Cr2, Cr3, Cr4, Cr4Flags};
use ::x86_64::registers::model_specific::{EferFlags, Msr};
use ::x86_64::structures::paging::PhysFrame;
use ::x86_64::{PhysAddr, VirtAddr};

#[inline]
pub fn read_cr0() -> u64 {
    Cr0::read_raw()
}

/// The last page-fault linear address (SDM Vol. 3A 2.5).
#[inline]
pub fn read_cr2() -> u64 {
    Cr2::read_raw()
}

/// The whole CR3: PML4 physical address and the low flag bits (PWT, PCD).
#[inline]
pub fn read_cr3() -> u64 {
    let (frame, low) = Cr3::read_raw();
    frame.start_address().as_u64() | u64::from(low)
}

#[inline]
pub fn read_cr4() -> u64 {
    Cr4::read_raw()
}

/// # Safety
/// The new value must keep paging, protection and the current code valid.
#[inline]
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller keeps the execution environment valid.
    unsafe { Cr0::write_raw(v) };
}

/// # Safety
/// `pml4` must be the physical address of a valid PML4 that maps the
/// running code, its stack and every object still referenced.
#[inline]
pub unsafe fn write_cr3(pml4: u64) {
    // Bits 51:12 are the table address, 11:0 the flags (SDM Vol. 3A 4.5,
    // Table 4-12); bits 63:52 are never set by this kernel (no PCID).
    let frame = PhysFrame::containing_address(PhysAddr::new_truncate(pml4));
    // SAFETY: guaranteed by the caller; the write also flushes non-global TLB entries.
    unsafe { Cr3::write_raw(frame, (pml4 & 0xfff) as u16) };
}

/// # Safety
/// The new value must keep the execution environment valid.
#[inline]
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { Cr4::write_raw(v) };
}

/// # Safety
/// `msr` must exist on this CPU (otherwise #GP).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the caller checked that the MSR exists.
    unsafe { Msr::new(msr).read() }
}

/// # Safety
/// `msr` must exist and `value` must be valid for it and keep the CPU state sane.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { Msr::new(msr).write(value) };
}

/// # Safety
/// Writing to an I/O port can have any device-specific effect.
#[inline]
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { Port::<u8>::new(port).write(v) };
}

/// # Safety
/// Writing to an I/O port can have any device-specific effect.
#[inline]
pub unsafe fn outl(port: u16, v: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { Port::<u32>::new(port).write(v) };
}

/// # Safety
/// Reading an I/O port can have device-specific side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: guaranteed by the caller.
    unsafe { Port::<u8>::new(port).read() }
}

/// Stops this CPU for good: interrupts off, then `hlt` forever (an NMI or
/// SMI only resumes the loop).
pub fn halt_forever() -> ! {
    loop {
        interrupts::disable();
        hlt();
    }
}

/// Invalidates the TLB entry for the page containing `addr`. A
/// non-canonical `addr` maps nothing, so there is nothing to drop (INVLPG
/// itself treats it as a NOP, SDM Vol. 2A INVLPG).
#[inline]
pub fn invlpg(addr: u64) {
    if let Ok(va) = VirtAddr::try_new(addr) {
        tlb::flush(va);
    }
}

pub const IA32_EFER: u32 = 0xC000_0080;
/// IA32_EFER.NXE (bit 11): enables the XD bit in page-table entries.
pub const EFER_NXE: u64 = EferFlags::NO_EXECUTE_ENABLE.bits();
/// CR0.WP (bit 16): supervisor writes honour read-only pages.
pub const CR0_WP: u64 = Cr0Flags::WRITE_PROTECT.bits();
/// CR4.PGE (bit 7): global pages.
pub const CR4_PGE: u64 = Cr4Flags::PAGE_GLOBAL.bits();
