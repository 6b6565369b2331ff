//! The interface a hardware backend provides: a [`Vcpu`] that runs until an
//! exit, and a [`Stage2`] mapper for a VM's guest-physical address space.
//!
//! `arch::x86_64::svm`, `arch::x86_64::vmx` and `arch::aarch64::el2`
//! implement these traits; `vmm::testing` (feature `testing`) implements them with scripted
//! exits so that everything above is tested on the host.

use crate::event::{Event, EventError, Queued};
use crate::exit::{Action, Exit};
use crate::regs::Reg;

/// The architecture a VM's guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestArch {
    X86_64,
    Aarch64,
}

/// A physical CPU, by the index the kernel gave it (not an APIC ID/MPIDR).
pub type PhysCpu = u32;

/// Errors a backend reports. None of them is the guest's fault alone: a
/// misbehaving guest gets an exit, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The backend has no such register (an arm64 backend asked for CR3) or
    /// the name is malformed (`X(31)`).
    NoSuchRegister(Reg),
    /// `run` on a vCPU not bound to the current physical CPU.
    NotBound,
    /// `bind` on a vCPU already bound elsewhere.
    AlreadyBound(PhysCpu),
    BadEvent(EventError),
    /// The hardware refused to enter the guest (VMRUN/VMLAUNCH/ERET failure).
    EntryFailed(&'static str),
    /// A scripted vCPU ran out of script (`vmm::testing`).
    ScriptEnded,
}

impl From<EventError> for BackendError {
    fn from(e: EventError) -> Self {
        BackendError::BadEvent(e)
    }
}

/// One virtual CPU, owned by one VM.
///
/// The vmm calls the methods in this order: `bind`, then repeatedly `run` and
/// the fix-ups for the exit it returned (`set_reg`, `advance_pc`, `inject`),
/// and `unbind` before the vCPU may be bound to another physical CPU
/// (AxVisor's model). Backends keep their own [`crate::event::PendingEvents`]
/// and deliver from it on entry, applying the payload at that moment
/// (rule `exc_payload`).
pub trait Vcpu {
    /// Starts one scheduling turn of this (bound) vCPU: arms the turn's
    /// deadline once (x86: the one-shot LAPIC timer, arm64: the CNTHP
    /// compare value) and gives the exits the backend handles itself a
    /// budget of `budget`. Neither is renewed by exits inside the turn, so
    /// a guest that loops on an exit the backend completes without the vmm
    /// (CPUID from the table, an MSR kept in the VMCB, at any privilege
    /// level) still loses the CPU when the turn is over: `run` then returns
    /// [`Exit::PreemptionTimer`].
    fn begin_turn(&mut self, budget: u64);
    /// Makes the next turn ([`Vcpu::begin_turn`]) end by `deadline` (a
    /// value of the VM's clock, `crate::irq::Clock`; arm64: CNTPCT) at the
    /// latest: the earliest timer deadline of a blocked vCPU, which the
    /// scheduler must act on while this one runs. Applies to one turn; the
    /// default ignores it (backends without a clock-based turn end).
    fn cap_turn(&mut self, _deadline: u64) {}
    /// Enters the guest and returns the next exit.
    fn run(&mut self) -> Result<Exit, BackendError>;
    fn reg(&mut self, reg: Reg) -> Result<u64, BackendError>;
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), BackendError>;
    /// Skips the instruction that caused the last exit. Backends normalize
    /// exits whose hardware already moved past the instruction (arm64 HVC:
    /// ELR_EL2 is the next instruction): after every exit the PC reads as
    /// the exiting instruction, so that an injected exception (an UNDEF for
    /// a bad HVC) reports the right address and `advance_pc` is uniform.
    fn advance_pc(&mut self) -> Result<(), BackendError>;
    /// Queues an event for delivery at the next entry.
    fn inject(&mut self, event: Event) -> Result<Queued, BackendError>;
    /// Puts the vCPU into the architectural state a loader described.
    fn apply_boot_state(&mut self, state: &BootState) -> Result<(), BackendError>;
    /// Makes the current physical CPU the one that runs this vCPU (loads the
    /// VMCS, sets the host save area, picks the ASID/VPID/VMID; rule `tlb_tag`).
    fn bind(&mut self, cpu: PhysCpu) -> Result<(), BackendError>;
    /// Releases the physical CPU (VMCLEAR, save EL1 state).
    fn unbind(&mut self) -> Result<(), BackendError>;

    /// Exits the backend handled itself without returning from `run`
    /// (x86: CPUID from its table, VMCB-held MSRs, DR moves, reflected
    /// exceptions): the part of the exit statistics the vmm does not see.
    fn internal_exits(&self) -> u64 {
        0
    }

    /// x86: the vCPU's interrupt state the vmm exchanges with the backend
    /// around each `run` ([`crate::x86::wiring::X86Interface`]): after
    /// each exit the backend updates `cr8` and sets `sync` when the vmm
    /// must look; it applies `inject`, `inject_nmi`, `window`, `wake_at`
    /// and `cr8` at the next entry when `load` is set.
    fn x86_interface(&mut self) -> Option<&mut crate::x86::wiring::X86Interface> {
        None
    }

    /// x86: refreshes the interface's `interruptible` and `rflags_if` from
    /// the guest state (the vmm asks only when it is about to inject or
    /// block).
    fn x86_refresh(&mut self) {}

    /// arm64: the GICv3 virtual CPU interface and the EL1 virtual timer as
    /// the vmm exchanges them with the hardware around each `run`
    /// ([`crate::arm64::wiring::VcpuInterface`]: loaded before the entry,
    /// saved after the exit). `None`: the backend has none (x86, or a CPU
    /// without the GICv3 system registers).
    fn gic_interface(&mut self) -> Option<&mut crate::arm64::wiring::VcpuInterface> {
        None
    }

    /// Applies one [`Action`].
    fn apply(&mut self, action: Action) -> Result<(), BackendError> {
        match action {
            Action::AdvancePc => self.advance_pc(),
            Action::SetReg(r, v) => self.set_reg(r, v),
            Action::Inject(e) => self.inject(e).map(|_| ()),
        }
    }
}

