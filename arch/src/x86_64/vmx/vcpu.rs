//! The VMX vCPU, first version (issue 16): a [`vmm::backend::Vcpu`] over
//! a VMCS, through [`VmxHw`] (the machine's VMREAD/VMWRITE/VM entry, or a
//! fake in the host tests).
//!
//! What it does: boot states of every entry mode (guest state checked
//! before the first entry, [`check_guest_state`]), the guest's registers,
//! exits for CPUID, HLT, VMCALL (the hypercall ABI with the CPL rule),
//! port I/O, RDMSR/WRMSR (the MSRs the VMCS holds and the SYSCALL MSRs
//! here, the others through the vmm), EPT violations (a load or store
//! outside RAM decoded by the shared decoder into an MMIO exit), triple
//! faults and failed VM entries, external interrupts (turn end, host
//! interrupts), the interrupt window; events injected through the VM-entry
//! interruption information; #AC and #DB intercepted and reflected (rule
//! `benign_exception`); a guest's VMX instructions get #UD. Not yet (the
//! SVM backend has them): MMIO instruction decoding, the MSRs the VMCS and
//! the CPU hold (FS/GS base, EFER, PAT, SYSCALL MSRs) on RDMSR/WRMSR, CR8
//! and the TPR, NMI blocking, DR6 on #DB delivery, FPU switching.

use alloc::vec::Vec;

use super::exits::{self, reason, ExitReason, Interruption};
use super::fields::{control, guest, ro};
use super::vmcs::{bits, check_guest_state, guest_state, Controls};
use super::{Caps, GuestGprs, VmFail};
use crate::hostirq::HostIrq;
use vmm::backend::{x86_mode_state, BackendError, BootState, PhysCpu};
use vmm::event::{Event, Payload, PendingEvents, Queued};
use vmm::exit::{AccessKind, Conduit, Exit, Hypercall, ShutdownKind};
use vmm::regs::Reg;
use vmm::x86::wiring::X86Interface;

use crate::paging::{Ept4, PageTable, TableAccess};
use crate::x86_64::guest::decode::{mmio_exit, MAX_INSN};
use crate::x86_64::guest::fetch::fetch_at_rip;
use crate::x86_64::guest::fpu::FpuArea;
use crate::x86_64::guest::walk::{HostPhys, LeafHint, Stage2Phys};
use crate::x86_64::guest::GuestState;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::x86_64::guest::msrs;

/// The SYSCALL MSRs and KERNEL_GS_BASE: neither in the VMCS nor switched
/// by VM entry and exit. Each vCPU keeps the guest's values and loads them
/// into the CPU when it is bound (the hypervisor never uses them), so no
/// VM sees another's.
const SOFT_MSRS: [u32; 5] = [
    msrs::STAR,
    msrs::LSTAR,
    msrs::CSTAR,
    msrs::SFMASK,
    msrs::KERNEL_GS_BASE,
];
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
/// EFER bits a guest may set: SCE, LME, LMA (the CPU's), NXE, FFXSR.
const EFER_GUEST_BITS: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 14;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;

/// The machine side of a VMX vCPU (host-physical reads for the guest page
/// walk of MMIO decoding included).
pub trait VmxHw: HostPhys {
    /// VMPTRLD: the VMCS at `pa` becomes current on this CPU.
    fn load(&mut self, vmcs: u64) -> Result<(), VmFail>;
    /// VMCLEAR (written back, not current, launch state clear).
    fn clear(&mut self, vmcs: u64) -> Result<(), VmFail>;
    fn vmread(&self, field: u32) -> u64;
    fn vmwrite(&mut self, field: u32, value: u64);
    /// The host-state fields of this CPU (HOST_RSP/RIP excepted).
    fn host_state(&self) -> Vec<(u32, u64)>;
    /// VM entry with `gprs` (VMLAUNCH unless `launched`) until the next
    /// VM exit; host interrupts that came meanwhile are taken before it
    /// returns.
    fn enter(&mut self, gprs: &mut GuestGprs, launched: bool) -> Result<(), VmFail>;
    /// Arms the turn's deadline (an external-interrupt exit).
    fn arm_turn_deadline(&mut self);
    /// Makes the guest exit by TSC value `tsc` at the latest (its local
    /// APIC timer), if that is before the turn's deadline.
    fn arm_deadline(&mut self, tsc: u64);
    /// WRMSR on this CPU: the guest's SYSCALL MSRs, which VM entry does
    /// not load (the hypervisor itself never uses them).
    fn wrmsr(&mut self, msr: u32, value: u64);
    /// FXSAVE (and PKRU) of the guest's x87/SSE state when its vCPU leaves
    /// the CPU: VM entry and exit do not switch it, and the hypervisor
    /// never uses it, so it stays live while the vCPU is bound.
    fn fpu_save(&mut self, area: &mut FpuArea);
    /// FXRSTOR (and PKRU) when the vCPU is bound.
    fn fpu_restore(&mut self, area: &FpuArea);
    /// The vector of the last host interrupt this CPU took.
    fn last_host_irq(&mut self) -> Option<u32>;
}

const RFLAGS_IF: u64 = 1 << 9;
/// Interruptibility state (SDM 24.4.2): blocking by STI, by MOV SS.
const SHADOW: u64 = 0b11;
/// Exceptions always intercepted: #DB and #AC, whose delivery can fault
/// again forever inside the CPU (CVE-2015-5307, CVE-2015-8104; rule
/// `benign_exception`).
pub const EXCEPTION_BITMAP: u32 = 1 << 1 | 1 << 17;
/// VM-entry fields (SDM 24.8.3).
const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
const ENTRY_INSTRUCTION_LEN: u32 = 0x401a;
/// VM-exit interruption error code (SDM 24.9.2).
const EXIT_INTERRUPTION_ERROR_CODE: u32 = 0x4406;

/// The guest-state fields the shared decoder reads, copied out of the
/// VMCS at an EPT violation ([`GuestState`] over them; writes change the
/// copy only, and the decoding path makes none).
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    rip: u64,
    rflags: u64,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    cs_base: u64,
    cs_ar: u64,
    ss_ar: u64,
}

