//! The SVM vCPU: VMCB setup, event delivery, exit decoding.
//!
//! Everything here is pure logic over a [`Vmcb`] and the guest GPRs; the
//! machine is reached through [`Hw`] (VMRUN, host-physical reads, per-CPU
//! ASID bookkeeping), so the whole exit path is host-tested with a scripted
//! `Hw`. Exits that the backend completes itself (MSRs backed by VMCB fields,
//! debug-register moves, #PF reflection, SVM instructions) never leave
//! [`vmm::backend::Vcpu::run`].

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use super::decode::npf_exit;
use super::vmcb::{
    ctrl, event_inj, exitcode, misc1, misc2, save, tlb, Vmcb, VmcbSeg, EFER_SVME, PAT_DEFAULT,
};
use crate::hostirq::HostIrq;
use crate::paging::{PageTable, TableAccess, X86Long4};
use crate::x86_64::guest::debug::{DebugRegs, MovDrOutcome, DR6_FIXED1, DR7_FIXED1};
use crate::x86_64::guest::decode::{self, MAX_INSN};
use crate::x86_64::guest::fetch::{self, RipWalk};
use crate::x86_64::guest::fpu::FpuArea;
use crate::x86_64::guest::policy::{CpuidTable, ECX7_OSPKE};
use crate::x86_64::guest::walk::{HostPhys, LeafHint, Stage2Phys};
use crate::x86_64::guest::GuestState;
use vmm::backend::{x86_mode_state, BackendError, BootState, PhysCpu, Segment};
use vmm::event::{vector, Event, PendingEvents, Queued};
use vmm::exit::{Conduit, Exit, Hypercall, IoOp, PortIo, ShutdownKind};
use vmm::regs::{AccessSize, Reg};
use vmm::x86::wiring::X86Interface;

/// Guest GPRs that the VMCB does not hold, indexed by ModRM number
/// (slots 0 = RAX and 4 = RSP are unused: those live in the VMCB).
/// The layout is used by the VMRUN assembly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Gprs(pub [u64; 16]);

/// What the machine provides to a vCPU (host-physical reads, [`HostPhys`],
/// are shared with the other x86 backends).
pub trait Hw: HostPhys {
    /// Runs the guest until the next #VMEXIT (CLGI, VMLOAD, VMRUN, VMSAVE,
    /// host VMLOAD, STGI).
    fn vmrun(&mut self, cpu: PhysCpu, vmcb: &mut Vmcb, gprs: &mut Gprs);
    /// Records that `vm` last ran with `asid` on `cpu`; returns the previous
    /// owner (rule `tlb_tag`: ASIDs are reused when VMs outnumber them).
    fn swap_asid_owner(&mut self, cpu: PhysCpu, asid: u32, vm: usize) -> Option<usize>;
    /// The VM that last ran with `asid` on `cpu` (a plain load: the entry
    /// path's check, the swap is needed only when the owner changes).
    fn asid_owner(&self, cpu: PhysCpu, asid: u32) -> Option<usize>;
    /// FXSAVE: the guest's x87/SSE state when the vCPU leaves the CPU (the
    /// hypervisor never uses them, so they stay live while it runs).
    fn fpu_save(&mut self, area: &mut FpuArea);
    /// FXRSTOR when the vCPU is bound to a CPU.
    fn fpu_restore(&mut self, area: &FpuArea);
    /// Records that `vm` is the VM whose vCPU this CPU runs now; returns the
    /// previous one (per-CPU bookkeeping for [`Hw::predictor_barrier`]).
    fn swap_last_vm(&mut self, cpu: PhysCpu, vm: usize) -> Option<usize>;
    /// IBPB where the CPU has it: branch predictions trained by one VM must
    /// not steer another VM's (or the hypervisor's) indirect branches.
    fn predictor_barrier(&mut self);
    /// Arms this CPU's deadline for the turn that starts (the one-shot LAPIC
    /// timer, whose interrupt is an INTR exit): once per turn, never per
    /// VMRUN, so exits cannot push the deadline back.
    fn arm_turn_deadline(&mut self);
    /// Makes the guest exit by TSC value `tsc` at the latest (an INTR
    /// exit), if that is before the turn's deadline.
    fn arm_deadline(&mut self, tsc: u64);
    /// Whether the deadline fired since it was armed: its interrupt is
    /// taken after whatever #VMEXIT came first, so an exit for something
    /// else can carry it (the turn is over then).
    fn deadline_fired(&mut self) -> bool;
    /// The vector of the last host interrupt this CPU took (recorded by
    /// its stub), for an INTR exit.
    fn last_host_irq(&mut self) -> Option<u32>;
    /// Loads the guest's DR0-DR3 into the CPU's debug registers (VMRUN does
    /// not switch them; the hypervisor itself never uses them, and #VMEXIT
    /// resets DR7 to 0x400, so guest breakpoints never fire in the host).
    fn load_guest_drs(&mut self, drs: &[u64; 4]);
}

/// Optional SVM features (CPUID 8000_000A EDX) the vCPU adapts to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Bit 3: the VMCB holds the next RIP after intercepted instructions.
    pub nrips: bool,
    /// Bit 6: TLB_CONTROL = 3 flushes just this ASID.
    pub flush_by_asid: bool,
    /// Bit 7: the VMCB holds the bytes of the faulting instruction.
    pub decode_assists: bool,
    /// Bit 5: the CPU honours the VMCB clean bits.
    pub vmcb_clean: bool,
    /// Bit 10: the pause filter (a PAUSE exit only after PAUSE_FILTER_COUNT
    /// PAUSEs).
    pub pause_filter: bool,
    /// Bit 12: the pause filter threshold (the count restarts when PAUSEs
    /// are further apart than PAUSE_FILTER_THRESHOLD cycles).
    pub pause_filter_threshold: bool,
}

impl Features {
    pub fn from_edx(edx: u32) -> Features {
        Features {
            nrips: edx & (1 << 3) != 0,
            flush_by_asid: edx & (1 << 6) != 0,
            decode_assists: edx & (1 << 7) != 0,
            vmcb_clean: edx & (1 << 5) != 0,
            pause_filter: edx & (1 << 10) != 0,
            pause_filter_threshold: edx & (1 << 12) != 0,
        }
    }
}

/// PAUSEs in a row before a PAUSE exit (KVM's default): a spin-wait that
/// long is a lock whose holder is likely preempted, and the vCPU yields
/// (APM Vol. 2 §15.14.4).
pub const PAUSE_FILTER_COUNT: u16 = 3000;
/// Cycles between two PAUSEs beyond which the count starts again (KVM's
/// default): only a tight loop counts.
pub const PAUSE_FILTER_THRESHOLD: u16 = 128;

/// The pause-loop intercept for `features`: the MISC1 bit, count and
/// threshold. Without the filter nothing: a PAUSE exit each time would
/// cost every short spin-wait an exit.
pub fn pause_loop_exiting(features: &Features) -> Option<(u32, u16, u16)> {
    features.pause_filter.then(|| {
        let threshold = if features.pause_filter_threshold {
            PAUSE_FILTER_THRESHOLD
        } else {
            0
        };
        (misc1::PAUSE, PAUSE_FILTER_COUNT, threshold)
    })
}

/// Exceptions intercepted on every vCPU: #DB and #AC, whose delivery can
/// raise the same exception again and loop inside the CPU without any exit
/// (CVE-2015-8104, CVE-2015-5307; Xen XSA-156), and #MC, which belongs to
/// the host. All three are reflected or handled in [`SvmVcpu`]'s exit path.
pub const ALWAYS_INTERCEPTED_EXCEPTIONS: u32 =
    (1 << vector::DB) | (1 << vector::AC) | (1 << vector::MC);

/// The TLB_CONTROL value for an entry (rule `tlb_tag`): flush when this vCPU
/// never ran, moved to another CPU, its VM's NPT changed, or another VM used
/// the same ASID on this CPU since. Without flush-by-ASID the only flush is
/// the whole TLB.
pub fn tlb_control(must_flush: bool, flush_by_asid: bool) -> u8 {
    match (must_flush, flush_by_asid) {
        (false, _) => tlb::DO_NOTHING,
        (true, true) => tlb::FLUSH_ASID,
        (true, false) => tlb::FLUSH_ALL,
    }
}

pub use crate::x86_64::guest::msrs;

/// EFER bits a guest may set: SCE, LME, LMA (kept by hardware), NXE, FFXSR.
const EFER_GUEST_BITS: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 14);
const EFER_LMA: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const CR0_PG: u64 = 1 << 31;
/// CR4.PKE (bit 22): protection keys enabled by the guest.
const CR4_PKE: u64 = 1 << 22;
const RFLAGS_IF: u64 = 1 << 9;
/// MSR permission map: 2 bits per MSR for three ranges, 8 KiB (APM Vol. 2
/// §15.11); all ones intercepts every access.
pub const MSRPM_SIZE: usize = 8192;
/// I/O permission map: one bit per port plus 3 bytes, 12 KiB (§15.10.1).
pub const IOPM_SIZE: usize = 12288;

/// One SVM vCPU.
/// The CPUID leaf of the benchmark's bare loop ([`SvmVcpu::set_bare_loop`]).
pub const BARE_LOOP_LEAF: u32 = 0x4000_00ff;

pub struct SvmVcpu<H: Hw, A: TableAccess> {
    vmcb: &'static mut Vmcb,
    gprs: Gprs,
    hw: H,
    npt: PageTable<X86Long4>,
    npt_access: A,
    npt_generation: Arc<AtomicU64>,
    seen_generation: u64,
    npt_hint: core::cell::Cell<LeafHint>,
    rip_walk: RipWalk,
    features: Features,
    vm_index: usize,
    asid: u32,
    bound: Option<PhysCpu>,
    last_cpu: Option<PhysCpu>,
    /// The VMCB as the CPU left it at the last #VMEXIT, and that CPU: the
    /// base for the clean bits of the next VMRUN (only with `vmcb_clean`).
    clean_snap: alloc::boxed::Box<super::vmcb::clean::CleanSnapshot>,
    clean_cpu: Option<PhysCpu>,
    pending: PendingEvents,
    /// An event whose delivery an exit interrupted (EXITINTINFO), re-injected
    /// before anything new (APM Vol. 2 §15.7.2).
    reinject: Option<u64>,
    /// The guest's DR0-3 and DR7 as it wrote them (rule `dr_intercept`,
    /// emulated by the shared [`DebugRegs`]). DR0-3 are loaded into the
    /// CPU while the vCPU is bound; the VMCB DR7 is the guest's without GD.
    debug: DebugRegs,
    /// RIP after the instruction of the last exit, when known.
    next_rip: Option<u64>,
    /// x87/SSE state while the vCPU is not bound (separate per vCPU, so
    /// VMs never see each other's registers).
    fpu: alloc::boxed::Box<FpuArea>,
    /// The VM's precomputed CPUID answers ([`set_cpuid_table`](Self::set_cpuid_table)).
    cpuid_table: Option<alloc::boxed::Box<CpuidTable>>,
    /// Exits handled inside `run` (statistics).
    pub internal_exits: u64,
    /// Exits this turn may still handle inside `run` ([`begin_turn`](
    /// vmm::backend::Vcpu::begin_turn)); at 0 the turn is over.
    turn_budget: u64,
    /// The interrupt state the vmm exchanges around each `run`.
    x86: X86Interface,
    /// The VINTR field as last written (V_TPR, V_IRQ and the masking
    /// bits): rewritten only when it changes.
    vintr: u64,
    /// A VINTR exit came while the guest could not take an interrupt
    /// (QEMU TCG takes V_IRQ with IF = 0, PLATFORM.md): the window is no
    /// longer asked of the CPU, and a pending interrupt waits for the
    /// guest's next exit instead.
    vintr_unreliable: bool,
    /// The guest deadline the host timer was last shortened for.
    armed_wake_at: Option<u64>,
    /// The deadline the next turn ends by at the latest ([`Vcpu::cap_turn`]).
    turn_cap: Option<u64>,
    /// The benchmark's bare loop ([`BARE_LOOP_LEAF`]) is on.
    bare_loop: bool,
    /// RIP at which the guest was last seen inside an STI/MOV SS shadow
    /// (an interrupt or window exit with INTERRUPT_SHADOW set, or a window
    /// asked for then). An interrupt or window exit at the same RIP made no
    /// progress, so the shadow cannot be over, whatever the VMCB says:
    /// QEMU before 9.1 does not reload the shadow at VMRUN (its commit
    /// "fix INHIBIT_IRQ/TF/RF handling for VMRUN"), so it takes V_IRQ, or
    /// an INTR exit right at the entry, inside the shadow and then reports
    /// it clear (`irq-x86-window` found interrupts delivered in a MOV SS
    /// shadow). On hardware the VMCB is right and this never triggers.
    shadow_rip: Option<u64>,
    /// The last exit was such a premature exit: the guest is not
    /// interruptible until it runs again.
    premature_window: bool,
    /// An injected NMI's handler has not returned yet: NMIs are blocked
    /// (SDM §6.7.1). IRET is intercepted meanwhile (KVM's way without vNMI).
    nmi_masked: bool,
    /// The RIP of that IRET: once the guest is past it, NMIs are open.
    iret_rip: Option<u64>,
    /// `iret_rip` is set or a window waits without VINTR: the exit path
    /// looks at them (one flag test otherwise).
    watch: bool,
}

/// VINTR field bits (APM Vol. 2 §15.21, Table B-1 offset 0x60).
mod vintr {
    pub const V_TPR: u64 = 0xf;
    pub const V_IRQ: u64 = 1 << 8;
    pub const V_INTR_PRIO: u64 = 0xf << 16;
    pub const V_IGN_TPR: u64 = 1 << 20;
    pub const V_INTR_MASKING: u64 = 1 << 24;
}