/// Permissions of a stage-2 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// Memory type of a stage-2 mapping (arm64 MemAttr, EPT memory type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// Normal write-back memory: guest RAM.
    Normal,
    /// Device memory: pass-through MMIO, never speculated.
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Attrs {
    pub perms: S2Perms,
    pub mem: MemType,
}

impl S2Attrs {
    /// Read/write/execute normal memory: what guest RAM gets.
    pub const RAM: S2Attrs = S2Attrs {
        perms: S2Perms {
            read: true,
            write: true,
            exec: true,
        },
        mem: MemType::Normal,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage2Error {
    /// GPA, HPA or length not a multiple of [`S2_PAGE`], or zero length.
    Misaligned,
    /// The range wraps or exceeds the IPA/physical-address size.
    OutOfRange,
    /// Part of the range is already mapped (map) or not mapped (protect).
    Conflict,
    /// No memory for page tables.
    NoMemory,
}

/// The smallest stage-2 granule (4 KiB on every backend).
pub const S2_PAGE: u64 = 4096;

/// The stage-2 (EPT / NPT / arm64 stage-2) mapper of one VM.
///
/// Block mappings are the mapper's business and follow rule `s2_block`;
/// callers only ever pass page-aligned ranges.
pub trait Stage2 {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error>;
    /// Removes every translation in the range (missing ones are fine).
    fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), Stage2Error>;
    fn protect(&mut self, gpa: u64, len: u64, attrs: S2Attrs) -> Result<(), Stage2Error>;
    /// Invalidates all TLB entries tagged with this VM's ASID/VPID/VMID
    /// (rule `tlb_tag`; on arm64 through the one barrier helper, rule
    /// `arm_tlb_isb`).
    fn flush(&mut self);
}

/// The argument checks every mapper needs: page-aligned, non-empty, no
/// wrap-around, and the last byte of both ranges below `2^addr_bits`
/// (a range may end exactly at the limit, rule `ipa_size`).
pub fn check_s2_range(gpa: u64, hpa: u64, len: u64, addr_bits: u32) -> Result<(), Stage2Error> {
    if len == 0 || !(gpa | hpa | len).is_multiple_of(S2_PAGE) {
        return Err(Stage2Error::Misaligned);
    }
    let max = if addr_bits >= 64 {
        u64::MAX
    } else {
        (1u64 << addr_bits) - 1
    };
    let fits = |base: u64| base.checked_add(len - 1).is_some_and(|last| last <= max);
    if fits(gpa) && fits(hpa) {
        Ok(())
    } else {
        Err(Stage2Error::OutOfRange)
    }
}

/// The CPU mode a guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, paging off, flat 4 GiB segments (Multiboot 0.6.96 §3.2).
    X86Protected32,
    /// 64-bit mode with paging on; `cr3` points at page tables built in guest RAM.
    X86Long64 { cr3: u64 },
    /// Real mode as after INIT and a start-up IPI (SDM §8.4.4.1, §9.1.4):
    /// CS.base = `cs_base` (the SIPI page), CS.selector = `cs_base >> 4`,
    /// 64 KiB segment limits, paging and protection off.
    X86Real { cs_base: u64 },
    /// EL1h with the MMU off and DAIF masked (Linux Documentation/arch/arm64/booting.rst).
    Arm64El1h,
}

