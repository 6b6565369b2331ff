//! VMX on the bare-metal CPU: IA32_FEATURE_CONTROL, CR0/CR4 fixed bits,
//! VMXON and VMXOFF (SDM Vol. 3C 24.7, 24.8, 31.5).

use super::{feature_control, fixed_cr, Caps, FeatureControl, IA32_FEATURE_CONTROL};
use crate::x86_64::instr;

/// CR4.VMXE.
const CR4_VMXE: u64 = 1 << 13;

/// Reads the capability MSRs. The caller checked CPUID.1:ECX.VMX.
pub fn read_caps() -> Caps {
    // SAFETY: with CPUID.1:ECX.VMX set the VMX capability MSRs exist, and
    // `Caps::read` reads the optional ones only when the controls say so.
    Caps::read(|m| unsafe { instr::rdmsr(m) })
}

/// VMXON on this CPU with the 4 KiB-aligned VMXON region at `region_pa`
/// (zeroed by the caller): IA32_FEATURE_CONTROL locked with VMXON allowed
/// (written if the firmware left it unlocked), CR0/CR4 given their fixed
/// bits (CR4.VMXE among them), the revision identifier written, VMXON.
///
/// # Safety
/// `region_pa` is a page of RAM owned by this CPU for as long as VMX
/// operation lasts, identity-mapped; nothing else on this CPU relies on
/// CR0/CR4 bits the fixed values change (the kernel runs with PE, PG, NE
/// set already).
pub unsafe fn vmxon(caps: &Caps, region_pa: u64) -> Result<(), &'static str> {
    if let Some(why) = caps.unusable_reason() {
        return Err(why);
    }
    match feature_control(caps.feature_control) {
        FeatureControl::Ready => {}
        FeatureControl::LockedOff => return Err("VMX disabled by the firmware"),
        // SAFETY: the MSR exists (CPUID VMX) and is unlocked; setting the
        // lock and the enable bit is what firmware does.
        FeatureControl::Write(v) => unsafe { instr::wrmsr(IA32_FEATURE_CONTROL, v) },
    }
    let cr0 = fixed_cr(instr::read_cr0(), caps.cr0_fixed.0, caps.cr0_fixed.1);
    let cr4 = fixed_cr(
        instr::read_cr4() | CR4_VMXE,
        caps.cr4_fixed.0,
        caps.cr4_fixed.1,
    );
    // SAFETY: the fixed bits only force on what VMX needs (PE, PG, NE are
    // already set in long mode; VMXE has no other effect) and clear
    // reserved ones; the caller vouched for the rest.
    unsafe {
        instr::write_cr0(cr0);
        instr::write_cr4(cr4);
    }
    // SAFETY: the region is this CPU's page (caller); the first 4 bytes
    // hold the revision identifier (SDM 24.11.5).
    unsafe { (region_pa as *mut u32).write_volatile(caps.revision()) };
    let failed: u8;
    // SAFETY: VMXON with a valid region pointer in memory; CF/ZF report
    // failure (VMfailInvalid / VMfailValid), read right after.
    unsafe {
        core::arch::asm!(
            "vmxon [{pa}]",
            "setna {f}",
            pa = in(reg) &region_pa,
            f = out(reg_byte) failed,
            options(nostack),
        );
    }
    if failed != 0 {
        // SAFETY: undoing this function's own CR4 change.
        unsafe { instr::write_cr4(cr4 & !CR4_VMXE) };
        return Err("VMXON failed");
    }
    Ok(())
}

/// Leaves VMX operation on this CPU.
///
/// # Safety
/// This CPU is in VMX root operation ([`vmxon`] succeeded) with no VMCS of
/// a running guest that anything still needs.
pub unsafe fn vmxoff() {
    // SAFETY: the caller says VMX operation is on; VMXOFF then cannot
    // fault; CR4.VMXE may be cleared afterwards.
    unsafe {
        core::arch::asm!("vmxoff", options(nostack));
        instr::write_cr4(instr::read_cr4() & !CR4_VMXE);
    }
}
