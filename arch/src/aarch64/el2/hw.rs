//! The EL2 backend on the machine: the world switch, the vCPU and the
//! stage-2 mapper.
//!
//! World switch (as KVM's nVHE `__guest_enter`/`__guest_exit` and Hafnium's
//! `vcpu_switch`): [`__el2_guest_enter`] saves the host's callee-saved
//! registers and SP in the [`GuestContext`], puts the context's address in
//! this CPU's `PerCpu` (TPIDR_EL2 points at it, `crate::percpu`), loads all 31 guest GPRs, ELR_EL2 and SPSR_EL2 and ERETs. Any
//! exception from the guest arrives on [`GUEST_VECTORS`] (installed in
//! VBAR_EL2 by [`install_vectors`]; its current-EL entries branch to the
//! kernel's own crash vectors), which stores every guest GPR plus
//! ELR/SPSR/ESR/FAR/HPFAR into the context and returns to the caller of
//! `__el2_guest_enter` with the vector index.
//!
//! EL1 system registers are switched around every entry (the hypervisor
//! never uses them, but injection and register access then always work on
//! memory). FP/SIMD registers are switched in `bind`/`unbind` only: the
//! hypervisor is built soft-float, so nothing between two entries of the
//! same vCPU touches them.

use core::arch::{asm, global_asm};

use crate::hostirq::HostIrq;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{
    decode_sync, guest_traps, sync_delivery, CpuIdRegs, ExitRegs, GuestTraps, IchVtr, S2Config,
    TurnDeadline, VgicCpuState, CNTHCTL_EL2_GUEST, ESR_UNDEFINED, HCR_EL2_GUEST,
    PSTATE_EL1H_MASKED,
};
use crate::aarch64::mmu;
use crate::paging::{
    Aarch64Stage2, Attrs, MapError, MemType, PageSize, PageTable, TableAccess, TableAlloc,
};
use vmm::arm64::wiring::VcpuInterface;
use vmm::backend::{
    check_s2_range, BackendError, BootState, EntryMode, PhysCpu, S2Attrs, Stage2, Stage2Error, Vcpu,
};
use vmm::event::{Event, PendingEvents, Queued};
use vmm::exit::Exit;
use vmm::regs::Reg;

/// Guest registers saved by the world switch (layout shared with the
/// assembly below).
#[repr(C)]
#[derive(Clone, Debug)]
pub struct GuestContext {
    pub x: [u64; 31],
    /// ELR_EL2: the guest PC.
    pub pc: u64,
    /// SPSR_EL2: the guest PSTATE.
    pub pstate: u64,
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
    /// Host x19..x30, SP, padding.
    host: [u64; 14],
}

const _: () = assert!(core::mem::size_of::<GuestContext>() == 400);

extern "C" {
    /// Enters the guest of `ctx`; returns the index (8..=15) of the vector
    /// the guest exited through.
    fn __el2_guest_enter(ctx: *mut GuestContext) -> u64;
    static __el2_guest_vectors: u8;
}