/// Maximum number of extra registers in a [`BootState`].
pub const BOOT_REGS: usize = 6;

/// The initial vCPU state a loader describes and a backend applies:
/// the mode, the entry point and a few argument registers. Everything else
/// follows from the mode ([`x86_mode_state`], [`ARM64_BOOT_PSTATE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    pub mode: EntryMode,
    pub pc: u64,
    regs: [(Reg, u64); BOOT_REGS],
    nregs: usize,
}

impl BootState {
    pub fn new(mode: EntryMode, pc: u64) -> BootState {
        BootState {
            mode,
            pc,
            regs: [(Reg::Rax, 0); BOOT_REGS],
            nregs: 0,
        }
    }

    /// Adds an argument register; `None` if the list is full (a loader bug).
    pub fn with(mut self, reg: Reg, value: u64) -> Option<BootState> {
        *self.regs.get_mut(self.nregs)? = (reg, value);
        self.nregs += 1;
        Some(self)
    }

    pub fn regs(&self) -> &[(Reg, u64)] {
        &self.regs[..self.nregs]
    }

    /// The value the boot state gives `reg`, if any.
    pub fn reg(&self, reg: Reg) -> Option<u64> {
        self.regs().iter().find(|(r, _)| *r == reg).map(|&(_, v)| v)
    }
}

/// PSTATE for arm64 guest entry: EL1h (M = 0b0101), D, A, I, F masked.
pub const ARM64_BOOT_PSTATE: u64 = 0x3c5;

/// An x86 segment register in descriptor terms (SDM Vol. 3A §3.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Type field (bits 3:0 of access byte).
    pub typ: u8,
    /// S: code/data (1) or system (0).
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: 32-bit default operand size.
    pub db: bool,
    /// G: limit in 4 KiB units.
    pub g: bool,
}

impl Segment {
    /// The VMCB segment `attrib` field (APM Vol. 2 §15.5.1: descriptor bits
    /// 47:40 in attrib 7:0, bits 55:52 in attrib 11:8).
    pub fn vmcb_attrib(&self) -> u16 {
        u16::from(self.access_byte()) | (u16::from(self.flags_nibble()) << 8)
    }

    /// The VMCS access-rights field (SDM Vol. 3C §24.4.1 Table 24-2: bits
    /// 7:0 access byte, 15:12 AVL/L/DB/G, bit 16 unusable).
    pub fn vmx_access_rights(&self) -> u32 {
        let unusable = if self.present { 0 } else { 1 << 16 };
        u32::from(self.access_byte()) | (u32::from(self.flags_nibble()) << 12) | unusable
    }

    fn access_byte(&self) -> u8 {
        (self.typ & 0xf)
            | (u8::from(self.s) << 4)
            | ((self.dpl & 3) << 5)
            | (u8::from(self.present) << 7)
    }

    fn flags_nibble(&self) -> u8 {
        (u8::from(self.l) << 1) | (u8::from(self.db) << 2) | (u8::from(self.g) << 3)
    }
}