impl GuestState for Snapshot {
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.rip = rip;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn cr3(&self) -> u64 {
        self.cr3
    }
    fn cr4(&self) -> u64 {
        self.cr4
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn cpl(&self) -> u8 {
        (self.ss_ar >> 5 & 3) as u8
    }
    fn cs_base(&self) -> u64 {
        self.cs_base
    }
    fn cs_l_db(&self) -> (bool, bool) {
        (self.cs_ar & (1 << 13) != 0, self.cs_ar & (1 << 14) != 0)
    }
    fn dr6(&self) -> u64 {
        0
    }
    fn set_dr6(&mut self, _v: u64) {}
    fn set_dr7(&mut self, _v: u64) {}
    fn interrupt_shadow(&self) -> bool {
        false
    }
    fn clear_interrupt_shadow(&mut self) {}
}

/// One vCPU on VMX.
pub struct VmxVcpu<H: VmxHw, A: TableAccess> {
    hw: H,
    /// Its VM's EPT, read for the guest page walk behind MMIO decoding,
    /// and the generation its changes bump.
    ept: PageTable<Ept4>,
    ept_access: A,
    ept_generation: alloc::sync::Arc<AtomicU64>,
    ept_hint: Cell<LeafHint>,
    vmcs: u64,
    gprs: GuestGprs,
    launched: bool,
    bound: Option<PhysCpu>,
    caps: Caps,
    controls: Controls,
    /// Execution-control fields written at every bind: EPTP, VPID, the
    /// I/O and MSR bitmaps, the exception bitmap, zero counts.
    fixed: Vec<(u32, u64)>,
    /// A boot state's fields, written at the next entry.
    pending: Vec<(u32, u64)>,
    events: PendingEvents,
    x86: X86Interface,
    /// The instruction length of the last exit (advance_pc).
    exit_len: u64,
    /// The guest's EFER (entry controls follow its LMA).
    efer: u64,
    budget: u64,
    internal: u64,
    /// The guest's [`SOFT_MSRS`].
    soft_msrs: [u64; 5],
    /// The guest timer deadline armed in this turn.
    armed_wake_at: Option<u64>,
    /// Interrupt-window exiting is on in the VMCS.
    window_armed: bool,
    /// An event was written for the next entry.
    injected: bool,
    /// The guest's x87/SSE state while the vCPU is not bound (no VM sees
    /// another's registers).
    fpu: alloc::boxed::Box<FpuArea>,
}

impl<H: VmxHw, A: TableAccess> VmxVcpu<H, A> {
    /// A vCPU on the VMCS region at `vmcs` (zeroed, revision written by
    /// the caller), with its VM's EPT (root, table access, generation), a
    /// `vpid` (not 0 when VPID is on) and all-ones I/O bitmaps A/B and MSR
    /// bitmap at the given pages.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hw: H,
        vmcs: u64,
        caps: Caps,
        controls: Controls,
        ept: (u64, A, alloc::sync::Arc<AtomicU64>),
        vpid: u16,
        io_bitmaps: (u64, u64),
        msr_bitmap: u64,
    ) -> VmxVcpu<H, A> {
        let (ept_root, ept_access, ept_generation) = ept;
        let eptp = Ept4::eptp(ept_root, false);
        let mut fixed = alloc::vec![
            (control::EPTP_FULL, eptp),
            (control::VPID, u64::from(vpid)),
            (control::IO_BITMAP_A_ADDR_FULL, io_bitmaps.0),
            (control::IO_BITMAP_B_ADDR_FULL, io_bitmaps.1),
            (control::MSR_BITMAPS_ADDR_FULL, msr_bitmap),
            (control::EXCEPTION_BITMAP, u64::from(EXCEPTION_BITMAP)),
        ];
        fixed.extend(super::vmcs::ZERO_FIELDS.map(|f| (f, 0)));
        VmxVcpu {
            hw,
            ept: PageTable::from_root(Ept4, ept_root),
            ept_access,
            ept_generation,
            ept_hint: Cell::new(LeafHint::default()),
            vmcs,
            gprs: GuestGprs::default(),
            launched: false,
            bound: None,
            caps,
            controls,
            fixed,
            pending: Vec::new(),
            events: PendingEvents::new(),
            x86: X86Interface::default(),
            exit_len: 0,
            efer: 0,
            budget: 0,
            internal: 0,
            soft_msrs: [0; 5],
            armed_wake_at: None,
            window_armed: false,
            injected: false,
            fpu: alloc::boxed::Box::default(),
        }
    }

    /// RDMSR of an MSR the VMCS or this vCPU holds.
    fn msr_read(&self, msr: u32) -> Option<u64> {
        let f = |field: u32| self.hw.vmread(field);
        Some(match msr {
            msrs::EFER => f(guest::IA32_EFER_FULL),
            msrs::PAT => f(guest::IA32_PAT_FULL),
            msrs::FS_BASE => f(guest::FS_BASE),
            msrs::GS_BASE => f(guest::GS_BASE),
            msrs::SYSENTER_CS => f(guest::IA32_SYSENTER_CS),
            msrs::SYSENTER_ESP => f(guest::IA32_SYSENTER_ESP),
            msrs::SYSENTER_EIP => f(guest::IA32_SYSENTER_EIP),
            m => self.soft_msrs[SOFT_MSRS.iter().position(|&s| s == m)?],
        })
    }

    /// WRMSR of such an MSR: `Some(false)` for an invalid value (#GP), as
    /// the SVM backend decides it.
    fn msr_write(&mut self, msr: u32, val: u64) -> Option<bool> {
        let canonical = ((val as i64) << 16 >> 16) as u64 == val;
        let field = match msr {
            msrs::EFER => {
                let cur = self.hw.vmread(guest::IA32_EFER_FULL);
                // Reserved bits, or LME changed with paging on (SDM 2.2.1).
                if val & !EFER_GUEST_BITS != 0
                    || ((val ^ cur) & EFER_LME != 0 && self.hw.vmread(guest::CR0) & CR0_PG != 0)
                {
                    return Some(false);
                }
                // LMA is the CPU's.
                self.hw
                    .vmwrite(guest::IA32_EFER_FULL, val & !EFER_LMA | cur & EFER_LMA);
                return Some(true);
            }
            msrs::PAT => {
                if !val
                    .to_le_bytes()
                    .iter()
                    .all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
                {
                    return Some(false);
                }
                guest::IA32_PAT_FULL
            }
            msrs::SYSENTER_CS => guest::IA32_SYSENTER_CS,
            msrs::FS_BASE | msrs::GS_BASE | msrs::SYSENTER_ESP | msrs::SYSENTER_EIP
                if !canonical =>
            {
                return Some(false)
            }
            msrs::FS_BASE => guest::FS_BASE,
            msrs::GS_BASE => guest::GS_BASE,
            msrs::SYSENTER_ESP => guest::IA32_SYSENTER_ESP,
            msrs::SYSENTER_EIP => guest::IA32_SYSENTER_EIP,
            m => {
                let i = SOFT_MSRS.iter().position(|&s| s == m)?;
                if m != msrs::STAR && m != msrs::SFMASK && !canonical {
                    return Some(false);
                }
                self.soft_msrs[i] = val;
                self.hw.wrmsr(m, val);
                return Some(true);
            }
        };
        self.hw.vmwrite(field, val);
        Some(true)
    }

