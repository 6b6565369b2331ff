//! The per-CPU structure: what each physical CPU keeps for itself (its host
//! save area, which VM last used each ASID here, which vCPU is bound here,
//! the guest context during a world switch), reached through GS base on
//! x86_64 and TPIDR_EL2 on arm64 instead of `static [..; MAX_CPUS]` arrays
//! indexed by a CPU number. Starting more CPUs then means allocating one
//! more of these and pointing that CPU's register at it.
//!
//! The layout of the first three fields is fixed: the x86 accessor reads
//! the structure's own address at `gs:[0]`, the arm64 exception vectors
//! find the guest context at `[TPIDR_EL2, #8]`, and the x86 host
//! interrupt stubs set `gs:[16]` ([`PerCpu::timer_fired`]) and `gs:[24]`
//! ([`PerCpu::last_host_irq`]).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use vmm::backend::PhysCpu;

/// ASIDs tracked per CPU (x86 SVM); VMs share ASIDs modulo this (or the
/// CPU's count).
pub const MAX_TRACKED_ASIDS: usize = 256;

/// SVM's part of a CPU's state.
pub struct SvmPerCpu {
    /// The page for the host's VMSAVE/VMLOAD state (FS, GS, TR, LDTR,
    /// syscall MSRs); 0 until SVM is enabled on this CPU.
    pub host_vmcb: AtomicU64,
    /// The VM index + 1 whose vCPU was bound here last (0: none), for the
    /// predictor barrier between VMs.
    pub last_vm: AtomicUsize,
    /// Per ASID: the VM index + 1 that last ran with it here (0: none;
    /// rule `tlb_tag`).
    pub asid_owner: [AtomicUsize; MAX_TRACKED_ASIDS],
}

/// One physical CPU's own state.
#[repr(C)]
pub struct PerCpu {
    /// This structure's address (x86: read through `gs:[0]`).
    self_addr: AtomicU64,
    /// arm64: the `GuestContext` of the vCPU in a world switch, stored by
    /// the entry and read by the exit vectors.
    pub guest_ctx: AtomicU64,
    /// x86: set by the time-slice timer's interrupt stub (offset 16), cleared
    /// when the timer is armed again. The interrupt is taken right after a
    /// #VMEXIT's STGI whatever the exit was, so an exit for something else
    /// (an NPF, a VINTR) that the timer fired just behind would otherwise
    /// eat the turn's deadline: the guest then kept the CPU until it exited
    /// by itself (a guest spinning without exits: forever).
    pub timer_fired: AtomicU64,
    /// x86: the vector of the last host interrupt taken (offset 24, written
    /// by the interrupt stubs; `hostirq::NO_LINE` before any).
    pub last_host_irq: AtomicU64,
    /// The kernel's index of this CPU.
    pub index: PhysCpu,
    /// The vCPU bound here: VM index + 1 (0: none) and vCPU index.
    pub current_vm: AtomicUsize,
    pub current_vcpu: AtomicU32,
    pub svm: SvmPerCpu,
    /// arm64: this CPU's GICv3 redistributor SGI frame (0: not set up),
    /// and whether the EL1 virtual timer's PPI is disabled there now.
    pub gicr_sgi: AtomicU64,
    pub vtimer_ppi_masked: AtomicBool,
}

impl PerCpu {
    pub const fn new(index: PhysCpu) -> PerCpu {
        PerCpu {
            self_addr: AtomicU64::new(0),
            guest_ctx: AtomicU64::new(0),
            timer_fired: AtomicU64::new(0),
            last_host_irq: AtomicU64::new(crate::hostirq::NO_LINE),
            index,
            current_vm: AtomicUsize::new(0),
            current_vcpu: AtomicU32::new(0),
            svm: SvmPerCpu {
                host_vmcb: AtomicU64::new(0),
                last_vm: AtomicUsize::new(0),
                asid_owner: [const { AtomicUsize::new(0) }; MAX_TRACKED_ASIDS],
            },
            gicr_sgi: AtomicU64::new(0),
            vtimer_ppi_masked: AtomicBool::new(false),
        }
    }

    /// Records the vCPU bound to this CPU (`None`: none).
    pub fn set_current(&self, vcpu: Option<(usize, u32)>) {
        match vcpu {
            Some((vm, v)) => {
                self.current_vcpu.store(v, Ordering::Relaxed);
                self.current_vm.store(vm + 1, Ordering::Relaxed);
            }
            None => self.current_vm.store(0, Ordering::Relaxed),
        }
    }

    /// The vCPU bound to this CPU, as (VM index, vCPU index).
    pub fn current(&self) -> Option<(usize, u32)> {
        let vm = self.current_vm.load(Ordering::Relaxed).checked_sub(1)?;
        Some((vm, self.current_vcpu.load(Ordering::Relaxed)))
    }
}

/// The boot CPU's structure (the others come from the heap when they start).
#[cfg(target_os = "none")]
static BOOT_CPU: PerCpu = PerCpu::new(0);

/// Points this CPU's per-CPU register at `p`.
///
/// # Safety
/// Called once per CPU, before anything on it uses [`this_cpu`]; on x86
/// before SVM is enabled on it (the host VMSAVE area records GS base, and
/// every #VMEXIT restores it from there).
#[cfg(target_os = "none")]
pub unsafe fn install(p: &'static PerCpu) {
    let addr = p as *const PerCpu as u64;
    p.self_addr.store(addr, Ordering::Relaxed);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; nothing in the
    // hypervisor used GS before (guests get their own through VMLOAD).
    unsafe {
        crate::x86_64::instr::wrmsr(0xc000_0101, addr)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: TPIDR_EL2 is the hypervisor's own scratch register; the
    // world switch keeps the guest context in this structure, not in it.
    unsafe {
        core::arch::asm!("msr tpidr_el2, {}", "isb", in(reg) addr, options(nostack, preserves_flags))
    };
}

/// Installs the boot CPU's structure (once, early on the boot CPU).
#[cfg(target_os = "none")]
pub fn install_boot_cpu() {
    // SAFETY: the boot CPU calls this once at start-up, before SVM/EL2
    // guests and before any this_cpu().
    unsafe { install(&BOOT_CPU) }
}

/// This CPU's structure.
#[cfg(target_os = "none")]
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    let addr: u64;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: GS base points at this CPU's PerCpu (install), whose first
    // field holds its address; no guest GS is live outside the VMRUN
    // assembly (host VMLOAD restores ours).
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) addr, options(nostack, readonly, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reading TPIDR_EL2 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el2", out(reg) addr, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: install() stored the address of a `&'static PerCpu` there.
    unsafe { &*(addr as *const PerCpu) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The assembly's view of the layout (x86 `gs:[0]`, arm64 `#8`).
    #[test]
    fn layout_fixed_for_the_assembly() {
        assert_eq!(core::mem::offset_of!(PerCpu, self_addr), 0);
        assert_eq!(core::mem::offset_of!(PerCpu, guest_ctx), 8);
        assert_eq!(core::mem::offset_of!(PerCpu, timer_fired), 16);
        assert_eq!(core::mem::offset_of!(PerCpu, last_host_irq), 24);
        let p = PerCpu::new(3);
        assert_eq!(p.current(), None);
        p.set_current(Some((0, 2)));
        assert_eq!(p.current(), Some((0, 2)));
        p.set_current(None);
        assert_eq!(p.current(), None);
    }
}
