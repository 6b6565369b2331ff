//! Extended processor state (XSAVE) pinned to a known value at boot.
//!
//! Guests' x87/SSE state (and PKRU) is switched per vCPU with FXSAVE, and
//! XSETBV is intercepted (#UD: XSAVE is hidden in CPUID). XCR0 itself is
//! not switched by VMRUN, so whatever the firmware left in it applies to
//! every guest: a UEFI firmware that enabled AVX (XCR0.YMM) would let each
//! VM read and write YMM/ZMM upper halves that the next VM inherits. The
//! hypervisor therefore sets XCR0 to x87 | SSE on every CPU before any
//! guest runs (VEX/EVEX forms then #UD in guests, as on a CPU without AVX),
//! and IA32_XSS to 0 where XSAVES exists (no supervisor state components).

/// XCR0 the hypervisor runs with and every guest sees: x87 (bit 0, always
/// set) and SSE (bit 1); no AVX, AVX-512, MPX, AMX or PKRU components.
pub const HOST_XCR0: u64 = 0b11;
/// IA32_XSS: supervisor state components for XSAVES (none).
pub const IA32_XSS: u32 = 0xda0;

/// What to program, from CPUID.1:ECX (XSAVE, bit 26) and CPUID.(0xD,1):EAX
/// (XSAVES, bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XstatePlan {
    /// Set CR4.OSXSAVE and write [`HOST_XCR0`] (the CPU has XSAVE).
    pub xcr0: bool,
    /// Write 0 to IA32_XSS (the CPU has XSAVES).
    pub clear_xss: bool,
}

pub fn plan(cpuid1_ecx: u32, cpuid_d1_eax: u32) -> XstatePlan {
    let xsave = cpuid1_ecx & (1 << 26) != 0;
    XstatePlan {
        xcr0: xsave,
        clear_xss: xsave && cpuid_d1_eax & (1 << 3) != 0,
    }
}

/// Whether [`pin_on_this_cpu`] found XSAVE (XCR0 exists).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
static HAS_XSAVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Sets XCR0 back to [`HOST_XCR0`] if something changed it. A guest's
/// XSETBV is intercepted (#UD), but QEMU 7.2 TCG does not implement that
/// intercept (seen: a guest's XSETBV of 7 succeeded and stayed), so every
/// vCPU bind checks it: one VM's XCR0 never carries into another's turn.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[inline]
pub fn repin() {
    if !HAS_XSAVE.load(core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: the CPU has XSAVE and CR4.OSXSAVE is set (pin_on_this_cpu),
    // so XGETBV(0) is defined; XSETBV of HOST_XCR0 is always valid.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
            options(nomem, nostack));
        if (u64::from(hi) << 32 | u64::from(lo)) != HOST_XCR0 {
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") HOST_XCR0 as u32,
                in("edx") (HOST_XCR0 >> 32) as u32, options(nomem, nostack));
        }
    }
}

/// Pins XCR0 (and IA32_XSS) on the calling CPU; returns the plan applied.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub fn pin_on_this_cpu() -> XstatePlan {
    use super::instr::{read_cr4, write_cr4, wrmsr};
    let c1 = core::arch::x86_64::__cpuid_count(1, 0).ecx;
    let max = core::arch::x86_64::__cpuid_count(0, 0).eax;
    let d1 = if max >= 0xd {
        core::arch::x86_64::__cpuid_count(0xd, 1).eax
    } else {
        0
    };
    let p = plan(c1, d1);
    if p.xcr0 {
        // SAFETY: the CPU has XSAVE, so CR4.OSXSAVE may be set; XCR0 = x87 |
        // SSE is always a valid value; the hypervisor itself uses no
        // extended state (soft-float kernel), so nothing live is lost.
        unsafe {
            write_cr4(read_cr4() | (1 << 18));
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") HOST_XCR0 as u32,
                in("edx") (HOST_XCR0 >> 32) as u32, options(nomem, nostack));
        }
    }
    HAS_XSAVE.store(p.xcr0, core::sync::atomic::Ordering::Relaxed);
    if p.clear_xss {
        // SAFETY: IA32_XSS exists when XSAVES does; 0 is its reset value.
        unsafe { wrmsr(IA32_XSS, 0) };
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_plan_per_cpu_kind() {
        assert_eq!(
            plan(0, 0),
            XstatePlan {
                xcr0: false,
                clear_xss: false
            }
        );
        assert_eq!(
            plan(1 << 26, 0),
            XstatePlan {
                xcr0: true,
                clear_xss: false
            }
        );
        assert_eq!(
            plan(1 << 26, 1 << 3),
            XstatePlan {
                xcr0: true,
                clear_xss: true
            }
        );
        // XSAVES without XSAVE is not a real CPU: nothing is touched.
        assert_eq!(
            plan(0, 1 << 3),
            XstatePlan {
                xcr0: false,
                clear_xss: false
            }
        );
        assert_eq!(HOST_XCR0 & 1, 1, "x87 is mandatory in XCR0");
        assert_eq!(HOST_XCR0 & !0b11, 0, "no AVX or later components");
    }
}
