//! VMX on the bare-metal CPU: IA32_FEATURE_CONTROL, CR0/CR4 fixed bits,
//! VMXON and VMXOFF (SDM Vol. 3C 24.7, 24.8, 31.5).

use super::{
    feature_control, fixed_cr, Caps, FeatureControl, GuestGprs, VmFail, IA32_FEATURE_CONTROL,
};
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

/// CF (VMfailInvalid) and ZF (VMfailValid) after a VMX instruction.
fn vm_result(cf: u8, zf: u8) -> Result<(), VmFail> {
    match (cf, zf) {
        (0, 0) => Ok(()),
        (1, _) => Err(VmFail::Invalid),
        _ => Err(VmFail::Valid(
            vmread(x86::vmx::vmcs::ro::VM_INSTRUCTION_ERROR).unwrap_or(0),
        )),
    }
}

/// VMCLEAR of the VMCS at `pa`: written back, not launched, not current.
///
/// # Safety
/// VMX root operation; `pa` is a VMCS region of this hypervisor.
pub unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract; flags read right after.
    unsafe {
        core::arch::asm!("vmclear [{p}]", "setc {c}", "setz {z}", p = in(reg) &pa, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack));
    }
    vm_result(cf, zf)
}

/// VMPTRLD: the VMCS at `pa` becomes current on this CPU.
///
/// # Safety
/// As [`vmclear`]; the region carries the revision identifier.
pub unsafe fn vmptrld(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract; flags read right after.
    unsafe {
        core::arch::asm!("vmptrld [{p}]", "setc {c}", "setz {z}", p = in(reg) &pa, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack));
    }
    vm_result(cf, zf)
}

/// VMWRITE of `value` to `field` of the current VMCS.
///
/// # Safety
/// VMX root operation with a current VMCS; the value is the caller's
/// (a host-state field decides where the next VM exit lands).
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract; flags read right after.
    unsafe {
        core::arch::asm!("vmwrite {f}, {v}", "setc {c}", "setz {z}", f = in(reg) u64::from(field), v = in(reg) value, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack));
    }
    vm_result(cf, zf)
}

/// VMREAD of `field` of the current VMCS (VMfailInvalid without one).
pub fn vmread(field: u32) -> Result<u64, VmFail> {
    let (v, cf, zf): (u64, u8, u8);
    // SAFETY: VMREAD only reads the current VMCS; outside VMX operation
    // it would #UD, and the callers are in VMX root operation.
    unsafe {
        core::arch::asm!("vmread {v}, {f}", "setc {c}", "setz {z}", f = in(reg) u64::from(field), v = out(reg) v, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack));
    }
    match (cf, zf) {
        (0, 0) => Ok(v),
        (1, _) => Err(VmFail::Invalid),
        // The error number itself is a VMREAD; no recursion for it.
        _ => Err(VmFail::Valid(0)),
    }
}

/// The host-state fields (SDM 24.5, 26.2.2-26.2.4) from this CPU's
/// current state: control registers, segment selectors, FS/GS/TR bases,
/// GDTR/IDTR bases, SYSENTER MSRs, EFER and PAT. HOST_RSP and HOST_RIP
/// are written by [`enter`].
pub fn host_state() -> [(u32, u64); 20] {
    use x86::vmx::vmcs::host;
    let sel = |s: u16| u64::from(s & !7);
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reading segment registers, TR and the descriptor-table
    // registers has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es", "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, out(reg) tr, options(nomem, nostack, preserves_flags));
        core::arch::asm!("sgdt [{0}]", "sidt [{1}]", in(reg) gdtr.as_mut_ptr(), in(reg) idtr.as_mut_ptr(), options(nostack, preserves_flags));
    }
    let gdt_base = u64::from_le_bytes(gdtr[2..10].try_into().unwrap_or_default());
    let idt_base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or_default());
    // The TSS descriptor (16 bytes in long mode) gives TR's base.
    let at = gdt_base + u64::from(tr & !7);
    // SAFETY: TR selects a TSS descriptor inside the loaded GDT, which is
    // mapped kernel memory.
    let (lo, hi) = unsafe {
        (
            (at as *const u64).read_unaligned(),
            ((at + 8) as *const u64).read_unaligned(),
        )
    };
    let tr_base = (lo >> 16 & 0xff_ffff) | (lo >> 56 & 0xff) << 24 | (hi & 0xffff_ffff) << 32;
    // SAFETY: these MSRs exist on every x86_64 CPU with VMX.
    let msr = |m: u32| unsafe { instr::rdmsr(m) };
    [
        (host::CR0, instr::read_cr0()),
        (host::CR3, instr::read_cr3()),
        (host::CR4, instr::read_cr4()),
        (host::ES_SELECTOR, sel(es)),
        (host::CS_SELECTOR, sel(cs)),
        (host::SS_SELECTOR, sel(ss)),
        (host::DS_SELECTOR, sel(ds)),
        (host::FS_SELECTOR, sel(fs)),
        (host::GS_SELECTOR, sel(gs)),
        (host::TR_SELECTOR, sel(tr)),
        (host::FS_BASE, msr(0xc000_0100)),
        (host::GS_BASE, msr(0xc000_0101)),
        (host::TR_BASE, tr_base),
        (host::GDTR_BASE, gdt_base),
        (host::IDTR_BASE, idt_base),
        (host::IA32_SYSENTER_CS, msr(0x174)),
        (host::IA32_SYSENTER_ESP, msr(0x175)),
        (host::IA32_SYSENTER_EIP, msr(0x176)),
        (host::IA32_EFER_FULL, msr(0xc000_0080)),
        (host::IA32_PAT_FULL, msr(0x277)),
    ]
}