impl<H: Hw, A: TableAccess> SvmVcpu<H, A> {
    /// Sets up the VMCB: intercepts, permission maps, ASID, NPT.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vmcb: &'static mut Vmcb,
        hw: H,
        npt_root: u64,
        npt_access: A,
        npt_generation: Arc<AtomicU64>,
        features: Features,
        vm_index: usize,
        asid: u32,
        msrpm_pa: u64,
        iopm_pa: u64,
    ) -> Self {
        *vmcb = Vmcb::zeroed();
        // All DR reads and writes (rule `dr_intercept`).
        vmcb.write32(ctrl::INTERCEPT_DR, 0x00ff_00ff);
        vmcb.write32(ctrl::INTERCEPT_EXCEPTIONS, ALWAYS_INTERCEPTED_EXCEPTIONS);
        vmcb.write32(
            ctrl::INTERCEPT_MISC1,
            misc1::INTR
                | misc1::NMI
                | misc1::SMI
                | misc1::INIT
                | misc1::CPUID
                | misc1::INVD
                | misc1::HLT
                | misc1::INVLPGA
                | misc1::IOIO_PROT
                | misc1::MSR_PROT
                | misc1::TASK_SWITCH
                | misc1::RDPMC
                | misc1::SHUTDOWN,
        );
        vmcb.write32(
            ctrl::INTERCEPT_MISC2,
            misc2::VMRUN
                | misc2::VMMCALL
                | misc2::VMLOAD
                | misc2::VMSAVE
                | misc2::STGI
                | misc2::CLGI
                | misc2::SKINIT
                | misc2::ICEBP
                | misc2::MONITOR
                | misc2::MWAIT
                | misc2::MWAIT_COND
                | misc2::XSETBV
                | misc2::WBINVD
                | misc2::RDPRU,
        );
        // Pause-loop exiting: a vCPU spinning on a lock whose holder is
        // preempted yields its turn (`Exit::Yield`).
        if let Some((bit, count, threshold)) = pause_loop_exiting(&features) {
            let m = vmcb.read32(ctrl::INTERCEPT_MISC1);
            vmcb.write32(ctrl::INTERCEPT_MISC1, m | bit);
            vmcb.write16(ctrl::PAUSE_FILTER_COUNT, count);
            vmcb.write16(ctrl::PAUSE_FILTER_THRESHOLD, threshold);
        }
        vmcb.write64(ctrl::IOPM_BASE_PA, iopm_pa);
        vmcb.write64(ctrl::MSRPM_BASE_PA, msrpm_pa);
        vmcb.write32(ctrl::GUEST_ASID, asid);
        // V_INTR_MASKING: the guest's RFLAGS.IF masks only virtual
        // interrupts; physical ones (only the time-slice timer is enabled)
        // never reach the guest but cause an INTR exit, VMRUN running with
        // the host's IF set (APM Vol. 2 §15.21.1; see hw.rs, lapic.rs).
        vmcb.write64(ctrl::VINTR, 1 << 24);
        vmcb.write64(ctrl::NP_ENABLE, 1);
        vmcb.write64(ctrl::N_CR3, npt_root);
        vmcb.write64(save::G_PAT, PAT_DEFAULT);
        vmcb.write64(save::DR6, DR6_FIXED1);
        vmcb.write64(save::DR7, DR7_FIXED1);
        vmcb.write64(save::EFER, EFER_SVME);
        vmcb.write64(save::RFLAGS, 2);
        let seen_generation = npt_generation.load(Ordering::Acquire);
        SvmVcpu {
            vmcb,
            gprs: Gprs::default(),
            hw,
            npt: PageTable::from_root(X86Long4, npt_root),
            npt_access,
            npt_generation,
            seen_generation,
            npt_hint: core::cell::Cell::default(),
            rip_walk: RipWalk::default(),
            features,
            vm_index,
            asid,
            bound: None,
            last_cpu: None,
            clean_snap: alloc::boxed::Box::default(),
            clean_cpu: None,
            pending: PendingEvents::new(),
            reinject: None,
            debug: DebugRegs::default(),
            next_rip: None,
            fpu: alloc::boxed::Box::default(),
            cpuid_table: None,
            internal_exits: 0,
            turn_budget: 0,
            x86: X86Interface::default(),
            vintr: vintr::V_INTR_MASKING,
            vintr_unreliable: false,
            armed_wake_at: None,
            turn_cap: None,
            bare_loop: false,
            shadow_rip: None,
            premature_window: false,
            nmi_masked: false,
            iret_rip: None,
            watch: false,
        }
    }

    pub fn vmcb(&self) -> &Vmcb {
        self.vmcb
    }

    /// CPUID exits whose (leaf, subleaf) the table has are answered here,
    /// counted in `internal_exits` like the other exits handled inside
    /// `run`; the others still reach the vmm's `ExitPolicy`, from which the
    /// table was built (`X86Policy::cpuid_table`).
    pub fn set_cpuid_table(&mut self, table: CpuidTable) {
        self.cpuid_table = Some(alloc::boxed::Box::new(table));
    }

    /// Intercepts the guest's #PF and reflects it, with CR2 written only
    /// when the reflected #PF is delivered (rule `exc_payload`; a #PF during
    /// event delivery is combined by the double-fault rules). Off by default
    /// (nested paging needs no #PF exits); the `svm-intercept-pf` kernel
    /// option turns it on to test that path on real guests.
    pub fn set_intercept_pf(&mut self, on: bool) {
        let pf = if on { 1 << vector::PF } else { 0 };
        self.vmcb.write32(
            ctrl::INTERCEPT_EXCEPTIONS,
            ALWAYS_INTERCEPTED_EXCEPTIONS | pf,
        );
    }

    /// Reflects an intercepted exception into the guest. When it arose while
    /// another event was being delivered (EXITINTINFO valid), that event is
    /// queued first so the double-fault rules combine the two as the CPU
    /// would have, instead of re-injecting it (found for #PF, same for #DB
    /// and #AC).
    fn reflect(&mut self, e: Event, out: &mut Exit) -> Result<bool, BackendError> {
        if let Some(info) = self.reinject.take() {
            if let Some(prev) = decode_event(info, self.vmcb.read32(ctrl::EXITINTINFO + 4)) {
                if self.queue(prev)? == Queued::TripleFault {
                    *out = Exit::Shutdown(ShutdownKind::TripleFault);
                    return Ok(true);
                }
            }
        }
        slot(out, self.internal_fault(e))
    }

    pub fn hw(&mut self) -> &mut H {
        &mut self.hw
    }

    /// The bytes of the instruction at the guest's RIP: from the decode
    /// assists when present, else fetched through the guest's page tables.
    fn fetch_insn(&self, buf: &mut [u8; MAX_INSN]) -> usize {
        fetch::insn_bytes(self.vmcb, &self.guest_phys(), self.assist_bytes(), buf)
    }

    /// The instruction bytes the decode assists left in the VMCB (none
    /// without the feature).
    fn assist_bytes(&self) -> &[u8] {
        if !self.features.decode_assists {
            return &[];
        }
        let n = usize::from(self.vmcb.read8(ctrl::INSN_LEN)).min(MAX_INSN);
        &self.vmcb.0[ctrl::INSN_BYTES..ctrl::INSN_BYTES + n]
    }

    /// Guest memory reached through this VM's NPT.
    fn guest_phys(&self) -> Stage2Phys<'_, H, X86Long4, A> {
        Stage2Phys::new(
            &self.hw,
            &self.npt,
            &self.npt_access,
            self.npt_generation.load(Ordering::Acquire),
            &self.npt_hint,
        )
    }

    fn gpr(&self, r: Reg) -> u64 {
        match r {
            Reg::Rax => self.vmcb.read64(save::RAX),
            Reg::Rsp => self.vmcb.read64(save::RSP),
            _ => gpr_index(r).map_or(0, |i| self.gprs.0[i]),
        }
    }

    fn set_gpr(&mut self, r: Reg, v: u64) {
        match r {
            Reg::Rax => self.vmcb.write64(save::RAX, v),
            Reg::Rsp => self.vmcb.write64(save::RSP, v),
            _ => {
                if let Some(i) = gpr_index(r) {
                    self.gprs.0[i] = v;
                }
            }
        }
    }

    /// Sets the next RIP after an intercepted instruction whose bare form is
    /// `len` bytes: from the VMCB with NRIPS, else by decoding the
    /// instruction, because prefixes (`2E 0F A2` is a CPUID too) make it
    /// longer and resuming inside it would run its tail as code. `len` is
    /// the fallback when the bytes cannot be fetched or decoded.
    ///
    /// Fast path: `first` is the bare form's first byte. When it is not a
    /// prefix byte (0F, F4) and the byte at RIP equals it, the instruction
    /// that exited has no prefixes, so it is the bare form: one byte fetched
    /// instead of a full decode.
    fn next_rip_fixed(&mut self, len: u64, first: u8) {
        self.next_rip = Some(if self.features.nrips {
            self.vmcb.read64(ctrl::NRIP)
        } else {
            // The fields apart: the memo is written while the NPT is read.
            let generation = self.npt_generation.load(Ordering::Acquire);
            let (hw, npt, access, hint) = (&self.hw, &self.npt, &self.npt_access, &self.npt_hint);
            let mem = || Stage2Phys::new(hw, npt, access, generation, hint);
            match fetch::bare_next_rip(
                &*self.vmcb,
                &mut self.rip_walk,
                &self.hw,
                generation,
                mem,
                len,
                first,
            ) {
                Some(rip) => rip,
                None => self.next_rip_decoded(len),
            }
        });
    }

    /// The next RIP from the decoded instruction at RIP (prefixed forms);
    /// `len` when it cannot be fetched or decoded.
    #[cold]
    fn next_rip_decoded(&self, len: u64) -> u64 {
        let mut buf = [0u8; MAX_INSN];
        let n = self.fetch_insn(&mut buf);
        fetch::decoded_next_rip(&*self.vmcb, &buf[..n], len)
    }

    fn skip(&mut self, len: usize) {
        let rip = self.vmcb.rip().wrapping_add(len as u64);
        self.vmcb.complete_to(rip);
    }

    fn queue(&mut self, e: Event) -> Result<Queued, BackendError> {
        Ok(self.pending.queue(e)?)
    }

    /// Programs EVENTINJ for the next entry. The payload of an exception
    /// (CR2, DR6) is written here, at delivery, never at queueing (rule
    /// `exc_payload`).
    pub fn deliver_events(&mut self) -> Result<(), BackendError> {
        if let Some(info) = self.reinject.take() {
            self.vmcb.write64(ctrl::EVENTINJ, info);
            return Ok(());
        }
        if self.pending.is_empty() {
            // The common case on the exit path: nothing to deliver.
            return Ok(());
        }
        let shadow = self.vmcb.read64(ctrl::INTERRUPT_SHADOW) & 1 != 0;
        let irq_open = self.vmcb.read64(save::RFLAGS) & RFLAGS_IF != 0 && !shadow;
        let Some(e) = self.pending.take(!shadow, irq_open) else {
            return Ok(());
        };
        let inj = match e {
            Event::Exception {
                vector, error_code, ..
            } => event_inj::encode(vector, event_inj::TYPE_EXCEPTION, error_code),
            Event::Undefined => event_inj::encode(vector::UD, event_inj::TYPE_EXCEPTION, None),
            Event::Nmi => event_inj::encode(2, event_inj::TYPE_NMI, None),
            Event::Interrupt { vector } => event_inj::encode(vector, event_inj::TYPE_INTR, None),
            Event::Arm64Sync { .. } | Event::Arm64SError => {
                return Err(BackendError::BadEvent(
                    vmm::event::EventError::PayloadMismatch,
                ))
            }
        };
        let dr6 = self.vmcb.read64(save::DR6);
        if let Some((reg, v)) = e.payload_write(|_| dr6) {
            match reg {
                Reg::Cr2 => self.vmcb.write64(save::CR2, v),
                Reg::Dr6 => self.vmcb.write64(save::DR6, v),
                _ => {}
            }
        }
        self.vmcb.write64(ctrl::EVENTINJ, inj);
        Ok(())
    }

    /// TLB_CONTROL for the coming entry (rule `tlb_tag`).
    fn prepare_tlb(&mut self, cpu: PhysCpu) {
        let generation = self.npt_generation.load(Ordering::Acquire);
        // Common case: same CPU and NPT generation, and no other VM used the
        // ASID here since (only this CPU writes its owner table, so the load
        // sees what the swap would return). TLB_CONTROL is still DO_NOTHING
        // from the last exit: no store, no atomic read-modify-write.
        if self.last_cpu == Some(cpu)
            && generation == self.seen_generation
            && self.hw.asid_owner(cpu, self.asid) == Some(self.vm_index)
        {
            return;
        }
        let prev_owner = self.hw.swap_asid_owner(cpu, self.asid, self.vm_index);
        let must = self.last_cpu != Some(cpu)
            || generation != self.seen_generation
            || prev_owner != Some(self.vm_index);
        self.vmcb.write8(
            ctrl::TLB_CONTROL,
            tlb_control(must, self.features.flush_by_asid),
        );
        self.seen_generation = generation;
        self.last_cpu = Some(cpu);
    }

    /// One VMRUN and the decoding of its exit. `None`: handled here, enter again.
    fn run_once(&mut self, cpu: PhysCpu, out: &mut Exit) -> Result<bool, BackendError> {
        self.deliver_events()?;
        self.prepare_tlb(cpu);
        if self.features.vmcb_clean {
            // VMCB clean bits: only on the CPU that ran this VMCB last, and
            // only for groups whose bytes nobody changed since that #VMEXIT.
            let clean = match self.clean_cpu {
                Some(c) if c == cpu => self.clean_snap.clean_bits(self.vmcb),
                _ => 0,
            };
            self.vmcb.write32(ctrl::CLEAN, clean);
            self.hw.vmrun(cpu, self.vmcb, &mut self.gprs);
            self.clean_snap.capture(self.vmcb);
            self.clean_cpu = Some(cpu);
        } else {
            // The CLEAN field stays 0 from VMCB setup: nothing is cached.
            self.hw.vmrun(cpu, self.vmcb, &mut self.gprs);
        }
        if cfg!(feature = "bench-bare") && self.bare_loop {
            self.bare_cpuid_loop(cpu);
        }
        self.vmcb.write64(ctrl::EVENTINJ, 0);
        self.vmcb.write8(ctrl::TLB_CONTROL, tlb::DO_NOTHING);
        let info = self.vmcb.read64(ctrl::EXITINTINFO);
        if event_inj::is_valid(info) {
            self.reinject = Some(info);
        }
        self.next_rip = None;
        self.decode_exit(out)
    }

    /// The benchmark's bare loop: CPUID of leaf [`BARE_LOOP_LEAF`] is
    /// answered by re-entering at once with RIP + 2, nothing else done (no
    /// event, TLB or clean-bit work, no decode, no check of the bytes at
    /// RIP): the cost of VMRUN and #VMEXIT through `svm_vmrun_asm` alone,
    /// the floor every other exit round trip is compared with (issue 17).
    /// Only in kernels built with the `bench-bare` feature.
    #[cold]
    #[inline(never)]
    fn bare_cpuid_loop(&mut self, cpu: PhysCpu) {
        while self.vmcb.exitcode() == exitcode::CPUID
            && self.vmcb.read64(save::RAX) as u32 == BARE_LOOP_LEAF
        {
            let rip = self.vmcb.rip();
            self.vmcb.write64(save::RIP, rip.wrapping_add(2));
            self.hw.vmrun(cpu, self.vmcb, &mut self.gprs);
        }
    }

    /// Turns the benchmark's bare loop on (kernel option `bench-bare`, in a
    /// kernel built with the feature of that name):
    /// CPUID leaf [`BARE_LOOP_LEAF`] then returns nothing and skips two
    /// bytes, whatever its prefixes: for the bench guest only.
    pub fn set_bare_loop(&mut self, on: bool) {
        self.bare_loop = on;
    }

    /// Decodes the exit into `out`: `Ok(true)` when it needs the vmm,
    /// `Ok(false)` when it was handled here. The exit is written in place
    /// rather than returned as `Option<Exit>`, which cost three copies of
    /// the enum per exit.
    fn decode_exit(&mut self, out: &mut Exit) -> Result<bool, BackendError> {
        let code = self.vmcb.exitcode();
        let info1 = self.vmcb.read64(ctrl::EXITINFO1);
        let info2 = self.vmcb.read64(ctrl::EXITINFO2);
        let exit = match code {
            exitcode::CPUID => {
                self.next_rip_fixed(2, 0x0f);
                let leaf = self.gpr(Reg::Rax) as u32;
                let subleaf = self.gpr(Reg::Rcx) as u32;
                if let Some(mut r) = self
                    .cpuid_table
                    .as_ref()
                    .and_then(|t| t.lookup(leaf, subleaf))
                {
                    // CPUID.(7,0):ECX.OSPKE mirrors the guest's own CR4.PKE
                    // (SDM Vol. 2 "CPUID"); the table never has it set.
                    if leaf == 7 && self.vmcb.read64(save::CR4) & CR4_PKE != 0 {
                        r[2] |= ECX7_OSPKE;
                    }
                    // CPUID zero-extends into RAX..RDX (SDM Vol. 2 "CPUID").
                    for (reg, v) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx].into_iter().zip(r) {
                        self.set_gpr(reg, u64::from(v));
                    }
                    return slot(out, self.internal_done());
                }
                Exit::Cpuid { leaf, subleaf }
            }
            exitcode::IRET => {
                // The NMI handler returns: IRET itself has not run yet (the
                // intercept comes before it), so NMIs open once RIP has
                // moved on (note_x86_exit). Re-entered at once, unchanged.
                self.iret_rip = Some(self.vmcb.rip());
                self.watch = true;
                let m = self.vmcb.read32(ctrl::INTERCEPT_MISC1);
                self.vmcb.write32(ctrl::INTERCEPT_MISC1, m & !misc1::IRET);
                return slot(out, self.internal_done());
            }
            exitcode::HLT => {
                self.next_rip_fixed(1, 0xf4);
                Exit::Halt
            }
            exitcode::VMMCALL => {
                self.next_rip_fixed(3, 0x0f);
                Exit::Hypercall(Hypercall {
                    conduit: Conduit::Vmmcall,
                    // VMMCALL works at any CPL: only the guest kernel may call.
                    privileged: self.vmcb.read8(save::CPL) == 0,
                    imm: 0,
                    nr: self.gpr(Reg::Rax),
                    // Spelled out: `[Reg; 6].map(|r| self.gpr(r))` was an
                    // outlined try_map matching each register at run time.
                    args: [
                        self.gpr(Reg::Rbx),
                        self.gpr(Reg::Rcx),
                        self.gpr(Reg::Rdx),
                        self.gpr(Reg::Rsi),
                        self.gpr(Reg::Rdi),
                        self.gpr(Reg::R8),
                    ],
                })
            }
            exitcode::MSR => {
                self.next_rip_fixed(2, 0x0f);
                let msr = self.gpr(Reg::Rcx) as u32;
                if info1 == 0 {
                    match self.vmcb_msr_read(msr) {
                        Some(v) => {
                            self.set_gpr(Reg::Rax, v & 0xffff_ffff);
                            self.set_gpr(Reg::Rdx, v >> 32);
                            return slot(out, self.internal_done());
                        }
                        None => Exit::MsrRead { msr },
                    }
                } else {
                    let value = (self.gpr(Reg::Rdx) << 32) | (self.gpr(Reg::Rax) & 0xffff_ffff);
                    match self.vmcb_msr_write(msr, value) {
                        Some(true) => return slot(out, self.internal_done()),
                        Some(false) => {
                            return slot(out, self.internal_fault(Event::general_protection(0)))
                        }
                        None => Exit::MsrWrite { msr, value },
                    }
                }
            }
            exitcode::IOIO => {
                // EXITINFO2 holds the RIP after IN/OUT (APM Vol. 2 §15.10.2).
                self.next_rip = Some(info2);
                match decode_ioio(info1, self.gpr(Reg::Rax)) {
                    Some(io) => Exit::PortIo(io),
                    None => Exit::Unknown {
                        reason: code,
                        qualification: info1,
                    },
                }
            }
            exitcode::NPF => self.npf(info1, info2),
            c if (exitcode::READ_DR0..exitcode::WRITE_DR0 + 16).contains(&c) => {
                return slot(out, self.mov_dr(c));
            }
            c if c == exitcode::EXCP_BASE + u64::from(vector::PF) => {
                // Reflect the guest's own #PF: the hardware did not write
                // CR2 (EXITINFO2 has the address); delivery will. A #PF
                // while delivering another event combines by the double-fault
                // rules (benign + #PF → #PF, #PF + #PF → #DF).
                return self.reflect(Event::page_fault(info2, info1 as u32), out);
            }
            c if c == exitcode::EXCP_BASE + u64::from(vector::DB) => {
                // Always intercepted (CVE-2015-8104: a #DB raised while
                // delivering a #DB loops inside the CPU without an exit).
                // The CPU has already written its DR6 bits into the VMCB;
                // they travel as the payload and are merged into DR6 at
                // delivery (rule `exc_payload`), giving the DR6 the guest
                // would have seen without the intercept.
                let payload = self.vmcb.read64(save::DR6) ^ vmm::event::DR6_ACTIVE_LOW;
                return self.reflect(Event::debug(payload & 0xffff_ffff), out);
            }
            c if c == exitcode::EXCP_BASE + u64::from(vector::AC) => {
                // Always intercepted (CVE-2015-5307: #AC during #AC
                // delivery loops inside the CPU). Its error code is 0.
                return self.reflect(
                    Event::Exception {
                        vector: vector::AC,
                        error_code: Some(0),
                        payload: vmm::event::Payload::None,
                    },
                    out,
                );
            }
            c if c == exitcode::EXCP_BASE + u64::from(vector::MC) => {
                // A machine check of the host's hardware must not reach the
                // guest; the VM that ran stops (vmm), the others go on.
                Exit::MachineCheck
            }
            exitcode::ICEBP => {
                // INT1 raises a trap-like #DB without a privilege check and
                // without DR6 bits: deliver it after the instruction, as
                // the CPU would (it was a VM stop before, review finding 4).
                self.next_rip_fixed(1, 0xf1);
                if let Some(n) = self.next_rip.take() {
                    self.vmcb.write64(save::RIP, n);
                    self.vmcb.write64(ctrl::INTERRUPT_SHADOW, 0);
                }
                return slot(
                    out,
                    self.internal_fault(Event::Exception {
                        vector: vector::DB,
                        error_code: None,
                        payload: vmm::event::Payload::None,
                    }),
                );
            }
            exitcode::WBINVD => {
                // WBINVD/WBNOINVD write back every cache of the CPU: slow,
                // and with no assigned devices nothing in the guest needs it
                // (KVM skips it the same way). 0F 09, or F3 0F 09.
                self.next_rip_fixed(2, 0x0f);
                return slot(out, self.internal_done());
            }
            exitcode::VMRUN
            | exitcode::VMLOAD
            | exitcode::VMSAVE
            | exitcode::STGI
            | exitcode::CLGI
            | exitcode::SKINIT
            | exitcode::INVLPGA
            | exitcode::MONITOR
            | exitcode::MWAIT
            | exitcode::MWAIT_COND
            | exitcode::XSETBV
            | exitcode::RDPRU => {
                // SVM, MONITOR, XSAVE and RDPRU are hidden in CPUID: #UD as
                // on such a CPU.
                return slot(out, self.internal_fault(Event::Undefined));
            }
            exitcode::SHUTDOWN => Exit::Shutdown(ShutdownKind::TripleFault),
            exitcode::INVALID => Exit::Shutdown(ShutdownKind::InvalidState),
            // The only physical interrupt the hypervisor enables is the
            // time-slice timer (taken and ended after the VMRUN's STGI).
            exitcode::INTR => {
                self.note_shadow();
                // The interrupt was taken at the STGI after the exit; its
                // stub recorded the vector. The host's table says what it
                // means (arch::hostirq); without a record, the slice timer
                // (the only source before kicks) is assumed.
                match self.hw.last_host_irq() {
                    Some(line) if crate::hostirq::TABLE.get(line) != HostIrq::EndOfTurn => {
                        Exit::HostInterrupt { line }
                    }
                    _ => Exit::PreemptionTimer,
                }
            }
            exitcode::NMI | exitcode::SMI | exitcode::INIT => Exit::ExternalInterrupt,
            exitcode::VINTR => {
                // The guest's interrupt window opened: the vmm injects at
                // the next entry. The CPU leaves V_IRQ set; the next
                // entry's load_vintr decides again.
                self.note_shadow();
                if !self.interruptible() {
                    self.vintr_unreliable = true;
                }
                self.x86.sync = true;
                Exit::ExternalInterrupt
            }
            exitcode::INVD => {
                // INVD would drop dirty cache lines of the host and other
                // VMs: run as a no-op, as KVM does (its effect on the
                // guest's own data is what WBINVD + INVD would give).
                self.next_rip_fixed(2, 0x0f);
                return slot(out, self.internal_done());
            }
            exitcode::RDPMC => {
                // Not intercepted, RDPMC would read the host's counters,
                // which count for the hypervisor and other VMs. The PMU is
                // hidden (CPUID, PMU MSRs #GP): #GP as for a missing counter.
                return slot(out, self.internal_fault(Event::general_protection(0)));
            }
            exitcode::PAUSE => {
                // PAUSE is F3 90: its first byte is a REP prefix, so it is
                // always decoded.
                self.next_rip_fixed(2, 0xf3);
                Exit::Yield
            }
            _ => Exit::Unknown {
                reason: code,
                qualification: info1,
            },
        };
        *out = exit;
        Ok(true)
    }

    /// Applies what the vmm set in the interrupt interface (only when it
    /// set `load`): the interrupt or NMI to inject, V_TPR and the window,
    /// and the guest timer's deadline for the host timer. An interrupt
    /// goes straight into EVENTINJ (the vmm chose it because the guest can
    /// take it now); should another event be waiting after all, it queues
    /// behind it and is delivered when the guest allows.
    #[cold]
    #[inline(never)]
    fn load_x86(&mut self) -> Result<(), BackendError> {
        self.x86.load = false;
        let direct = self.reinject.is_none() && self.pending.is_empty();
        if core::mem::take(&mut self.x86.inject_nmi) {
            if direct {
                self.vmcb.write64(
                    ctrl::EVENTINJ,
                    event_inj::encode(2, event_inj::TYPE_NMI, None),
                );
            } else {
                self.queue(Event::Nmi)?;
            }
            // Blocked until the handler's IRET has completed.
            self.nmi_masked = true;
            self.iret_rip = None;
            let m = self.vmcb.read32(ctrl::INTERCEPT_MISC1);
            self.vmcb.write32(ctrl::INTERCEPT_MISC1, m | misc1::IRET);
        } else if let Some(v) = self.x86.inject.take() {
            if direct {
                self.vmcb.write64(
                    ctrl::EVENTINJ,
                    event_inj::encode(v, event_inj::TYPE_INTR, None),
                );
            } else {
                self.queue(Event::Interrupt { vector: v })?;
            }
        }
        self.load_vintr();
        // The guest's local APIC timer: exit by its expiry (the host's
        // one-shot shortened, only when the deadline moved earlier).
        if let Some(d) = self.x86.wake_at {
            if self.armed_wake_at.is_none_or(|a| d < a) {
                self.armed_wake_at = Some(d);
                self.hw.arm_deadline(d);
            }
        }
        Ok(())
    }

    /// After an exit the vmm sees: a guest MOV CR8 changed V_TPR, or an
    /// interrupt waits for a window the CPU cannot be trusted to report:
    /// the vmm must look before the next entry.
    #[inline]
    fn note_x86_exit(&mut self) {
        let tpr = (self.vmcb.read64(ctrl::VINTR) & vintr::V_TPR) as u8;
        if tpr != self.x86.cr8 {
            self.x86.cr8 = tpr;
            self.x86.sync = true;
        }
        if self.watch {
            self.note_x86_rare();
        }
    }

    /// The rare part of [`SvmVcpu::note_x86_exit`], behind one flag: an
    /// NMI handler's IRET to see past, a window the CPU cannot report.
    #[cold]
    fn note_x86_rare(&mut self) {
        if let Some(r) = self.iret_rip {
            // Past the NMI handler's IRET: NMIs are open again.
            if self.vmcb.rip() != r {
                self.iret_rip = None;
                self.nmi_masked = false;
                self.x86.sync = true;
            }
        }
        if self.x86.window && self.vintr_unreliable {
            self.x86.sync = true;
        }
        self.watch = self.iret_rip.is_some() || (self.x86.window && self.vintr_unreliable);
    }

    /// V_TPR from the vmm's TPR; V_IRQ with the VINTR intercept while the
    /// vmm waits for an interrupt window (V_IGN_TPR: the window is the
    /// guest's IF and shadow only, the TPR is the vmm's business). Written
    /// only when it changes (the TPR clean bit stays set otherwise).
    fn load_vintr(&mut self) {
        let window = self.x86.window && !self.vintr_unreliable;
        if self.x86.window && self.vintr_unreliable {
            self.watch = true;
        }
        let mut v = vintr::V_INTR_MASKING | (u64::from(self.x86.cr8) & vintr::V_TPR);
        if window {
            v |= vintr::V_IRQ | vintr::V_INTR_PRIO | vintr::V_IGN_TPR;
        }
        if window && self.vmcb.read64(ctrl::INTERRUPT_SHADOW) & 1 != 0 {
            self.shadow_rip = Some(self.vmcb.rip());
        }
        if v != self.vintr {
            self.vintr = v;
            self.vmcb.write64(ctrl::VINTR, v);
            let m = self.vmcb.read32(ctrl::INTERCEPT_MISC1);
            let m = if window {
                m | misc1::VINTR
            } else {
                m & !misc1::VINTR
            };
            self.vmcb.write32(ctrl::INTERCEPT_MISC1, m);
        }
    }

    /// After an interrupt or window exit (no instruction completed by the
    /// exit itself): records a reported shadow, or finds one the CPU lost
    /// ([`SvmVcpu::shadow_rip`]).
    fn note_shadow(&mut self) {
        let rip = self.vmcb.rip();
        if self.vmcb.read64(ctrl::INTERRUPT_SHADOW) & 1 != 0 {
            self.shadow_rip = Some(rip);
        } else if self.shadow_rip == Some(rip) {
            self.premature_window = true;
        } else {
            self.shadow_rip = None;
        }
    }

    /// Whether the guest takes a maskable interrupt at the next entry:
    /// RFLAGS.IF, no STI/MOV SS shadow, nothing else to deliver.
    fn interruptible(&self) -> bool {
        self.vmcb.read64(save::RFLAGS) & RFLAGS_IF != 0
            && !self.premature_window
            && self.vmcb.read64(ctrl::INTERRUPT_SHADOW) & 1 == 0
            && self.reinject.is_none()
            && self.pending.is_empty()
            && self.x86.inject.is_none()
    }

    /// `Vcpu::run`, decoding the exit in place: the internal-exit loop and
    /// its checks out of line from the trait method (measured: CPUID -2).
    fn run_into(&mut self, out: &mut Exit) -> Result<(), BackendError> {
        let cpu = self.bound.ok_or(BackendError::NotBound)?;
        if self.x86.load {
            self.load_x86()?;
        }
        // A premature exit's verdict holds until the guest runs again.
        self.premature_window = false;
        if self.hw.deadline_fired() {
            *out = Exit::PreemptionTimer;
            return Ok(());
        }
        while !self.run_once(cpu, out)? {
            self.turn_budget = self.turn_budget.saturating_sub(1);
            if self.turn_budget == 0 || self.hw.deadline_fired() {
                self.note_x86_exit();
                *out = Exit::PreemptionTimer;
                return Ok(());
            }
        }
        self.note_x86_exit();
        Ok(())
    }

    fn internal_done(&mut self) -> Result<Option<Exit>, BackendError> {
        self.internal_exits += 1;
        if let Some(n) = self.next_rip.take() {
            self.vmcb.write64(save::RIP, n);
            self.vmcb.write64(ctrl::INTERRUPT_SHADOW, 0);
        }
        Ok(None)
    }

    fn internal_fault(&mut self, e: Event) -> Result<Option<Exit>, BackendError> {
        self.internal_exits += 1;
        self.next_rip = None;
        match self.queue(e)? {
            Queued::TripleFault => Ok(Some(Exit::Shutdown(ShutdownKind::TripleFault))),
            _ => Ok(None),
        }
    }

    fn npf(&mut self, info1: u64, gpa: u64) -> Exit {
        let access = vmm::exit::AccessKind::from_npf_error_code(info1);
        let fault = Exit::Stage2Fault {
            gpa,
            gva: None,
            access,
        };
        // RAM never faults after setup, and guest page tables outside RAM
        // (bit 33: fault during the guest's own table walk) are not emulated.
        // Neither is a fault while delivering an event (EXITINTINFO valid:
        // an IDT, GDT or stack outside RAM): it is not the instruction at
        // RIP that faulted, so decoding that one would "emulate" a load or
        // store that never happened (found by the chaos guest).
        if self.npt.translate(&self.npt_access, gpa).is_some()
            || info1 & (1 << 33) != 0
            || self.reinject.is_some()
        {
            return fault;
        }
        let mut buf = [0u8; MAX_INSN];
        let n = self.fetch_insn(&mut buf);
        let bitness = self.vmcb.bitness();
        let (exit, len) = npf_exit(info1, gpa, &buf[..n], bitness, |r| self.gpr(r));
        self.next_rip = len.map(|l| self.vmcb.rip().wrapping_add(l as u64));
        exit
    }

    /// Emulates `MOV DRn, reg` / `MOV reg, DRn` (rule `dr_intercept`).
    fn mov_dr(&mut self, code: u64) -> Result<Option<Exit>, BackendError> {
        let mut buf = [0u8; MAX_INSN];
        let n = self.fetch_insn(&mut buf);
        let Some(m) = decode::decode_mov_dr(&buf[..n], self.vmcb.bitness()) else {
            return Ok(Some(Exit::Unknown {
                reason: code,
                qualification: self.vmcb.read64(ctrl::EXITINFO1),
            }));
        };
        let gpr = self.gpr(m.gpr);
        match self.debug.emulate_mov(&mut *self.vmcb, &m, gpr) {
            MovDrOutcome::Fault(e) => return self.internal_fault(e),
            MovDrOutcome::Written { load_dr03 } => {
                if load_dr03 {
                    self.hw.load_guest_drs(&self.debug.dr);
                }
            }
            MovDrOutcome::Read(v) => self.set_gpr(m.gpr, v),
        }
        self.skip(m.len);
        self.internal_exits += 1;
        Ok(None)
    }

    fn set_dr7(&mut self, v: u64) {
        self.debug.set_dr7(&mut *self.vmcb, v);
    }

    /// MSRs whose value lives in the VMCB. `None`: not one of them.
    fn vmcb_msr_read(&self, msr: u32) -> Option<u64> {
        let v = &self.vmcb;
        Some(match msr {
            msrs::EFER => v.read64(save::EFER) & !EFER_SVME,
            msrs::PAT => v.read64(save::G_PAT),
            msrs::STAR => v.read64(save::STAR),
            msrs::LSTAR => v.read64(save::LSTAR),
            msrs::CSTAR => v.read64(save::CSTAR),
            msrs::SFMASK => v.read64(save::SFMASK),
            msrs::KERNEL_GS_BASE => v.read64(save::KERNEL_GS_BASE),
            msrs::FS_BASE => v.read64(save::FS + save::SEG_BASE),
            msrs::GS_BASE => v.read64(save::GS + save::SEG_BASE),
            msrs::SYSENTER_CS => v.read64(save::SYSENTER_CS),
            msrs::SYSENTER_ESP => v.read64(save::SYSENTER_ESP),
            msrs::SYSENTER_EIP => v.read64(save::SYSENTER_EIP),
            _ => return None,
        })
    }

    /// `Some(false)`: the write is invalid (#GP).
    fn vmcb_msr_write(&mut self, msr: u32, val: u64) -> Option<bool> {
        let canonical = |a: u64| ((a as i64) << 16 >> 16) as u64 == a;
        let at = match msr {
            msrs::EFER => {
                if val & !EFER_GUEST_BITS != 0 {
                    return Some(false);
                }
                // APM Vol. 2 §3.1.7: changing LME while paging is on is #GP
                // (else the VMCB holds LME=0 with LMA=1, a state no CPU has).
                let cur = self.vmcb.read64(save::EFER);
                if (val ^ cur) & EFER_LME != 0 && self.vmcb.read64(save::CR0) & CR0_PG != 0 {
                    return Some(false);
                }
                // LMA is the CPU's to change; SVME stays on (VMRUN needs it)
                // but is never visible to the guest.
                let lma = self.vmcb.read64(save::EFER) & EFER_LMA;
                self.vmcb
                    .write64(save::EFER, (val & !EFER_LMA) | lma | EFER_SVME);
                return Some(true);
            }
            msrs::PAT => {
                // Each byte must be a valid memory type (0, 1, 4, 5, 6, 7).
                let ok = val
                    .to_le_bytes()
                    .iter()
                    .all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7));
                if !ok {
                    return Some(false);
                }
                save::G_PAT
            }
            msrs::STAR => save::STAR,
            msrs::SFMASK => save::SFMASK,
            msrs::SYSENTER_CS => save::SYSENTER_CS,
            msrs::LSTAR
            | msrs::CSTAR
            | msrs::KERNEL_GS_BASE
            | msrs::FS_BASE
            | msrs::GS_BASE
            | msrs::SYSENTER_ESP
            | msrs::SYSENTER_EIP => {
                if !canonical(val) {
                    return Some(false);
                }
                match msr {
                    msrs::LSTAR => save::LSTAR,
                    msrs::CSTAR => save::CSTAR,
                    msrs::KERNEL_GS_BASE => save::KERNEL_GS_BASE,
                    msrs::FS_BASE => save::FS + save::SEG_BASE,
                    msrs::GS_BASE => save::GS + save::SEG_BASE,
                    msrs::SYSENTER_ESP => save::SYSENTER_ESP,
                    _ => save::SYSENTER_EIP,
                }
            }
            _ => return None,
        };
        self.vmcb.write64(at, val);
        Some(true)
    }
}

