//! The machine side of SVM: enabling it on a CPU (EFER.SVME, VM_HSAVE_PA),
//! the VMRUN round trip in assembly, identity-mapped physical access for
//! the NPT and guest RAM, and the per-CPU ASID owner table.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use super::vcpu::{Gprs, Hw};
use super::vmcb::{Vmcb, EFER_SVME};
use crate::paging::TableAccess;
use crate::x86_64::guest::fpu::{self, FpuArea};
use crate::x86_64::guest::walk::HostPhys;
use crate::x86_64::instr::{rdmsr, wrmsr, IA32_EFER};
use vmm::backend::PhysCpu;

use crate::percpu::this_cpu;
/// ASIDs tracked per CPU; VMs share ASIDs modulo this (or the CPU's count).
pub use crate::percpu::MAX_TRACKED_ASIDS;

/// VM_CR (APM Vol. 2 §15.30.1): bit 4 SVMDIS.
const MSR_VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_HSAVE_PA: where VMRUN saves host state.
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// Whether the CPU has IBPB (IA32_PRED_CMD bit 0): CPUID 8000_0008 EBX bit
/// 12 (AMD) or CPUID.(7,0):EDX bit 26 (Intel, with SPEC_CTRL).
static HAS_IBPB: AtomicBool = AtomicBool::new(false);
const MSR_PRED_CMD: u32 = 0x49;

global_asm!(
    r#"
    .global svm_vmrun_asm
    .type svm_vmrun_asm, @function
    // svm_vmrun_asm(gprs: *mut Gprs (rdi), vmcb_pa: u64 (rsi), host_vmcb_pa: u64 (rdx))
    // Guest RAX/RSP/RIP/RFLAGS live in the VMCB; the others in Gprs.
svm_vmrun_asm:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdx
    push rdi
    mov rax, rsi
    mov rcx, [rdi + 8]
    mov rdx, [rdi + 16]
    mov rbx, [rdi + 24]
    mov rbp, [rdi + 40]
    mov rsi, [rdi + 48]
    mov r8, [rdi + 64]
    mov r9, [rdi + 72]
    mov r10, [rdi + 80]
    mov r11, [rdi + 88]
    mov r12, [rdi + 96]
    mov r13, [rdi + 104]
    mov r14, [rdi + 112]
    mov r15, [rdi + 120]
    mov rdi, [rdi + 56]
    // RFLAGS.IF = 1 across VMRUN (GIF = 0 keeps the host from taking
    // interrupts): a physical interrupt while the guest runs is an INTR
    // exit, and after STGI the pending one (the time-slice timer,
    // crate::x86_64::lapic) is taken and ended before CLI.
    clgi
    sti
    vmload rax
    vmrun rax
    vmsave rax
    // Overwrite the return stack buffer before the first RET: the guest may
    // have filled it with return targets that would steer the host's
    // returns speculatively (SpectreRSB; Linux/KVM fill on every #VMEXIT).
    // 32 CALLs whose speculative returns land on INT3 traps, then drop the
    // 32 return addresses: 33 instructions.
    .rept 32
    call 3f
    int3
3:
    .endr
    add rsp, 256
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 8], rcx
    mov [rdi + 16], rdx
    mov [rdi + 24], rbx
    mov [rdi + 40], rbp
    mov [rdi + 48], rsi
    mov [rdi + 64], r8
    mov [rdi + 72], r9
    mov [rdi + 80], r10
    mov [rdi + 88], r11
    mov [rdi + 96], r12
    mov [rdi + 104], r13
    mov [rdi + 112], r14
    mov [rdi + 120], r15
    pop rax
    mov [rdi + 56], rax
    add rsp, 8
    pop rax
    vmload rax
    stgi
    cli
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    .size svm_vmrun_asm, . - svm_vmrun_asm
"#
);

extern "C" {
    fn svm_vmrun_asm(gprs: *mut Gprs, vmcb_pa: u64, host_vmcb_pa: u64);
}

/// Why SVM cannot be used.
pub fn svm_unusable_reason(svm: bool, npt: bool) -> Option<&'static str> {
    if !svm {
        return Some("the CPU has no SVM (CPUID 8000_0001 ECX bit 2)");
    }
    if !npt {
        return Some("the CPU has no nested paging (CPUID 8000_000A EDX bit 0)");
    }
    None
}

/// Enables SVM on the calling CPU: checks VM_CR.SVMDIS, sets EFER.SVME,
/// points VM_HSAVE_PA at `hsave_pa` and saves the host's VMLOAD state to
/// `host_vmcb_pa` (both 4 KiB pages, identity-mapped, zeroed by the caller).
///
/// # Safety
/// The CPU has SVM (CPUID checked); the two pages belong to this CPU alone
/// for the rest of the kernel's life; the GDT, TSS and segment registers are
/// final (they are what VMLOAD restores after each exit).
pub unsafe fn enable_on_this_cpu(hsave_pa: u64, host_vmcb_pa: u64) -> Result<(), &'static str> {
    let slot = &this_cpu().svm.host_vmcb;
    // SAFETY: SVM is present, so VM_CR exists (APM Vol. 2 §15.30.1).
    if unsafe { rdmsr(MSR_VM_CR) } & VM_CR_SVMDIS != 0 {
        return Err("SVM is disabled by the firmware (VM_CR.SVMDIS)");
    }
    // SAFETY: SVMDIS is clear, so setting EFER.SVME is allowed; the other
    // EFER bits are kept.
    unsafe { wrmsr(IA32_EFER, rdmsr(IA32_EFER) | EFER_SVME) };
    // SAFETY: SVM is being enabled on this CPU; no vCPU is bound yet.
    unsafe { fpu::enable_on_this_cpu() };
    let max_ext = core::arch::x86_64::__cpuid_count(0x8000_0000, 0).eax;
    let amd_ibpb = max_ext >= 0x8000_0008
        && core::arch::x86_64::__cpuid_count(0x8000_0008, 0).ebx & (1 << 12) != 0;
    let intel_ibpb = core::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 26) != 0;
    HAS_IBPB.store(amd_ibpb || intel_ibpb, Ordering::Relaxed);
    // SAFETY: EFER.SVME is set; hsave_pa is a page-aligned page owned by
    // this CPU (the caller's contract).
    unsafe { wrmsr(MSR_VM_HSAVE_PA, hsave_pa) };
    // SAFETY: EFER.SVME is set and host_vmcb_pa is this CPU's own page;
    // VMSAVE only writes that page.
    unsafe { core::arch::asm!("vmsave rax", in("rax") host_vmcb_pa, options(nostack)) };
    slot.store(host_vmcb_pa, Ordering::Release);
    Ok(())
}

