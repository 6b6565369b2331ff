//! The guest's x87/SSE state and PKRU, switched per vCPU by the hypervisor:
//! neither VMRUN/#VMEXIT nor VM entry/exit switches them (XCR0, which is
//! not switched either, is pinned by [`crate::x86_64::xstate`]). The
//! hypervisor never uses x87/SSE itself, so a bound vCPU's state stays live
//! in the CPU while the hypervisor runs; it is saved at unbind and restored
//! at bind.
//!
//! PKRU: a guest may set CR4.PKE (CR4 writes are not intercepted), so each
//! vCPU's PKRU is saved and restored with its x87/SSE state; otherwise one
//! VM reads (and constrains) another's PKRU (found by the chaos guests).
//! The host sets CR4.PKE only to reach RDPKRU/WRPKRU: its own pages are
//! supervisor pages, which protection keys never restrict.

/// An FXSAVE image (Intel SDM Vol. 1 §10.5.1, AMD APM Vol. 2 §11.4.4).
#[repr(C, align(16))]
#[derive(Clone)]
pub struct FpuArea(pub [u8; 512]);

impl Default for FpuArea {
    /// The state after FNINIT with MXCSR at its reset value: FCW 0x037F,
    /// MXCSR 0x1F80, everything else zero.
    fn default() -> Self {
        let mut a = [0u8; 512];
        a[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        FpuArea(a)
    }
}

/// Where the vCPU's PKRU is kept in its FXSAVE image: bytes 508..512 of
/// the 48 bytes (464..511) that FXSAVE leaves to software.
pub const FPU_AREA_PKRU: usize = 508;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use machine::*;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod machine {
    use super::{FpuArea, FPU_AREA_PKRU};
    use core::sync::atomic::{AtomicBool, Ordering};

    /// Whether the CPU has protection keys (CPUID.7.0:ECX.PKU) and CR4.PKE
    /// is set ([`enable_on_this_cpu`]).
    static HAS_PKU: AtomicBool = AtomicBool::new(false);

    /// Makes the guest state switchable on the calling CPU: CR0.EM = CR0.TS
    /// = 0 and CR4.OSFXSR = 1 (else FXSAVE does not save the XMM
    /// registers), and CR4.PKE where the CPU has protection keys.
    ///
    /// # Safety
    /// Called during a backend's per-CPU enabling, before any vCPU is bound.
    pub unsafe fn enable_on_this_cpu() {
        use crate::x86_64::instr::{read_cr0, read_cr4, write_cr0, write_cr4};
        // SAFETY: clearing EM/TS and setting OSFXSR only enables x87/SSE
        // instructions, which the hypervisor itself never executes.
        unsafe {
            write_cr0(read_cr0() & !((1 << 2) | (1 << 3)));
            write_cr4(read_cr4() | (1 << 9));
        }
        if core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 3) != 0 {
            // SAFETY: the CPU has PKU; CR4.PKE only makes RDPKRU/WRPKRU
            // usable and applies keys to user pages, which the hypervisor
            // has none of.
            unsafe { write_cr4(read_cr4() | (1 << 22)) };
            HAS_PKU.store(true, Ordering::Relaxed);
        }
    }

    /// FXSAVE (and PKRU) of the guest's state when its vCPU leaves the CPU;
    /// the CPU's PKRU is then 0 for whatever runs next.
    pub fn save(area: &mut FpuArea) {
        // SAFETY: `area` is a 16-byte aligned 512-byte buffer; CR0.EM/TS are
        // clear and CR4.OSFXSR is set (enable_on_this_cpu).
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
        if HAS_PKU.load(Ordering::Relaxed) {
            let pkru: u32;
            // SAFETY: CR4.PKE is set (enable_on_this_cpu); RDPKRU needs ECX
            // = 0, WRPKRU ECX = EDX = 0; the next vCPU starts from 0.
            unsafe {
                core::arch::asm!("rdpkru", "mov {p:e}, eax", "xor eax, eax", "xor edx, edx",
                    "wrpkru", p = out(reg) pkru, out("eax") _, inout("ecx") 0 => _,
                    out("edx") _, options(nostack))
            };
            area.0[FPU_AREA_PKRU..FPU_AREA_PKRU + 4].copy_from_slice(&pkru.to_le_bytes());
        }
    }

    /// FXRSTOR (and PKRU) when a vCPU is bound to the CPU.
    pub fn restore(area: &FpuArea) {
        // The extended-state configuration is the hypervisor's (xstate.rs).
        crate::x86_64::xstate::repin();
        // SAFETY: as save; the image came from FXSAVE or FpuArea::default
        // (reserved MXCSR bits clear), so FXRSTOR cannot fault.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack)) };
        if HAS_PKU.load(Ordering::Relaxed) {
            let mut b = [0u8; 4];
            b.copy_from_slice(&area.0[FPU_AREA_PKRU..FPU_AREA_PKRU + 4]);
            // SAFETY: as in save.
            unsafe {
                core::arch::asm!("wrpkru", in("eax") u32::from_le_bytes(b), in("ecx") 0,
                    in("edx") 0, options(nostack))
            };
        }
    }
}