/// Stores an internally handled exit's outcome in `decode_exit`'s slot.
fn slot(out: &mut Exit, r: Result<Option<Exit>, BackendError>) -> Result<bool, BackendError> {
    Ok(match r? {
        Some(e) => {
            *out = e;
            true
        }
        None => false,
    })
}

/// The event an EXITINTINFO value describes (APM Vol. 2 §15.7.2), for
/// requeueing; software interrupts are not (the INT instruction runs again).
pub fn decode_event(info: u64, error_code: u32) -> Option<Event> {
    if !event_inj::is_valid(info) {
        return None;
    }
    let vector = info as u8;
    match (info >> 8) & 7 {
        event_inj::TYPE_EXCEPTION if vector < 32 && vector != 2 => Some(Event::Exception {
            vector,
            error_code: (info & event_inj::EV != 0).then_some(error_code),
            payload: vmm::event::Payload::None,
        }),
        event_inj::TYPE_NMI => Some(Event::Nmi),
        event_inj::TYPE_INTR if vector >= 32 => Some(Event::Interrupt { vector }),
        _ => None,
    }
}

/// The ModRM number of an x86 GPR (a direct match: this runs on every
/// register access of the exit path).
#[inline]
fn gpr_index(r: Reg) -> Option<usize> {
    Some(match r {
        Reg::Rax => 0,
        Reg::Rcx => 1,
        Reg::Rdx => 2,
        Reg::Rbx => 3,
        Reg::Rsp => 4,
        Reg::Rbp => 5,
        Reg::Rsi => 6,
        Reg::Rdi => 7,
        Reg::R8 => 8,
        Reg::R9 => 9,
        Reg::R10 => 10,
        Reg::R11 => 11,
        Reg::R12 => 12,
        Reg::R13 => 13,
        Reg::R14 => 14,
        Reg::R15 => 15,
        _ => return None,
    })
}

