//! x86 guest-side code shared by the hardware backends (AMD SVM today,
//! Intel VMX next): everything that acts on the guest's architectural
//! state rather than on a VMCB or a VMCS.
//!
//! - [`GuestState`]: the small trait over the control block through which
//!   this code reads and writes the guest (RIP, RFLAGS, CR0/CR3/CR4, EFER,
//!   CPL, CS, DR6/DR7, the interrupt shadow). SVM implements it for its
//!   [`Vmcb`](super::svm::vmcb::Vmcb); a VMX backend implements it over its
//!   VMCS guest-state area. The shared code is generic over it (static
//!   dispatch: nothing on the exit path goes through a `dyn`).
//! - [`decode`]: iced-x86 decoding of the MMIO load/store behind a
//!   stage-2 fault, of `MOV DRn`, and of instruction lengths (pure).
//! - [`walk`]: the guest's own page-table walk (guest linear → guest
//!   physical) and [`walk::Stage2Phys`], guest-physical reads through the
//!   VM's stage-2 tables (NPT or EPT) with a last-leaf hint (pure).
//! - [`fetch`]: the instruction bytes at CS:RIP through that walk, the
//!   byte-at-RIP memo ([`fetch::RipWalk`]) and the next RIP of an
//!   intercepted instruction when the exit does not give it (pure).
//! - [`policy`]: the CPUID view and the MSR allow-list
//!   ([`vmm::vm::ExitPolicy`]) with its precomputed [`policy::CpuidTable`].
//! - [`debug`]: the guest's DR0-DR3/DR6/DR7 under DR-access intercepts.
//! - [`fpu`]: the per-vCPU x87/SSE (FXSAVE) image and PKRU, which neither
//!   VMRUN nor VM entry switches.
//!
//! What stays with a backend: its control-block layout, exit codes and
//! their decoding (an NPF's EXITINFO1 or an EPT violation's exit
//! qualification), event injection, TLB tagging (ASID / VPID), the
//! virtual-interrupt plumbing (SVM's V_TPR/V_IRQ, VMX's TPR shadow and
//! interrupt-window exiting), and the world switch itself.

pub mod debug;
pub mod decode;
pub mod fetch;
pub mod fpu;
pub mod policy;
pub mod walk;

use walk::PagingRegs;

/// EFER.LMA: long mode active (SDM Vol. 3A §2.2.1, APM Vol. 2 §3.1.7).
pub const EFER_LMA: u64 = 1 << 10;

/// The guest state that the shared x86 code reads and writes, as the
/// backend's control block holds it: the VMCB state-save area (SVM) or the
/// VMCS guest-state area (VMX). A field that a control block does not hold
/// (VMX keeps DR6 in the CPU, not in the VMCS) is the implementor's to
/// keep elsewhere; the shared code does not care where it lives.
///
/// The provided methods are the derived views ([`paging`](Self::paging),
/// [`bitness`](Self::bitness), [`rip_linear`](Self::rip_linear)) and RIP
/// advancement; implementors only supply the raw accessors, which should be
/// `#[inline]` (they run on every exit).
pub trait GuestState {
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);
    fn rflags(&self) -> u64;
    fn cr0(&self) -> u64;
    fn cr3(&self) -> u64;
    fn cr4(&self) -> u64;
    /// The guest's EFER as the CPU applies it (LMA included; on SVM
    /// EFER.SVME is set too, which nothing here looks at).
    fn efer(&self) -> u64;
    /// Current privilege level.
    fn cpl(&self) -> u8;
    /// CS base (the linear address of CS:0).
    fn cs_base(&self) -> u64;
    /// CS.L (64-bit code segment) and CS.D/B (32-bit default operand
    /// size), whatever the control block's attribute encoding.
    fn cs_l_db(&self) -> (bool, bool);
    fn dr6(&self) -> u64;
    fn set_dr6(&mut self, v: u64);
    /// DR7 as the CPU applies it while the guest runs.
    fn set_dr7(&mut self, v: u64);
    /// Whether an STI or MOV SS interrupt shadow is in effect.
    fn interrupt_shadow(&self) -> bool;
    fn clear_interrupt_shadow(&mut self);

    /// The registers that select the guest's paging mode.
    #[inline]
    fn paging(&self) -> PagingRegs {
        PagingRegs {
            cr0: self.cr0(),
            cr3: self.cr3(),
            cr4: self.cr4(),
            efer: self.efer(),
        }
    }

    /// The code segment's bitness (16, 32 or 64).
    #[inline]
    fn bitness(&self) -> u32 {
        let (l, db) = self.cs_l_db();
        decode::bitness(l, db, self.efer() & EFER_LMA != 0)
    }

    /// The linear address of CS:RIP.
    #[inline]
    fn rip_linear(&self) -> u64 {
        let la = self.rip().wrapping_add(self.cs_base());
        if self.bitness() != 64 {
            la & 0xffff_ffff
        } else {
            la
        }
    }

    /// Completes an instruction: RIP moves to `rip` and an interrupt
    /// shadow ends (it covers one instruction).
    #[inline]
    fn complete_to(&mut self, rip: u64) {
        self.set_rip(rip);
        self.clear_interrupt_shadow();
    }
}

/// MSR numbers the backends keep in their control blocks or switch
/// themselves (SDM Vol. 4).
pub mod msrs {
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const PAT: u32 = 0x277;
}