    /// An EPT violation: a load or store outside RAM decoded into an MMIO
    /// exit (its length becomes the exit's, for `advance_pc`), anything
    /// else a stage-2 fault. Not decoded: a fault on RAM, a fault while
    /// delivering an event (not the instruction at RIP), a fetch. The
    /// access kind is THIS exit's (rule `exit_qual`).
    fn ept_violation(&mut self, qual: u64, vectoring: bool) -> Exit {
        let gpa = self.hw.vmread(ro::GUEST_PHYSICAL_ADDR_FULL);
        let access = AccessKind::from_ept_qualification(qual);
        let fault = Exit::Stage2Fault {
            gpa,
            // Bit 7: the guest-linear address field is valid.
            gva: (qual & (1 << 7) != 0).then(|| self.hw.vmread(ro::GUEST_LINEAR_ADDR)),
            access,
        };
        if vectoring || self.ept.translate(&self.ept_access, gpa).is_some() {
            return fault;
        }
        let f = |field: u32| self.hw.vmread(field);
        let snap = Snapshot {
            rip: f(guest::RIP),
            rflags: f(guest::RFLAGS),
            cr0: f(guest::CR0),
            cr3: f(guest::CR3),
            cr4: f(guest::CR4),
            efer: f(guest::IA32_EFER_FULL),
            cs_base: f(guest::CS_BASE),
            cs_ar: f(guest::CS_ACCESS_RIGHTS),
            ss_ar: f(guest::SS_ACCESS_RIGHTS),
        };
        let phys = Stage2Phys::new(
            &self.hw,
            &self.ept,
            &self.ept_access,
            self.ept_generation.load(Ordering::Acquire),
            &self.ept_hint,
        );
        let mut buf = [0u8; MAX_INSN];
        let n = fetch_at_rip(&snap, &phys, &mut buf);
        let rsp = f(guest::RSP);
        let (exit, len) = mmio_exit(access, gpa, &buf[..n], snap.bitness(), |r| {
            self.gpr(r).unwrap_or(if r == Reg::Rsp { rsp } else { 0 })
        });
        match (exit, len) {
            (Exit::Mmio(m), Some(l)) => {
                self.exit_len = l as u64;
                Exit::Mmio(m)
            }
            // Not emulated: the fault as the exit reported it.
            _ => fault,
        }
    }

    /// A control-register access (SDM 28.2.1, Table 28-3): MOV to CR0
    /// and CR4 of bits the host owns (the read shadows keep the guest's
    /// view; entering paging with EFER.LME turns long mode on, as the CPU
    /// would), MOV to and from CR8 (the local APIC model's TPR through the
    /// interface). `None` with the exit when it is not one of those.
    fn cr_access(&mut self, qual: u64) -> Result<Option<Exit>, BackendError> {
        let cr = qual & 0xf;
        let kind = qual >> 4 & 3;
        // Bits 11:8: the register, numbered as in ModRM (0 RAX .. 15 R15).
        let reg = Reg::x86_gpr((qual >> 8 & 0xf) as u8).unwrap_or(Reg::Rax);
        let value = match reg {
            Reg::Rsp => self.hw.vmread(guest::RSP),
            r => self.gpr(r).unwrap_or(0),
        };
        match (kind, cr) {
            // MOV to CR0.
            (0, 0) => {
                let efer = self.hw.vmread(guest::IA32_EFER_FULL);
                let cr4 = self.hw.vmread(guest::CR4);
                let pg = value & CR0_PG != 0;
                // SDM 2.5: PG without PE, paging with LME but not PAE, and
                // reserved bits 63:32 are #GP.
                if value >> 32 != 0
                    || (pg && value & 1 == 0)
                    || (pg && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0)
                {
                    self.events.queue(Event::general_protection(0))?;
                    return Ok(None);
                }
                let lma = pg && efer & EFER_LME != 0;
                let efer = if lma {
                    efer | EFER_LMA
                } else {
                    efer & !EFER_LMA
                };
                self.hw.vmwrite(guest::IA32_EFER_FULL, efer);
                self.hw.vmwrite(
                    control::VMENTRY_CONTROLS,
                    u64::from(self.controls.entry_for(efer)),
                );
                self.hw.vmwrite(control::CR0_READ_SHADOW, value);
                self.hw.vmwrite(
                    guest::CR0,
                    super::vmcs::guest_cr0(value, &self.caps, self.controls.unrestricted()),
                );
            }
            // MOV to CR4: a guest cannot have VMX.
            (0, 4) => {
                if value & CR4_VMXE != 0 || value >> 32 != 0 {
                    self.events.queue(Event::general_protection(0))?;
                    return Ok(None);
                }
                self.hw.vmwrite(control::CR4_READ_SHADOW, value);
                self.hw
                    .vmwrite(guest::CR4, super::vmcs::guest_cr4(value, &self.caps));
            }
            (0, 8) => {
                if value > 15 {
                    self.events.queue(Event::general_protection(0))?;
                    return Ok(None);
                }
                self.x86.cr8 = value as u8;
                self.x86.sync = true;
            }
            (1, 8) => {
                let v = u64::from(self.x86.cr8);
                match reg {
                    Reg::Rsp => self.hw.vmwrite(guest::RSP, v),
                    r => {
                        if let Some(g) = self.gpr_mut(r) {
                            *g = v;
                        }
                    }
                }
            }
            _ => {
                return Ok(Some(Exit::Unknown {
                    reason: u64::from(reason::CR_ACCESS),
                    qualification: qual,
                }))
            }
        }
        self.skip();
        Ok(None)
    }

    /// Completes an exit's instruction here: RIP past it.
    fn skip(&mut self) {
        let rip = self.hw.vmread(guest::RIP);
        self.hw.vmwrite(guest::RIP, rip.wrapping_add(self.exit_len));
        let s = self.hw.vmread(guest::INTERRUPTIBILITY_STATE);
        self.hw.vmwrite(guest::INTERRUPTIBILITY_STATE, s & !SHADOW);
    }

    pub fn hw(&mut self) -> &mut H {
        &mut self.hw
    }

    fn gpr(&self, r: Reg) -> Option<u64> {
        let g = &self.gprs;
        Some(match r {
            Reg::Rax => g.rax,
            Reg::Rbx => g.rbx,
            Reg::Rcx => g.rcx,
            Reg::Rdx => g.rdx,
            Reg::Rsi => g.rsi,
            Reg::Rdi => g.rdi,
            Reg::Rbp => g.rbp,
            Reg::R8 => g.r8,
            Reg::R9 => g.r9,
            Reg::R10 => g.r10,
            Reg::R11 => g.r11,
            Reg::R12 => g.r12,
            Reg::R13 => g.r13,
            Reg::R14 => g.r14,
            Reg::R15 => g.r15,
            _ => return None,
        })
    }

    fn gpr_mut(&mut self, r: Reg) -> Option<&mut u64> {
        let g = &mut self.gprs;
        Some(match r {
            Reg::Rax => &mut g.rax,
            Reg::Rbx => &mut g.rbx,
            Reg::Rcx => &mut g.rcx,
            Reg::Rdx => &mut g.rdx,
            Reg::Rsi => &mut g.rsi,
            Reg::Rdi => &mut g.rdi,
            Reg::Rbp => &mut g.rbp,
            Reg::R8 => &mut g.r8,
            Reg::R9 => &mut g.r9,
            Reg::R10 => &mut g.r10,
            Reg::R11 => &mut g.r11,
            Reg::R12 => &mut g.r12,
            Reg::R13 => &mut g.r13,
            Reg::R14 => &mut g.r14,
            Reg::R15 => &mut g.r15,
            _ => return None,
        })
    }