/// Host-physical memory reached through the kernel's identity map.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhysTables;

impl TableAccess for PhysTables {
    fn read(&self, table_pa: u64, index: usize) -> u64 {
        let p = (table_pa + 8 * (index as u64 & 511)) as *const u64;
        // SAFETY: table_pa is a table frame this NPT allocated from the
        // frame allocator (identity-mapped RAM, 8-byte aligned entries).
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table_pa: u64, index: usize, entry: u64) {
        let p = (table_pa + 8 * (index as u64 & 511)) as *mut u64;
        // SAFETY: as in `read`: a table frame owned by this NPT.
        unsafe { p.write_volatile(entry) }
    }
}

/// The real machine, as one vCPU uses it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Machine;

impl HostPhys for Machine {
    fn read_phys(&self, hpa: u64, buf: &mut [u8]) -> bool {
        // SAFETY: callers pass addresses found in this VM's NPT (its own RAM
        // frames, identity-mapped); `buf` is a distinct kernel buffer.
        unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }

    #[inline]
    fn read_phys_u64(&self, hpa: u64) -> Option<u64> {
        // SAFETY: as in read_phys: an address found in this VM's NPT
        // (identity-mapped RAM); the caller passes 8-byte aligned entries.
        Some(unsafe { (hpa as *const u64).read_unaligned() })
    }
}

impl Hw for Machine {
    fn vmrun(&mut self, cpu: PhysCpu, vmcb: &mut Vmcb, gprs: &mut Gprs) {
        let me = this_cpu();
        debug_assert_eq!(me.index, cpu, "the vCPU is bound to another CPU");
        let host = me.svm.host_vmcb.load(Ordering::Relaxed);
        if host == 0 {
            // Never VMRUN on a CPU without SVM set up: report a failed entry.
            vmcb.write64(super::vmcb::ctrl::EXITCODE, super::vmcb::exitcode::INVALID);
            return;
        }
        let pa = vmcb as *mut Vmcb as u64;
        // SAFETY: SVM is enabled on this CPU (host != 0 above); `vmcb` is a 4 KiB-aligned identity-mapped page set up
        // by SvmVcpu::new with VMRUN intercepted, ASID != 0 and NPT on; the
        // assembly saves and restores all callee-saved registers.
        unsafe { svm_vmrun_asm(gprs, pa, host) };
    }

    fn swap_asid_owner(&mut self, _cpu: PhysCpu, asid: u32, vm: usize) -> Option<usize> {
        // Only this CPU writes its own table: a plain load and store.
        let slot = this_cpu().svm.asid_owner.get(asid as usize)?;
        let prev = slot.load(Ordering::Relaxed);
        slot.store(vm + 1, Ordering::Relaxed);
        match prev {
            0 => None,
            v => Some(v - 1),
        }
    }

    #[inline]
    fn asid_owner(&self, _cpu: PhysCpu, asid: u32) -> Option<usize> {
        let slot = this_cpu().svm.asid_owner.get(asid as usize)?;
        slot.load(Ordering::Relaxed).checked_sub(1)
    }

    fn fpu_save(&mut self, area: &mut FpuArea) {
        fpu::save(area);
    }

    fn arm_turn_deadline(&mut self) {
        crate::x86_64::lapic::arm_slice();
    }

    fn arm_deadline(&mut self, tsc: u64) {
        crate::x86_64::lapic::shorten_slice(tsc);
    }

    #[inline]
    fn deadline_fired(&mut self) -> bool {
        crate::x86_64::lapic::slice_fired()
    }

    fn last_host_irq(&mut self) -> Option<u32> {
        crate::x86_64::lapic::last_host_irq()
    }

    fn swap_last_vm(&mut self, _cpu: PhysCpu, vm: usize) -> Option<usize> {
        let slot = &this_cpu().svm.last_vm;
        let prev = slot.load(Ordering::Relaxed);
        slot.store(vm + 1, Ordering::Relaxed);
        prev.checked_sub(1)
    }

    fn predictor_barrier(&mut self) {
        if HAS_IBPB.load(Ordering::Relaxed) {
            // SAFETY: the CPU has IBPB (CPUID above), so IA32_PRED_CMD exists
            // and writing bit 0 only flushes indirect-branch predictions.
            unsafe { wrmsr(MSR_PRED_CMD, 1) };
        }
    }

    fn load_guest_drs(&mut self, drs: &[u64; 4]) {
        crate::x86_64::guest::debug::load_dr0_3(drs);
    }

    fn fpu_restore(&mut self, area: &FpuArea) {
        fpu::restore(area);
    }
}

/// Whether SVM was enabled on the calling CPU.
pub fn enabled_on_this_cpu() -> bool {
    this_cpu().svm.host_vmcb.load(Ordering::Acquire) != 0
}