/// Decodes an IOIO intercept's EXITINFO1 (APM Vol. 2 §15.10.2 Figure 15-2):
/// bit 0 IN, bit 2 string, bit 3 REP, bits 6:4 size (8/16/32), bits 31:16
/// port. String and REP forms are not normalized (`None`).
pub fn decode_ioio(info1: u64, rax: u64) -> Option<PortIo> {
    if info1 & (0b11 << 2) != 0 {
        return None;
    }
    let size = match (info1 >> 4) & 0b111 {
        0b001 => AccessSize::B1,
        0b010 => AccessSize::B2,
        0b100 => AccessSize::B4,
        _ => return None,
    };
    let port = (info1 >> 16) as u16;
    let op = if info1 & 1 != 0 {
        IoOp::In
    } else {
        IoOp::Out((rax & size.mask()) as u32)
    };
    Some(PortIo { port, size, op })
}

fn seg(s: &Segment) -> VmcbSeg {
    VmcbSeg {
        selector: s.selector,
        attrib: s.vmcb_attrib(),
        limit: s.limit,
        base: s.base,
    }
}

impl<H: Hw, A: TableAccess> vmm::backend::Vcpu for SvmVcpu<H, A> {
    fn begin_turn(&mut self, budget: u64) {
        self.turn_budget = budget;
        self.hw.arm_turn_deadline();
        self.armed_wake_at = None;
        // No turn outlasts the run loop's cap (a blocked vCPU's timer
        // deadline, which the loop must see to wake it).
        if let Some(d) = self.turn_cap.take() {
            self.armed_wake_at = Some(d);
            self.hw.arm_deadline(d);
        }
    }

    fn cap_turn(&mut self, deadline: u64) {
        self.turn_cap = Some(deadline);
    }

    fn x86_interface(&mut self) -> Option<&mut X86Interface> {
        Some(&mut self.x86)
    }

    fn internal_exits(&self) -> u64 {
        self.internal_exits
    }

    fn x86_refresh(&mut self) {
        self.x86.nmi_ready = !self.nmi_masked
            && self.reinject.is_none()
            && self.pending.is_empty()
            && self.vmcb.read64(ctrl::INTERRUPT_SHADOW) & 1 == 0;
        self.x86.interruptible = self.interruptible();
        self.x86.rflags_if = self.vmcb.read64(save::RFLAGS) & RFLAGS_IF != 0;
    }

    /// Runs until an exit needs the vmm. Exits handled here count against
    /// the turn's budget: a guest looping on them (CPUID, VMCB-held MSRs,
    /// MOV DR, at CPL 3 too) ends its turn with `PreemptionTimer` instead of
    /// keeping the CPU; the deadline armed by `begin_turn` ends it as well.
    fn run(&mut self) -> Result<Exit, BackendError> {
        let mut exit = Exit::Halt;
        self.run_into(&mut exit)?;
        Ok(exit)
    }