    /// The guest can take a maskable interrupt now: RFLAGS.IF and no
    /// STI/MOV SS shadow (SDM 24.4.2).
    fn interruptible(&self) -> bool {
        self.hw.vmread(guest::RFLAGS) & RFLAGS_IF != 0
            && self.hw.vmread(guest::INTERRUPTIBILITY_STATE) & SHADOW == 0
    }

    /// The guest's CPL: SS.DPL (SDM 24.4.1).
    fn cpl(&self) -> u8 {
        (self.hw.vmread(guest::SS_ACCESS_RIGHTS) >> 5 & 3) as u8
    }

    /// Writes the next event to deliver into the VM-entry interruption
    /// fields (one per entry), the interrupt from the interface first
    /// moved into the queue; arms the interrupt window when an interrupt
    /// waits for the guest to open it.
    fn deliver(&mut self) -> Result<(), BackendError> {
        if self.x86.load {
            self.x86.load = false;
            if let Some(v) = self.x86.inject.take() {
                self.events.queue(Event::Interrupt { vector: v })?;
            }
        }
        // The common exit has nothing to deliver and no window to open or
        // close: no VMCS access then.
        if self.events.is_empty() && !self.x86.window && !self.window_armed {
            return self.arm_wake();
        }
        let open = self.interruptible();
        let mut proc = self.controls.proc & !bits::PROC_INTERRUPT_WINDOW;
        if let Some(e) = self.events.take(false, open) {
            let (info, code) = match e {
                Event::Exception {
                    vector,
                    error_code,
                    payload,
                } => {
                    if let Payload::Cr2(cr2) = payload {
                        self.gprs.cr2 = cr2;
                    }
                    (
                        Interruption {
                            vector,
                            kind: Interruption::HARDWARE_EXCEPTION,
                            has_error_code: error_code.is_some(),
                        },
                        error_code,
                    )
                }
                Event::Undefined => (
                    Interruption {
                        vector: vmm::event::vector::UD,
                        kind: Interruption::HARDWARE_EXCEPTION,
                        has_error_code: false,
                    },
                    None,
                ),
                Event::Interrupt { vector } => (
                    Interruption {
                        vector,
                        kind: Interruption::EXTERNAL,
                        has_error_code: false,
                    },
                    None,
                ),
                Event::Nmi => (
                    Interruption {
                        vector: 2,
                        kind: Interruption::NMI,
                        has_error_code: false,
                    },
                    None,
                ),
                _ => {
                    return Err(BackendError::BadEvent(
                        vmm::event::EventError::PayloadMismatch,
                    ))
                }
            };
            self.hw
                .vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, info.to_field());
            self.injected = true;
            if let Some(c) = code {
                self.hw.vmwrite(ENTRY_EXCEPTION_ERROR_CODE, u64::from(c));
            }
            self.hw.vmwrite(ENTRY_INSTRUCTION_LEN, 0);
        }
        if !self.events.is_empty() || (self.x86.window && !open) {
            proc |= bits::PROC_INTERRUPT_WINDOW;
        }
        let window = proc & bits::PROC_INTERRUPT_WINDOW != 0;
        if window != self.window_armed {
            self.window_armed = window;
            self.hw
                .vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(proc));
        }
        self.arm_wake()
    }

    /// The guest's local APIC timer: exit by its expiry (the host's
    /// one-shot shortened, only when the deadline moved earlier).
    fn arm_wake(&mut self) -> Result<(), BackendError> {
        if let Some(d) = self.x86.wake_at {
            if self.armed_wake_at.is_none_or(|a| d < a) {
                self.armed_wake_at = Some(d);
                self.hw.arm_deadline(d);
            }
        }
        Ok(())
    }

    /// One entry and the exit's decoding: `None` for an exit handled here
    /// (the loop enters again while the turn's budget lasts).
    fn run_once(&mut self) -> Result<Option<Exit>, BackendError> {
        if !self.pending.is_empty() {
            for (f, v) in core::mem::take(&mut self.pending) {
                self.hw.vmwrite(f, v);
            }
        }
        self.deliver()?;
        self.hw
            .enter(&mut self.gprs, self.launched)
            .map_err(|e| match e {
                VmFail::Valid(n) => BackendError::EntryFailed(exits::instruction_error_name(n)),
                VmFail::Invalid => BackendError::EntryFailed("no current VMCS"),
            })?;
        self.launched = true;
        // An event written for this entry was delivered (or came back in
        // the IDT-vectoring information, re-queued below).
        if core::mem::take(&mut self.injected) {
            self.hw.vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0);
        }
        let r = ExitReason::from_field(self.hw.vmread(ro::EXIT_REASON));
        let qual = self.hw.vmread(ro::EXIT_QUALIFICATION);
        self.exit_len = self.hw.vmread(ro::VMEXIT_INSTRUCTION_LEN);
        let vectoring = Interruption::from_field(self.hw.vmread(ro::IDT_VECTORING_INFO));
        if let Some(i) = vectoring {
            // An event whose delivery this exit interrupted: again first.
            let code = i.has_error_code.then(|| self.hw.vmread(0x4410) as u32);
            let e = match i.kind {
                Interruption::EXTERNAL => Event::Interrupt { vector: i.vector },
                Interruption::NMI => Event::Nmi,
                _ => Event::Exception {
                    vector: i.vector,
                    error_code: code,
                    payload: Payload::None,
                },
            };
            let _ = self.events.queue(e);
        }
        if r.entry_failure {
            return Ok(Some(Exit::Shutdown(ShutdownKind::InvalidState)));
        }
        let g = self.gprs;
        let exit = match r.basic {
            reason::EXTERNAL_INTERRUPT => match self.hw.last_host_irq() {
                Some(line) if crate::hostirq::TABLE.get(line) != HostIrq::EndOfTurn => {
                    Exit::HostInterrupt { line }
                }
                _ => Exit::PreemptionTimer,
            },
            reason::INTERRUPT_WINDOW => {
                self.x86.sync = true;
                Exit::ExternalInterrupt
            }
            reason::TRIPLE_FAULT => Exit::Shutdown(ShutdownKind::TripleFault),
            reason::CPUID => Exit::Cpuid {
                leaf: g.rax as u32,
                subleaf: g.rcx as u32,
            },
            reason::HLT => Exit::Halt,
            reason::VMCALL => Exit::Hypercall(Hypercall {
                conduit: Conduit::Vmcall,
                // VMCALL works at any CPL: only the guest kernel may call.
                privileged: self.cpl() == 0,
                imm: 0,
                nr: g.rax,
                args: [g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.r8],
            }),
            reason::IO_INSTRUCTION => match exits::decode_io(qual, g.rax) {
                Some(io) => Exit::PortIo(io),
                None => Exit::Unknown {
                    reason: u64::from(r.basic),
                    qualification: qual,
                },
            },
            reason::RDMSR => match self.msr_read(g.rcx as u32) {
                Some(v) => {
                    self.gprs.rax = v & 0xffff_ffff;
                    self.gprs.rdx = v >> 32;
                    self.skip();
                    return Ok(None);
                }
                None => Exit::MsrRead { msr: g.rcx as u32 },
            },
            reason::WRMSR => {
                let value = g.rdx << 32 | (g.rax & 0xffff_ffff);
                match self.msr_write(g.rcx as u32, value) {
                    Some(true) => {
                        self.skip();
                        return Ok(None);
                    }
                    Some(false) => {
                        self.events.queue(Event::general_protection(0))?;
                        return Ok(None);
                    }
                    None => Exit::MsrWrite {
                        msr: g.rcx as u32,
                        value,
                    },
                }
            }
            reason::EPT_VIOLATION => self.ept_violation(qual, vectoring.is_some()),
            reason::CR_ACCESS => match self.cr_access(qual)? {
                Some(e) => e,
                None => return Ok(None),
            },
            reason::EXCEPTION_OR_NMI => {
                let info = Interruption::from_field(self.hw.vmread(ro::VMEXIT_INTERRUPTION_INFO));
                match info {
                    Some(i) if i.kind == Interruption::NMI => Exit::ExternalInterrupt,
                    Some(i) => {
                        // #DB / #AC: reflected as they came.
                        let code = i
                            .has_error_code
                            .then(|| self.hw.vmread(EXIT_INTERRUPTION_ERROR_CODE) as u32);
                        self.events.queue(Event::Exception {
                            vector: i.vector,
                            error_code: code,
                            payload: Payload::None,
                        })?;
                        return Ok(None);
                    }
                    None => Exit::Unknown {
                        reason: u64::from(r.basic),
                        qualification: qual,
                    },
                }
            }
            _ if r.is_vmx_instruction() => {
                self.events.queue(Event::Undefined)?;
                return Ok(None);
            }
            b => Exit::Unknown {
                reason: u64::from(b),
                qualification: qual,
            },
        };
        self.x86.rflags_if = self.hw.vmread(guest::RFLAGS) & RFLAGS_IF != 0;
        Ok(Some(exit))
    }
}