global_asm!(
    r#"
    .macro TO_HOST idx
    .balign 0x80
    b       __el2_vectors + (\idx * 0x80)
    .endm
    .macro FROM_GUEST idx
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\idx
    b       __el2_guest_exit
    .endm

    .section .text.el2_guest_vectors, "ax"
    .balign 0x800
    .global __el2_guest_vectors
__el2_guest_vectors:
    TO_HOST 0
    TO_HOST 1
    TO_HOST 2
    TO_HOST 3
    TO_HOST 4
    TO_HOST 5
    TO_HOST 6
    TO_HOST 7
    FROM_GUEST 8
    FROM_GUEST 9
    FROM_GUEST 10
    FROM_GUEST 11
    FROM_GUEST 12
    FROM_GUEST 13
    FROM_GUEST 14
    FROM_GUEST 15

    .balign 0x80
__el2_guest_exit:
    // TPIDR_EL2 is this CPU's PerCpu; its second word the GuestContext.
    mrs     x1, tpidr_el2
    ldr     x1, [x1, #8]
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [x1, #248]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [x1, #264]
    mrs     x2, hpfar_el2
    str     x2, [x1, #280]
    ldp     x19, x20, [x1, #288]
    ldp     x21, x22, [x1, #304]
    ldp     x23, x24, [x1, #320]
    ldp     x25, x26, [x1, #336]
    ldp     x27, x28, [x1, #352]
    ldp     x29, x30, [x1, #368]
    ldr     x2, [x1, #384]
    mov     sp, x2
    ret

    .section .text.el2_guest_enter, "ax"
    .global __el2_guest_enter
__el2_guest_enter:
    stp     x19, x20, [x0, #288]
    stp     x21, x22, [x0, #304]
    stp     x23, x24, [x0, #320]
    stp     x25, x26, [x0, #336]
    stp     x27, x28, [x0, #352]
    stp     x29, x30, [x0, #368]
    mov     x2, sp
    str     x2, [x0, #384]
    mrs     x2, tpidr_el2
    str     x0, [x2, #8]
    ldp     x2, x3, [x0, #248]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret
    // No speculation past ERET.
    dsb     nsh
    isb
"#
);

/// Whether the CPU has pointer authentication (keys switched per vCPU).
static HAS_PAUTH: AtomicBool = AtomicBool::new(false);
/// Whether the CPU has FEAT_SME (TPIDR2_EL0, not trapped by CPTR_EL2.TSM)
/// and FEAT_RAS (VDISR_EL2, which a guest reaches as DISR_EL1 with
/// HCR_EL2.AMO): both are switched per vCPU, or one VM reads another's
/// values (found by the chaos guests).
static HAS_SME: AtomicBool = AtomicBool::new(false);
/// The guest time slice in counter ticks (0: no preemption). A guest that
/// never exits (a spinning loop) would otherwise keep the CPU forever and
/// starve every other VM (found by the chaos guests): the EL2 physical
/// timer (CNTHP, INTID 26) gets the turn's deadline ([`TurnDeadline`], set
/// once per turn) before each entry and, routed to EL2 by HCR_EL2.IMO,
/// ends the turn with an IRQ exit.
static SLICE_TICKS: AtomicU64 = AtomicU64::new(0);
/// The EL2 physical timer's PPI (Arm BSA; QEMU `virt` DTB `<1 10 4>`).
pub const CNTHP_INTID: u32 = 26;
/// The host's kick between CPUs (SGI 1): a vCPU running there got a
/// request; it goes on after the vmm looked (`HostIrq::Resync`).
pub const KICK_SGI: u32 = 1;
/// The host's reschedule SGI (SGI 2): the vCPU running there ends its turn
/// (`HostIrq::EndOfTurn`) for a woken one.
pub const RESCHED_SGI: u32 = 2;
/// The GIC virtual CPU interface's maintenance interrupt (QEMU `virt`:
/// PPI 9).
pub const MAINTENANCE_PPI: u32 = vmm::arm64::vgic::MAINTENANCE_INTID;
/// The EL1 virtual timer's PPI (`<1 11 4>`).
pub const VTIMER_PPI: u32 = vmm::arm64::timer::VTIMER_INTID;
static HAS_RAS: AtomicBool = AtomicBool::new(false);
/// List registers of the GIC virtual CPU interface (0: the CPU has no
/// GICv3 system-register interface, nothing to switch) and active-priority
/// registers per group, from ICH_VTR_EL2 ([`IchVtr`]).
static ICH_LRS: AtomicUsize = AtomicUsize::new(0);
static ICH_APRS: AtomicUsize = AtomicUsize::new(0);
/// ICH_VTR_EL2.PRIbits + 1: the priority bits the virtual CPU interface
/// (and so the vGIC) implements.
static ICH_PRI_BITS: AtomicUsize = AtomicUsize::new(5);

/// The GIC virtual CPU interface found by [`install_vectors`]: (list
/// registers, priority bits); 0 list registers without one.
pub fn gic_virtual_interface() -> (usize, u8) {
    (
        ICH_LRS.load(Ordering::Relaxed),
        ICH_PRI_BITS.load(Ordering::Relaxed) as u8,
    )
}
/// Whether SCXTNUM_EL0/EL1 exist (FEAT_CSV2_2, CSV2_1p2): switched per
/// vCPU (HCR_EL2.EnSCXT lets the guest use them).
static HAS_SCXTNUM: AtomicBool = AtomicBool::new(false);
/// HCR_EL2 for guests on this CPU ([`guest_traps`]).
static GUEST_HCR: AtomicU64 = AtomicU64::new(HCR_EL2_GUEST);

/// HCR_EL2 while a guest runs (set by [`install_vectors`]).
pub fn guest_hcr() -> u64 {
    GUEST_HCR.load(Ordering::Relaxed)
}

/// Points VBAR_EL2 at the guest-exit vectors (whose current-EL entries go
/// to the kernel's crash vectors), sets the EL2 controls every guest uses
/// (the traps [`guest_traps`] computes from the ID registers) and drops
/// every stale guest TLB entry. Returns the trap configuration.
pub fn install_vectors() -> (CpuIdRegs, GuestTraps) {
    let isar1 = mrs_isar1();
    // ID_AA64ISAR1_EL1 APA (7:4), API (11:8), GPA (27:24), GPI (31:28).
    let pauth = (isar1 >> 4) & 0xff != 0 || (isar1 >> 24) & 0xff != 0 || isar2_apa3() != 0;
    HAS_PAUTH.store(pauth, Ordering::Relaxed);
    let id = CpuIdRegs {
        pfr0: read_id_reg(4, 0),
        pfr1: read_id_reg(4, 1),
        dfr0: read_id_reg(5, 0),
        mmfr0: read_id_reg(7, 0),
        mmfr1: read_id_reg(7, 1),
    };
    let (pfr0, pfr1) = (id.pfr0, id.pfr1);
    HAS_RAS.store((pfr0 >> 28) & 0xf != 0, Ordering::Relaxed);
    HAS_SME.store((pfr1 >> 24) & 0xf != 0, Ordering::Relaxed);
    HAS_SCXTNUM.store(id.scxtnum(), Ordering::Relaxed);
    let traps = guest_traps(&id);
    GUEST_HCR.store(traps.hcr, Ordering::Relaxed);
    let vbar = &raw const __el2_guest_vectors as u64;
    // The new table keeps the kernel's handling of EL2 exceptions
    // (its first eight entries branch to `__el2_vectors`) and adds the
    // guest-exit entries; CPTR/CNTHCTL/CNTVOFF only affect lower ELs and FP
    // at EL2 (which the soft-float hypervisor never uses).
    // SAFETY: EL2 exception handling is preserved and only lower-EL controls change (above).
    unsafe {
        asm!(
            "msr vbar_el2, {vbar}",
            "msr cptr_el2, {cptr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntvoff_el2, xzr",
            "isb",
            vbar = in(reg) vbar,
            cptr = in(reg) traps.cptr,
            cnthctl = in(reg) CNTHCTL_EL2_GUEST,
            options(nostack, preserves_flags)
        )
    };
    set_mdcr_el2(traps.mdcr);
    set_optional_traps(&traps);
    probe_ich((pfr0 >> 24) & 0xf != 0);
    mmu::flush_all_guests();
    (id, traps)
}

/// Programs the trap registers of optional features: HCRX_EL2 (FEAT_HCX),
/// the fine-grained traps (FEAT_FGT, FEAT_FGT2) and MPAM2_EL2 (FEAT_MPAM).
/// Each exists only with its feature (`traps` has it only then), and each
/// only affects EL1/EL0 (MPAM2_EL2 also sets EL2's own partition to the
/// default one).
fn set_optional_traps(traps: &GuestTraps) {
    if let Some(hcrx) = traps.hcrx {
        // SAFETY: HCRX_EL2 exists (ID_AA64MMFR1_EL1.HCX); it only controls
        // EL1/EL0 features.
        unsafe { asm!("msr S3_4_C1_C2_2, {}", in(reg) hcrx, options(nostack, preserves_flags)) };
    }
    if let Some(f) = traps.fgt {
        // SAFETY: HFGRTR/HFGWTR/HFGITR/HDFGRTR/HDFGWTR_EL2 exist
        // (ID_AA64MMFR0_EL1.FGT); they only add traps of EL1/EL0 accesses.
        unsafe {
            asm!(
                "msr S3_4_C1_C1_4, {r}",
                "msr S3_4_C1_C1_5, {w}",
                "msr S3_4_C1_C1_6, {i}",
                "msr S3_4_C3_C1_4, {dr}",
                "msr S3_4_C3_C1_5, {dw}",
                r = in(reg) f.hfgrtr,
                w = in(reg) f.hfgwtr,
                i = in(reg) f.hfgitr,
                dr = in(reg) f.hdfgrtr,
                dw = in(reg) f.hdfgwtr,
                options(nostack, preserves_flags)
            )
        };
    }
    if traps.fgt2 {
        // SAFETY: HDFGRTR2/HDFGWTR2/HFGRTR2/HFGWTR2/HFGITR2_EL2 exist
        // (ID_AA64MMFR0_EL1.FGT = 2); 0 traps the `n`-bit registers.
        unsafe {
            asm!(
                "msr S3_4_C3_C1_0, xzr",
                "msr S3_4_C3_C1_1, xzr",
                "msr S3_4_C3_C1_2, xzr",
                "msr S3_4_C3_C1_3, xzr",
                "msr S3_4_C3_C1_7, xzr",
                options(nostack, preserves_flags)
            )
        };
    }
    if let Some(m) = traps.mpam2 {
        // SAFETY: MPAM2_EL2 exists (FEAT_MPAM); TRAPMPAM0EL1/1EL1 trap the
        // guest's partition-ID registers, EL2 runs in the default partition.
        unsafe { asm!("msr S3_4_C10_C5_0, {}", in(reg) m, options(nostack, preserves_flags)) };
    }
    // SAFETY: synchronizes the trap registers above before any guest entry.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Finds the GIC virtual CPU interface the world switch must save and
/// restore: with the GICv3 system-register interface (ID_AA64PFR0_EL1.GIC
/// `gic`) and ICC_SRE_EL2.SRE set (the ICH_* registers need it; set here if
/// the firmware left it clear, as `enable_preemption` does), the sizes come
/// from ICH_VTR_EL2.
fn probe_ich(gic: bool) {
    if !gic {
        return;
    }
    let sre: u64;
    // SAFETY: ICC_SRE_EL2 exists (ID_AA64PFR0_EL1.GIC != 0); SRE|Enable only
    // select the system-register interface at EL2 (and allow EL1 its own),
    // which is the only one the hypervisor uses.
    unsafe {
        asm!(
            "mrs {s}, S3_4_C12_C9_5",
            "orr {s}, {s}, #1",
            "orr {s}, {s}, #8",
            "msr S3_4_C12_C9_5, {s}",
            "isb",
            "mrs {s}, S3_4_C12_C9_5",
            s = out(reg) sre,
            options(nostack, preserves_flags)
        )
    };
    if sre & 1 == 0 {
        return;
    }
    let vtr: u64;
    // SAFETY: reading ICH_VTR_EL2 at EL2 with ICC_SRE_EL2.SRE set has no
    // side effects.
    unsafe {
        asm!("mrs {}, S3_4_C12_C11_1", out(reg) vtr, options(nomem, nostack, preserves_flags))
    };
    ICH_PRI_BITS.store(
        usize::from(vmm::arm64::lr::Vtr(vtr).pri_bits()),
        Ordering::Relaxed,
    );
    let vtr = IchVtr(vtr);
    ICH_APRS.store(vtr.apr_regs(), Ordering::Relaxed);
    ICH_LRS.store(vtr.list_regs(), Ordering::Relaxed);
}

macro_rules! ich_regs {
    ($load:ident, $save:ident, [$($i:literal => $reg:literal),* $(,)?]) => {
        fn $load(v: &[u64], n: usize) {
            $(
                if $i < n {
                    // SAFETY: the register exists (index below n, from ICH_VTR_EL2);
                    // ICH state only affects the guest's virtual interface.
                    unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v[$i], options(nostack, preserves_flags)) };
                }
            )*
        }
        fn $save(v: &mut [u64], n: usize) {
            $(
                if $i < n {
                    // SAFETY: the register exists; reading it has no side effects.
                    unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v[$i], options(nomem, nostack, preserves_flags)) };
                }
            )*
        }
    };
}

ich_regs!(load_lrs, save_lrs, [
    0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
    4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
    8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
    12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7",
]);
ich_regs!(load_ap0rs, save_ap0rs, [
    0 => "S3_4_C12_C8_0", 1 => "S3_4_C12_C8_1", 2 => "S3_4_C12_C8_2", 3 => "S3_4_C12_C8_3",
]);
ich_regs!(load_ap1rs, save_ap1rs, [
    0 => "S3_4_C12_C9_0", 1 => "S3_4_C12_C9_1", 2 => "S3_4_C12_C9_2", 3 => "S3_4_C12_C9_3",
]);

/// Loads the part of a vCPU's GIC virtual CPU interface that stays on the
/// CPU while it is bound (in `bind`): the active priorities, then
/// ICH_VMCR_EL2 (KVM's `__vgic_v3_restore_state` order). The list
/// registers and ICH_HCR_EL2 are loaded before every entry from what the
/// vmm filled ([`gic_enter`]).
fn vgic_load(g: &VgicCpuState) {
    let lrs = ICH_LRS.load(Ordering::Relaxed);
    if lrs == 0 {
        return;
    }
    let aprs = ICH_APRS.load(Ordering::Relaxed);
    load_ap0rs(&g.ap0r, aprs);
    load_ap1rs(&g.ap1r, aprs);
    // SAFETY: ICH_VMCR_EL2 exists (lrs != 0: the GICv3 system-register
    // interface with SRE set); it only holds the guest's virtual interface
    // state; the ISB makes it the guest's before its entry.
    unsafe {
        asm!("msr S3_4_C12_C11_7, {}", "isb", in(reg) g.vmcr, options(nostack, preserves_flags))
    };
}

/// Saves what [`vgic_load`] loads (in `unbind`), then disables the virtual
/// CPU interface (ICH_HCR_EL2 = 0: no maintenance interrupt while the CPU
/// runs the hypervisor, idles or binds another vCPU).
fn vgic_save(g: &mut VgicCpuState) {
    let lrs = ICH_LRS.load(Ordering::Relaxed);
    if lrs == 0 {
        return;
    }
    let aprs = ICH_APRS.load(Ordering::Relaxed);
    // SAFETY: as in vgic_load; reads have no side effects, and ICH_HCR_EL2 = 0
    // only turns the guest's virtual interface off until the next entry.
    unsafe {
        asm!("mrs {}, S3_4_C12_C11_7", out(reg) g.vmcr, options(nomem, nostack, preserves_flags));
        asm!(
            "msr S3_4_C12_C11_0, xzr",
            "isb",
            options(nostack, preserves_flags)
        );
    }
    save_ap0rs(&mut g.ap0r, aprs);
    save_ap1rs(&mut g.ap1r, aprs);
}

/// Before an entry: the list registers and ICH_HCR_EL2 the vmm filled, the
/// guest's virtual timer with the VM's CNTVOFF_EL2, and the physical
/// virtual-timer PPI masked or not as the vmm says.
fn gic_enter(ci: &VcpuInterface) {
    let lrs = ci.nr_lrs.min(ICH_LRS.load(Ordering::Relaxed));
    if lrs != 0 {
        load_lrs(&ci.lr, lrs);
        // SAFETY: ICH_HCR_EL2 exists (lrs != 0); it only controls the
        // guest's virtual interface.
        unsafe {
            asm!("msr S3_4_C12_C11_0, {}", in(reg) ci.hcr, options(nostack, preserves_flags))
        };
    }
    // SAFETY: CNTVOFF_EL2 and the EL1 virtual timer only affect the guest's
    // view of time and PPI 27, which the hypervisor handles only as a guest
    // exit.
    unsafe {
        asm!("msr cntvoff_el2, {off}", "msr cntv_cval_el0, {cval}", "msr cntv_ctl_el0, {ctl}",
             off = in(reg) ci.cntvoff, cval = in(reg) ci.cntv_cval, ctl = in(reg) ci.cntv_ctl,
             options(nostack, preserves_flags))
    };
    set_vtimer_ppi_masked(ci.vtimer_masked);
}

/// After an exit: the list registers, ICH_HCR_EL2 (EOIcount),
/// ICH_VMCR_EL2 and the virtual timer, for the vmm.
fn gic_exit(ci: &mut VcpuInterface) {
    // SAFETY: reading the EL1 virtual timer has no side effects.
    unsafe {
        asm!("mrs {ctl}, cntv_ctl_el0", "mrs {cval}, cntv_cval_el0",
             ctl = out(reg) ci.cntv_ctl, cval = out(reg) ci.cntv_cval,
             options(nomem, nostack, preserves_flags))
    };
    let lrs = ci.nr_lrs.min(ICH_LRS.load(Ordering::Relaxed));
    if lrs == 0 {
        return;
    }
    save_lrs(&mut ci.lr, lrs);
    // SAFETY: ICH_HCR_EL2 and ICH_VMCR_EL2 exist (lrs != 0); reads have no
    // side effects.
    unsafe {
        asm!("mrs {}, S3_4_C12_C11_0", out(reg) ci.hcr, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, S3_4_C12_C11_7", out(reg) ci.vmcr, options(nomem, nostack, preserves_flags));
    }
}

/// Stops the EL1 virtual timer of the vCPU leaving the CPU (its state is
/// in its `VcpuInterface`), so that it cannot fire while the CPU idles or
/// runs another vCPU.
fn vtimer_off() {
    // SAFETY: only the guest's EL1 virtual timer is disabled.
    unsafe { asm!("msr cntv_ctl_el0, xzr", options(nostack, preserves_flags)) };
}

/// This CPU's GICR_ISENABLER0 / GICR_ICENABLER0 (SGI frame + 0x100 / 0x180).
const GICR_ISENABLER0: u64 = 0x100;
const GICR_ICENABLER0: u64 = 0x180;

/// Keeps the physical virtual-timer PPI disabled at this CPU's
/// redistributor while the guest's timer line is high in the vGIC (it would
/// fire again at once: the list register carries no HW link to it), and
/// enables it otherwise. Writes the GIC only when the state changes.
fn set_vtimer_ppi_masked(masked: bool) {
    let cpu = crate::percpu::this_cpu();
    let sgi = cpu.gicr_sgi.load(Ordering::Relaxed);
    if sgi == 0 || cpu.vtimer_ppi_masked.load(Ordering::Relaxed) == masked {
        return;
    }
    cpu.vtimer_ppi_masked.store(masked, Ordering::Relaxed);
    let reg = if masked {
        GICR_ICENABLER0
    } else {
        GICR_ISENABLER0
    };
    mmio_write32(sgi + reg, 1 << VTIMER_PPI);
}

/// Traps the guest's debug, PMU, profiling and trace register accesses
/// (`traps`: [`super::MDCR_EL2_TRAPS`] and what [`guest_traps`] adds),
/// keeping HPMN as reset left it.
fn set_mdcr_el2(traps: u64) {
    let old: u64;
    // SAFETY: reading MDCR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, mdcr_el2", out(reg) old, options(nomem, nostack, preserves_flags)) };
    let new = (old & super::MDCR_EL2_HPMN) | traps;
    // SAFETY: MDCR_EL2 only controls traps of EL1/EL0 debug and PMU
    // accesses (TDE stays 0); the ISB makes it take effect before any guest.
    unsafe { asm!("msr mdcr_el2, {}", "isb", in(reg) new, options(nostack, preserves_flags)) };
}

fn mmio_read32(a: u64) -> u32 {
    // SAFETY: callers pass GIC registers, mapped as device memory at EL2.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn mmio_write32(a: u64, v: u32) {
    // SAFETY: as mmio_read32.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

/// The redistributor frame of the calling CPU: the frame whose
/// GICR_TYPER.Affinity (bits 63:32) is this CPU's MPIDR affinity (GICv3
/// architecture spec §9.11.35); frames are 128 KiB (256 KiB with VLPIS).
fn own_redistributor(gicr: u64, size: u64) -> Option<u64> {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    let aff = ((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff);
    let mut at = gicr;
    while at < gicr.checked_add(size)? {
        let typer = u64::from(mmio_read32(at + 8)) | u64::from(mmio_read32(at + 12)) << 32;
        if typer >> 32 == aff {
            return Some(at);
        }
        if typer & (1 << 4) != 0 {
            return None; // Last
        }
        at += if typer & (1 << 1) != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    None
}

/// Routes the EL2 physical timer (PPI 26), the GIC maintenance interrupt
/// (PPI 25) and the EL1 virtual timer (PPI 27) to this CPU through a GICv3
/// (distributor at `gicd`, redistributor region `gicr`/`gicr_size`) and
/// turns on guest time slices of `slice_ticks` counter ticks: group 1,
/// priority 0x80, enabled in the redistributor's SGI frame; the CPU
/// interface at EL2 with system registers, PMR open, group 1 on. IRQs stay
/// masked at EL2 (PSTATE.I): they are only taken while a guest runs
/// (HCR_EL2.IMO), and they end an idle WFI ([`idle_once`]). Each is a
/// guest exit: 26 the turn's end or a timer deadline of the vmm's, 25 the
/// vGIC's list registers to refill, 27 the guest's virtual timer to
/// deliver.
pub fn enable_preemption(
    gicd: u64,
    gicr: u64,
    gicr_size: u64,
    slice_ticks: u64,
) -> Result<(), &'static str> {
    // GICD_CTLR: EnableGrp0 | EnableGrp1 (ARE/DS as the firmware left them).
    mmio_write32(gicd, mmio_read32(gicd) | 0x3);
    let sgi = gic_cpu_on(gicr, gicr_size)?;
    for intid in [CNTHP_INTID, MAINTENANCE_PPI, VTIMER_PPI] {
        enable_private_irq(sgi, intid);
    }
    crate::percpu::this_cpu()
        .vtimer_ppi_masked
        .store(false, Ordering::Relaxed);
    SLICE_TICKS.store(slice_ticks, Ordering::Relaxed);
    Ok(())
}

/// Enables SGI or PPI `intid` (0-31) in this CPU's redistributor (SGI
/// frame `sgi`): group 1, priority 0x80.
fn enable_private_irq(sgi: u64, intid: u32) {
    let bit = 1u32 << intid;
    mmio_write32(sgi + 0x80, mmio_read32(sgi + 0x80) | bit); // IGROUPR0
    let prio = sgi + 0x400 + u64::from(intid & !3); // IPRIORITYR
    let shift = 8 * (intid & 3);
    mmio_write32(
        prio,
        (mmio_read32(prio) & !(0xff << shift)) | (0x80 << shift),
    );
    mmio_write32(sgi + GICR_ISENABLER0, bit);
}

/// Brings up the calling CPU's own part of a GICv3 (redistributor region
/// `gicr`/`gicr_size`): finds its redistributor (GICR_TYPER affinity),
/// wakes it (GICR_WAKER: clear ProcessorSleep, wait for ChildrenAsleep to
/// clear, bounded), and turns on the CPU interface at EL2 through system
/// registers (ICC_SRE_EL2.SRE|Enable, PMR open, group 1 on), with CNTHP
/// off. Records the SGI frame in this CPU's [`crate::percpu::PerCpu`] and
/// returns it. No interrupt is enabled in the redistributor here (that is
/// [`enable_preemption`]'s, per use), and PSTATE.I stays as it is. Every
/// CPU calls it for itself: the boot CPU through [`enable_preemption`],
/// the others when they start.
pub fn gic_cpu_on(gicr: u64, gicr_size: u64) -> Result<u64, &'static str> {
    let rd = own_redistributor(gicr, gicr_size).ok_or("no GICv3 redistributor for this CPU")?;
    mmio_write32(rd + 0x14, mmio_read32(rd + 0x14) & !(1 << 1));
    let mut spins = 0u32;
    while mmio_read32(rd + 0x14) & (1 << 2) != 0 {
        spins += 1;
        if spins > 1_000_000 {
            return Err("GICR_WAKER.ChildrenAsleep stays set");
        }
    }
    let sgi = rd + 0x1_0000;
    crate::percpu::this_cpu()
        .gicr_sgi
        .store(sgi, Ordering::Relaxed);
    // The host's kick and reschedule SGIs, from now on: an idle CPU's WFI
    // ends on them (a disabled interrupt would not wake it).
    for intid in [KICK_SGI, RESCHED_SGI] {
        enable_private_irq(sgi, intid);
    }
    // ICC_SRE_EL2.SRE|Enable keep the system-register interface
    // (and EL1's use of ICV_* under IMO); PMR/IGRPEN1 at EL2 are the
    // physical interface's, which no guest reaches (IMO/FMO are set). The
    // timer stays disabled until a guest entry arms it.
    // SAFETY: only this CPU's EL2-private interrupt state changes.
    unsafe {
        asm!(
            "mrs {t}, S3_4_C12_C9_5",
            "orr {t}, {t}, #1",
            "orr {t}, {t}, #8",
            "msr S3_4_C12_C9_5, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr S3_0_C4_C6_0, {t}",
            "mov {t}, #1",
            "msr S3_0_C12_C12_7, {t}",
            "msr cnthp_ctl_el2, xzr",
            "isb",
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
    Ok(sgi)
}

/// The physical counter (CNTPCT_EL0, what CNTHP compares against); the ISB
/// keeps the read from being taken early.
pub fn physical_count() -> u64 {
    let now: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) now, options(nomem, nostack, preserves_flags))
    };
    now
}

/// Arms CNTHP with the turn's absolute deadline before a guest entry (one
/// that already passed fires at once).
fn arm_turn_deadline(cval: u64) {
    // SAFETY: CNTHP only raises INTID 26, which is taken at EL2 only while
    // a guest runs (PSTATE.I is set at EL2).
    unsafe {
        asm!("msr cnthp_cval_el2, {t}", "msr cnthp_ctl_el2, {on}",
             t = in(reg) cval, on = in(reg) 1u64, options(nostack, preserves_flags))
    };
}

/// Disarms CNTHP after an exit (its level interrupt, if pending, goes away
/// with it) and, after an IRQ exit, acknowledges the interrupt that caused
/// it ([`ack_irq`]): its INTID, if there was one.
fn end_slice(irq: bool) -> Option<u32> {
    // SAFETY: disabling the timer has no other effect.
    unsafe {
        asm!(
            "msr cnthp_ctl_el2, xzr",
            "isb",
            options(nostack, preserves_flags)
        )
    };
    if irq {
        ack_irq()
    } else {
        None
    }
}

/// Acknowledges and ends the highest-priority pending physical interrupt,
/// if any, and returns its INTID: what it means is the host's table's
/// (`crate::hostirq`: CNTHP ends the turn, the maintenance and virtual
/// timer PPIs mean "look at the vCPU again"). A level interrupt whose line
/// stays high becomes pending again.
fn ack_irq() -> Option<u32> {
    let intid: u64;
    // SAFETY: ICC_IAR1_EL1 at EL2 acknowledges the highest pending
    // group-1 interrupt (1023: none); EOIR1 ends it (EOImode 0).
    unsafe {
        asm!("mrs {}, S3_0_C12_C12_0", out(reg) intid, options(nostack, preserves_flags));
        if intid < 1020 {
            asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) intid, options(nostack, preserves_flags));
        }
    }
    (intid < 1020).then_some(intid as u32)
}

/// Sends SGI `intid` (0-15) to the CPU with affinity `mpidr` (Aff3..Aff0
/// of its MPIDR_EL1) through ICC_SGI1R_EL1 (GICv3 §12.11.xx): Aff3, Aff2,
/// Aff1 as fields, Aff0 as the bit of a 16-CPU target list in range
/// selector Aff0 / 16.
pub fn send_sgi(intid: u32, mpidr: u64) {
    let aff0 = mpidr & 0xff;
    let v = ((mpidr >> 32) & 0xff) << 48 // Aff3
        | (aff0 >> 4) << 44 // RS
        | ((mpidr >> 16) & 0xff) << 32 // Aff2
        | u64::from(intid & 0xf) << 24
        | ((mpidr >> 8) & 0xff) << 16 // Aff1
        | 1 << (aff0 & 0xf);
    // SAFETY: ICC_SGI1R_EL1 only generates a group-1 SGI; the barrier
    // makes the caller's earlier stores visible before it arrives.
    unsafe {
        asm!("dsb ishst", "msr S3_0_C12_C11_5, {}", "isb", in(reg) v, options(nostack, preserves_flags))
    };
}

/// One WFI with IRQs still masked at EL2 until an interrupt is pending (a
/// kick SGI, or CNTHP at `deadline` when one is given), which is then
/// acknowledged; the caller looks again, whatever woke it.
pub fn idle_once(deadline: Option<u64>) {
    if let Some(d) = deadline {
        if physical_count() >= d {
            return;
        }
        if SLICE_TICKS.load(Ordering::Relaxed) == 0 {
            // No GIC for CNTHP: poll the counter.
            while physical_count() < d {
                core::hint::spin_loop();
            }
            return;
        }
        arm_turn_deadline(d);
    }
    // SAFETY: waiting for an interrupt has no memory effects; IRQs stay
    // masked (PSTATE.I), so none is taken here.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    let _ = end_slice(true);
}

fn mrs_isar1() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64isar1_el1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// ID_AA64ISAR2_EL1.APA3 (bits 15:12); the register reads as zero on CPUs
/// before Armv8.7 (it is in the RAZ ID space).
fn isar2_apa3() -> u64 {
    let v: u64;
    // SAFETY: as above; S3_0_C0_C6_2 is ID_AA64ISAR2_EL1, RAZ if absent.
    unsafe { asm!("mrs {}, S3_0_C0_C6_2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    (v >> 12) & 0xf
}

/// Reads the ID register (op0 3, op1 0, CRn 0, `crm`, `op2`) the guest asked
/// for through a TID3 trap. Every encoding in CRm 1..=7 is in the ID space,
/// which reads as zero where nothing is allocated; anything else gives 0.
pub fn read_id_reg(crm: u8, op2: u8) -> u64 {
    macro_rules! mrs {
        ($r:literal) => {{
            let v: u64;
            // SAFETY: an MRS of the ID register space (RAZ where
            // unallocated) has no side effects at EL2.
            unsafe { asm!(concat!("mrs {}, ", $r), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }};
    }
    match (crm, op2) {
        (1, 0) => mrs!("S3_0_C0_C1_0"),
        (1, 1) => mrs!("S3_0_C0_C1_1"),
        (1, 2) => mrs!("S3_0_C0_C1_2"),
        (1, 3) => mrs!("S3_0_C0_C1_3"),
        (1, 4) => mrs!("S3_0_C0_C1_4"),
        (1, 5) => mrs!("S3_0_C0_C1_5"),
        (1, 6) => mrs!("S3_0_C0_C1_6"),
        (1, 7) => mrs!("S3_0_C0_C1_7"),
        (2, 0) => mrs!("S3_0_C0_C2_0"),
        (2, 1) => mrs!("S3_0_C0_C2_1"),
        (2, 2) => mrs!("S3_0_C0_C2_2"),
        (2, 3) => mrs!("S3_0_C0_C2_3"),
        (2, 4) => mrs!("S3_0_C0_C2_4"),
        (2, 5) => mrs!("S3_0_C0_C2_5"),
        (2, 6) => mrs!("S3_0_C0_C2_6"),
        (2, 7) => mrs!("S3_0_C0_C2_7"),
        (3, 0) => mrs!("S3_0_C0_C3_0"),
        (3, 1) => mrs!("S3_0_C0_C3_1"),
        (3, 2) => mrs!("S3_0_C0_C3_2"),
        (3, 3) => mrs!("S3_0_C0_C3_3"),
        (3, 4) => mrs!("S3_0_C0_C3_4"),
        (3, 5) => mrs!("S3_0_C0_C3_5"),
        (3, 6) => mrs!("S3_0_C0_C3_6"),
        (3, 7) => mrs!("S3_0_C0_C3_7"),
        (4, 0) => mrs!("S3_0_C0_C4_0"),
        (4, 1) => mrs!("S3_0_C0_C4_1"),
        (4, 2) => mrs!("S3_0_C0_C4_2"),
        (4, 3) => mrs!("S3_0_C0_C4_3"),
        (4, 4) => mrs!("S3_0_C0_C4_4"),
        (4, 5) => mrs!("S3_0_C0_C4_5"),
        (4, 6) => mrs!("S3_0_C0_C4_6"),
        (4, 7) => mrs!("S3_0_C0_C4_7"),
        (5, 0) => mrs!("S3_0_C0_C5_0"),
        (5, 1) => mrs!("S3_0_C0_C5_1"),
        (5, 2) => mrs!("S3_0_C0_C5_2"),
        (5, 3) => mrs!("S3_0_C0_C5_3"),
        (5, 4) => mrs!("S3_0_C0_C5_4"),
        (5, 5) => mrs!("S3_0_C0_C5_5"),
        (5, 6) => mrs!("S3_0_C0_C5_6"),
        (5, 7) => mrs!("S3_0_C0_C5_7"),
        (6, 0) => mrs!("S3_0_C0_C6_0"),
        (6, 1) => mrs!("S3_0_C0_C6_1"),
        (6, 2) => mrs!("S3_0_C0_C6_2"),
        (6, 3) => mrs!("S3_0_C0_C6_3"),
        (6, 4) => mrs!("S3_0_C0_C6_4"),
        (6, 5) => mrs!("S3_0_C0_C6_5"),
        (6, 6) => mrs!("S3_0_C0_C6_6"),
        (6, 7) => mrs!("S3_0_C0_C6_7"),
        (7, 0) => mrs!("S3_0_C0_C7_0"),
        (7, 1) => mrs!("S3_0_C0_C7_1"),
        (7, 2) => mrs!("S3_0_C0_C7_2"),
        (7, 3) => mrs!("S3_0_C0_C7_3"),
        (7, 4) => mrs!("S3_0_C0_C7_4"),
        (7, 5) => mrs!("S3_0_C0_C7_5"),
        (7, 6) => mrs!("S3_0_C0_C7_6"),
        (7, 7) => mrs!("S3_0_C0_C7_7"),
        _ => 0,
    }
}

/// EL1 (and EL0) system registers of a vCPU, switched around each entry.
#[derive(Clone, Debug, Default)]
pub struct El1Regs {
    pub sctlr: u64,
    pub cpacr: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub esr: u64,
    pub afsr0: u64,
    pub afsr1: u64,
    pub far: u64,
    pub mair: u64,
    pub amair: u64,
    pub vbar: u64,
    pub contextidr: u64,
    pub cntkctl: u64,
    pub par: u64,
    pub tpidr_el1: u64,
    pub sp_el1: u64,
    pub elr: u64,
    pub spsr: u64,
    pub sp_el0: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub mdscr: u64,
    pub csselr: u64,
    /// APIA, APIB, APDA, APDB, APGA keys (lo, hi), when the CPU has PAuth.
    pub pauth: [u64; 10],
    /// TPIDR2_EL0, when the CPU has SME.
    pub tpidr2: u64,
    /// VDISR_EL2 (the guest's DISR_EL1), when the CPU has RAS.
    pub vdisr: u64,
    /// SCXTNUM_EL0 and SCXTNUM_EL1, when the CPU has them.
    pub scxtnum: [u64; 2],
}

/// Loads the optional registers the CPU has (see [`HAS_SME`], [`HAS_RAS`],
/// [`HAS_SCXTNUM`]).
fn load_optional(r: &El1Regs) {
    if HAS_SCXTNUM.load(Ordering::Relaxed) {
        // SAFETY: SCXTNUM_EL0/EL1 exist (CSV2_2 or CSV2_1p2); they only
        // name the software context for EL0/EL1 prediction.
        unsafe {
            asm!("msr S3_3_C13_C0_7, {}", "msr S3_0_C13_C0_7, {}",
                 in(reg) r.scxtnum[0], in(reg) r.scxtnum[1], options(nostack, preserves_flags))
        };
    }
    if HAS_SME.load(Ordering::Relaxed) {
        // SAFETY: TPIDR2_EL0 exists (FEAT_SME); it only affects EL0/EL1.
        unsafe {
            asm!("msr S3_3_C13_C0_5, {}", in(reg) r.tpidr2, options(nostack, preserves_flags))
        };
    }
    if HAS_RAS.load(Ordering::Relaxed) {
        // SAFETY: VDISR_EL2 exists (FEAT_RAS); it only records virtual
        // SErrors deferred by the guest's ESB.
        unsafe {
            asm!("msr S3_4_C12_C1_1, {}", in(reg) r.vdisr, options(nostack, preserves_flags))
        };
    }
}

fn save_optional(r: &mut El1Regs) {
    if HAS_SCXTNUM.load(Ordering::Relaxed) {
        // SAFETY: reading SCXTNUM_EL0/EL1 (present) has no side effects.
        unsafe {
            asm!("mrs {}, S3_3_C13_C0_7", "mrs {}, S3_0_C13_C0_7",
                 out(reg) r.scxtnum[0], out(reg) r.scxtnum[1], options(nomem, nostack, preserves_flags))
        };
    }
    if HAS_SME.load(Ordering::Relaxed) {
        // SAFETY: reading TPIDR2_EL0 (FEAT_SME present) has no side effects.
        unsafe {
            asm!("mrs {}, S3_3_C13_C0_5", out(reg) r.tpidr2, options(nomem, nostack, preserves_flags))
        };
    }
    if HAS_RAS.load(Ordering::Relaxed) {
        // SAFETY: reading VDISR_EL2 (FEAT_RAS present) has no side effects.
        unsafe {
            asm!("mrs {}, S3_4_C12_C1_1", out(reg) r.vdisr, options(nomem, nostack, preserves_flags))
        };
    }
}

/// SCTLR_EL1 at reset: RES1 bits (29, 28, 23, 22, 20, 11), MMU and caches
/// off, little endian (Linux arm64 booting.rst).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

macro_rules! switch_regs {
    ($($field:ident => $reg:literal),* $(,)?) => {
        fn load_el1(r: &El1Regs) {
            $(
                // SAFETY: EL1/EL0 registers do not affect EL2 execution;
                // they take effect at the guest entry (ERET synchronizes).
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) r.$field, options(nostack, preserves_flags)) };
            )*
        }
        fn save_el1(r: &mut El1Regs) {
            $(
                // SAFETY: reading EL1/EL0 registers has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) r.$field, options(nomem, nostack, preserves_flags)) };
            )*
        }
    };
}

switch_regs! {
    sctlr => "sctlr_el1",
    cpacr => "cpacr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    esr => "esr_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    far => "far_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    cntkctl => "cntkctl_el1",
    par => "par_el1",
    tpidr_el1 => "tpidr_el1",
    sp_el1 => "sp_el1",
    elr => "elr_el1",
    spsr => "spsr_el1",
    sp_el0 => "sp_el0",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    mdscr => "mdscr_el1",
    csselr => "csselr_el1",
}

macro_rules! switch_pauth {
    ($($i:literal => $reg:literal),* $(,)?) => {
        fn load_pauth(k: &[u64; 10]) {
            $(
                // SAFETY: key registers only affect EL1/EL0 PAC instructions
                // (HCR_EL2.APK/API); the soft-float hypervisor uses none.
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) k[$i], options(nostack, preserves_flags)) };
            )*
        }
        fn save_pauth(k: &mut [u64; 10]) {
            $(
                // SAFETY: reading key registers has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) k[$i], options(nomem, nostack, preserves_flags)) };
            )*
        }
    };
}

// APIAKeyLo_EL1 = S3_0_C2_C1_0 ... APGAKeyHi_EL1 = S3_0_C2_C3_1.
switch_pauth! {
    0 => "S3_0_C2_C1_0", 1 => "S3_0_C2_C1_1", 2 => "S3_0_C2_C1_2", 3 => "S3_0_C2_C1_3",
    4 => "S3_0_C2_C2_0", 5 => "S3_0_C2_C2_1", 6 => "S3_0_C2_C2_2", 7 => "S3_0_C2_C2_3",
    8 => "S3_0_C2_C3_0", 9 => "S3_0_C2_C3_1",
}

/// FP/SIMD state: V0..V31, FPSR, FPCR.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default)]
pub struct FpRegs {
    pub v: [[u64; 2]; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

fn fp_save(f: &mut FpRegs) {
    let p = f as *mut FpRegs;
    // SAFETY: `p` points to a 16-byte aligned FpRegs of 528 bytes; CPTR_EL2.TFP
    // is clear (install_vectors) so FP access at EL2 does not trap.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "stp q0, q1, [{p}, #0]",
            "stp q2, q3, [{p}, #32]",
            "stp q4, q5, [{p}, #64]",
            "stp q6, q7, [{p}, #96]",
            "stp q8, q9, [{p}, #128]",
            "stp q10, q11, [{p}, #160]",
            "stp q12, q13, [{p}, #192]",
            "stp q14, q15, [{p}, #224]",
            "stp q16, q17, [{p}, #256]",
            "stp q18, q19, [{p}, #288]",
            "stp q20, q21, [{p}, #320]",
            "stp q22, q23, [{p}, #352]",
            "stp q24, q25, [{p}, #384]",
            "stp q26, q27, [{p}, #416]",
            "stp q28, q29, [{p}, #448]",
            "stp q30, q31, [{p}, #480]",
            "mrs {t}, fpsr",
            "str {t}, [{p}, #512]",
            "mrs {t}, fpcr",
            "str {t}, [{p}, #520]",
            p = in(reg) p,
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}

fn fp_load(f: &FpRegs) {
    let p = f as *const FpRegs;
    // SAFETY: as in `fp_save`; the hypervisor is soft-float, so the
    // registers loaded here stay the guest's until `fp_save`.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]",
            "ldp q2, q3, [{p}, #32]",
            "ldp q4, q5, [{p}, #64]",
            "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]",
            "ldp q10, q11, [{p}, #160]",
            "ldp q12, q13, [{p}, #192]",
            "ldp q14, q15, [{p}, #224]",
            "ldp q16, q17, [{p}, #256]",
            "ldp q18, q19, [{p}, #288]",
            "ldp q20, q21, [{p}, #320]",
            "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]",
            "ldp q26, q27, [{p}, #416]",
            "ldp q28, q29, [{p}, #448]",
            "ldp q30, q31, [{p}, #480]",
            "ldr {t}, [{p}, #512]",
            "msr fpsr, {t}",
            "ldr {t}, [{p}, #520]",
            "msr fpcr, {t}",
            p = in(reg) p,
            t = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}

/// HCR_EL2.VSE: a virtual SError is pending for the guest.
const HCR_VSE: u64 = 1 << 8;

/// One vCPU of a VM.
pub struct El2Vcpu {
    ctx: GuestContext,
    el1: El1Regs,
    fp: FpRegs,
    events: PendingEvents,
    vtcr: u64,
    vttbr: u64,
    vmpidr: u64,
    bound: Option<PhysCpu>,
    /// Virtual SError to raise on the next entry.
    vserror: bool,
    /// The GIC virtual CPU interface's VMCR and active priorities,
    /// switched in `bind`/`unbind`.
    vgic: VgicCpuState,
    /// List registers, ICH_HCR_EL2 and the virtual timer, exchanged with
    /// the vmm around every entry.
    gic: VcpuInterface,
    /// The current turn's deadline (`begin_turn`); `None` before the first.
    turn: Option<TurnDeadline>,
    /// The scheduler's limit for the next turn (`cap_turn`).
    turn_cap: Option<u64>,
    /// The benchmark's bare loop ([`BARE_LOOP_FN`]) is on.
    bare_loop: bool,
    /// The EL1 state ([`El1Regs`]) is in this CPU's registers, loaded at
    /// an entry and not saved since: the exits that do not look at it
    /// skip the world switch of about 35 system registers each way
    /// (issue 17; KVM's load/put). Any access to `el1` puts it back first
    /// ([`El2Vcpu::put_el1`]), and `unbind` does, so the next vCPU on the
    /// CPU always loads its own.
    el1_live: bool,
}

/// The SMCCC function ID of the benchmark's bare loop
/// ([`El2Vcpu::set_bare_loop`]): in the hypervisor's vendor range, beside
/// the unimplemented call the bench times as a null hypercall.
pub const BARE_LOOP_FN: u64 = 0xc600_7ffe;

impl El2Vcpu {
    /// Turns the benchmark's bare loop on (kernel option `bench-bare`, in a
    /// kernel built with the feature of that name):
    /// `HVC #0` with x0 = [`BARE_LOOP_FN`] then re-enters the guest at
    /// once, through the entry and exit code alone (no EL1 state switched,
    /// no GIC or timer work, no decode): the floor every other exit round
    /// trip is compared with (issue 17). For the bench guest only.
    pub fn set_bare_loop(&mut self, on: bool) {
        self.bare_loop = on;
    }

    /// vCPU `index` of the VM whose stage 2 is `cfg` with root `s2_root`.
    pub fn new(cfg: &S2Config, s2_root: u64, index: u32) -> Result<Self, &'static str> {
        let aff = vmm::psci::mpidr_of(index).ok_or("vCPU index beyond 255")?;
        Ok(El2Vcpu {
            ctx: GuestContext {
                x: [0; 31],
                pc: 0,
                pstate: PSTATE_EL1H_MASKED,
                esr: 0,
                far: 0,
                hpfar: 0,
                host: [0; 14],
            },
            el1: El1Regs {
                sctlr: SCTLR_EL1_RESET,
                ..El1Regs::default()
            },
            fp: FpRegs::default(),
            events: PendingEvents::default(),
            vtcr: cfg.vtcr,
            vttbr: super::vttbr(s2_root, cfg.vmid),
            // VMPIDR_EL2: bit 31 RES1, U (bit 30) = 0: a multiprocessor.
            vmpidr: (1 << 31) | aff,
            bound: None,
            vserror: false,
            vgic: VgicCpuState::default(),
            gic: VcpuInterface::new(ICH_LRS.load(Ordering::Relaxed)),
            turn: None,
            turn_cap: None,
            bare_loop: false,
            el1_live: false,
        })
    }

    /// The benchmark's bare loop: while the guest's exit is `HVC #0` with
    /// x0 = [`BARE_LOOP_FN`], enter it again at once (its EL1 state is
    /// still loaded and ELR already past the HVC); returns the vector of
    /// the first other exit. Only in kernels built with the `bench-bare`
    /// feature.
    #[cold]
    #[inline(never)]
    fn bare_hvc_loop(&mut self, mut vector: u64) -> u64 {
        while vector == 8
            && self.ctx.x[0] == BARE_LOOP_FN
            && (self.ctx.esr >> 26) & 0x3f == super::ec::HVC64
        {
            // SAFETY: as for the entry in `run_inner`: the guest runs under
            // this VM's stage 2 and every exit returns here.
            vector = unsafe { __el2_guest_enter(&mut self.ctx) };
        }
        vector
    }

    /// One entry and exit ([`Vcpu::run`]).
    #[inline(always)]
    fn run_inner(&mut self) -> Result<Exit, BackendError> {
        if self.bound.is_none() {
            return Err(BackendError::NotBound);
        }
        self.deliver()?;
        let pauth = HAS_PAUTH.load(Ordering::Relaxed);
        if self.vserror {
            mmu::write_hcr_el2(guest_hcr() | HCR_VSE);
        }
        // A run without begin_turn (not the vmm's order) starts a turn, so
        // a guest is never entered without its deadline.
        let turn = match self.turn {
            Some(t) => t,
            None => {
                self.begin_turn(0);
                self.turn.unwrap_or_default()
            }
        };
        // The turn's end, or earlier a deadline of the vmm's (the emulated
        // physical timer): either is a CNTHP interrupt.
        let cnthp = turn.cval_with(self.gic.wake_at);
        if let Some(cval) = cnthp {
            arm_turn_deadline(cval);
        }
        gic_enter(&self.gic);
        if !self.el1_live {
            load_el1(&self.el1);
            if pauth {
                load_pauth(&self.el1.pauth);
            }
            load_optional(&self.el1);
            self.el1_live = true;
        }
        // The context is a valid GuestContext; the guest runs at
        // EL1 under this VM's stage 2 (installed by `bind`), so it can only
        // reach its own RAM; every exception from it comes back through
        // GUEST_VECTORS, which restores the callee-saved registers and SP
        // saved here and returns to this call.
        // SAFETY: the guest runs under this VM's stage 2 and every exit returns here (above).
        let mut vector = unsafe { __el2_guest_enter(&mut self.ctx) };
        if cfg!(feature = "bench-bare") && self.bare_loop {
            vector = self.bare_hvc_loop(vector);
        }
        let host_irq = if cnthp.is_some() || vector == 9 {
            end_slice(vector == 9)
        } else {
            None
        };
        gic_exit(&mut self.gic);
        if self.vserror {
            // The virtual SError was taken (or is still pending in VSE,
            // which we drop: one delivery attempt).
            self.vserror = false;
            mmu::write_hcr_el2(guest_hcr());
        }
        let regs = ExitRegs {
            esr: self.ctx.esr,
            far: self.ctx.far,
            hpfar: self.ctx.hpfar,
        };
        Ok(match vector {
            8 => {
                // HVC: ELR_EL2 is the next instruction; normalize to the
                // HVC itself (see vmm::backend::Vcpu::advance_pc).
                if (regs.esr >> 26) & 0x3f == super::ec::HVC64 {
                    self.ctx.pc = self.ctx.pc.wrapping_sub(4);
                }
                decode_sync(&regs, &self.ctx.x)
            }
            // An IRQ: the host's table says what its INTID means; a turn
            // whose deadline passed ends whatever came.
            9 if turn.passed(physical_count()) => Exit::PreemptionTimer,
            9 => match host_irq {
                Some(line) if crate::hostirq::TABLE.get(line) != HostIrq::EndOfTurn => {
                    Exit::HostInterrupt { line }
                }
                // CNTHP before its deadline (a shortened turn), or gone.
                _ => Exit::ExternalInterrupt,
            },
            10 => Exit::ExternalInterrupt,
            v => Exit::Unknown {
                reason: regs.esr,
                qualification: v,
            },
        })
    }

    /// Saves the EL1 state that an entry loaded into `el1` (a no-op when
    /// it is not live): before anything reads or writes `el1`, and before
    /// another vCPU may run on this CPU.
    fn put_el1(&mut self) {
        if self.el1_live {
            save_el1(&mut self.el1);
            if HAS_PAUTH.load(Ordering::Relaxed) {
                save_pauth(&mut self.el1.pauth);
            }
            save_optional(&mut self.el1);
            self.el1_live = false;
        }
    }

    /// Delivers the next pending event into the saved state.
    fn deliver(&mut self) -> Result<(), BackendError> {
        let Some(ev) = self.events.take(true, true) else {
            return Ok(());
        };
        self.put_el1();
        let esr = match ev {
            Event::Undefined => ESR_UNDEFINED,
            Event::Arm64Sync { esr, .. } => esr,
            Event::Arm64SError => {
                self.vserror = true;
                return Ok(());
            }
            // x86 events cannot reach an arm64 vCPU (inject refuses them).
            _ => return Ok(()),
        };
        // Rule exc_payload: FAR_EL1 is written now, at delivery.
        if let Some((Reg::FarEl1, far)) = ev.payload_write(|_| 0) {
            self.el1.far = far;
        }
        let d = sync_delivery(esr, self.ctx.pc, self.ctx.pstate, self.el1.vbar);
        self.el1.esr = d.esr_el1;
        self.el1.elr = d.elr_el1;
        self.el1.spsr = d.spsr_el1;
        self.ctx.pc = d.pc;
        self.ctx.pstate = d.pstate;
        Ok(())
    }
}

impl Vcpu for El2Vcpu {
    /// Fixes the turn's CNTHP deadline: now + the slice. Exits do not
    /// renew it (issue 11). `budget` is unused: every exit of this backend
    /// goes back to the vmm, which counts them (nothing loops at EL2).
    fn begin_turn(&mut self, _budget: u64) {
        self.turn = Some(
            TurnDeadline::begin(physical_count(), SLICE_TICKS.load(Ordering::Relaxed))
                .capped(self.turn_cap.take()),
        );
    }

    /// The next turn ends when a blocked vCPU's timer fires, if earlier
    /// than the slice.
    fn cap_turn(&mut self, deadline: u64) {
        self.turn_cap = Some(deadline);
    }

    fn run(&mut self) -> Result<Exit, BackendError> {
        self.run_inner()
    }

    fn reg(&mut self, reg: Reg) -> Result<u64, BackendError> {
        if is_el1_state(reg) {
            self.put_el1();
        }
        Ok(match reg {
            Reg::X(n) if n <= 30 => self.ctx.x[usize::from(n)],
            Reg::Xzr => 0,
            Reg::Pc => self.ctx.pc,
            Reg::Pstate => self.ctx.pstate,
            Reg::SpEl1 => self.el1.sp_el1,
            Reg::ElrEl1 => self.el1.elr,
            Reg::SpsrEl1 => self.el1.spsr,
            Reg::EsrEl1 => self.el1.esr,
            Reg::FarEl1 => self.el1.far,
            Reg::VbarEl1 => self.el1.vbar,
            r => return Err(BackendError::NoSuchRegister(r)),
        })
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), BackendError> {
        if is_el1_state(reg) {
            self.put_el1();
        }
        match reg {
            Reg::X(n) if n <= 30 => self.ctx.x[usize::from(n)] = value,
            Reg::Xzr => {}
            Reg::Pc => self.ctx.pc = value,
            Reg::Pstate => self.ctx.pstate = value,
            Reg::SpEl1 => self.el1.sp_el1 = value,
            Reg::ElrEl1 => self.el1.elr = value,
            Reg::SpsrEl1 => self.el1.spsr = value,
            Reg::EsrEl1 => self.el1.esr = value,
            Reg::FarEl1 => self.el1.far = value,
            Reg::VbarEl1 => self.el1.vbar = value,
            r => return Err(BackendError::NoSuchRegister(r)),
        }
        Ok(())
    }

    fn advance_pc(&mut self) -> Result<(), BackendError> {
        // AArch64 instructions are 4 bytes (ESR_EL2.IL = 1).
        self.ctx.pc = self.ctx.pc.wrapping_add(4);
        Ok(())
    }

    fn inject(&mut self, event: Event) -> Result<Queued, BackendError> {
        match event {
            Event::Undefined | Event::Arm64Sync { .. } | Event::Arm64SError => {
                Ok(self.events.queue(event)?)
            }
            _ => Err(BackendError::BadEvent(
                vmm::event::EventError::PayloadMismatch,
            )),
        }
    }

    fn apply_boot_state(&mut self, state: &BootState) -> Result<(), BackendError> {
        if state.mode != EntryMode::Arm64El1h {
            return Err(BackendError::EntryFailed("not an arm64 EL1h boot state"));
        }
        self.ctx.x = [0; 31];
        // All of it replaced: what the registers hold is not wanted.
        self.el1_live = false;
        self.el1 = El1Regs {
            sctlr: SCTLR_EL1_RESET,
            ..El1Regs::default()
        };
        self.fp = FpRegs::default();
        self.vgic = VgicCpuState::default();
        self.gic.vmcr = 0;
        self.events = PendingEvents::default();
        self.ctx.pc = state.pc;
        self.ctx.pstate = PSTATE_EL1H_MASKED;
        for &(r, v) in state.regs() {
            self.set_reg(r, v)?;
        }
        if self.bound.is_some() {
            fp_load(&self.fp);
            vgic_load(&self.vgic);
        }
        Ok(())
    }

    fn bind(&mut self, cpu: PhysCpu) -> Result<(), BackendError> {
        if let Some(c) = self.bound {
            return Err(BackendError::AlreadyBound(c));
        }
        // Rule tlb_tag: each VM has its own VMID, so switching VMs needs
        // no flush; the new VTTBR/VTCR are synchronized by the helper.
        mmu::write_vtcr_vttbr(self.vtcr, self.vttbr);
        mmu::write_hcr_el2(guest_hcr());
        let midr: u64;
        // SAFETY: reading MIDR_EL1 has no side effects; VPIDR/VMPIDR only
        // change what the guest reads for MIDR_EL1/MPIDR_EL1.
        unsafe {
            asm!("mrs {m}, midr_el1", "msr vpidr_el2, {m}", "msr vmpidr_el2, {a}",
                 m = out(reg) midr, a = in(reg) self.vmpidr, options(nostack, preserves_flags))
        };
        let _ = midr;
        fp_load(&self.fp);
        vgic_load(&self.vgic);
        // The CPU's EL1 registers hold another vCPU's state (or none).
        self.el1_live = false;
        self.bound = Some(cpu);
        Ok(())
    }

    fn unbind(&mut self) -> Result<(), BackendError> {
        self.put_el1();
        if self.bound.take().is_some() {
            fp_save(&mut self.fp);
            vgic_save(&mut self.vgic);
            vtimer_off();
        }
        Ok(())
    }

    fn gic_interface(&mut self) -> Option<&mut VcpuInterface> {
        if self.gic.nr_lrs > 0 {
            Some(&mut self.gic)
        } else {
            None
        }
    }
}

/// The registers kept in [`El1Regs`] (the lazily switched EL1 state).
fn is_el1_state(r: Reg) -> bool {
    matches!(
        r,
        Reg::SpEl1 | Reg::ElrEl1 | Reg::SpsrEl1 | Reg::EsrEl1 | Reg::FarEl1 | Reg::VbarEl1
    )
}

/// Table memory through the kernel's 1:1 map of RAM.
pub struct IdentityTables;

impl TableAccess for IdentityTables {
    fn read(&self, table_pa: u64, index: usize) -> u64 {
        assert!(index < crate::paging::ENTRIES * crate::paging::MAX_ROOT_TABLES);
        // SAFETY: `table_pa` is a stage-2 table frame (from the VM's table
        // allocator, identity-mapped as normal memory by the kernel) and
        // the index is inside the (possibly concatenated) table.
        unsafe { core::ptr::read_volatile((table_pa as *const u64).add(index)) }
    }
    fn write(&mut self, table_pa: u64, index: usize, entry: u64) {
        assert!(index < crate::paging::ENTRIES * crate::paging::MAX_ROOT_TABLES);
        // SAFETY: as for `read`; table frames belong to these tables only.
        unsafe { core::ptr::write_volatile((table_pa as *mut u64).add(index), entry) }
    }
}

/// Break-before-make invalidation for one VM's tables.
struct S2Access {
    vttbr: u64,
}

impl TableAccess for S2Access {
    fn read(&self, t: u64, i: usize) -> u64 {
        IdentityTables.read(t, i)
    }
    fn write(&mut self, t: u64, i: usize, e: u64) {
        IdentityTables.write(t, i, e)
    }
    fn invalidate(&mut self, _input: u64, _size: u64) {
        mmu::flush_s2_vmid(self.vttbr);
    }
}

/// The stage-2 mapper of one VM, with frames from `A`.
pub struct El2Stage2<A: TableAlloc> {
    pt: PageTable<Aarch64Stage2>,
    alloc: A,
    cfg: S2Config,
}

impl<A: TableAlloc> El2Stage2<A> {
    /// Empty tables for `cfg`; flushes anything cached for its VMID.
    pub fn new(cfg: S2Config, mut alloc: A) -> Result<Self, MapError> {
        let pt = PageTable::with_format(cfg.format, &mut alloc, &mut IdentityTables)?;
        mmu::flush_s2_vmid(super::vttbr(pt.root(), cfg.vmid));
        Ok(El2Stage2 { pt, alloc, cfg })
    }

    pub fn root(&self) -> u64 {
        self.pt.root()
    }

    pub fn config(&self) -> &S2Config {
        &self.cfg
    }

    fn vttbr(&self) -> u64 {
        super::vttbr(self.pt.root(), self.cfg.vmid)
    }

    fn attrs(a: S2Attrs) -> Attrs {
        Attrs {
            read: a.perms.read,
            write: a.perms.write,
            execute: a.perms.exec,
            user: false,
            mem: match a.mem {
                vmm::backend::MemType::Normal => MemType::Normal,
                vmm::backend::MemType::Device => MemType::Device,
            },
            global: false,
        }
    }

    fn check(&self, gpa: u64, hpa: u64, len: u64) -> Result<(), Stage2Error> {
        use crate::paging::Format;
        check_s2_range(gpa, hpa, len, self.cfg.format.ipa_bits())?;
        check_s2_range(hpa, 0, len, self.cfg.format.output_bits())
    }
}

fn map_err(e: MapError) -> Stage2Error {
    match e {
        MapError::Unaligned => Stage2Error::Misaligned,
        MapError::AlreadyMapped { .. } => Stage2Error::Conflict,
        MapError::NoMemory | MapError::BadTableFrame => Stage2Error::NoMemory,
        _ => Stage2Error::OutOfRange,
    }
}

impl<A: TableAlloc> Stage2 for El2Stage2<A> {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        self.check(gpa, hpa, len)?;
        let a = Self::attrs(attrs);
        let mut acc = S2Access {
            vttbr: self.vttbr(),
        };
        self.pt
            .map(
                &mut self.alloc,
                &mut acc,
                gpa,
                hpa,
                len,
                a,
                PageSize::Size1G,
            )
            .map_err(map_err)
    }

    fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), Stage2Error> {
        self.check(gpa, 0, len)?;
        let mut acc = S2Access {
            vttbr: self.vttbr(),
        };
        let r = self
            .pt
            .unmap(&mut self.alloc, &mut acc, gpa, len)
            .map_err(map_err);
        if len == crate::paging::PAGE_SIZE {
            mmu::flush_s2_ipa(self.vttbr(), gpa);
        } else {
            mmu::flush_s2_vmid(self.vttbr());
        }
        r
    }

    fn protect(&mut self, gpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error> {
        self.check(gpa, 0, len)?;
        // Every page must be mapped; keep each page's output address.
        let mut page = gpa;
        let end = gpa + len;
        while page < end {
            let Some(t) = self.pt.translate(&IdentityTables, page) else {
                return Err(Stage2Error::Conflict);
            };
            let run = (t.size.bytes() - (page & (t.size.bytes() - 1))).min(end - page);
            let mut acc = S2Access {
                vttbr: self.vttbr(),
            };
            self.pt
                .remap(
                    &mut self.alloc,
                    &mut acc,
                    page,
                    t.pa,
                    run,
                    Self::attrs(attrs),
                    PageSize::Size1G,
                )
                .map_err(map_err)?;
            page += run;
        }
        mmu::flush_s2_vmid(self.vttbr());
        Ok(())
    }

    fn flush(&mut self) {
        mmu::flush_s2_vmid(self.vttbr());
    }
}