/// VM entry of the current VMCS with the guest's registers from `gprs`
/// (VMLAUNCH the first time, VMRESUME after `launched`), back at the VM
/// exit with the guest's registers saved into `gprs` (`Ok`), or with the
/// VMfail (the registers untouched). HOST_RSP and HOST_RIP are written
/// here; the other host-state fields must describe this CPU.
///
/// # Safety
/// VMX root operation with a current VMCS whose host state is this
/// CPU's ([`host_state`]) and whose guest is confined by its EPT;
/// `launched` says truly whether it was launched since its VMCLEAR.
pub unsafe fn enter(gprs: &mut GuestGprs, launched: bool) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract. The callee-saved registers and the
    // pointer to `gprs` are pushed; HOST_RSP points at that pointer, so the
    // VM exit (RSP = HOST_RSP, RIP = the label) finds it, swaps it with the
    // guest's RAX and stores the 15 registers. MOVs between the TEST and
    // VMLAUNCH/VMRESUME leave the flags alone.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "push r12",
            "push r13",
            "push r14",
            "push r15",
            "push rdi",
            "mov rax, 0x6c14", // HOST_RSP
            "vmwrite rax, rsp",
            "mov rax, 0x6c16", // HOST_RIP
            "lea rdx, [rip + 2f]",
            "vmwrite rax, rdx",
            "mov rax, rdi",
            // CR2 is not in the VMCS: the guest's goes in here.
            "mov rcx, [rax + 120]",
            "mov cr2, rcx",
            "test sil, sil",
            "mov rbx, [rax + 8]",
            "mov rcx, [rax + 16]",
            "mov rdx, [rax + 24]",
            "mov rsi, [rax + 32]",
            "mov rdi, [rax + 40]",
            "mov rbp, [rax + 48]",
            "mov r8, [rax + 56]",
            "mov r9, [rax + 64]",
            "mov r10, [rax + 72]",
            "mov r11, [rax + 80]",
            "mov r12, [rax + 88]",
            "mov r13, [rax + 96]",
            "mov r14, [rax + 104]",
            "mov r15, [rax + 112]",
            "mov rax, [rax]",
            "jnz 4f",
            "vmlaunch",
            "jmp 5f",
            "4:",
            "vmresume",
            "5:",
            // VMfail: the flags say which; drop the pointer.
            "setc cl",
            "setz dl",
            "add rsp, 8",
            "jmp 3f",
            // VM exit. Overwrite the return stack buffer before the first
            // RET: the guest may have filled it with return targets that
            // would steer the host's returns speculatively (SpectreRSB; as
            // after #VMEXIT on SVM): 32 CALLs whose speculative returns land
            // on INT3, then drop the 32 return addresses.
            "2:",
            ".rept 32",
            "call 6f",
            "int3",
            "6:",
            ".endr",
            "add rsp, 256",
            "xchg rax, [rsp]",
            "mov [rax + 8], rbx",
            "mov [rax + 16], rcx",
            "mov [rax + 24], rdx",
            "mov [rax + 32], rsi",
            "mov [rax + 40], rdi",
            "mov [rax + 48], rbp",
            "mov [rax + 56], r8",
            "mov [rax + 64], r9",
            "mov [rax + 72], r10",
            "mov [rax + 80], r11",
            "mov [rax + 88], r12",
            "mov [rax + 96], r13",
            "mov [rax + 104], r14",
            "mov [rax + 112], r15",
            "pop rcx",
            "mov [rax], rcx",
            "mov rcx, cr2",
            "mov [rax + 120], rcx",
            "xor ecx, ecx",
            "xor edx, edx",
            "3:",
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop rbp",
            "pop rbx",
            in("rdi") gprs as *mut GuestGprs,
            in("rsi") u64::from(launched),
            out("cl") cf,
            out("dl") zf,
            clobber_abi("C"),
        );
    }
    vm_result(cf, zf)
}