impl<H: VmxHw, A: TableAccess> vmm::backend::Vcpu for VmxVcpu<H, A> {
    fn begin_turn(&mut self, budget: u64) {
        self.budget = budget;
        self.armed_wake_at = None;
        self.hw.arm_turn_deadline();
    }

    fn run(&mut self) -> Result<Exit, BackendError> {
        if self.bound.is_none() {
            return Err(BackendError::NotBound);
        }
        loop {
            if let Some(e) = self.run_once()? {
                return Ok(e);
            }
            self.internal += 1;
            if self.budget == 0 {
                // Exits handled here count against the turn: a guest that
                // loops on them still loses the CPU.
                return Ok(Exit::PreemptionTimer);
            }
            self.budget -= 1;
        }
    }

    fn internal_exits(&self) -> u64 {
        self.internal
    }

    fn x86_interface(&mut self) -> Option<&mut X86Interface> {
        Some(&mut self.x86)
    }

    fn x86_refresh(&mut self) {
        if self.bound.is_some() {
            self.x86.interruptible = self.interruptible() && self.events.is_empty();
            self.x86.rflags_if = self.hw.vmread(guest::RFLAGS) & RFLAGS_IF != 0;
        }
    }

    fn reg(&mut self, reg: Reg) -> Result<u64, BackendError> {
        if let Some(v) = self.gpr(reg) {
            return Ok(v);
        }
        let field = |f: u32| self.hw.vmread(f);
        Ok(match reg {
            Reg::Rsp => field(guest::RSP),
            Reg::Rip => field(guest::RIP),
            Reg::Rflags => field(guest::RFLAGS),
            // What the guest reads: its own bits where the host owns them.
            Reg::Cr0 => {
                let m = field(control::CR0_GUEST_HOST_MASK);
                field(guest::CR0) & !m | field(control::CR0_READ_SHADOW) & m
            }
            Reg::Cr4 => {
                let m = field(control::CR4_GUEST_HOST_MASK);
                field(guest::CR4) & !m | field(control::CR4_READ_SHADOW) & m
            }
            Reg::Cr3 => field(guest::CR3),
            Reg::Cr2 => self.gprs.cr2,
            Reg::Efer => field(guest::IA32_EFER_FULL),
            Reg::Dr7 => field(guest::DR7),
            r => return Err(BackendError::NoSuchRegister(r)),
        })
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), BackendError> {
        if let Some(r) = self.gpr_mut(reg) {
            *r = value;
            return Ok(());
        }
        match reg {
            Reg::Rsp => self.hw.vmwrite(guest::RSP, value),
            Reg::Rip => self.hw.vmwrite(guest::RIP, value),
            Reg::Rflags => self.hw.vmwrite(guest::RFLAGS, value | 2),
            Reg::Cr3 => self.hw.vmwrite(guest::CR3, value),
            r => return Err(BackendError::NoSuchRegister(r)),
        }
        Ok(())
    }

    fn advance_pc(&mut self) -> Result<(), BackendError> {
        // The instruction completed: an STI/MOV SS shadow ends with it.
        self.skip();
        Ok(())
    }

    fn inject(&mut self, event: Event) -> Result<Queued, BackendError> {
        Ok(self.events.queue(event)?)
    }

    fn apply_boot_state(&mut self, st: &BootState) -> Result<(), BackendError> {
        let ms =
            x86_mode_state(st.mode).ok_or(BackendError::EntryFailed("not an x86 entry mode"))?;
        let fields = guest_state(&ms, st.pc, &self.caps, &self.controls);
        let entry = self.controls.entry_for(ms.efer);
        check_guest_state(&fields, entry, &self.caps, self.controls.unrestricted())
            .map_err(|b| BackendError::EntryFailed(b.rule))?;
        self.efer = ms.efer;
        self.pending = fields;
        self.pending.extend(self.controls.fields(ms.efer));
        self.gprs = GuestGprs::default();
        for &(r, v) in st.regs() {
            if let Some(slot) = self.gpr_mut(r) {
                *slot = v;
            } else if r == Reg::Rsp {
                self.pending.push((guest::RSP, v));
            } else {
                return Err(BackendError::NoSuchRegister(r));
            }
        }
        Ok(())
    }