    fn reg(&mut self, reg: Reg) -> Result<u64, BackendError> {
        let v = &self.vmcb;
        Ok(match reg {
            Reg::Rip => v.rip(),
            Reg::Rflags => v.read64(save::RFLAGS),
            Reg::Cr0 => v.read64(save::CR0),
            Reg::Cr2 => v.read64(save::CR2),
            Reg::Cr3 => v.read64(save::CR3),
            Reg::Cr4 => v.read64(save::CR4),
            Reg::Efer => v.read64(save::EFER) & !EFER_SVME,
            Reg::Dr6 => v.read64(save::DR6),
            Reg::Dr7 => self.debug.dr7,
            r if gpr_index(r).is_some() => self.gpr(r),
            r => return Err(BackendError::NoSuchRegister(r)),
        })
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), BackendError> {
        let at = match reg {
            Reg::Rip => save::RIP,
            Reg::Rflags => save::RFLAGS,
            Reg::Cr0 => save::CR0,
            Reg::Cr2 => save::CR2,
            Reg::Cr3 => save::CR3,
            Reg::Cr4 => save::CR4,
            Reg::Efer => {
                self.vmcb.write64(save::EFER, value | EFER_SVME);
                return Ok(());
            }
            Reg::Dr6 => save::DR6,
            Reg::Dr7 => {
                self.set_dr7(value);
                return Ok(());
            }
            r if gpr_index(r).is_some() => {
                self.set_gpr(r, value);
                return Ok(());
            }
            r => return Err(BackendError::NoSuchRegister(r)),
        };
        self.vmcb.write64(at, value);
        Ok(())
    }

    fn advance_pc(&mut self) -> Result<(), BackendError> {
        let n = self.next_rip.take().ok_or(BackendError::EntryFailed(
            "advance_pc: length of the exiting instruction unknown",
        ))?;
        self.vmcb.write64(save::RIP, n);
        self.vmcb.write64(ctrl::INTERRUPT_SHADOW, 0);
        Ok(())
    }

    fn inject(&mut self, event: Event) -> Result<Queued, BackendError> {
        self.queue(event)
    }

    fn apply_boot_state(&mut self, st: &BootState) -> Result<(), BackendError> {
        let m = x86_mode_state(st.mode).ok_or(BackendError::EntryFailed("not an x86 boot mode"))?;
        let v = &mut self.vmcb;
        v.set_seg(save::CS, seg(&m.cs));
        for s in [save::DS, save::ES, save::FS, save::GS, save::SS] {
            v.set_seg(s, seg(&m.data));
        }
        v.set_seg(save::TR, seg(&m.tr));
        // An empty LDT and descriptor tables: the guest loads its own.
        v.set_seg(save::LDTR, VmcbSeg::default());
        for t in [save::GDTR, save::IDTR] {
            v.set_seg(
                t,
                VmcbSeg {
                    limit: 0xffff,
                    ..VmcbSeg::default()
                },
            );
        }
        v.write8(save::CPL, 0);
        v.write64(save::CR0, m.cr0);
        v.write64(save::CR3, m.cr3);
        v.write64(save::CR4, m.cr4);
        v.write64(save::EFER, m.efer | EFER_SVME);
        v.write64(save::RFLAGS, m.rflags);
        v.write64(save::RIP, st.pc);
        v.write64(save::DR6, DR6_FIXED1);
        self.set_dr7(DR7_FIXED1);
        for &(r, val) in st.regs() {
            self.set_reg(r, val)?;
        }
        Ok(())
    }

    fn bind(&mut self, cpu: PhysCpu) -> Result<(), BackendError> {
        match self.bound {
            Some(c) if c != cpu => Err(BackendError::AlreadyBound(c)),
            Some(_) => Ok(()),
            None => {
                self.hw.fpu_restore(&self.fpu);
                self.hw.load_guest_drs(&self.debug.dr);
                // Another VM ran here last (or nothing since boot): its
                // predictor state must not reach this one (finding 7).
                if self.hw.swap_last_vm(cpu, self.vm_index) != Some(self.vm_index) {
                    self.hw.predictor_barrier();
                }
                self.bound = Some(cpu);
                Ok(())
            }
        }
    }