/// The real machine as a VMX vCPU uses it ([`super::vcpu::VmxHw`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct VmxMachine;

impl crate::x86_64::guest::walk::HostPhys for VmxMachine {
    fn read_phys(&self, hpa: u64, buf: &mut [u8]) -> bool {
        // SAFETY: callers pass addresses found in this VM's EPT (its own RAM
        // frames, identity-mapped); `buf` is a distinct kernel buffer.
        unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }

    #[inline]
    fn read_phys_u64(&self, hpa: u64) -> Option<u64> {
        // SAFETY: as in read_phys: an address found in this VM's EPT.
        Some(unsafe { (hpa as *const u64).read_unaligned() })
    }
}

impl super::vcpu::VmxHw for VmxMachine {
    fn load(&mut self, vmcs: u64) -> Result<(), VmFail> {
        // SAFETY: `vmcs` is the vCPU's own region (revision written at
        // creation); the vCPU is bound to this CPU, in VMX root operation.
        unsafe { vmptrld(vmcs) }
    }

    fn clear(&mut self, vmcs: u64) -> Result<(), VmFail> {
        // SAFETY: as in `load`.
        unsafe { vmclear(vmcs) }
    }

    #[inline]
    fn vmread(&self, field: u32) -> u64 {
        vmread(field).unwrap_or(0)
    }

    #[inline]
    fn vmwrite(&mut self, field: u32, value: u64) {
        // SAFETY: the vCPU's VMCS is current (bound); the fields written
        // are guest state, controls and this CPU's host state. A refused
        // field (unsupported) shows as a failed VM entry.
        let _ = unsafe { vmwrite(field, value) };
    }

    fn host_state(&self) -> alloc::vec::Vec<(u32, u64)> {
        host_state().to_vec()
    }

    fn enter(&mut self, gprs: &mut GuestGprs, launched: bool) -> Result<(), VmFail> {
        // SAFETY: the vCPU's VMCS is current with this CPU's host state and
        // its VM's EPT; `launched` is the vCPU's record since its VMCLEAR.
        let r = unsafe { enter(gprs, launched) };
        // The host runs vCPUs with interrupts off. A physical interrupt
        // while the guest ran was an external-interrupt exit, not
        // acknowledged: it is taken here through the IDT (its stub records
        // the vector for the exit's decoding) and ended, as after STGI on
        // SVM.
        // SAFETY: the IDT has gates for every vector the host's TPR lets
        // through; one instruction with IF = 1, then off again.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        r
    }

    fn arm_turn_deadline(&mut self) {
        crate::x86_64::lapic::arm_slice();
    }

    fn arm_deadline(&mut self, tsc: u64) {
        crate::x86_64::lapic::shorten_slice(tsc);
    }

    fn fpu_save(&mut self, area: &mut crate::x86_64::guest::fpu::FpuArea) {
        crate::x86_64::guest::fpu::save(area);
    }

    fn fpu_restore(&mut self, area: &crate::x86_64::guest::fpu::FpuArea) {
        crate::x86_64::guest::fpu::restore(area);
    }

    fn wrmsr(&mut self, msr: u32, value: u64) {
        // SAFETY: only the SYSCALL MSRs and KERNEL_GS_BASE come here, with
        // values checked like the guest's WRMSR (canonical addresses); the
        // hypervisor never uses them (no SYSCALL, no SWAPGS).
        unsafe { instr::wrmsr(msr, value) };
    }

    fn last_host_irq(&mut self) -> Option<u32> {
        crate::x86_64::lapic::last_host_irq()
    }
}