/// Control and segment state of an x86 boot mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86ModeState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// Guest EFER without SVME; the SVM backend must add EFER.SVME itself
    /// (APM Vol. 2 §15.5.1: VMRUN refuses a guest EFER with SVME clear).
    pub efer: u64,
    pub rflags: u64,
    pub cs: Segment,
    /// Used for DS, ES, FS, GS and SS.
    pub data: Segment,
    /// A busy TSS with base 0 (VMX requires a usable TR, SDM §26.3.1.2).
    pub tr: Segment,
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The x86 control registers and flat segments for an entry mode; `None`
/// for non-x86 modes.
pub fn x86_mode_state(mode: EntryMode) -> Option<X86ModeState> {
    let flat = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        typ: 0x3, // read/write, accessed
        s: true,
        dpl: 0,
        present: true,
        l: false,
        db: true,
        g: true,
    };
    let code32 = Segment {
        selector: 0x08,
        typ: 0xb, // execute/read, accessed
        ..flat
    };
    let tr = Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        typ: 0xb, // busy 32/64-bit TSS
        s: false,
        dpl: 0,
        present: true,
        l: false,
        db: false,
        g: false,
    };
    match mode {
        EntryMode::X86Protected32 => Some(X86ModeState {
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            rflags: 0x2,
            cs: code32,
            data: flat,
            tr,
        }),
        EntryMode::X86Long64 { cr3 } => Some(X86ModeState {
            cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            rflags: 0x2,
            cs: Segment {
                l: true,
                db: false,
                ..code32
            },
            data: flat,
            tr,
        }),
        EntryMode::X86Real { cs_base } => {
            let real_data = Segment {
                selector: 0,
                base: 0,
                limit: 0xffff,
                typ: 0x3,
                s: true,
                dpl: 0,
                present: true,
                l: false,
                db: false,
                g: false,
            };
            Some(X86ModeState {
                // CR0 after INIT: ET (CD/NW are not modelled: caching is
                // the host's), everything else clear.
                cr0: CR0_ET,
                cr3: 0,
                cr4: 0,
                efer: 0,
                rflags: 0x2,
                cs: Segment {
                    selector: ((cs_base >> 4) & 0xffff) as u16,
                    base: cs_base & 0xf_ffff,
                    typ: 0xb,
                    ..real_data
                },
                data: real_data,
                tr: Segment {
                    selector: 0,
                    base: 0,
                    limit: 0xffff,
                    typ: 0xb,
                    s: false,
                    dpl: 0,
                    present: true,
                    l: false,
                    db: false,
                    g: false,
                },
            })
        }
        EntryMode::Arm64El1h => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s2_range_checks() {
        assert_eq!(check_s2_range(0, 0x10_0000, 0x1000, 48), Ok(()));
        assert_eq!(check_s2_range(0, 0, 0, 48), Err(Stage2Error::Misaligned));
        assert_eq!(
            check_s2_range(0x800, 0, 0x1000, 48),
            Err(Stage2Error::Misaligned)
        );
        assert_eq!(
            check_s2_range(0, 0x800, 0x1000, 48),
            Err(Stage2Error::Misaligned)
        );
        assert_eq!(
            check_s2_range(0, 0, 0x1001, 48),
            Err(Stage2Error::Misaligned)
        );
        assert_eq!(
            check_s2_range(u64::MAX - 0xfff, 0, 0x2000, 64),
            Err(Stage2Error::OutOfRange)
        );
        // A range may end exactly at the limit, not one page beyond.
        assert_eq!(check_s2_range((1 << 40) - 0x1000, 0, 0x1000, 40), Ok(()));
        assert_eq!(
            check_s2_range(1 << 40, 0, 0x1000, 40),
            Err(Stage2Error::OutOfRange)
        );
        assert_eq!(
            check_s2_range(0, (1 << 36) - 0x1000, 0x2000, 36),
            Err(Stage2Error::OutOfRange)
        );
        assert_eq!(check_s2_range(u64::MAX - 0xfff, 0, 0x1000, 64), Ok(()));
    }

    #[test]
    fn boot_state_regs() {
        let s = BootState::new(EntryMode::X86Protected32, 0x10_0000)
            .with(Reg::Rax, 0x2bad_b002)
            .and_then(|s| s.with(Reg::Rbx, 0x9000))
            .unwrap();
        assert_eq!(s.reg(Reg::Rax), Some(0x2bad_b002));
        assert_eq!(s.reg(Reg::Rcx), None);
        let mut full = Some(s);
        for _ in 0..BOOT_REGS - 2 {
            full = full.and_then(|s| s.with(Reg::Rcx, 1));
        }
        assert!(full.unwrap().with(Reg::Rdx, 1).is_none());
    }

    #[test]
    fn flat_segments_encode() {
        let p = x86_mode_state(EntryMode::X86Protected32).unwrap();
        // 32-bit flat code: access 0x9b, flags G|DB -> VMCB attrib 0xc9b.
        assert_eq!(p.cs.vmcb_attrib(), 0xc9b);
        assert_eq!(p.data.vmcb_attrib(), 0xc93);
        assert_eq!(p.cs.vmx_access_rights(), 0xc09b);
        assert_eq!(p.cr0 & CR0_PG, 0);
        let l = x86_mode_state(EntryMode::X86Long64 { cr3: 0x5000 }).unwrap();
        assert_eq!(l.cs.vmcb_attrib(), 0xa9b);
        assert_eq!(l.cr3, 0x5000);
        assert_eq!(l.efer, 0x500);
        assert_eq!(l.tr.vmx_access_rights(), 0x8b);
        assert!(x86_mode_state(EntryMode::Arm64El1h).is_none());
        let unusable = Segment {
            present: false,
            ..l.data
        };
        assert_ne!(unusable.vmx_access_rights() & (1 << 16), 0);
    }
}