    fn bind(&mut self, cpu: PhysCpu) -> Result<(), BackendError> {
        if let Some(c) = self.bound {
            return Err(BackendError::AlreadyBound(c));
        }
        self.hw
            .load(self.vmcs)
            .map_err(|_| BackendError::EntryFailed("VMPTRLD failed"))?;
        for (f, v) in self.hw.host_state() {
            self.hw.vmwrite(f, v);
        }
        for i in 0..self.fixed.len() {
            let (f, v) = self.fixed[i];
            self.hw.vmwrite(f, v);
        }
        for (i, m) in SOFT_MSRS.into_iter().enumerate() {
            self.hw.wrmsr(m, self.soft_msrs[i]);
        }
        self.hw.fpu_restore(&self.fpu);
        // The control fields stay in the VMCS across VMCLEAR and VMPTRLD
        // (the boot state writes them before the first entry; the CPU keeps
        // "IA-32e mode guest" equal to the guest's EFER.LMA at every exit).
        self.bound = Some(cpu);
        Ok(())
    }

    fn unbind(&mut self) -> Result<(), BackendError> {
        if self.bound.take().is_some() {
            self.hw.fpu_save(&mut self.fpu);
            // Written back to memory so another CPU may load it; VMLAUNCH
            // next time (SDM 24.11.3).
            self.hw
                .clear(self.vmcs)
                .map_err(|_| BackendError::EntryFailed("VMCLEAR failed"))?;
            self.launched = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ept::Ept;
    use super::super::tests::haswell;
    use super::*;
    use crate::x86_64::svm::npt::tests::MemTables;
    use std::collections::HashMap;
    use vmm::backend::Stage2;
    use vmm::backend::{EntryMode, Vcpu};
    use vmm::exit::{IoOp, PortIo};
    use vmm::regs::AccessSize;

    /// One scripted VM entry: what the guest did until its exit.
    type Step = Box<dyn FnMut(&mut HashMap<u32, u64>, &mut GuestGprs)>;

    /// A VMCS in a map; each entry runs the next scripted exit.
    #[derive(Default)]
    struct Fake {
        fields: HashMap<u32, u64>,
        script: Vec<Step>,
        entries: Vec<bool>,
        loaded: Option<u64>,
        host_irq: Option<u32>,
        msrs: Vec<(u32, u64)>,
        /// Host-physical bytes (guest RAM behind the EPT).
        phys: HashMap<u64, u8>,
        deadlines: Vec<u64>,
        /// One byte standing for the CPU's x87/SSE registers.
        fpu_live: u8,
    }

    impl HostPhys for Fake {
        fn read_phys(&self, hpa: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.phys.get(&(hpa + i as u64)).copied().unwrap_or(0);
            }
            true
        }
    }

    impl VmxHw for Fake {
        fn load(&mut self, vmcs: u64) -> Result<(), VmFail> {
            self.loaded = Some(vmcs);
            Ok(())
        }
        fn clear(&mut self, _vmcs: u64) -> Result<(), VmFail> {
            self.loaded = None;
            Ok(())
        }
        fn vmread(&self, field: u32) -> u64 {
            self.fields.get(&field).copied().unwrap_or(0)
        }
        fn vmwrite(&mut self, field: u32, value: u64) {
            self.fields.insert(field, value);
        }
        fn host_state(&self) -> Vec<(u32, u64)> {
            alloc::vec![(0x6c00, 0x8000_0031)]
        }
        fn enter(&mut self, gprs: &mut GuestGprs, launched: bool) -> Result<(), VmFail> {
            if self.loaded.is_none() {
                return Err(VmFail::Invalid);
            }
            self.entries.push(launched);
            let mut step = self.script.remove(0);
            for f in [ro::IDT_VECTORING_INFO, ro::VMEXIT_INTERRUPTION_INFO] {
                self.fields.insert(f, 0);
            }
            step(&mut self.fields, gprs);
            Ok(())
        }
        fn arm_turn_deadline(&mut self) {}
        fn arm_deadline(&mut self, tsc: u64) {
            self.deadlines.push(tsc);
        }
        fn wrmsr(&mut self, msr: u32, value: u64) {
            self.msrs.push((msr, value));
        }
        fn fpu_save(&mut self, area: &mut FpuArea) {
            area.0[0] = self.fpu_live;
        }
        fn fpu_restore(&mut self, area: &FpuArea) {
            self.fpu_live = area.0[0];
        }
        fn last_host_irq(&mut self) -> Option<u32> {
            self.host_irq
        }
    }

    fn exit(reason: u16, qual: u64, len: u64) -> Step {
        Box::new(move |f, _| {
            f.insert(ro::EXIT_REASON, u64::from(reason));
            f.insert(ro::EXIT_QUALIFICATION, qual);
            f.insert(ro::VMEXIT_INSTRUCTION_LEN, len);
        })
    }

    fn vcpu(script: Vec<Step>) -> VmxVcpu<Fake, MemTables> {
        vcpu_at(script, EntryMode::X86Long64 { cr3: 0x2000 }, 0x10_0000, &[])
    }

    /// A vCPU entered in `mode` at `rip`, whose EPT maps `code` at GPA
    /// 0x1000 (host 0x40_1000) when not empty.
    fn vcpu_at(
        script: Vec<Step>,
        mode: EntryMode,
        rip: u64,
        code: &[u8],
    ) -> VmxVcpu<Fake, MemTables> {
        let caps = Caps::read(haswell);
        let c = Controls::for_caps(&caps).unwrap();
        let mut hw = Fake {
            script,
            ..Fake::default()
        };
        let pool = (0..16u64).map(|i| 0x100_0000 + i * 0x1000).collect();
        let mut ept: Ept<MemTables> = Ept::new(MemTables::default(), pool, 48, true).unwrap();
        if !code.is_empty() {
            ept.map(0x1000, 0x40_1000, 0x1000, vmm::backend::S2Attrs::RAM)
                .unwrap();
            for (i, b) in code.iter().enumerate() {
                hw.phys.insert(0x40_1000 + i as u64, *b);
            }
        }
        let e = (ept.root(), ept.access().clone(), ept.generation());
        let mut v = VmxVcpu::new(hw, 0x5000, caps, c, e, 1, (0x6000, 0x7000), 0x8000);
        let st = BootState::new(mode, rip).with(Reg::Rsi, 0x1234).unwrap();
        v.apply_boot_state(&st).unwrap();
        v.bind(0).unwrap();
        v.begin_turn(8);
        v
    }

    #[test]
    fn boot_state_bind_and_the_first_entries() {
        let mut v = vcpu(vec![
            Box::new(|f, g| {
                // The guest state was written before the first entry.
                assert_eq!(f[&guest::RIP], 0x10_0000);
                assert_eq!(f[&guest::CR3], 0x2000);
                assert_eq!(g.rsi, 0x1234);
                assert_eq!(f[&control::EPTP_FULL] & 0xfff, 0x1e, "WB, 4 levels");
                assert_ne!(
                    f[&control::VMENTRY_CONTROLS] & u64::from(bits::ENTRY_IA32E_GUEST),
                    0
                );
                assert_eq!(f[&control::EXCEPTION_BITMAP], u64::from(EXCEPTION_BITMAP));
                assert_eq!(f[&0x6c00], 0x8000_0031, "host state");
                g.rax = 0x4000_0000;
                g.rcx = 3;
                f.insert(ro::EXIT_REASON, u64::from(reason::CPUID));
                f.insert(ro::VMEXIT_INSTRUCTION_LEN, 2);
            }),
            exit(reason::HLT, 0, 1),
        ]);
        assert_eq!(
            v.run().unwrap(),
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 3
            }
        );
        v.set_reg(Reg::Rbx, 0x57).unwrap();
        v.advance_pc().unwrap();
        assert_eq!(v.reg(Reg::Rip).unwrap(), 0x10_0002);
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.hw().entries, [false, true], "VMLAUNCH, then VMRESUME");
        // Unbind clears the VMCS: the next entry launches again.
        v.unbind().unwrap();
        assert_eq!(v.run(), Err(BackendError::NotBound));
        assert!(v.hw().loaded.is_none());
    }

    #[test]
    fn io_vmcall_msr_and_ept_exits() {
        let mut v = vcpu(vec![
            Box::new(|f, g| {
                g.rax = 0x1234_5641;
                f.insert(ro::EXIT_REASON, u64::from(reason::IO_INSTRUCTION));
                f.insert(ro::EXIT_QUALIFICATION, 0x03f8_0000);
            }),
            Box::new(|f, g| {
                g.rax = 7;
                g.rbx = 0x10;
                g.rcx = 0x20;
                f.insert(ro::EXIT_REASON, u64::from(reason::VMCALL));
                // CPL 3: SS.DPL = 3.
                f.insert(guest::SS_ACCESS_RIGHTS, 0xf3);
            }),
            Box::new(|f, g| {
                g.rcx = 0x1234;
                g.rdx = 0x1;
                g.rax = 0xffff_ffff_0000_0d01;
                f.insert(ro::EXIT_REASON, u64::from(reason::WRMSR));
            }),
            Box::new(|f, _| {
                f.insert(ro::EXIT_REASON, u64::from(reason::EPT_VIOLATION));
                f.insert(ro::EXIT_QUALIFICATION, 0b10 | 1 << 7);
                f.insert(ro::GUEST_PHYSICAL_ADDR_FULL, 0xfee0_0030);
                f.insert(ro::GUEST_LINEAR_ADDR, 0xffff_8000_fee0_0030);
            }),
        ]);
        assert_eq!(
            v.run().unwrap(),
            Exit::PortIo(PortIo {
                port: 0x3f8,
                size: AccessSize::B1,
                op: IoOp::Out(0x41)
            })
        );
        match v.run().unwrap() {
            Exit::Hypercall(h) => {
                assert_eq!(
                    (h.conduit, h.nr, h.args[0], h.args[1]),
                    (Conduit::Vmcall, 7, 0x10, 0x20)
                );
                assert!(!h.privileged, "a CPL 3 caller");
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(
            v.run().unwrap(),
            Exit::MsrWrite {
                msr: 0x1234,
                value: 0x1_0000_0d01
            }
        );
        assert_eq!(
            v.run().unwrap(),
            Exit::Stage2Fault {
                gpa: 0xfee0_0030,
                gva: Some(0xffff_8000_fee0_0030),
                access: AccessKind::Write
            }
        );
    }

    #[test]
    fn inv_benign_exception_vmx_ac_is_reflected_and_vmx_instructions_ud() {
        let mut v = vcpu(vec![
            Box::new(|f, _| {
                f.insert(ro::EXIT_REASON, u64::from(reason::EXCEPTION_OR_NMI));
                f.insert(ro::VMEXIT_INTERRUPTION_INFO, 0x8000_0b11);
                f.insert(EXIT_INTERRUPTION_ERROR_CODE, 0);
            }),
            Box::new(|f, _| {
                // #AC went back in with its error code.
                assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0b11);
                assert_eq!(f[&ENTRY_EXCEPTION_ERROR_CODE], 0);
                f.insert(ro::EXIT_REASON, u64::from(reason::VMXON));
            }),
            Box::new(|f, _| {
                // #UD for the guest's VMXON.
                assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0306);
                f.insert(ro::EXIT_REASON, u64::from(reason::HLT));
            }),
        ]);
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.internal_exits(), 2);
    }

    #[test]
    fn interrupts_wait_for_the_window_and_turns_end() {
        let mut v = vcpu(vec![
            Box::new(|f, _| {
                // RFLAGS.IF = 0: not injected, the window armed.
                assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0);
                assert_ne!(
                    f[&control::PRIMARY_PROCBASED_EXEC_CONTROLS]
                        & u64::from(bits::PROC_INTERRUPT_WINDOW),
                    0
                );
                f.insert(guest::RFLAGS, 0x202);
                f.insert(ro::EXIT_REASON, u64::from(reason::INTERRUPT_WINDOW));
            }),
            Box::new(|f, _| {
                assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0030);
                assert_eq!(
                    f[&control::PRIMARY_PROCBASED_EXEC_CONTROLS]
                        & u64::from(bits::PROC_INTERRUPT_WINDOW),
                    0
                );
                f.insert(ro::EXIT_REASON, u64::from(reason::EXTERNAL_INTERRUPT));
            }),
            exit(reason::TRIPLE_FAULT, 0, 0),
            Box::new(|f, _| {
                f.insert(
                    ro::EXIT_REASON,
                    1 << 31 | u64::from(reason::INVALID_GUEST_STATE),
                );
            }),
        ]);
        v.hw().fields.insert(guest::RFLAGS, 0x2);
        let ci = v.x86_interface().unwrap();
        ci.inject = Some(0x30);
        ci.load = true;
        ci.wake_at = Some(5000);
        assert_eq!(v.run().unwrap(), Exit::ExternalInterrupt);
        v.x86_interface().unwrap().wake_at = Some(4000);
        assert_eq!(
            v.hw().deadlines,
            [5000],
            "the guest timer's deadline armed once"
        );
        assert!(v.x86_interface().unwrap().sync);
        crate::hostirq::TABLE.set(0xef, HostIrq::EndOfTurn);
        v.hw().host_irq = Some(0xef);
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.hw().deadlines, [5000, 4000], "an earlier one armed again");
        assert_eq!(v.run().unwrap(), Exit::Shutdown(ShutdownKind::TripleFault));
        assert_eq!(v.run().unwrap(), Exit::Shutdown(ShutdownKind::InvalidState));
    }

    #[test]
    fn msrs_of_the_vmcs_and_the_syscall_msrs_are_handled_here() {
        let wr = |msr: u64, v: u64| -> Step {
            Box::new(move |f, g| {
                (g.rcx, g.rdx, g.rax) = (msr, v >> 32, v & 0xffff_ffff);
                f.insert(ro::EXIT_REASON, u64::from(reason::WRMSR));
                f.insert(ro::VMEXIT_INSTRUCTION_LEN, 2);
            })
        };
        let mut v = vcpu(vec![
            wr(0xc000_0080, 0x501),
            wr(0xc000_0082, 0xffff_8000_1234_5000),
            Box::new(|f, g| {
                g.rcx = 0xc000_0082;
                f.insert(ro::EXIT_REASON, u64::from(reason::RDMSR));
            }),
            // RDMSR's result arrived; then a non-canonical FS_BASE: #GP,
            // RIP unchanged.
            Box::new(|f, g| {
                assert_eq!((g.rax, g.rdx), (0x1234_5000, 0xffff_8000));
                (g.rcx, g.rdx, g.rax) = (0xc000_0100, 0x8000_0000, 0);
                f.insert(ro::EXIT_REASON, u64::from(reason::WRMSR));
            }),
            Box::new(|f, _| {
                assert_eq!(f[&guest::IA32_EFER_FULL], 0x501, "SCE set, LME/LMA kept");
                assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0b0d);
                assert_eq!(
                    f[&guest::RIP],
                    0x10_0006,
                    "three 2-byte MSR instructions done"
                );
                f.insert(ro::EXIT_REASON, u64::from(reason::HLT));
            }),
        ]);
        v.hw().fields.insert(guest::CR0, 0x8000_0031);
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.internal_exits(), 4);
        assert!(v.hw().msrs.contains(&(0xc000_0082, 0xffff_8000_1234_5000)));
        // Rebound on another CPU: the guest's LSTAR and FPU state go into
        // that CPU, whatever ran there meanwhile.
        v.hw().fpu_live = 0x42;
        v.unbind().unwrap();
        v.hw().msrs.clear();
        v.hw().fpu_live = 0x99;
        v.bind(1).unwrap();
        assert!(v.hw().msrs.contains(&(0xc000_0082, 0xffff_8000_1234_5000)));
        assert_eq!(v.hw().fpu_live, 0x42);
    }

    #[test]
    fn inv_exit_qual_vmx_mmio_decoded_with_this_exits_access() {
        // 32-bit protected mode, no paging: `mov [edi], eax` at 0x1000.
        let code = [0x89, 0x07, 0xf4];
        let mut v = vcpu_at(
            vec![
                Box::new(|f, g| {
                    g.rax = 0xdead_beef;
                    g.rdi = 0xfeb0_0010;
                    f.insert(ro::EXIT_REASON, u64::from(reason::EPT_VIOLATION));
                    f.insert(ro::EXIT_QUALIFICATION, 0b010);
                    f.insert(ro::GUEST_PHYSICAL_ADDR_FULL, 0xfeb0_0010);
                }),
                Box::new(|f, _| {
                    assert_eq!(f[&guest::RIP], 0x1002, "past the 2-byte store");
                    // A fault on RAM (the code page): not emulated.
                    f.insert(ro::EXIT_REASON, u64::from(reason::EPT_VIOLATION));
                    f.insert(ro::EXIT_QUALIFICATION, 0b001);
                    f.insert(ro::GUEST_PHYSICAL_ADDR_FULL, 0x1000);
                }),
            ],
            EntryMode::X86Protected32,
            0x1000,
            &code,
        );
        match v.run().unwrap() {
            Exit::Mmio(m) => {
                assert_eq!((m.gpa, m.size), (0xfeb0_0010, AccessSize::B4));
                assert_eq!(m.op, vmm::exit::MmioOp::Write(0xdead_beef));
            }
            e => panic!("{e:?}"),
        }
        v.advance_pc().unwrap();
        assert_eq!(
            v.run().unwrap(),
            Exit::Stage2Fault {
                gpa: 0x1000,
                gva: None,
                access: AccessKind::Read
            }
        );
    }

    #[test]
    fn control_register_moves() {
        let cr = |q: u64| -> Step {
            Box::new(move |f, _| {
                f.insert(ro::EXIT_REASON, u64::from(reason::CR_ACCESS));
                f.insert(ro::EXIT_QUALIFICATION, q);
                f.insert(ro::VMEXIT_INSTRUCTION_LEN, 3);
            })
        };
        // 32-bit protected mode, EFER.LME and CR4.PAE set by the guest,
        // then `mov cr0, rax` with PG: long mode comes on.
        let mut v = vcpu_at(
            vec![
                Box::new(|f, g| {
                    f.insert(guest::IA32_EFER_FULL, EFER_LME);
                    f.insert(guest::CR4, 0x2020);
                    g.rax = 0x8000_0011;
                    f.insert(ro::EXIT_REASON, u64::from(reason::CR_ACCESS));
                    f.insert(ro::EXIT_QUALIFICATION, 0);
                    f.insert(ro::VMEXIT_INSTRUCTION_LEN, 3);
                }),
                // mov cr8, rbx (reg 3) with 9; then mov rcx, cr8 (type 1).
                Box::new(|f, g| {
                    assert_eq!(f[&guest::IA32_EFER_FULL], EFER_LME | EFER_LMA);
                    assert_ne!(
                        f[&control::VMENTRY_CONTROLS] & u64::from(bits::ENTRY_IA32E_GUEST),
                        0
                    );
                    assert_eq!(f[&control::CR0_READ_SHADOW], 0x8000_0011);
                    assert_eq!(f[&guest::CR0], 0x8000_0031, "NE forced, shadowed");
                    g.rbx = 9;
                    f.insert(ro::EXIT_REASON, u64::from(reason::CR_ACCESS));
                    f.insert(ro::EXIT_QUALIFICATION, 8 | 3 << 8);
                }),
                cr(8 | 1 << 4 | 1 << 8),
                // mov cr4, rax with VMXE: #GP.
                Box::new(|f, g| {
                    assert_eq!(g.rcx, 9);
                    g.rax = CR4_VMXE;
                    f.insert(ro::EXIT_REASON, u64::from(reason::CR_ACCESS));
                    f.insert(ro::EXIT_QUALIFICATION, 4);
                }),
                Box::new(|f, _| {
                    assert_eq!(f[&control::VMENTRY_INTERRUPTION_INFO_FIELD], 0x8000_0b0d);
                    f.insert(ro::EXIT_REASON, u64::from(reason::HLT));
                }),
            ],
            EntryMode::X86Protected32,
            0x1000,
            &[0x0f, 0x22, 0xc0],
        );
        assert_eq!(v.run().unwrap(), Exit::Halt);
        assert_eq!(v.x86_interface().unwrap().cr8, 9);
        assert!(v.x86_interface().unwrap().sync);
        // CR8 moves exit (they would reach the host's APIC otherwise).
        let c = Controls::for_caps(&Caps::read(haswell)).unwrap();
        assert_eq!(
            c.proc & (bits::PROC_CR8_LOAD | bits::PROC_CR8_STORE),
            bits::PROC_CR8_LOAD | bits::PROC_CR8_STORE
        );
    }

    #[test]
    fn internal_exits_spend_the_turn_budget() {
        let script = (0..20)
            .map(|_| exit(reason::VMCLEAR, 0, 3))
            .collect::<Vec<_>>();
        let mut v = vcpu(script);
        v.begin_turn(3);
        assert_eq!(v.run().unwrap(), Exit::PreemptionTimer);
        assert_eq!(v.internal_exits(), 4);
    }
}