    fn unbind(&mut self) -> Result<(), BackendError> {
        if self.bound.take().is_some() {
            self.hw.fpu_save(&mut self.fpu);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::npt::tests::{npt, MemTables};
    use super::*;
    use crate::x86_64::guest::debug::{DR6_WRITABLE, DR7_WRITABLE};
    use std::boxed::Box;
    use std::collections::{HashMap, VecDeque};
    use std::vec::Vec;
    use vmm::backend::{EntryMode, S2Attrs, Stage2, Vcpu as _};
    use vmm::exit::{AccessKind, Mmio, MmioOp};

    /// A scripted machine: each VMRUN applies the next closure to the VMCB.
    type Step = Box<dyn FnMut(&mut Vmcb, &mut Gprs)>;
    struct FakeHw {
        steps: VecDeque<Step>,
        /// Snapshots of (EVENTINJ, CR2, TLB_CONTROL) at each VMRUN.
        seen: Vec<(u64, u64, u8)>,
        ram: Vec<u8>,
        ram_hpa: u64,
        owners: HashMap<(u32, u32), usize>,
        /// The "hardware" x87/SSE state and the save/restore calls.
        fpu_live: [u8; 512],
        fpu_calls: Vec<&'static str>,
        drs_live: [u64; 4],
        /// Turn deadlines armed (`Hw::arm_turn_deadline`).
        deadlines: u32,
        wake_deadlines: Vec<u64>,
        fired: bool,
        fire_after_vmrun: bool,
        host_irq: Option<u32>,
        last_vm: HashMap<u32, usize>,
        barriers: u32,
    }

    impl HostPhys for FakeHw {
        fn read_phys(&self, hpa: u64, buf: &mut [u8]) -> bool {
            let off = hpa.wrapping_sub(self.ram_hpa) as usize;
            match self.ram.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }

    impl Hw for FakeHw {
        fn vmrun(&mut self, _cpu: PhysCpu, v: &mut Vmcb, g: &mut Gprs) {
            self.seen.push((
                v.read64(ctrl::EVENTINJ),
                v.read64(save::CR2),
                v.read8(ctrl::TLB_CONTROL),
            ));
            v.write64(ctrl::EXITINTINFO, 0);
            let mut s = self.steps.pop_front().expect("script ended");
            s(v, g);
            if self.fire_after_vmrun {
                self.fired = true;
            }
        }
        fn swap_asid_owner(&mut self, cpu: PhysCpu, asid: u32, vm: usize) -> Option<usize> {
            self.owners.insert((cpu, asid), vm)
        }
        fn asid_owner(&self, cpu: PhysCpu, asid: u32) -> Option<usize> {
            self.owners.get(&(cpu, asid)).copied()
        }
        fn fpu_save(&mut self, area: &mut FpuArea) {
            self.fpu_calls.push("save");
            area.0 = self.fpu_live;
        }
        fn fpu_restore(&mut self, area: &FpuArea) {
            self.fpu_calls.push("restore");
            self.fpu_live = area.0;
        }
        fn arm_turn_deadline(&mut self) {
            self.deadlines += 1;
        }
        fn arm_deadline(&mut self, tsc: u64) {
            self.wake_deadlines.push(tsc);
        }
        fn deadline_fired(&mut self) -> bool {
            self.fired
        }
        fn last_host_irq(&mut self) -> Option<u32> {
            self.host_irq
        }
        fn swap_last_vm(&mut self, cpu: PhysCpu, vm: usize) -> Option<usize> {
            self.last_vm.insert(cpu, vm)
        }
        fn predictor_barrier(&mut self) {
            self.barriers += 1;
        }
        fn load_guest_drs(&mut self, drs: &[u64; 4]) {
            self.drs_live = *drs;
        }
    }

    const RAM_HPA: u64 = 0x4000_0000;

    fn exit(code: u64, info1: u64, info2: u64) -> Step {
        Box::new(move |v: &mut Vmcb, _g: &mut Gprs| {
            v.write64(ctrl::EXITCODE, code);
            v.write64(ctrl::EXITINFO1, info1);
            v.write64(ctrl::EXITINFO2, info2);
        })
    }

    /// A vCPU in 32-bit protected mode (no paging) at RIP 0x1000 with 1 MiB
    /// of RAM whose bytes at 0x1000 are `code`.
    fn vcpu(code: &[u8], steps: Vec<Step>, feats: Features) -> SvmVcpu<FakeHw, MemTables> {
        let mut n = npt(false);
        n.map(0, RAM_HPA, 0x10_0000, S2Attrs::RAM).unwrap();
        let mut ram = vec![0u8; 0x10_0000];
        ram[0x1000..0x1000 + code.len()].copy_from_slice(code);
        let hw = FakeHw {
            steps: steps.into(),
            seen: Vec::new(),
            ram,
            ram_hpa: RAM_HPA,
            owners: HashMap::new(),
            fpu_live: [0; 512],
            fpu_calls: Vec::new(),
            drs_live: [0; 4],
            deadlines: 0,
            wake_deadlines: Vec::new(),
            fired: false,
            fire_after_vmrun: false,
            host_irq: None,
            last_vm: HashMap::new(),
            barriers: 0,
        };
        let root = n.root();
        let g = n.generation();
        let access = n.access().clone();
        let vmcb = Box::leak(Box::new(Vmcb::zeroed()));
        let mut v = SvmVcpu::new(vmcb, hw, root, access, g, feats, 0, 1, 0x1000, 0x3000);
        v.apply_boot_state(&BootState::new(EntryMode::X86Protected32, 0x1000))
            .unwrap();
        v.bind(0).unwrap();
        // A turn long enough for every scripted test.
        v.begin_turn(1 << 20);
        v
    }

    #[test]
    fn vmcb_clean_bits_only_for_untouched_groups_on_the_same_cpu() {
        use super::super::vmcb::clean;
        use std::cell::RefCell;
        use std::rc::Rc;
        let seen = Rc::new(RefCell::new(Vec::new()));
        let step = |code: u64, seen: &Rc<RefCell<Vec<u32>>>| -> Step {
            let seen = seen.clone();
            Box::new(move |v: &mut Vmcb, _g: &mut Gprs| {
                seen.borrow_mut().push(v.read32(ctrl::CLEAN));
                v.write64(ctrl::EXITCODE, code);
            })
        };
        // HLT, HLT, then a CR write by the hypervisor, HLT; all with clean bits.
        let code = [0xf4, 0xf4, 0xf4, 0xf4];
        let steps = (0..4).map(|_| step(exitcode::HLT, &seen)).collect();
        let feats = Features {
            vmcb_clean: true,
            ..Default::default()
        };
        let mut v = vcpu(&code, steps, feats);
        for _ in 0..2 {
            assert_eq!(v.run().unwrap(), Exit::Halt);
            v.advance_pc().unwrap();
        }
        let cr0 = v.reg(Reg::Cr0).unwrap();
        v.set_reg(Reg::Cr0, cr0 | (1 << 5)).unwrap();
        assert_eq!(v.run().unwrap(), Exit::Halt);
        v.advance_pc().unwrap();
        // Moved to another CPU: nothing may be taken from a cache.
        v.unbind().unwrap();
        v.bind(1).unwrap();
        assert_eq!(v.run().unwrap(), Exit::Halt);
        let seen = seen.borrow();
        assert_eq!(seen[0], 0, "first VMRUN of this VMCB");
        assert_eq!(seen[1], clean::ALL, "nothing changed but RIP");
        assert_eq!(seen[2], clean::ALL & !clean::CRX, "CR0 written");
        assert_eq!(seen[3], 0, "another CPU");
        // Without the feature the field stays 0.
        let seen2 = Rc::new(RefCell::new(Vec::new()));
        let steps = (0..2).map(|_| step(exitcode::HLT, &seen2)).collect();
        let mut v = vcpu(&code, steps, Features::default());
        for _ in 0..2 {
            v.run().unwrap();
            v.advance_pc().unwrap();
        }
        assert_eq!(*seen2.borrow(), vec![0, 0]);
    }

    #[test]
    fn vmcb_setup_intercepts_what_must_be() {
        let v = vcpu(&[], vec![], Features::default());
        let m2 = v.vmcb().read32(ctrl::INTERCEPT_MISC2);
        assert_ne!(m2 & misc2::VMRUN, 0, "VMRUN must be intercepted");
        assert_ne!(m2 & misc2::VMMCALL, 0);
        let m1 = v.vmcb().read32(ctrl::INTERCEPT_MISC1);
        for b in [
            misc1::CPUID,
            misc1::RDPMC,
            misc1::HLT,
            misc1::IOIO_PROT,
            misc1::MSR_PROT,
            misc1::SHUTDOWN,
        ] {
            assert_ne!(m1 & b, 0);
        }
        assert_eq!(v.vmcb().read32(ctrl::INTERCEPT_DR), 0x00ff_00ff);
        // No #PF exits unless asked for (nested paging needs none); #DB,
        // #AC and #MC always (inv_benign_exception_intercepts).
        assert_eq!(
            v.vmcb().read32(ctrl::INTERCEPT_EXCEPTIONS),
            ALWAYS_INTERCEPTED_EXCEPTIONS
        );
        let m2 = v.vmcb().read32(ctrl::INTERCEPT_MISC2);
        for b in [misc2::ICEBP, misc2::WBINVD, misc2::RDPRU, misc2::VMMCALL] {
            assert_ne!(m2 & b, 0);
        }
        assert_eq!(v.vmcb().read32(ctrl::GUEST_ASID), 1);
        assert_eq!(v.vmcb().read64(ctrl::NP_ENABLE), 1);
        assert_ne!(v.vmcb().read64(save::EFER) & EFER_SVME, 0);
        assert_eq!(v.vmcb().read16(save::CS + 2), 0xc9b);
    }

    /// With a CPUID table the vCPU answers the leaves it has (subleaf 0)
    /// itself, prefixed forms included; anything else reaches the vmm.
    #[test]
    fn cpuid_ospke_follows_the_guest_cr4() {
        use crate::x86_64::cpuid::{CpuidRegs, CpuidSource};
        use crate::x86_64::guest::policy::X86Policy;
        // A host with CR4.PKE set: its CPUID.(7,0) reports OSPKE.
        struct Host;
        impl CpuidSource for Host {
            fn cpuid(&self, leaf: u32, _sub: u32) -> CpuidRegs {
                CpuidRegs {
                    eax: if leaf == 0 { 0xd } else { 0 },
                    ebx: 0,
                    ecx: ECX7_OSPKE,
                    edx: 0,
                }
            }
        }
        let table = X86Policy::new(Host, || 0).cpuid_table();
        assert_eq!(
            table.lookup(7, 0).unwrap()[2] & ECX7_OSPKE,
            0,
            "host bit leaked"
        );
        for (cr4, want) in [(0u64, 0u32), (CR4_PKE, ECX7_OSPKE)] {
            let mut v = vcpu(
                &[0x0f, 0xa2, 0xf4], // CPUID; HLT
                vec![exit(exitcode::CPUID, 0, 0), exit(exitcode::HLT, 0, 0)],
                Features::default(),
            );
            v.set_cpuid_table(table.clone());
            v.set_reg(Reg::Rax, 7).unwrap();
            v.set_reg(Reg::Rcx, 0).unwrap();
            v.vmcb.write64(save::CR4, cr4 | (1 << 5));
            assert_eq!(v.run().unwrap(), Exit::Halt);
            assert_eq!(
                v.reg(Reg::Rcx).unwrap() as u32 & ECX7_OSPKE,
                want,
                "CR4={cr4:#x}"
            );
        }
    }

    #[test]
    fn cpuid_table_answers_inside_run() {
        use crate::x86_64::cpuid::{CpuidRegs, CpuidSource};
        use crate::x86_64::guest::policy::X86Policy;
        struct Host;
        impl CpuidSource for Host {
            fn cpuid(&self, leaf: u32, sub: u32) -> CpuidRegs {
                CpuidRegs {
                    eax: if leaf == 0 { 0xd } else { leaf ^ 0x55 },
                    ebx: sub,
                    ecx: 0xffff_ffff,
                    edx: 3,
                }
            }
        }
        let policy = X86Policy::new(Host, || 0);
        let table = policy.cpuid_table();
        let mut v = vcpu(
            // CPUID; CS: CPUID; CPUID; CPUID; HLT
            &[0x0f, 0xa2, 0x2e, 0x0f, 0xa2, 0x0f, 0xa2, 0x0f, 0xa2, 0xf4],
            vec![
                exit(exitcode::CPUID, 0, 0),
                Box::new(|v: &mut Vmcb, g: &mut Gprs| {
                    v.write64(ctrl::EXITCODE, exitcode::CPUID);
                    v.write64(save::RAX, 0x4000_0000);
                    g.0[1] = 0;
                }),
                Box::new(|v: &mut Vmcb, g: &mut Gprs| {
                    v.write64(ctrl::EXITCODE, exitcode::CPUID);
                    v.write64(save::RAX, 7);
                    g.0[1] = 1; // subleaf 1: the vmm's policy
                }),
            ],
            Features::default(),
        );
        v.set_cpuid_table(table.clone());
        v.set_reg(Reg::Rax, 1).unwrap();
        v.set_reg(Reg::Rcx, 0xdead_0000_0000).unwrap(); // ECX = 0
        let exit = v.run().unwrap();
        assert_eq!(
            exit,
            Exit::Cpuid {
                leaf: 7,
                subleaf: 1
            }
        );
        assert_eq!(v.internal_exits, 2);
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1005);
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1007);
        // EBX and EDX still hold the second answer (0x4000_0000; the third
        // exit's script set RAX and RCX), zero-extended.
        let want = table.lookup(0x4000_0000, 0).unwrap();
        assert_eq!(v.reg(Reg::Rbx).unwrap(), u64::from(want[1]));
        assert_eq!(v.reg(Reg::Rdx).unwrap(), u64::from(want[3]));
        assert_eq!(want[1].to_le_bytes(), *b"Rust");
    }

    #[test]
    fn cpuid_hlt_vmmcall_without_nrips_use_known_lengths() {
        let mut v = vcpu(
            // CPUID; VMMCALL; HLT
            &[0x0f, 0xa2, 0x0f, 0x01, 0xd9, 0xf4],
            vec![
                exit(exitcode::CPUID, 0, 0),
                exit(exitcode::VMMCALL, 0, 0),
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Rax, 0x4000_0000).unwrap();
        v.set_reg(Reg::Rbx, 7).unwrap();
        assert_eq!(
            v.run().unwrap(),
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 0
            }
        );
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1002);
        let Exit::Hypercall(h) = v.run().unwrap() else {
            panic!()
        };
        assert_eq!((h.nr, h.args[0]), (0x4000_0000, 7));
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1005);
        assert_eq!(v.run().unwrap(), Exit::Halt);
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1006);
        // No second advance for the same exit.
        assert!(v.advance_pc().is_err());
    }

    /// Without NRIPS the length comes from the instruction bytes: a
    /// prefixed CPUID/VMMCALL/RDMSR resumed at RIP + the bare length would
    /// run its own tail as code (found by the chaos guest). Unfetchable
    /// bytes fall back to the bare length.
    #[test]
    fn prefixed_intercepts_without_nrips_skip_the_whole_instruction() {
        let code = [
            0x2e, 0x0f, 0xa2, // CS CPUID
            0x2e, 0x2e, 0x0f, 0x01, 0xd9, // CS CS VMMCALL
            0x66, 0x0f, 0x32, // RDMSR with an operand-size prefix
        ];
        let mut v = vcpu(
            &code,
            vec![
                exit(exitcode::CPUID, 0, 0),
                exit(exitcode::VMMCALL, 0, 0),
                exit(exitcode::MSR, 0, 0),
                exit(exitcode::CPUID, 0, 0),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Rcx, 0x1234).unwrap();
        assert!(matches!(v.run().unwrap(), Exit::Cpuid { .. }));
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1003);
        assert!(matches!(v.run().unwrap(), Exit::Hypercall(_)));
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1008);
        assert_eq!(v.run().unwrap(), Exit::MsrRead { msr: 0x1234 });
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x100b);
        // RIP outside RAM: nothing to decode, the bare length is used.
        v.set_reg(Reg::Rip, 0xffff_f000).unwrap();
        assert!(matches!(v.run().unwrap(), Exit::Cpuid { .. }));
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0xffff_f002);
    }

    /// A long-mode vCPU at linear 0x40_0000 (PML4 0x2000, PDPT 0x3000, PD
    /// 0x4000, PT 0x5000; the page maps to GPA 0x8000) whose code pages
    /// 0x8000 and 0x9000 hold `a` and `b`.
    fn long_mode_vcpu(a: &[u8], b: &[u8], steps: Vec<Step>) -> SvmVcpu<FakeHw, MemTables> {
        let mut v = vcpu(&[], steps, Features::default());
        let ram = &mut v.hw().ram;
        let mut w = |at: usize, e: u64| ram[at..at + 8].copy_from_slice(&e.to_le_bytes());
        w(0x2000, 0x3003);
        w(0x3000, 0x4003);
        w(0x4000 + 8 * 2, 0x5003);
        w(0x5000, 0x8003);
        ram[0x8000..0x8000 + a.len()].copy_from_slice(a);
        ram[0x9000..0x9000 + b.len()].copy_from_slice(b);
        v.apply_boot_state(&BootState::new(
            EntryMode::X86Long64 { cr3: 0x2000 },
            0x40_0000,
        ))
        .unwrap();
        v
    }

    fn cpuid_at_start(v: &mut SvmVcpu<FakeHw, MemTables>) -> u64 {
        v.set_reg(Reg::Rip, 0x40_0000).unwrap();
        assert!(matches!(v.run().unwrap(), Exit::Cpuid { .. }));
        v.advance_pc().unwrap();
        v.reg(Reg::Rip).unwrap() - 0x40_0000
    }

    /// The byte-at-RIP walk is reused only after every entry it read was
    /// read again unchanged: the guest rewrites its tables without exits.
    #[test]
    fn rip_walk_memo_sees_guest_table_writes_without_exits() {
        let steps = (0..8).map(|_| exit(exitcode::CPUID, 0, 0)).collect();
        // Page 0x8000: bare CPUID; page 0x9000: CS CPUID.
        let mut v = long_mode_vcpu(&[0x0f, 0xa2], &[0x2e, 0x0f, 0xa2], steps);
        assert_eq!(cpuid_at_start(&mut v), 2);
        assert!(v.rip_walk.is_valid());
        assert_eq!(v.rip_walk.entries_read(), 4);
        // Same tables: revalidated, same answer.
        assert_eq!(cpuid_at_start(&mut v), 2);
        // The guest remaps the page (no exit, no flush seen by us).
        v.hw().ram[0x5000..0x5008].copy_from_slice(&0x9003u64.to_le_bytes());
        assert_eq!(cpuid_at_start(&mut v), 3);
        // A higher level changes: PD entry now points at a second PT whose
        // entry maps back to 0x8000.
        v.hw().ram[0x6000..0x6008].copy_from_slice(&0x8003u64.to_le_bytes());
        v.hw().ram[0x4010..0x4018].copy_from_slice(&0x6003u64.to_le_bytes());
        assert_eq!(cpuid_at_start(&mut v), 2);
        // The code itself changes under an unchanged mapping: read fresh.
        v.hw().ram[0x8000..0x8003].copy_from_slice(&[0x3e, 0x0f, 0xa2]);
        assert_eq!(cpuid_at_start(&mut v), 3);
        // A new CR3 (other tables) is a different key.
        v.hw().ram[0x7000..0x7008].copy_from_slice(&0x3003u64.to_le_bytes());
        v.hw().ram[0x3000..0x3008].copy_from_slice(&0x4003u64.to_le_bytes());
        v.hw().ram[0x4010..0x4018].copy_from_slice(&0x5003u64.to_le_bytes());
        v.set_reg(Reg::Cr3, 0x7000).unwrap();
        assert_eq!(cpuid_at_start(&mut v), 3);
        // Not present any more: no byte, the bare length is the fallback,
        // and the memo is dropped.
        v.hw().ram[0x5000..0x5008].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(cpuid_at_start(&mut v), 2);
        assert!(!v.rip_walk.is_valid());
    }

    /// An NPT change (new generation) invalidates the memo even when the
    /// guest's tables are unchanged: the same GPAs may live elsewhere.
    #[test]
    fn rip_walk_memo_is_per_npt_generation() {
        let steps = (0..2).map(|_| exit(exitcode::CPUID, 0, 0)).collect();
        let mut v = long_mode_vcpu(&[0x0f, 0xa2], &[], steps);
        assert_eq!(cpuid_at_start(&mut v), 2);
        let g = v.rip_walk.generation();
        v.npt_generation.fetch_add(1, Ordering::Release);
        assert_eq!(cpuid_at_start(&mut v), 2);
        assert_eq!(v.rip_walk.generation(), g + 1);
    }

    #[test]
    fn nrips_is_used_when_present() {
        let mut v = vcpu(
            &[],
            vec![Box::new(|v: &mut Vmcb, _: &mut Gprs| {
                v.write64(ctrl::EXITCODE, exitcode::CPUID);
                v.write64(ctrl::NRIP, 0x1003);
            })],
            Features {
                nrips: true,
                ..Default::default()
            },
        );
        v.run().unwrap();
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1003);
    }

    #[test]
    fn ioio_decoding() {
        // OUT dx, al to 0x3f8: size 8, port in 31:16.
        let out = decode_ioio(0x03f8_0010, 0x1234_5641).unwrap();
        assert_eq!(
            out,
            PortIo {
                port: 0x3f8,
                size: AccessSize::B1,
                op: IoOp::Out(0x41)
            }
        );
        let inl = decode_ioio(0x00f4_0041, 0).unwrap();
        assert_eq!(
            (inl.port, inl.size, inl.op),
            (0xf4, AccessSize::B4, IoOp::In)
        );
        assert_eq!(decode_ioio(0x03f8_0014, 0), None); // string
        assert_eq!(decode_ioio(0x03f8_0018, 0), None); // rep
        assert_eq!(decode_ioio(0x03f8_0000, 0), None); // no size
        assert_eq!(decode_ioio(0x03f8_0070, 0), None); // several sizes
        let mut v = vcpu(
            &[],
            vec![exit(exitcode::IOIO, 0x03f8_0010, 0x1001)],
            Features::default(),
        );
        v.set_reg(Reg::Rax, 0x41).unwrap();
        assert!(matches!(v.run().unwrap(), Exit::PortIo(_)));
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1001);
    }

    /// Found by the chaos guest: a load that takes a #PF whose delivery
    /// reads an IDT outside RAM gave an NPF at the IDT address with
    /// EXITINTINFO = the #PF; the load was then "emulated" as an MMIO read
    /// of the IDT address (register clobbered, RIP advanced).
    #[test]
    fn npf_during_event_delivery_is_not_emulated() {
        let mut v = vcpu(
            &[0x8b, 0x07], // mov eax, [edi]
            vec![Box::new(|v: &mut Vmcb, _: &mut Gprs| {
                v.write64(ctrl::EXITCODE, exitcode::NPF);
                v.write64(ctrl::EXITINFO1, 0x1_0000_0004);
                v.write64(ctrl::EXITINFO2, 0xfe00_00e0);
                v.write64(ctrl::EXITINTINFO, event_inj::encode(14, 3, Some(0)));
            })],
            Features::default(),
        );
        v.set_reg(Reg::Rax, 7).unwrap();
        assert_eq!(
            v.run().unwrap(),
            Exit::Stage2Fault {
                gpa: 0xfe00_00e0,
                gva: None,
                access: AccessKind::Read
            }
        );
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1000);
        assert!(v.advance_pc().is_err());
    }

    #[test]
    fn npf_outside_ram_decodes_the_guest_instruction() {
        // mov [edi], eax (32-bit code) then mov ebx, [edi].
        let mut v = vcpu(
            &[0x89, 0x07],
            vec![
                exit(exitcode::NPF, 0x1_0000_0006, 0xfeb0_0000),
                exit(exitcode::NPF, 0x1_0000_0004, 0xfeb0_0000),
                exit(exitcode::NPF, 0x1_0000_0004, 0x2000),
                exit(exitcode::NPF, 0x1_0000_0014, 0xfeb0_0000),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Rax, 0xdead_beef).unwrap();
        assert_eq!(
            v.run().unwrap(),
            Exit::Mmio(Mmio {
                gpa: 0xfeb0_0000,
                size: AccessSize::B4,
                op: MmioOp::Write(0xdead_beef)
            })
        );
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1002);
        // Now the instruction at 0x1002 is 00 00 (add [eax], al): a read
        // fault whose instruction is not a plain move.
        assert_eq!(
            v.run().unwrap(),
            Exit::Stage2Fault {
                gpa: 0xfeb0_0000,
                gva: None,
                access: AccessKind::Read
            }
        );
        // A fault on RAM is never emulated.
        assert!(matches!(
            v.run().unwrap(),
            Exit::Stage2Fault { gpa: 0x2000, .. }
        ));
        // Fetch from outside RAM.
        assert!(matches!(
            v.run().unwrap(),
            Exit::Stage2Fault {
                access: AccessKind::Fetch,
                ..
            }
        ));
    }

    #[test]
    fn inv_dr_intercept_shadows_and_reserved_bits() {
        // mov dr0, eax; mov ebx, dr0; mov dr7, eax; mov ecx, dr7; mov dr6, eax; mov edx, dr6; then hlt
        let code = [
            0x0f, 0x23, 0xc0, 0x0f, 0x21, 0xc3, 0x0f, 0x23, 0xf8, 0x0f, 0x21, 0xf9, 0x0f, 0x23,
            0xf0, 0x0f, 0x21, 0xf2, 0xf4,
        ];
        let step = |c: u64| exit(c, 0, 0);
        let mut v = vcpu(
            &code,
            vec![
                step(exitcode::WRITE_DR0),
                step(exitcode::READ_DR0),
                step(exitcode::WRITE_DR0 + 7),
                Box::new(|v: &mut Vmcb, _: &mut Gprs| {
                    v.write64(ctrl::EXITCODE, exitcode::READ_DR0 + 7);
                }),
                step(exitcode::WRITE_DR0 + 6),
                step(exitcode::READ_DR0 + 6),
                step(exitcode::HLT),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Rax, 0x1234_5678).unwrap();
        // Between steps the test changes EAX through the "guest": emulate by
        // running to the first exit that leaves run().
        // DR0 <- 0x12345678, EBX <- DR0, DR7 <- 0x12345678 (reserved bits
        // fixed), ECX <- DR7, DR6 <- same, EDX <- DR6.
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.reg(Reg::Rbx).unwrap(), 0x1234_5678);
        assert_eq!(
            v.reg(Reg::Rcx).unwrap(),
            (0x1234_5678 & DR7_WRITABLE) | DR7_FIXED1
        );
        assert_eq!(
            v.reg(Reg::Rdx).unwrap(),
            (0x1234_5678 & DR6_WRITABLE) | DR6_FIXED1
        );
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1000 + 18);
        // The guest's DR0 is live in the CPU and its DR7 in the VMCB.
        assert_eq!(v.hw().drs_live[0], 0x1234_5678);
        assert_eq!(
            v.vmcb().read64(save::DR7),
            (0x1234_5678 & DR7_WRITABLE) | DR7_FIXED1
        );
        // GD is kept for the guest's reads but never armed in the VMCB.
        v.set_reg(Reg::Dr7, 0x2400).unwrap();
        assert_eq!(v.reg(Reg::Dr7).unwrap(), 0x2400);
        assert_eq!(v.vmcb().read64(save::DR7), 0x400);
        // Another vCPU's values were loaded meanwhile: binding reloads ours.
        v.unbind().unwrap();
        v.hw().drs_live = [9; 4];
        v.bind(0).unwrap();
        assert_eq!(v.hw().drs_live, [0x1234_5678, 0, 0, 0]);
        assert_eq!(v.internal_exits, 6);
    }

    #[test]
    fn pf_interception_is_opt_in() {
        let mut v = vcpu(&[], vec![], Features::default());
        v.set_intercept_pf(true);
        assert_eq!(
            v.vmcb().read32(ctrl::INTERCEPT_EXCEPTIONS),
            ALWAYS_INTERCEPTED_EXCEPTIONS | 1 << 14
        );
        v.set_intercept_pf(false);
        assert_eq!(
            v.vmcb().read32(ctrl::INTERCEPT_EXCEPTIONS),
            ALWAYS_INTERCEPTED_EXCEPTIONS
        );
    }

    /// Review finding 2 (CVE-2015-8104 #DB, CVE-2015-5307 #AC, XSA-156):
    /// #DB and #AC are always intercepted, whatever #PF interception does,
    /// and reflected: #DB with the DR6 the CPU computed, written at
    /// delivery (rule `exc_payload`), #AC with error code 0. A guest whose
    /// exception delivery raises the same exception again now exits each
    /// time and loses the CPU at the end of its turn. #MC stops the VM.
    #[test]
    fn inv_benign_exception_intercepts() {
        let dr6_at_entry = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = dr6_at_entry.clone();
        let db = |dr6: u64| -> Step {
            Box::new(move |v: &mut Vmcb, _g: &mut Gprs| {
                v.write64(ctrl::EXITCODE, exitcode::EXCP_BASE + 1);
                // The CPU's own DR6 update (here: single step, BS).
                v.write64(save::DR6, dr6);
            })
        };
        let record: Step = Box::new(move |v: &mut Vmcb, _g: &mut Gprs| {
            seen.borrow_mut().push(v.read64(save::DR6));
            v.write64(ctrl::EXITCODE, exitcode::EXCP_BASE + 17);
            v.write64(ctrl::EXITINFO1, 0);
        });
        let mut v = vcpu(
            &[0x90; 8],
            vec![
                db(0xffff_4ff0),
                record,
                exit(exitcode::EXCP_BASE + 18, 0, 0),
            ],
            Features::default(),
        );
        for pf in [true, false] {
            v.set_intercept_pf(pf);
            let bits = v.vmcb().read32(ctrl::INTERCEPT_EXCEPTIONS);
            for vec in [vector::DB, vector::AC, vector::MC] {
                assert_ne!(bits & (1 << vec), 0, "vector {vec} with #PF intercept {pf}");
            }
        }
        // #DB, then #AC: both reflected inside run; #MC reaches the vmm.
        assert_eq!(v.run().unwrap(), Exit::MachineCheck);
        assert_eq!(
            v.hw().seen[1].0,
            event_inj::encode(1, 3, None),
            "#DB injected"
        );
        assert_eq!(dr6_at_entry.borrow()[0], 0xffff_4ff0, "DR6.BS at delivery");
        assert_eq!(
            v.hw().seen[2].0,
            event_inj::encode(17, 3, Some(0)),
            "#AC(0)"
        );
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1000, "reflection moves no RIP");

        // A #DB that raises #DB again on every delivery: each round trip is
        // an exit now, and the turn ends when its budget is spent.
        let steps: Vec<Step> = (0..20).map(|_| db(0xffff_0ff1)).collect();
        let mut v = vcpu(&[0x90; 8], steps, Features::default());
        v.begin_turn(8);
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.hw().seen.len(), 8);
        assert_eq!(v.vmcb().read64(save::DR6), 0xffff_0ff1, "B0 kept");
    }

    /// ICEBP (F1) was an unknown exit that stopped the VM (review finding
    /// 4): it raises #DB after the instruction, with no DR6 bits; WBINVD is
    /// skipped; RDPRU (hidden) is #UD.
    #[test]
    fn icebp_wbinvd_rdpru() {
        let mut v = vcpu(
            &[0xf1, 0x0f, 0x09, 0x0f, 0x01, 0xfd, 0xf4],
            vec![
                exit(exitcode::ICEBP, 0, 0),
                exit(exitcode::WBINVD, 0, 0),
                exit(exitcode::RDPRU, 0, 0),
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Dr6, 0xffff_0ff0).unwrap();
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(
            v.hw().seen[1].0,
            event_inj::encode(1, 3, None),
            "#DB for ICEBP"
        );
        assert_eq!(v.hw().seen[2].0, 0, "WBINVD: nothing to inject");
        assert_eq!(
            v.hw().seen[3].0,
            event_inj::encode(6, 3, None),
            "#UD for RDPRU"
        );
        // RIP: past F1 (1) and 0F 09 (2); RDPRU faults, so it stays at 3.
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1003);
        assert_eq!(
            v.reg(Reg::Dr6).unwrap(),
            0xffff_0ff0,
            "ICEBP sets no DR6 bit"
        );
    }

    #[test]
    fn inv_exc_payload_cr2_written_only_at_delivery() {
        let mut v = vcpu(
            &[],
            vec![
                // The guest's own #PF at 0xdead000, intercepted.
                exit(exitcode::EXCP_BASE + 14, 0x2, 0xdea_d000),
                exit(exitcode::HLT, 0, 0),
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Cr2, 0x1111).unwrap();
        assert_eq!(v.run().unwrap(), Exit::Halt);
        // First VMRUN: nothing injected, CR2 untouched. Second: #PF(2) with
        // CR2 = the fault address, written at delivery.
        assert_eq!(v.hw().seen[0], (0, 0x1111, tlb::FLUSH_ALL));
        assert_eq!(v.hw().seen[1].0, event_inj::encode(14, 3, Some(2)));
        assert_eq!(v.hw().seen[1].1, 0xdea_d000);
        // A queued #PF that is not yet delivered leaves CR2 alone.
        v.set_reg(Reg::Cr2, 0x2222).unwrap();
        v.inject(Event::page_fault(0x5000, 0)).unwrap();
        assert_eq!(v.reg(Reg::Cr2).unwrap(), 0x2222);
        v.advance_pc().unwrap();
        v.run().unwrap();
        assert_eq!(v.hw().seen[2].1, 0x5000);
        assert_eq!(v.hw().seen[2].2, tlb::DO_NOTHING);
        // #DB payload merges into DR6 at delivery.
        v.inject(Event::debug(1 << 14)).unwrap();
        assert_eq!(v.reg(Reg::Dr6).unwrap(), DR6_FIXED1);
    }

    #[test]
    fn exitintinfo_is_reinjected_first() {
        let mut v = vcpu(
            &[],
            vec![
                Box::new(|v: &mut Vmcb, _: &mut Gprs| {
                    v.write64(ctrl::EXITCODE, exitcode::NPF);
                    v.write64(ctrl::EXITINFO1, 0x1_0000_0004);
                    v.write64(ctrl::EXITINFO2, 0x3000);
                    v.write64(ctrl::EXITINTINFO, event_inj::encode(0x20, 0, None));
                }),
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        // GPA 0x3000 is RAM: reported, and the interrupted event stays queued.
        assert!(matches!(v.run().unwrap(), Exit::Stage2Fault { .. }));
        v.run().unwrap();
        assert_eq!(v.hw().seen[1].0, event_inj::encode(0x20, 0, None));
    }

    #[test]
    fn gpr_index_is_the_modrm_number() {
        for n in 0..16u8 {
            assert_eq!(gpr_index(Reg::x86_gpr(n).unwrap()), Some(usize::from(n)));
        }
        for r in [Reg::Rip, Reg::Cr2, Reg::X(0), Reg::Pc] {
            assert_eq!(gpr_index(r), None);
        }
    }

    #[test]
    fn inv_tlb_tag_flushes() {
        assert_eq!(tlb_control(false, false), tlb::DO_NOTHING);
        assert_eq!(tlb_control(true, false), tlb::FLUSH_ALL);
        assert_eq!(tlb_control(true, true), tlb::FLUSH_ASID);
        let mut v = vcpu(
            &[],
            (0..5).map(|_| exit(exitcode::HLT, 0, 0)).collect(),
            Features {
                flush_by_asid: true,
                ..Default::default()
            },
        );
        let run = |v: &mut SvmVcpu<FakeHw, MemTables>| {
            v.run().unwrap();
            v.advance_pc().unwrap();
            v.hw().seen.last().unwrap().2
        };
        assert_eq!(run(&mut v), tlb::FLUSH_ASID); // first run
        assert_eq!(run(&mut v), tlb::DO_NOTHING);
        // NPT changed.
        v.npt_generation.fetch_add(1, Ordering::Release);
        assert_eq!(run(&mut v), tlb::FLUSH_ASID);
        // Another VM used this ASID on this CPU meanwhile.
        v.hw().swap_asid_owner(0, 1, 7);
        assert_eq!(run(&mut v), tlb::FLUSH_ASID);
        // Moved to another CPU.
        v.unbind().unwrap();
        v.bind(1).unwrap();
        assert_eq!(run(&mut v), tlb::FLUSH_ASID);
    }

    #[test]
    fn msrs_in_the_vmcb_and_svm_instructions() {
        let mut v = vcpu(
            &[],
            vec![
                exit(exitcode::MSR, 1, 0), // wrmsr EFER
                exit(exitcode::MSR, 0, 0), // rdmsr EFER
                exit(exitcode::VMRUN, 0, 0),
                Box::new(|v: &mut Vmcb, g: &mut Gprs| {
                    // rdmsr 0x1234: not a VMCB MSR, goes to the vmm.
                    v.write64(ctrl::EXITCODE, exitcode::MSR);
                    v.write64(ctrl::EXITINFO1, 0);
                    g.0[1] = 0x1234;
                }),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Rcx, u64::from(msrs::EFER)).unwrap();
        v.set_reg(Reg::Rax, 0x901).unwrap(); // NXE | LME | SCE
        assert_eq!(v.run().unwrap(), Exit::MsrRead { msr: 0x1234 });
        assert_eq!(v.vmcb().read64(save::EFER), 0x901 | EFER_SVME);
        assert_eq!(v.reg(Reg::Efer).unwrap(), 0x901);
        assert_eq!(v.reg(Reg::Rax).unwrap(), 0x901);
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1004);
        // The guest's VMRUN became a #UD at the next entry.
        assert_eq!(v.hw().seen[3].0, event_inj::encode(6, 3, None));
        assert_eq!(v.internal_exits, 3);
    }

    /// A vCPU whose next `n` exits are RDMSR of IA32_LSTAR, which the
    /// vCPU answers itself from the VMCB (internal exits).
    fn lstar_reader(n: usize) -> SvmVcpu<FakeHw, MemTables> {
        let steps: Vec<Step> = (0..n)
            .map(|_| {
                Box::new(|v: &mut Vmcb, g: &mut Gprs| {
                    v.write64(ctrl::EXITCODE, exitcode::MSR);
                    v.write64(ctrl::EXITINFO1, 0);
                    g.0[1] = u64::from(msrs::LSTAR);
                }) as Step
            })
            .collect();
        let mut v = vcpu(&[0x0f, 0x32], steps, Features::default());
        v.set_reg(Reg::Rcx, u64::from(msrs::LSTAR)).unwrap();
        v
    }

    /// Review finding 1 (host DoS from guest user mode): exits handled
    /// inside `run` looped without bound and the slice timer was re-armed
    /// before every VMRUN, so `1: cpuid; jmp 1b` kept the CPU forever. The
    /// deadline is armed once per turn and internal exits spend the turn's
    /// budget: the turn ends with `PreemptionTimer` after `budget` of them.
    #[test]
    fn internal_exits_spend_the_turn_budget() {
        let mut v = lstar_reader(10);
        let armed = v.hw().deadlines;
        v.begin_turn(4);
        assert_eq!(v.hw().deadlines, armed + 1, "one deadline per turn");
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.internal_exits, 4);
        assert_eq!(v.hw().seen.len(), 4, "four VMRUNs, then the turn is over");
        assert_eq!(v.hw().deadlines, armed + 1, "VMRUN never re-arms it");
        // A new turn, a new budget (and one more deadline).
        v.begin_turn(3);
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.internal_exits, 7);
        assert_eq!(v.hw().deadlines, armed + 2);
    }

    /// Host interrupts are dispatched from the host's table: the INTR exit
    /// carries the vector the stub recorded; an end-of-turn line ends the
    /// turn, any other comes back as `HostInterrupt { line }`.
    #[test]
    fn intr_exits_carry_the_host_vector() {
        use crate::hostirq::{HostIrq, TABLE};
        TABLE.set(0xef, HostIrq::EndOfTurn);
        TABLE.set(0xe4, HostIrq::Resync);
        let intr = || -> Step {
            Box::new(|v: &mut Vmcb, _g: &mut Gprs| v.write64(ctrl::EXITCODE, exitcode::INTR))
        };
        let mut v = vcpu(
            &[0x90],
            vec![intr(), intr(), intr(), intr()],
            Features::default(),
        );
        v.hw().host_irq = Some(0xef);
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        v.hw().host_irq = Some(0xe4);
        assert_eq!(v.run().unwrap(), Exit::HostInterrupt { line: 0xe4 });
        v.hw().host_irq = Some(0xe9);
        assert_eq!(
            v.run().unwrap(),
            Exit::HostInterrupt { line: 0xe9 },
            "unassigned: never lost, never the end of the turn"
        );
        v.hw().host_irq = None;
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer, "nothing recorded");
    }

    /// NMI blocking (SDM §6.7.1) without vNMI: after an NMI is injected,
    /// no other is until the handler's IRET has completed; IRET is
    /// intercepted for that, and NMIs open at the first exit past it.
    #[test]
    fn nmis_are_blocked_until_the_handler_returns() {
        let at = |rip: u64, code: u64| -> Step {
            Box::new(move |v: &mut Vmcb, _g: &mut Gprs| {
                v.write64(save::RIP, rip);
                v.write64(ctrl::EXITCODE, code);
            })
        };
        let steps = vec![
            at(0x1000, exitcode::HLT),
            at(0x2000, exitcode::IRET),
            at(0x1001, exitcode::HLT),
        ];
        let mut v = vcpu(&[0xf4, 0xf4], steps, Features::default());
        v.x86_refresh();
        assert!(v.x86_interface().unwrap().nmi_ready);
        let ci = v.x86_interface().unwrap();
        ci.inject_nmi = true;
        ci.load = true;
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(
            v.hw().seen[0].0 & 0x7ff,
            0x200 | 2,
            "EVENTINJ: NMI, vector 2"
        );
        assert_ne!(v.vmcb().read32(ctrl::INTERCEPT_MISC1) & misc1::IRET, 0);
        v.x86_refresh();
        assert!(!v.x86_interface().unwrap().nmi_ready, "in the NMI handler");
        // The handler's IRET (handled inside run), then an exit past it.
        v.x86_interface().unwrap().sync = false;
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.vmcb().read32(ctrl::INTERCEPT_MISC1) & misc1::IRET, 0);
        assert!(v.x86_interface().unwrap().sync, "the vmm looks again");
        v.x86_refresh();
        assert!(v.x86_interface().unwrap().nmi_ready, "IRET done: open");
    }

    /// The turn's deadline fired behind an exit for something else (its
    /// interrupt is taken at the STGI after any #VMEXIT): the guest made an
    /// MMIO access and the slice timer went off meanwhile. Before, the turn
    /// went on without a deadline and `irq-x86-window` (a guest looping
    /// without exits) hung about once in ten runs; now the next `run` ends
    /// the turn without entering, and so does an internal exit.
    #[test]
    fn a_deadline_taken_behind_another_exit_ends_the_turn() {
        let mut v = lstar_reader(3);
        v.begin_turn(100);
        v.hw().fired = true;
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert!(v.hw().seen.is_empty(), "not entered with the deadline gone");
        // Fired during the turn's first (internal) exit: the turn ends there.
        v.hw().fired = false;
        v.begin_turn(100);
        v.hw().fire_after_vmrun = true;
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.hw().seen.len(), 1, "one VMRUN, then the turn is over");
    }

    /// Found by `sched-wake-latency-x86`: without `cap_turn` a spinning
    /// vCPU kept the CPU for its whole slice past another vCPU's timer
    /// deadline (wake-ups up to 19 ms late). The cap shortens the turn's
    /// deadline, for that turn only.
    #[test]
    fn a_capped_turn_ends_by_the_cap() {
        let mut v = lstar_reader(3);
        v.cap_turn(5_000);
        v.begin_turn(100);
        assert_eq!(v.hw().wake_deadlines, [5_000]);
        v.begin_turn(100);
        assert_eq!(
            v.hw().wake_deadlines,
            [5_000],
            "the next turn is not capped"
        );
    }

    /// Pause-loop exiting only with the pause filter (a PAUSE exit on every
    /// PAUSE would cost each short spin-wait an exit), with its threshold
    /// where the CPU has one; the exit is a yield past the PAUSE.
    #[test]
    fn pause_loops_exit_only_with_the_filter() {
        let misc = |v: &SvmVcpu<FakeHw, MemTables>| v.vmcb().read32(ctrl::INTERCEPT_MISC1);
        let v = vcpu(&[], vec![], Features::default());
        assert_eq!(misc(&v) & misc1::PAUSE, 0);
        let f = Features {
            pause_filter: true,
            ..Features::default()
        };
        let v = vcpu(&[], vec![], f);
        assert_ne!(misc(&v) & misc1::PAUSE, 0);
        assert_eq!(
            v.vmcb().read16(ctrl::PAUSE_FILTER_COUNT),
            PAUSE_FILTER_COUNT
        );
        assert_eq!(v.vmcb().read16(ctrl::PAUSE_FILTER_THRESHOLD), 0);
        let f = Features {
            pause_filter: true,
            pause_filter_threshold: true,
            ..Features::default()
        };
        let v = vcpu(&[], vec![], f);
        assert_eq!(
            v.vmcb().read16(ctrl::PAUSE_FILTER_THRESHOLD),
            PAUSE_FILTER_THRESHOLD
        );
        // CPUID 0x8000_000A EDX bits 10 and 12.
        let f = Features::from_edx(1 << 10 | 1 << 12);
        assert!(f.pause_filter && f.pause_filter_threshold);
        // The exit: a yield, RIP past the two bytes of PAUSE (F3 90).
        let mut v = vcpu(
            &[0xf3, 0x90],
            vec![exit(exitcode::PAUSE, 0, 0)],
            Features::default(),
        );
        assert_eq!(v.run().unwrap(), Exit::Yield);
        v.advance_pc().unwrap();
        assert_eq!(v.vmcb().rip(), 0x1002);
    }

    /// Review finding 7: no IBPB when a CPU switched between VMs. Binding a
    /// vCPU of another VM than the one that ran last on that CPU issues the
    /// predictor barrier; rebinding the same VM does not.
    #[test]
    fn predictor_barrier_between_vms() {
        let mut v = vcpu(&[], vec![], Features::default());
        assert_eq!(v.hw().barriers, 1, "first VM on the CPU since boot");
        v.unbind().unwrap();
        v.bind(0).unwrap();
        assert_eq!(v.hw().barriers, 1, "same VM again: no barrier");
        v.unbind().unwrap();
        // Another VM (index 3) ran on CPU 0 meanwhile.
        v.hw().last_vm.insert(0, 3);
        v.bind(0).unwrap();
        assert_eq!(v.hw().barriers, 2);
        v.unbind().unwrap();
        // CPU 1 never ran this VM.
        v.bind(1).unwrap();
        assert_eq!(v.hw().barriers, 3);
    }

    /// A physical interrupt (the time-slice timer) ends the guest's slice.
    #[test]
    fn intr_exit_is_the_end_of_a_time_slice() {
        let mut v = vcpu(&[], vec![exit(exitcode::INTR, 0, 0)], Features::default());
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1000);
    }

    /// Review finding: INVD (intercepted) was an unknown exit that stopped
    /// the VM; it is skipped as a no-op.
    #[test]
    fn invd_is_a_nop() {
        let mut v = vcpu(
            &[0x0f, 0x08, 0xf4],
            vec![exit(exitcode::INVD, 0, 0), exit(exitcode::HLT, 0, 0)],
            Features::default(),
        );
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1002);
        assert_eq!(v.hw().seen[1].0, 0);
    }

    /// Review finding: RDPMC was not intercepted, so a guest read the host's
    /// performance counters; it is now #GP(0).
    #[test]
    fn rdpmc_is_gp() {
        let mut v = vcpu(
            &[0x0f, 0x33],
            vec![exit(exitcode::RDPMC, 0, 0), exit(exitcode::HLT, 0, 0)],
            Features::default(),
        );
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.hw().seen[1].0, event_inj::encode(13, 3, Some(0)));
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x1000);
    }

    /// Found by the chaos guest: WRMSR EFER flipping LME while CR0.PG = 1
    /// was accepted (LME=0 with LMA=1 in the VMCB); it must #GP.
    #[test]
    fn efer_lme_change_with_paging_on_is_gp() {
        let mut v = vcpu(
            &[0x0f, 0x30, 0x0f, 0x30, 0x0f, 0x30],
            vec![
                exit(exitcode::MSR, 1, 0), // wrmsr EFER = LMA (clears LME)
                exit(exitcode::MSR, 1, 0), // again, now with paging off
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        v.set_reg(Reg::Cr0, 0x8000_0011).unwrap();
        v.set_reg(Reg::Efer, 0x500).unwrap(); // LME | LMA
        v.set_reg(Reg::Rcx, u64::from(msrs::EFER)).unwrap();
        v.set_reg(Reg::Rax, 0x400).unwrap();
        let steps = &mut v.hw().steps;
        steps.insert(
            1,
            Box::new(|v: &mut Vmcb, _: &mut Gprs| {
                // The guest's #GP handler turns paging off and retries.
                v.write64(ctrl::EXITCODE, exitcode::MSR);
                v.write64(ctrl::EXITINFO1, 1);
                v.write64(save::CR0, 0x11);
                v.write64(save::EFER, 0x100 | EFER_SVME);
            }),
        );
        steps.remove(2);
        assert_eq!(v.run().unwrap(), Exit::Halt);
        // The first WRMSR was refused with #GP(0) at the next entry.
        assert_eq!(v.hw().seen[1].0, event_inj::encode(13, 3, Some(0)));
        // With paging off, clearing LME is fine.
        assert_eq!(v.reg(Reg::Efer).unwrap(), 0x0);
    }

    #[test]
    fn fpu_state_follows_the_vcpu() {
        let mut v = vcpu(&[], vec![], Features::default());
        // vcpu() bound it once: the reset image was loaded.
        assert_eq!(v.hw().fpu_calls, ["restore"]);
        assert_eq!(v.hw().fpu_live[0..2], [0x7f, 0x03]);
        assert_eq!(v.hw().fpu_live[24..28], 0x1f80u32.to_le_bytes());
        v.bind(0).unwrap(); // already bound here: nothing to do
        v.hw().fpu_live[100] = 42; // the guest changed an XMM register
        v.unbind().unwrap();
        v.unbind().unwrap(); // not bound: no second save
        v.hw().fpu_live = [0xee; 512]; // another vCPU ran
        v.bind(1).unwrap();
        assert_eq!(v.hw().fpu_calls, ["restore", "save", "restore"]);
        assert_eq!(v.hw().fpu_live[100], 42);
        assert_eq!(v.hw().fpu_live[101], 0);
        assert_eq!(v.vmcb().read64(ctrl::VINTR), 1 << 24);
        assert_ne!(v.vmcb().read32(ctrl::INTERCEPT_MISC2) & misc2::XSETBV, 0);
    }

    #[test]
    fn pf_during_event_delivery_combines_by_the_double_fault_rules() {
        let pf_in_delivery = |inflight: u64| -> Step {
            Box::new(move |v: &mut Vmcb, _: &mut Gprs| {
                v.write64(ctrl::EXITCODE, exitcode::EXCP_BASE + 14);
                v.write64(ctrl::EXITINFO1, 0);
                v.write64(ctrl::EXITINFO2, 0x9000);
                v.write64(ctrl::EXITINTINFO, inflight);
            })
        };
        // SDM Vol. 3A Table 6-5: a #PF while delivering a contributory
        // exception is delivered as the #PF; a #PF while delivering a #PF
        // becomes #DF.
        let mut v = vcpu(
            &[],
            vec![
                pf_in_delivery(event_inj::encode(13, 3, Some(0))),
                pf_in_delivery(event_inj::encode(14, 3, Some(0))),
                exit(exitcode::HLT, 0, 0),
            ],
            Features::default(),
        );
        assert_eq!(v.run().unwrap(), Exit::Halt);
        // Second entry: the combined #GP + #PF delivered as #PF with its CR2.
        assert_eq!(v.hw().seen[1].0, event_inj::encode(14, 3, Some(0)));
        assert_eq!(v.hw().seen[1].1, 0x9000);
        // Third entry: #PF during #PF delivery became #DF(0).
        assert_eq!(v.hw().seen[2].0, event_inj::encode(8, 3, Some(0)));
        assert_eq!(decode_event(0, 0), None);
        assert_eq!(decode_event(event_inj::encode(0x80, 4, None), 0), None);
        assert_eq!(
            decode_event(event_inj::encode(2, 2, None), 0),
            Some(Event::Nmi)
        );
        assert_eq!(
            decode_event(event_inj::encode(0x30, 0, None), 0),
            Some(Event::Interrupt { vector: 0x30 })
        );
    }
}
