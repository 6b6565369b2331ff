//! The local APIC of one vCPU (SDM Vol. 3A ch. 11, "Advanced Programmable
//! Interrupt Controller"), as a pure state machine.
//!
//! Both interfaces: the xAPIC register page (MMIO at IA32_APIC_BASE, see
//! [`LocalApic::read_mmio`]) and the x2APIC MSRs 0x800-0x8FF
//! ([`LocalApic::read_msr`]), plus IA32_APIC_BASE (0x1B) and
//! IA32_TSC_DEADLINE (0x6E0). Both decode to one register index (MMIO
//! offset >> 4 = MSR - 0x800, SDM Table 11-6), so the two modes share one
//! register file and differ only in the access rules.
//!
//! The backend's side: [`LocalApic::highest_injectable`] says what may be
//! injected now, [`LocalApic::ack`] records the injection (IRR -> ISR), the
//! NMI and ExtINT inputs are separate flags. Time is an input: every method
//! that depends on it takes `now` in guest TSC ticks; the timer counts at
//! the configured APIC timer clock, and [`LocalApic::next_deadline`] tells
//! the hypervisor when to look again. Nothing allocates after
//! [`LocalApic::new`].
//!
//! What the model leaves out: the spurious-interrupt vector is stored but
//! never delivered (there is no INTA race to lose: the backend asks
//! [`LocalApic::highest_injectable`] right before it injects); the thermal
//! and performance-counter LVTs hold their values but have no source; CMCI
//! is absent; SMI and INIT delivery modes on LINT0/1 are ignored; the
//! focus-processor bit of the SVR is stored and has no effect.

use super::apic_bus::ApicTarget;
use super::{
    DeliveryMode, DestinationFormat, DestinationMode, InterruptMessage, Shorthand, Trigger,
};

/// IA32_APIC_BASE (SDM §11.4.4).
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE (SDM §11.5.4.1).
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// The x2APIC register MSRs (SDM §11.12.1.2).
pub const MSR_X2APIC_FIRST: u32 = 0x800;
pub const MSR_X2APIC_LAST: u32 = 0x8FF;
/// The xAPIC page after reset (SDM §11.4.4).
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;
/// The xAPIC register page is 4 KiB.
pub const XAPIC_MMIO_SIZE: u64 = 0x1000;

/// IA32_APIC_BASE bits (SDM Figure 11-5).
pub mod base {
    /// This processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (EXTD).
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable (EN).
    pub const EN: u64 = 1 << 11;
}

/// Register indices: xAPIC MMIO offset >> 4, or x2APIC MSR - 0x800 (SDM
/// Tables 11-1 and 11-6).
pub mod reg {
    pub const ID: u32 = 0x02;
    pub const VERSION: u32 = 0x03;
    pub const TPR: u32 = 0x08;
    /// Arbitration priority: xAPIC only.
    pub const APR: u32 = 0x09;
    pub const PPR: u32 = 0x0A;
    pub const EOI: u32 = 0x0B;
    /// Remote read (RRD): xAPIC only, reads 0.
    pub const RRD: u32 = 0x0C;
    pub const LDR: u32 = 0x0D;
    /// Destination format: xAPIC only.
    pub const DFR: u32 = 0x0E;
    pub const SVR: u32 = 0x0F;
    /// ISR bits 31:0 (vectors 0-31); ISR + n holds vectors 32n..32n+31.
    pub const ISR: u32 = 0x10;
    pub const TMR: u32 = 0x18;
    pub const IRR: u32 = 0x20;
    pub const ESR: u32 = 0x28;
    /// LVT CMCI: absent here (no MCG_CAP.CMCI_P).
    pub const LVT_CMCI: u32 = 0x2F;
    /// ICR bits 31:0 (xAPIC) or the whole 64-bit ICR (x2APIC).
    pub const ICR: u32 = 0x30;
    /// ICR bits 63:32: xAPIC only.
    pub const ICR_HIGH: u32 = 0x31;
    pub const LVT_TIMER: u32 = 0x32;
    pub const LVT_THERMAL: u32 = 0x33;
    pub const LVT_PERF: u32 = 0x34;
    pub const LVT_LINT0: u32 = 0x35;
    pub const LVT_LINT1: u32 = 0x36;
    pub const LVT_ERROR: u32 = 0x37;
    pub const INITIAL_COUNT: u32 = 0x38;
    pub const CURRENT_COUNT: u32 = 0x39;
    pub const DIVIDE_CONFIG: u32 = 0x3E;
    /// SELF IPI: x2APIC only, write-only.
    pub const SELF_IPI: u32 = 0x3F;
}

/// Error status register bits (SDM §11.5.3, Figure 11-9). Bits 0-3 are
/// APIC-bus errors of P6/Pentium processors and never set here.
pub mod esr {
    /// Lowest-priority IPI not supported by the sender (never set here:
    /// lowest priority is supported).
    pub const REDIRECTABLE_IPI: u32 = 1 << 4;
    /// An ICR/SELF IPI write with a fixed or lowest-priority vector 0-15.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt with vector 0-15 arrived (message or local source).
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// An xAPIC-mode access to a reserved register offset.
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

/// LVT entry bits (SDM §11.5.1, Figure 11-8).
pub mod lvt {
    pub const VECTOR: u32 = 0xFF;
    pub const DELIVERY_MODE: u32 = 0x7 << 8;
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    pub const POLARITY_LOW: u32 = 1 << 13;
    pub const REMOTE_IRR: u32 = 1 << 14;
    pub const LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    /// Timer mode, bits 18:17: 00 one-shot, 01 periodic, 10 TSC-deadline.
    pub const TIMER_MODE: u32 = 0x3 << 17;
    pub const TIMER_PERIODIC: u32 = 1 << 17;
    pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;
    pub const MODE_FIXED: u32 = 0;
    pub const MODE_NMI: u32 = 4 << 8;
    pub const MODE_EXTINT: u32 = 7 << 8;
}

/// SVR bits (SDM §11.9, Figure 11-23).
pub mod svr {
    pub const VECTOR: u32 = 0xFF;
    /// APIC software enable.
    pub const ENABLE: u32 = 1 << 8;
    /// Focus processor checking (P6/Pentium; stored, no effect).
    pub const FOCUS_DISABLE: u32 = 1 << 9;
    /// Suppress EOI broadcasts (§11.8.5).
    pub const SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;
    pub const WRITABLE: u32 = VECTOR | ENABLE | FOCUS_DISABLE | SUPPRESS_EOI_BROADCAST;
}

/// Version 0x14 (an integrated APIC, as KVM and QEMU report).
pub const APIC_VERSION: u32 = 0x14;
/// Six LVT entries (timer, thermal, performance counter, LINT0, LINT1,
/// error): max LVT entry = 5, the Pentium 4 / Xeon layout. CMCI (a
/// seventh) is not offered.
pub const MAX_LVT_ENTRY: u32 = 5;
/// The version register (SDM §11.4.8, Figure 11-7): bit 24 says that EOI
/// broadcasts can be suppressed (SVR bit 12).
pub const VERSION_VALUE: u32 = APIC_VERSION | (MAX_LVT_ENTRY << 16) | (1 << 24);

const LVT_COUNT: usize = 6;
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_ERROR: usize = 5;

/// ICR bits 31:0 that software writes (§11.6.1, Figure 11-12): vector,
/// delivery mode, destination mode, level, trigger mode, shorthand.
/// Delivery status (bit 12) is read-only and always reads idle.
const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
/// x2APIC ICR: bits 31:20, 17:16 and 13 are must-be-zero (§11.12.9;
/// KVM's X2APIC_ICR_RESERVED_BITS). Bit 12 (the removed busy bit) is
/// tolerated and ignored, as KVM and Intel hardware do.
const X2APIC_ICR_ALLOWED: u64 = 0xFFFF_FFFF_000C_DFFF;

/// The three states IA32_APIC_BASE selects (SDM §11.12.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApicMode {
    /// EN = 0: no APIC; LINT0 is the processor's INTR pin, LINT1 its NMI
    /// pin (§11.4.3); receives no messages.
    Disabled,
    /// EN = 1, EXTD = 0: registers in the MMIO page.
    #[default]
    XApic,
    /// EN = 1, EXTD = 1: registers as MSRs 0x800-0x8FF.
    X2Apic,
}

/// A register access the guest gets #GP(0) for (RDMSR/WRMSR, or the
/// CR8 write). xAPIC MMIO accesses never fail: they follow hardware and
/// set ESR bits instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// No such register in this mode (reserved index, or xAPIC-only
    /// registers such as DFR, APR and ICR high in x2APIC mode), or an MSR
    /// the configuration does not offer (IA32_TSC_DEADLINE without the
    /// CPUID bit).
    NoSuchRegister,
    /// WRMSR to a read-only x2APIC register (§11.12.1.2).
    ReadOnly,
    /// RDMSR of a write-only x2APIC register (EOI, SELF IPI).
    WriteOnly,
    /// Non-zero reserved bits (x2APIC RsvdZ, §11.12.1.3; IA32_APIC_BASE
    /// reserved bits; CR8 bits 63:4).
    ReservedBits,
    /// An IA32_APIC_BASE write into the invalid state (EN = 0, EXTD = 1),
    /// x2APIC -> xAPIC, or disabled -> x2APIC (§11.12.5.1).
    InvalidTransition,
    /// An x2APIC MSR while the APIC is not in x2APIC mode (§11.12.1.2).
    NotX2Apic,
}

/// What a register write asks the rest of the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicEffect {
    None,
    /// An IPI (ICR or SELF IPI write): route it with this vCPU as the
    /// source.
    Send(InterruptMessage),
    /// EOI of a level-triggered vector with broadcasts not suppressed:
    /// tell every I/O APIC (§11.8.5).
    EoiBroadcast(u8),
}

/// The two local interrupt pins (§11.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lint {
    Lint0,
    Lint1,
}

/// Fixed per-vCPU facts, given at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicConfig {
    /// The initial APIC ID: the x2APIC ID, whose low 8 bits are the xAPIC
    /// ID (§11.12.5.1). Must agree with CPUID leaves 1, 0xB and 0x1F.
    pub apic_id: u32,
    /// IA32_APIC_BASE.BSP after reset. The BSP also gets LINT0 in ExtINT
    /// mode at reset, the "virtual wire" firmware would set up (MP spec
    /// §3.6.2.2), as KVM and QEMU do: 8259 interrupts reach a guest that
    /// never touches its APIC.
    pub bsp: bool,
    /// The guest's TSC frequency, in kHz (0 is taken as 1).
    pub tsc_khz: u32,
    /// The APIC timer's input clock before the divider, in kHz (0 is taken
    /// as 1).
    pub timer_khz: u32,
    /// `CPUID.01H:ECX.x2APIC[21]`: EXTD is writable.
    pub x2apic: bool,
    /// `CPUID.01H:ECX.TSC_Deadline[24]`: LVT timer bit 18 and
    /// IA32_TSC_DEADLINE exist.
    pub tsc_deadline: bool,
    /// The guest's MAXPHYADDR (`CPUID.80000008H:EAX[7:0]`): IA32_APIC_BASE
    /// bits from here up are reserved. Clamped to 36..=52.
    pub phys_addr_bits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
    /// 0b11: the counter does not run (as KVM).
    Reserved,
}

/// The local APIC of one vCPU.
#[derive(Clone, Debug)]
pub struct LocalApic {
    cfg: LapicConfig,
    apic_base: u64,
    /// xAPIC mode: the 8-bit APIC ID (register bits 31:24); x2APIC mode:
    /// the 32-bit x2APIC ID.
    id: u32,
    tpr: u8,
    /// xAPIC LDR (bits 31:24); x2APIC mode derives it from the ID.
    ldr: u32,
    /// DFR bits 31:28 (bits 27:0 read as ones).
    dfr: u32,
    svr: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    /// What ESR reads: the errors latched by the last ESR write.
    esr: u32,
    /// Errors detected since the last ESR write (§11.5.3).
    esr_pending: u32,
    icr: u64,
    /// Timer, thermal, performance counter, LINT0, LINT1, error.
    lvt: [u32; LVT_COUNT],
    initial_count: u32,
    divide_config: u32,
    /// One-shot/periodic: counting.
    timer_armed: bool,
    /// One-shot/periodic: the next expiry, in TSC ticks * timer kHz (exact:
    /// one timer count is divisor * TSC kHz of these units).
    timer_next: u128,
    /// IA32_TSC_DEADLINE (0: disarmed).
    tsc_deadline: u64,
    /// Input levels of LINT0/LINT1 (the asserted state of the wire).
    lint_level: [bool; 2],
    nmi_pending: bool,
    /// An ExtINT message waits for its INTA.
    extint_message: bool,
}

fn vector_bit(bits: &[u32; 8], vector: u8) -> bool {
    bits[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

fn set_vector_bit(bits: &mut [u32; 8], vector: u8, value: bool) {
    let word = &mut bits[usize::from(vector >> 5)];
    if value {
        *word |= 1 << (vector & 31);
    } else {
        *word &= !(1 << (vector & 31));
    }
}

/// The highest vector whose bit is set.
fn highest_vector(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find_map(|i| {
        let w = bits[i];
        (w != 0).then(|| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
    })
}

/// The divide configuration register's divisor (SDM Figure 11-10): bits
/// 3,1,0 = 000 -> 2, 001 -> 4, ..., 110 -> 128, 111 -> 1.
pub fn timer_divisor(divide_config: u32) -> u32 {
    let v = ((divide_config & 8) >> 1) | (divide_config & 3);
    if v == 7 {
        1
    } else {
        2 << v
    }
}

impl LocalApic {
    /// The APIC after power-up (§11.4.7.1): xAPIC mode at
    /// [`DEFAULT_APIC_BASE`], software-disabled, every LVT masked (but the
    /// BSP's LINT0, see [`LapicConfig::bsp`]).
    pub fn new(cfg: LapicConfig) -> LocalApic {
        let cfg = LapicConfig {
            tsc_khz: cfg.tsc_khz.max(1),
            timer_khz: cfg.timer_khz.max(1),
            phys_addr_bits: cfg.phys_addr_bits.clamp(36, 52),
            ..cfg
        };
        let mut apic = LocalApic {
            cfg,
            apic_base: 0,
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [0; LVT_COUNT],
            initial_count: 0,
            divide_config: 0,
            timer_armed: false,
            timer_next: 0,
            tsc_deadline: 0,
            lint_level: [false; 2],
            nmi_pending: false,
            extint_message: false,
        };
        apic.reset();
        apic
    }

    /// RESET (power-up) state (§11.4.7.1, §11.12.5.1): IA32_APIC_BASE back
    /// to xAPIC mode at the default base, the initial APIC ID, registers as
    /// [`LocalApic::new`] makes them. The LINT input levels are wires and
    /// stay.
    pub fn reset(&mut self) {
        self.apic_base = DEFAULT_APIC_BASE | base::EN | if self.cfg.bsp { base::BSP } else { 0 };
        self.id = self.cfg.apic_id & 0xFF;
        self.reset_registers();
        self.nmi_pending = false;
        self.extint_message = false;
        self.virtual_wire();
    }

    /// INIT (§11.4.7.3, §11.12.5.1): every register to its reset value
    /// except the APIC ID; IA32_APIC_BASE (mode, base, BSP) is unchanged.
    /// The vCPU's own INIT state (wait-for-SIPI on an AP) is the core's.
    pub fn init_reset(&mut self) {
        self.reset_registers();
        self.nmi_pending = false;
        self.extint_message = false;
        self.virtual_wire();
    }

    fn virtual_wire(&mut self) {
        if self.apic_base & base::BSP != 0 && self.mode() != ApicMode::Disabled {
            self.lvt[LVT_LINT0] = lvt::MODE_EXTINT;
        }
    }

    /// Registers to their power-up values, the ID and IA32_APIC_BASE aside.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xF000_0000;
        self.svr = 0xFF;
        self.irr = [0; 8];
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [lvt::MASKED; LVT_COUNT];
        self.initial_count = 0;
        self.divide_config = 0;
        self.timer_armed = false;
        self.timer_next = 0;
        self.tsc_deadline = 0;
    }

    // ----- state queries -----

    /// IA32_APIC_BASE's current value.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// Disabled, xAPIC or x2APIC, per IA32_APIC_BASE.
    pub fn mode(&self) -> ApicMode {
        match (
            self.apic_base & base::EN != 0,
            self.apic_base & base::EXTD != 0,
        ) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// The guest-physical address of the xAPIC page, only in xAPIC mode
    /// (§11.4.5: relocatable; x2APIC mode has no MMIO interface, §11.12.1).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.apic_base & !0xFFF)
    }

    /// The APIC ID in the current mode's width (8-bit xAPIC ID or 32-bit
    /// x2APIC ID).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Hardware- and software-enabled (SVR bit 8, §11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled && self.svr & svr::ENABLE != 0
    }

    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Processor priority (§11.8.3.1): TPR if its class is at least the
    /// class of the highest in-service vector, else that class.
    pub fn ppr(&self) -> u8 {
        let isrv = highest_vector(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// Arbitration priority (§11.6.2.4, Figure 11-15). The SDM's formula
    /// reads `max(TPR[7:4] AND ISRV[7:4], IRRV[7:4])`; taken as the
    /// highest of the three classes.
    pub fn apr(&self) -> u8 {
        let isrv = highest_vector(&self.isr).unwrap_or(0) >> 4;
        let irrv = highest_vector(&self.irr).unwrap_or(0) >> 4;
        let tpr = self.tpr >> 4;
        if tpr >= irrv && tpr > isrv {
            self.tpr
        } else {
            tpr.max(isrv).max(irrv) << 4
        }
    }

    /// CR8 reads `TPR[7:4]` (§11.8.6).
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// MOV to CR8 sets `TPR[7:4]` and clears `TPR[3:0]` (§11.8.6); bits 63:4
    /// are reserved (#GP).
    pub fn write_cr8(&mut self, value: u64) -> Result<(), ApicError> {
        if value > 0xF {
            return Err(ApicError::ReservedBits);
        }
        self.tpr = (value as u8) << 4;
        Ok(())
    }

    /// What the router needs to know about this APIC (publish it after
    /// writes to ID, LDR, DFR, SVR, IA32_APIC_BASE; PPR after TPR/CR8
    /// writes, acks and EOIs if lowest-priority delivery matters).
    pub fn target(&self) -> ApicTarget {
        ApicTarget {
            mode: self.mode(),
            id: self.id,
            ldr: self.ldr_value(),
            dfr: self.dfr | 0x0FFF_FFFF,
            software_enabled: self.software_enabled(),
            ppr: self.ppr(),
        }
    }

    fn ldr_value(&self) -> u32 {
        match self.mode() {
            // §11.12.10.2: cluster = ID[19:4], bit ID[3:0] of the low 16.
            ApicMode::X2Apic => ((self.id >> 4) << 16) | (1 << (self.id & 0xF)),
            _ => self.ldr,
        }
    }

    // ----- interrupt acceptance and delivery -----

    /// A fixed (or lowest-priority, once routed) interrupt arrives
    /// (§11.8.4): its IRR bit is set and its TMR bit records the trigger.
    /// Vectors 0-15 are illegal: dropped with "received illegal vector" in
    /// ESR (§11.5.2). A software-disabled APIC accepts none (§11.4.7.2;
    /// as KVM). Returns whether the vector was accepted.
    pub fn accept_interrupt(&mut self, vector: u8, trigger: Trigger) -> bool {
        if !self.software_enabled() {
            return false;
        }
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        set_vector_bit(&mut self.irr, vector, true);
        set_vector_bit(&mut self.tmr, vector, trigger == Trigger::Level);
        true
    }

    /// The highest pending vector whose priority class is above the PPR's
    /// (§11.8.3.1), if the APIC is software-enabled. The backend injects
    /// it (when the guest's IF and shadows allow) and then calls
    /// [`LocalApic::ack`].
    pub fn highest_injectable(&self) -> Option<u8> {
        if !self.software_enabled() {
            return None;
        }
        let v = highest_vector(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The backend delivered `vector` to the guest: IRR -> ISR (§11.8.4).
    /// False (and nothing changes) if the vector was not pending.
    pub fn ack(&mut self, vector: u8) -> bool {
        if !vector_bit(&self.irr, vector) {
            return false;
        }
        set_vector_bit(&mut self.irr, vector, false);
        set_vector_bit(&mut self.isr, vector, true);
        true
    }

    /// End of interrupt (§11.8.5): clears the highest ISR bit. Returns the
    /// vector if it was level-triggered (TMR set) and EOI broadcasts are
    /// not suppressed (SVR bit 12), for the I/O APICs. A LINT pin's
    /// remote IRR with that vector clears too (§11.5.1).
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest_vector(&self.isr)?;
        set_vector_bit(&mut self.isr, v, false);
        if self.lvt[LVT_LINT0] & lvt::REMOTE_IRR != 0 && self.lvt[LVT_LINT0] as u8 == v {
            self.lvt[LVT_LINT0] &= !lvt::REMOTE_IRR;
            self.lint0_level_check();
        }
        (vector_bit(&self.tmr, v) && self.svr & svr::SUPPRESS_EOI_BROADCAST == 0).then_some(v)
    }

    /// An NMI arrives (message or LINT): latched until the backend takes
    /// it. NMIs are accepted even by a software-disabled APIC (§11.4.7.2).
    pub fn accept_nmi(&mut self) {
        if self.mode() != ApicMode::Disabled {
            self.nmi_pending = true;
        }
    }

    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// The backend injects the NMI: clears and returns the pending flag.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }

    /// An ExtINT message (I/O APIC or MSI delivery mode 111) arrives: the
    /// vector will come from the 8259 at INTA.
    pub fn accept_extint(&mut self) {
        if self.mode() != ApicMode::Disabled {
            self.extint_message = true;
        }
    }

    /// An 8259 interrupt waits for INTA: an ExtINT message, or LINT0
    /// asserted with its LVT unmasked in ExtINT mode (level-sensitive,
    /// §11.5.1), or LINT0 asserted while the APIC is disabled (LINT0 is
    /// then INTR, §11.4.3). The backend gets the vector from the PIC
    /// model, injects it and calls [`LocalApic::ack_extint`].
    pub fn extint_pending(&self) -> bool {
        if self.extint_message {
            return true;
        }
        if !self.lint_level[0] {
            return false;
        }
        match self.mode() {
            ApicMode::Disabled => true,
            _ => {
                let l = self.lvt[LVT_LINT0];
                l & lvt::MASKED == 0 && l & lvt::DELIVERY_MODE == lvt::MODE_EXTINT
            }
        }
    }

    /// INTA done for an ExtINT: the message (if any) is consumed. The
    /// LINT0 level path stays pending while the PIC holds its line up.
    pub fn ack_extint(&mut self) {
        self.extint_message = false;
    }

    /// A LINT pin's input changes (`level`: asserted). By the LVT entry's
    /// delivery mode (§11.5.1): fixed edge on the rising edge, fixed level
    /// (LINT0 only; LINT1 is always edge) while asserted and remote IRR is
    /// clear, NMI on the rising edge, ExtINT sampled by
    /// [`LocalApic::extint_pending`]; SMI, INIT and reserved modes are
    /// ignored. The polarity bit is stored but does not invert: `level` is
    /// the asserted state, as the I/O APIC's inputs. With the APIC
    /// disabled, LINT0 is INTR and LINT1 is NMI (§11.4.3). Returns whether
    /// a fixed interrupt or an NMI was accepted.
    pub fn set_lint(&mut self, pin: Lint, level: bool) -> bool {
        let i = match pin {
            Lint::Lint0 => 0,
            Lint::Lint1 => 1,
        };
        let rising = level && !self.lint_level[i];
        self.lint_level[i] = level;
        if self.mode() == ApicMode::Disabled {
            if i == 1 && rising {
                self.nmi_pending = true;
                return true;
            }
            return false;
        }
        let l = self.lvt[LVT_LINT0 + i];
        if l & lvt::MASKED != 0 {
            return false;
        }
        match l & lvt::DELIVERY_MODE {
            lvt::MODE_FIXED if i == 0 && l & lvt::LEVEL != 0 => self.lint0_level_check(),
            lvt::MODE_FIXED if rising => self.accept_interrupt(l as u8, Trigger::Edge),
            lvt::MODE_NMI if rising => {
                self.nmi_pending = true;
                true
            }
            _ => false,
        }
    }

    /// LINT0 in fixed level mode: deliver while asserted, unmasked and
    /// remote IRR clear; remote IRR is set on acceptance (§11.5.1).
    fn lint0_level_check(&mut self) -> bool {
        let l = self.lvt[LVT_LINT0];
        if self.lint_level[0]
            && l & (lvt::MASKED | lvt::REMOTE_IRR | lvt::DELIVERY_MODE) == 0
            && l & lvt::LEVEL != 0
            && self.mode() != ApicMode::Disabled
            && self.accept_interrupt(l as u8, Trigger::Level)
        {
            self.lvt[LVT_LINT0] |= lvt::REMOTE_IRR;
            return true;
        }
        false
    }

    /// Logs an error (§11.5.3) and signals it through the LVT error entry.
    /// An illegal vector there only adds "received illegal vector" (no
    /// second error interrupt).
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let l = self.lvt[LVT_ERROR];
        if l & lvt::MASKED == 0 && self.software_enabled() {
            let v = l as u8;
            if v < 16 {
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            } else {
                set_vector_bit(&mut self.irr, v, true);
                set_vector_bit(&mut self.tmr, v, false);
            }
        }
    }

    // ----- timer (§11.5.4) -----

    fn timer_mode(&self) -> TimerMode {
        match self.lvt[LVT_TIMER] & lvt::TIMER_MODE {
            0 => TimerMode::OneShot,
            lvt::TIMER_PERIODIC => TimerMode::Periodic,
            lvt::TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    /// `now` in the timer's exact units (TSC ticks * timer kHz).
    fn scaled(&self, now: u64) -> u128 {
        u128::from(now) * u128::from(self.cfg.timer_khz)
    }

    /// One timer count in those units: divisor * TSC kHz.
    fn count_len(&self) -> u128 {
        u128::from(timer_divisor(self.divide_config)) * u128::from(self.cfg.tsc_khz)
    }

    fn counting(&self) -> bool {
        self.timer_armed && matches!(self.timer_mode(), TimerMode::OneShot | TimerMode::Periodic)
    }

    /// Fires what expired by `now`: a one-shot count reaching 0 (then
    /// idle), a periodic count (reloaded on its original grid, so no
    /// drift; periods missed while nobody looked coalesce into one
    /// interrupt, as an IRR bit would), a TSC deadline (then disarmed and
    /// IA32_TSC_DEADLINE cleared, §11.5.4.1). The interrupt goes to the
    /// LVT timer vector unless masked. Returns whether one was accepted.
    /// Call it before injecting and whenever [`LocalApic::next_deadline`]
    /// passes; every register access calls it too.
    pub fn update(&mut self, now: u64) -> bool {
        match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic if self.timer_armed => {
                let t = self.scaled(now);
                if t < self.timer_next {
                    return false;
                }
                if self.timer_mode() == TimerMode::Periodic {
                    let period = u128::from(self.initial_count) * self.count_len();
                    let missed = (t - self.timer_next) / period;
                    self.timer_next += (missed + 1) * period;
                } else {
                    self.timer_armed = false;
                }
                self.timer_fire()
            }
            TimerMode::TscDeadline if self.tsc_deadline != 0 && now >= self.tsc_deadline => {
                self.tsc_deadline = 0;
                self.timer_fire()
            }
            _ => false,
        }
    }

    fn timer_fire(&mut self) -> bool {
        let l = self.lvt[LVT_TIMER];
        l & lvt::MASKED == 0 && self.accept_interrupt(l as u8, Trigger::Edge)
    }

    /// The TSC value at which the timer next fires, for a host timer; None
    /// if it is idle or masked (a masked expiry changes nothing the guest
    /// can see before its next access, which catches up).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lvt[LVT_TIMER] & lvt::MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic if self.timer_armed => {
                let khz = u128::from(self.cfg.timer_khz);
                let tsc = self.timer_next.div_ceil(khz);
                Some(u64::try_from(tsc).unwrap_or(u64::MAX))
            }
            TimerMode::TscDeadline if self.tsc_deadline != 0 => Some(self.tsc_deadline),
            _ => None,
        }
    }

    /// The current-count register at `now`: counts left in this period,
    /// 0 when idle and always 0 in TSC-deadline mode (§11.5.4.1).
    fn current_count(&self, now: u64) -> u32 {
        if !self.counting() {
            return 0;
        }
        let t = self.scaled(now);
        let len = self.count_len();
        let mut next = self.timer_next;
        if t >= next {
            if self.timer_mode() != TimerMode::Periodic {
                return 0;
            }
            let period = u128::from(self.initial_count) * len;
            next += ((t - next) / period + 1) * period;
        }
        let left = (next - t).div_ceil(len);
        left.min(u128::from(self.initial_count)) as u32
    }

    /// Initial count write (§11.5.4): (re)starts counting from `value`; 0
    /// stops the timer; ignored in TSC-deadline mode.
    fn write_initial_count(&mut self, value: u32, now: u64) {
        match self.timer_mode() {
            TimerMode::TscDeadline => {}
            mode => {
                self.initial_count = value;
                self.timer_armed = value != 0 && mode != TimerMode::Reserved;
                self.timer_next = self.scaled(now) + u128::from(value) * self.count_len();
            }
        }
    }

    /// Divide configuration write: bits 0, 1, 3. A running count keeps
    /// its current value and continues at the new rate.
    fn write_divide_config(&mut self, value: u32, now: u64) {
        let left = self.current_count(now);
        self.divide_config = value & 0xB;
        if self.counting() {
            self.timer_next = self.scaled(now) + u128::from(left) * self.count_len();
        }
    }

    /// IA32_TSC_DEADLINE write: arms (non-zero) or disarms (0) in
    /// TSC-deadline mode, a deadline already past fires at once; ignored
    /// in the other modes (§11.5.4.1).
    fn write_tsc_deadline(&mut self, value: u64, now: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline = value;
            self.update(now);
        }
    }

    // ----- LVT and SVR -----

    fn lvt_writable(&self, index: usize) -> u32 {
        match index {
            0 => {
                let mode_bits = if self.cfg.tsc_deadline {
                    lvt::TIMER_MODE
                } else {
                    lvt::TIMER_PERIODIC
                };
                lvt::VECTOR | lvt::MASKED | mode_bits
            }
            1 | 2 => lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED,
            3 | 4 => {
                lvt::VECTOR | lvt::DELIVERY_MODE | lvt::POLARITY_LOW | lvt::LEVEL | lvt::MASKED
            }
            _ => lvt::VECTOR | lvt::MASKED,
        }
    }

    fn lvt_read_only(index: usize) -> u32 {
        match index {
            3 | 4 => lvt::DELIVERY_STATUS | lvt::REMOTE_IRR,
            _ => lvt::DELIVERY_STATUS,
        }
    }

    /// An LVT write: the mask bit cannot be cleared while the APIC is
    /// software-disabled (§11.4.7.2); a timer mode change disarms the
    /// timer (§11.5.4.1: the count stops, the initial count and
    /// IA32_TSC_DEADLINE read 0 until written again, as KVM does for
    /// TSC-deadline switches); remote IRR is kept (read-only).
    fn write_lvt(&mut self, index: usize, value: u32, now: u64) {
        let mut v = value & self.lvt_writable(index);
        if !self.software_enabled() {
            v |= lvt::MASKED;
        }
        if index == LVT_TIMER {
            let old = self.timer_mode();
            self.lvt[LVT_TIMER] = v;
            if self.timer_mode() != old {
                self.timer_armed = false;
                self.tsc_deadline = 0;
                self.initial_count = 0;
            }
            // A deadline or count that expired under the old entry was
            // consumed by the update before this write.
            self.update(now);
        } else {
            v |= self.lvt[index] & lvt::REMOTE_IRR;
            if index == LVT_LINT0 && v & lvt::LEVEL == 0 {
                v &= !lvt::REMOTE_IRR;
            }
            self.lvt[index] = v;
            if index == LVT_LINT0 {
                self.lint0_level_check();
            }
        }
    }

    /// SVR write (§11.9): clearing the software enable masks every LVT
    /// entry (§11.4.7.2); setting it unmasks nothing.
    fn write_svr(&mut self, value: u32) {
        self.svr = value & svr::WRITABLE;
        if self.svr & svr::ENABLE == 0 {
            for l in &mut self.lvt {
                *l |= lvt::MASKED;
            }
        }
    }

    // ----- ICR (§11.6.1) -----

    /// The message an ICR write sends. Fixed and lowest-priority IPIs with
    /// vectors 0-15 are not sent and set "send illegal vector" (§11.5.3).
    /// The trigger-mode and level bits only mean something for INIT level
    /// de-assert (level 0, trigger 1); every other IPI is edge-triggered,
    /// as Pentium 4 and later issue them (§11.6.1).
    fn send_icr(&mut self) -> LapicEffect {
        let lo = self.icr as u32;
        let vector = lo as u8;
        let assert = lo & (1 << 14) != 0;
        let level_trigger = lo & (1 << 15) != 0;
        let delivery = match (lo >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 if !assert && level_trigger => DeliveryMode::InitLevelDeassert,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            _ => DeliveryMode::Reserved,
        };
        if matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        let shorthand = match (lo >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        let (destination, format) = if self.mode() == ApicMode::X2Apic {
            ((self.icr >> 32) as u32, DestinationFormat::X2Apic)
        } else {
            (((self.icr >> 56) & 0xFF) as u32, DestinationFormat::XApic)
        };
        LapicEffect::Send(InterruptMessage {
            vector,
            delivery,
            destination_mode: if lo & (1 << 11) != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            trigger: if delivery == DeliveryMode::InitLevelDeassert {
                Trigger::Level
            } else {
                Trigger::Edge
            },
            shorthand,
            destination,
            format,
        })
    }

    /// x2APIC SELF IPI (§11.12.11): a fixed edge interrupt to this APIC.
    fn send_self_ipi(&mut self, vector: u8) -> LapicEffect {
        if vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        LapicEffect::Send(InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            destination_mode: DestinationMode::Physical,
            trigger: Trigger::Edge,
            shorthand: Shorthand::SelfOnly,
            destination: 0,
            format: DestinationFormat::X2Apic,
        })
    }

    // ----- the register file -----

    /// Reads register `index` in the current mode. Errors: absent in this
    /// mode, or write-only.
    fn read_reg(&mut self, index: u32, now: u64) -> Result<u64, ApicError> {
        let x2 = self.mode() == ApicMode::X2Apic;
        self.update(now);
        let v = match index {
            reg::ID if x2 => self.id,
            reg::ID => self.id << 24,
            reg::VERSION => VERSION_VALUE,
            reg::TPR => u32::from(self.tpr),
            reg::APR if !x2 => u32::from(self.apr()),
            reg::PPR => u32::from(self.ppr()),
            reg::EOI | reg::SELF_IPI if x2 => return Err(ApicError::WriteOnly),
            reg::EOI => 0,
            reg::RRD if !x2 => 0,
            reg::LDR => self.ldr_value(),
            reg::DFR if !x2 => self.dfr | 0x0FFF_FFFF,
            reg::SVR => self.svr,
            0x10..=0x17 => self.isr[(index - reg::ISR) as usize],
            0x18..=0x1F => self.tmr[(index - reg::TMR) as usize],
            0x20..=0x27 => self.irr[(index - reg::IRR) as usize],
            reg::ESR => self.esr,
            reg::ICR if x2 => return Ok(self.icr),
            reg::ICR => self.icr as u32,
            reg::ICR_HIGH if !x2 => (self.icr >> 32) as u32,
            0x32..=0x37 => self.lvt[(index - reg::LVT_TIMER) as usize],
            reg::INITIAL_COUNT => self.initial_count,
            reg::CURRENT_COUNT => self.current_count(now),
            reg::DIVIDE_CONFIG => self.divide_config,
            _ => return Err(ApicError::NoSuchRegister),
        };
        Ok(u64::from(v))
    }

    /// Writes register `index` in the current mode. In x2APIC mode
    /// read-only registers and non-zero reserved bits fail (§11.12.1.2,
    /// §11.12.1.3); in xAPIC mode reserved bits are ignored and writes to
    /// read-only registers do nothing. Read-only bits inside writable
    /// registers (delivery status, remote IRR) are ignored in both modes.
    fn write_reg(&mut self, index: u32, value: u64, now: u64) -> Result<LapicEffect, ApicError> {
        let x2 = self.mode() == ApicMode::X2Apic;
        self.update(now);
        // x2APIC: bits outside `allowed` are reserved; xAPIC: masked off.
        let check = |allowed: u64| -> Result<u32, ApicError> {
            if x2 && value & !allowed != 0 {
                Err(ApicError::ReservedBits)
            } else {
                Ok((value & allowed) as u32)
            }
        };
        match index {
            reg::ID if !x2 => self.id = (value as u32) >> 24,
            reg::TPR => self.tpr = check(0xFF)? as u8,
            reg::EOI => {
                check(if x2 { 0 } else { 0xFFFF_FFFF })?;
                return Ok(match self.eoi() {
                    Some(v) => LapicEffect::EoiBroadcast(v),
                    None => LapicEffect::None,
                });
            }
            reg::LDR if !x2 => self.ldr = value as u32 & 0xFF00_0000,
            reg::DFR if !x2 => self.dfr = value as u32 & 0xF000_0000,
            reg::SVR => {
                let v = check(u64::from(svr::WRITABLE))?;
                self.write_svr(v);
            }
            reg::ESR => {
                // Write-then-read: the write latches what was detected
                // since the last one (§11.5.3); x2APIC allows only 0.
                check(if x2 { 0 } else { 0xFFFF_FFFF })?;
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            reg::ICR if x2 => {
                if value & !X2APIC_ICR_ALLOWED != 0 {
                    return Err(ApicError::ReservedBits);
                }
                self.icr = value & !(1 << 12);
                return Ok(self.send_icr());
            }
            reg::ICR => {
                let lo = value as u32 & ICR_LOW_WRITABLE;
                self.icr = (self.icr & !0xFFFF_FFFF) | u64::from(lo);
                return Ok(self.send_icr());
            }
            reg::ICR_HIGH if !x2 => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (value & 0xFF00_0000) << 32;
            }
            0x32..=0x37 => {
                let i = (index - reg::LVT_TIMER) as usize;
                let allowed = self.lvt_writable(i) | Self::lvt_read_only(i);
                let v = check(u64::from(allowed))?;
                self.write_lvt(i, v, now);
            }
            reg::INITIAL_COUNT => {
                let v = check(0xFFFF_FFFF)?;
                self.write_initial_count(v, now);
            }
            reg::DIVIDE_CONFIG => {
                let v = check(0xB)?;
                self.write_divide_config(v, now);
            }
            reg::SELF_IPI if x2 => {
                let v = check(0xFF)?;
                return Ok(self.send_self_ipi(v as u8));
            }
            // Read-only registers present in this mode.
            reg::ID | reg::VERSION | reg::PPR | reg::LDR | 0x10..=0x27 | reg::CURRENT_COUNT => {
                if x2 {
                    return Err(ApicError::ReadOnly);
                }
            }
            reg::APR | reg::RRD if !x2 => {}
            _ => return Err(ApicError::NoSuchRegister),
        }
        Ok(LapicEffect::None)
    }

    /// An xAPIC MMIO read at `offset` into the page, `size` bytes. Only in
    /// xAPIC mode (else 0). Registers are 32 bits at 16-byte alignment
    /// (§11.4.1): 1-, 2- and 4-byte reads within a register's first four
    /// bytes return those bytes; other sizes and reads touching bytes
    /// 4-15 are undefined on hardware and return 0 here. A reserved offset
    /// reads 0 and sets "illegal register address" in ESR (§11.5.3).
    pub fn read_mmio(&mut self, offset: u64, size: u8, now: u64) -> u64 {
        if self.mode() != ApicMode::XApic || offset >= XAPIC_MMIO_SIZE {
            return 0;
        }
        let within = (offset & 0xF) as u32;
        if !matches!(size, 1 | 2 | 4) || within + u32::from(size) > 4 {
            return 0;
        }
        let v = match self.read_reg((offset >> 4) as u32, now) {
            Ok(v) => v as u32,
            Err(ApicError::NoSuchRegister) => {
                self.record_error(esr::ILLEGAL_REGISTER_ADDRESS);
                0
            }
            Err(_) => 0,
        };
        let shifted = u64::from(v >> (within * 8));
        match size {
            1 => shifted & 0xFF,
            2 => shifted & 0xFFFF,
            _ => shifted,
        }
    }

    /// An xAPIC MMIO write. Only 4-byte writes at a register's offset act
    /// (others are undefined on hardware and ignored here, as KVM);
    /// reserved offsets set "illegal register address" in ESR.
    pub fn write_mmio(&mut self, offset: u64, size: u8, value: u64, now: u64) -> LapicEffect {
        if self.mode() != ApicMode::XApic
            || offset >= XAPIC_MMIO_SIZE
            || size != 4
            || offset & 0xF != 0
        {
            return LapicEffect::None;
        }
        match self.write_reg((offset >> 4) as u32, value & 0xFFFF_FFFF, now) {
            Ok(effect) => effect,
            Err(ApicError::NoSuchRegister) => {
                self.record_error(esr::ILLEGAL_REGISTER_ADDRESS);
                LapicEffect::None
            }
            Err(_) => LapicEffect::None,
        }
    }

    /// Whether RDMSR/WRMSR of `msr` belongs here: IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE, or the x2APIC range.
    pub fn is_apic_msr(msr: u32) -> bool {
        matches!(
            msr,
            MSR_APIC_BASE | MSR_TSC_DEADLINE | MSR_X2APIC_FIRST..=MSR_X2APIC_LAST
        )
    }

    /// RDMSR. An error is #GP(0) for the guest.
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, ApicError> {
        match msr {
            MSR_APIC_BASE => Ok(self.apic_base),
            MSR_TSC_DEADLINE if self.cfg.tsc_deadline => {
                self.update(now);
                // Reads 0 outside TSC-deadline mode (§11.5.4.1).
                Ok(if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline
                } else {
                    0
                })
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST => {
                if self.mode() != ApicMode::X2Apic {
                    return Err(ApicError::NotX2Apic);
                }
                self.read_reg(msr - MSR_X2APIC_FIRST, now)
            }
            _ => Err(ApicError::NoSuchRegister),
        }
    }

    /// WRMSR. An error is #GP(0) for the guest.
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<LapicEffect, ApicError> {
        match msr {
            MSR_APIC_BASE => {
                self.write_apic_base(value)?;
                Ok(LapicEffect::None)
            }
            MSR_TSC_DEADLINE if self.cfg.tsc_deadline => {
                self.update(now);
                self.write_tsc_deadline(value, now);
                Ok(LapicEffect::None)
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST => {
                if self.mode() != ApicMode::X2Apic {
                    return Err(ApicError::NotX2Apic);
                }
                self.write_reg(msr - MSR_X2APIC_FIRST, value, now)
            }
            _ => Err(ApicError::NoSuchRegister),
        }
    }

    /// IA32_APIC_BASE write (SDM §11.4.4, §11.12.5.1). Reserved: bits
    /// 7:0, 9, MAXPHYADDR and up, and EXTD without x2APIC support. The
    /// base may move (§11.4.5) and the BSP flag is writable (SDM Vol. 4
    /// Table 2-2). Valid transitions: disabled <-> xAPIC, xAPIC -> x2APIC,
    /// x2APIC -> disabled; disabling resets every register but the APIC
    /// ID; entering x2APIC mode loads the x2APIC ID from the initial APIC
    /// ID and derives the LDR.
    fn write_apic_base(&mut self, value: u64) -> Result<(), ApicError> {
        let mut reserved = 0xFF | (1 << 9) | (!0u64 << self.cfg.phys_addr_bits);
        if !self.cfg.x2apic {
            reserved |= base::EXTD;
        }
        if value & reserved != 0 {
            return Err(ApicError::ReservedBits);
        }
        let new = match (value & base::EN != 0, value & base::EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(ApicError::InvalidTransition),
        };
        let old = self.mode();
        if matches!(
            (old, new),
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)
        ) {
            return Err(ApicError::InvalidTransition);
        }
        self.apic_base = value;
        match (old, new) {
            (ApicMode::XApic | ApicMode::X2Apic, ApicMode::Disabled) => self.reset_registers(),
            (ApicMode::Disabled, ApicMode::XApic) => self.id &= 0xFF,
            (ApicMode::XApic, ApicMode::X2Apic) => self.id = self.cfg.apic_id,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSC_KHZ: u32 = 2_000_000;
    const TIMER_KHZ: u32 = 1_000_000;
    const EN_X2: u64 = DEFAULT_APIC_BASE | base::EN | base::EXTD;

    fn cfg() -> LapicConfig {
        LapicConfig {
            apic_id: 0x23,
            bsp: false,
            tsc_khz: TSC_KHZ,
            timer_khz: TIMER_KHZ,
            x2apic: true,
            tsc_deadline: true,
            phys_addr_bits: 48,
        }
    }

    /// Software-enabled, xAPIC mode.
    fn enabled() -> LocalApic {
        let mut a = LocalApic::new(cfg());
        wr(&mut a, 0xF0, 0x1FF);
        a
    }

    fn x2(a: &mut LocalApic) {
        a.write_msr(MSR_APIC_BASE, EN_X2, 0).unwrap();
    }

    fn rd(a: &mut LocalApic, offset: u64) -> u32 {
        a.read_mmio(offset, 4, 0) as u32
    }

    fn wr(a: &mut LocalApic, offset: u64, value: u32) -> LapicEffect {
        a.write_mmio(offset, 4, u64::from(value), 0)
    }

    fn wr_at(a: &mut LocalApic, offset: u64, value: u32, now: u64) -> LapicEffect {
        a.write_mmio(offset, 4, u64::from(value), now)
    }

    /// ESR as software reads it: write, then read (§11.5.3).
    fn esr_now(a: &mut LocalApic) -> u32 {
        if a.mode() == ApicMode::X2Apic {
            a.write_msr(0x828, 0, 0).unwrap();
            a.read_msr(0x828, 0).unwrap() as u32
        } else {
            wr(a, 0x280, 0);
            rd(a, 0x280)
        }
    }

    fn irr_has(a: &LocalApic, v: u8) -> bool {
        vector_bit(&a.irr, v)
    }

    fn isr_has(a: &LocalApic, v: u8) -> bool {
        vector_bit(&a.isr, v)
    }

    // ----- reset state and identification -----

    #[test]
    fn reset_state_is_the_sdm_power_up_state() {
        let mut a = LocalApic::new(cfg());
        assert_eq!(a.apic_base(), 0xFEE0_0800);
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.mmio_base(), Some(0xFEE0_0000));
        assert_eq!(rd(&mut a, 0x20), 0x23 << 24);
        assert_eq!(rd(&mut a, 0x80), 0);
        assert_eq!(rd(&mut a, 0xA0), 0);
        assert_eq!(rd(&mut a, 0xD0), 0);
        assert_eq!(rd(&mut a, 0xE0), 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0xF0), 0xFF);
        for off in (0x320..=0x370).step_by(0x10) {
            assert_eq!(rd(&mut a, off), 0x1_0000, "LVT at {off:#x}");
        }
        for off in (0x100..0x280).step_by(0x10) {
            assert_eq!(rd(&mut a, off), 0, "ISR/TMR/IRR at {off:#x}");
        }
        for off in [0x280, 0x300, 0x310, 0x380, 0x390, 0x3E0] {
            assert_eq!(rd(&mut a, off), 0, "{off:#x}");
        }
        assert!(!a.software_enabled());
        assert_eq!(a.highest_injectable(), None);
        assert_eq!(a.next_deadline(), None);
        assert!(!a.extint_pending() && !a.nmi_pending());
    }

    #[test]
    fn bsp_gets_virtual_wire_lint0() {
        let mut a = LocalApic::new(LapicConfig { bsp: true, ..cfg() });
        assert_eq!(a.apic_base(), 0xFEE0_0900);
        assert_eq!(rd(&mut a, 0x350), 0x700);
        assert_eq!(rd(&mut a, 0x360), 0x1_0000);
        a.set_lint(Lint::Lint0, true);
        assert!(
            a.extint_pending(),
            "8259 reaches a guest that never touched its APIC"
        );
        a.set_lint(Lint::Lint0, false);
        assert!(!a.extint_pending());
        // An AP has no virtual wire.
        let mut ap = LocalApic::new(cfg());
        ap.set_lint(Lint::Lint0, true);
        assert!(!ap.extint_pending());
    }

    #[test]
    fn version_reports_max_lvt_and_eoi_broadcast_suppression() {
        let mut a = LocalApic::new(cfg());
        let v = rd(&mut a, 0x30);
        assert_eq!(v & 0xFF, 0x14);
        assert_eq!(
            (v >> 16) & 0xFF,
            5,
            "timer, thermal, perf, LINT0, LINT1, error"
        );
        assert_ne!(v & (1 << 24), 0);
        x2(&mut a);
        assert_eq!(a.read_msr(0x803, 0), Ok(u64::from(v)));
    }

    #[test]
    fn xapic_id_ldr_dfr_keep_only_their_defined_bits() {
        let mut a = enabled();
        wr(&mut a, 0x20, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0x20), 0xFF00_0000);
        assert_eq!(a.id(), 0xFF);
        wr(&mut a, 0xD0, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0xD0), 0xFF00_0000);
        wr(&mut a, 0xE0, 0);
        assert_eq!(rd(&mut a, 0xE0), 0x0FFF_FFFF);
        wr(&mut a, 0xE0, 0x1234_5678);
        assert_eq!(rd(&mut a, 0xE0), 0x1FFF_FFFF);
        wr(&mut a, 0x80, 0xFFFF_FF42);
        assert_eq!(rd(&mut a, 0x80), 0x42);
        wr(&mut a, 0xF0, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0xF0), svr::WRITABLE);
        wr(&mut a, 0x3E0, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0x3E0), 0xB);
        wr(&mut a, 0x370, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0x370), 0x1_00FF);
        wr(&mut a, 0x350, 0xFFFF_FFFF);
        assert_eq!(
            rd(&mut a, 0x350),
            0x1_A7FF,
            "no delivery status or remote IRR"
        );
        assert_eq!(
            esr_now(&mut a),
            0,
            "reserved bits are not errors in xAPIC mode"
        );
    }

    #[test]
    fn reserved_offsets_set_illegal_register_address() {
        let mut a = enabled();
        // CMCI (absent), SELF IPI (x2APIC only), holes and beyond 0x3F0.
        for off in [
            0x000, 0x010, 0x040, 0x070, 0x2F0, 0x2A0, 0x3A0, 0x3F0, 0x400, 0xFF0,
        ] {
            assert_eq!(rd(&mut a, off), 0, "{off:#x}");
            assert_eq!(
                esr_now(&mut a),
                esr::ILLEGAL_REGISTER_ADDRESS,
                "read {off:#x}"
            );
            assert_eq!(wr(&mut a, off, 0xFFFF_FFFF), LapicEffect::None);
            assert_eq!(
                esr_now(&mut a),
                esr::ILLEGAL_REGISTER_ADDRESS,
                "write {off:#x}"
            );
        }
        // Outside the page: not this device's, no error.
        assert_eq!(a.read_mmio(0x1000, 4, 0), 0);
        assert_eq!(esr_now(&mut a), 0);
    }

    #[test]
    fn esr_is_write_then_read() {
        let mut a = enabled();
        assert!(!a.accept_interrupt(5, Trigger::Edge));
        assert_eq!(rd(&mut a, 0x280), 0, "not visible before the ESR write");
        wr(&mut a, 0x280, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0x280), esr::RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(
            rd(&mut a, 0x280),
            esr::RECEIVE_ILLEGAL_VECTOR,
            "reads do not clear"
        );
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), 0);
    }

    #[test]
    fn mmio_sub_dword_reads_and_odd_writes() {
        let mut a = enabled();
        assert_eq!(a.read_mmio(0xF0, 1, 0), 0xFF);
        assert_eq!(a.read_mmio(0xF1, 1, 0), 0x01);
        assert_eq!(a.read_mmio(0xF0, 2, 0), 0x1FF);
        assert_eq!(a.read_mmio(0xF2, 2, 0), 0);
        // Touching bytes 4-15, or 8 bytes: undefined, 0.
        assert_eq!(a.read_mmio(0xF3, 2, 0), 0);
        assert_eq!(a.read_mmio(0xF4, 4, 0), 0);
        assert_eq!(a.read_mmio(0xF0, 8, 0), 0);
        assert_eq!(a.read_mmio(0xF0, 3, 0), 0);
        // Only aligned 4-byte writes act.
        a.write_mmio(0x80, 1, 0xFF, 0);
        a.write_mmio(0x80, 2, 0xFF, 0);
        a.write_mmio(0x80, 8, 0xFF, 0);
        a.write_mmio(0x84, 4, 0xFF, 0);
        a.write_mmio(0x81, 4, 0xFF, 0);
        assert_eq!(a.tpr(), 0);
        assert_eq!(esr_now(&mut a), 0);
    }

    #[test]
    fn xapic_writes_to_read_only_registers_do_nothing() {
        let mut a = enabled();
        a.accept_interrupt(0x40, Trigger::Level);
        for off in [
            0x30, 0x90, 0xA0, 0xC0, 0x100, 0x170, 0x180, 0x1F0, 0x200, 0x270, 0x390,
        ] {
            wr(&mut a, off, 0xFFFF_FFFF);
        }
        assert_eq!(rd(&mut a, 0x30), VERSION_VALUE);
        assert_eq!(rd(&mut a, 0x220), 1, "IRR bit of 0x40 intact");
        assert_eq!(rd(&mut a, 0x1A0), 1, "TMR bit of 0x40 intact");
        assert_eq!(rd(&mut a, 0xA0), 0);
        assert_eq!(esr_now(&mut a), 0);
    }

    // ----- x2APIC access rules -----

    #[test]
    fn x2apic_read_only_registers_gp_on_write() {
        let mut a = enabled();
        x2(&mut a);
        for msr in [
            0x802, 0x803, 0x80A, 0x80D, 0x810, 0x817, 0x818, 0x81F, 0x820, 0x827, 0x839,
        ] {
            assert_eq!(a.write_msr(msr, 0, 0), Err(ApicError::ReadOnly), "{msr:#x}");
        }
    }

    #[test]
    fn x2apic_write_only_registers_gp_on_read() {
        let mut a = enabled();
        x2(&mut a);
        assert_eq!(a.read_msr(0x80B, 0), Err(ApicError::WriteOnly));
        assert_eq!(a.read_msr(0x83F, 0), Err(ApicError::WriteOnly));
    }

    #[test]
    fn x2apic_reserved_bits_gp() {
        let mut a = enabled();
        x2(&mut a);
        let bad: &[(u32, u64)] = &[
            (0x808, 0x100),
            (0x808, 1 << 32),
            (0x80B, 1),
            (0x80F, 1 << 10),
            (0x80F, 1 << 40),
            (0x828, 1),
            (0x830, 1 << 13),
            (0x830, 1 << 16),
            (0x830, 1 << 20),
            (0x832, 1 << 19),
            (0x832, 0x700),
            (0x835, 1 << 17),
            (0x837, 0x400),
            (0x838, 1 << 32),
            (0x83E, 0x4),
            (0x83F, 0x100),
        ];
        for &(msr, v) in bad {
            assert_eq!(
                a.write_msr(msr, v, 0),
                Err(ApicError::ReservedBits),
                "{msr:#x} <- {v:#x}"
            );
        }
        // Read-only bits inside writable registers are not reserved: a
        // read-modify-write of an LVT with remote IRR set must work.
        assert!(a
            .write_msr(0x835, lvt::REMOTE_IRR as u64 | 0x1_0000, 0)
            .is_ok());
        assert!(a
            .write_msr(0x832, lvt::DELIVERY_STATUS as u64 | 0x1_0000, 0)
            .is_ok());
        // ICR bit 12 (the removed busy bit) is tolerated and reads 0.
        assert!(matches!(
            a.write_msr(0x830, (1 << 12) | 0x4400, 0),
            Ok(LapicEffect::Send(_))
        ));
        assert_eq!(a.read_msr(0x830, 0), Ok(0x4400));
        assert!(a.write_msr(0x80F, 0x13FF, 0).is_ok());
    }

    #[test]
    fn x2apic_has_no_xapic_only_registers() {
        let mut a = enabled();
        x2(&mut a);
        // RRD, APR, DFR, ICR high, CMCI, and the reserved holes.
        for msr in [
            0x800, 0x801, 0x804, 0x809, 0x80C, 0x80E, 0x82F, 0x831, 0x83A, 0x83D, 0x840, 0x8FF,
        ] {
            assert_eq!(
                a.read_msr(msr, 0),
                Err(ApicError::NoSuchRegister),
                "read {msr:#x}"
            );
            assert_eq!(
                a.write_msr(msr, 0, 0),
                Err(ApicError::NoSuchRegister),
                "write {msr:#x}"
            );
        }
        assert_eq!(a.mmio_base(), None, "no MMIO interface in x2APIC mode");
        assert_eq!(a.read_mmio(0x20, 4, 0), 0);
        assert_eq!(a.write_mmio(0x80, 4, 0xF0, 0), LapicEffect::None);
        assert_eq!(a.tpr(), 0);
    }

    #[test]
    fn x2apic_msrs_gp_outside_x2apic_mode() {
        let mut a = enabled();
        assert_eq!(a.read_msr(0x802, 0), Err(ApicError::NotX2Apic));
        assert_eq!(a.write_msr(0x808, 0, 0), Err(ApicError::NotX2Apic));
        a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE, 0).unwrap();
        assert_eq!(a.read_msr(0x802, 0), Err(ApicError::NotX2Apic));
        assert_eq!(a.read_msr(0x10, 0), Err(ApicError::NoSuchRegister));
        assert!(LocalApic::is_apic_msr(0x1B) && LocalApic::is_apic_msr(0x6E0));
        assert!(LocalApic::is_apic_msr(0x800) && LocalApic::is_apic_msr(0x8FF));
        assert!(!LocalApic::is_apic_msr(0x900) && !LocalApic::is_apic_msr(0x7FF));
    }

    // ----- IA32_APIC_BASE -----

    #[test]
    fn apic_base_valid_transitions() {
        let mut a = enabled();
        let b = DEFAULT_APIC_BASE;
        a.write_msr(MSR_APIC_BASE, b, 0).unwrap();
        assert_eq!((a.mode(), a.mmio_base()), (ApicMode::Disabled, None));
        a.write_msr(MSR_APIC_BASE, b | base::EN, 0).unwrap();
        assert_eq!((a.mode(), a.mmio_base()), (ApicMode::XApic, Some(b)));
        a.write_msr(MSR_APIC_BASE, b | base::EN | base::EXTD, 0)
            .unwrap();
        assert_eq!((a.mode(), a.mmio_base()), (ApicMode::X2Apic, None));
        a.write_msr(MSR_APIC_BASE, b | base::EN | base::EXTD, 0)
            .unwrap();
        assert_eq!(
            a.mode(),
            ApicMode::X2Apic,
            "rewriting the same state is fine"
        );
        a.write_msr(MSR_APIC_BASE, b, 0).unwrap();
        assert_eq!(a.mode(), ApicMode::Disabled);
        a.write_msr(MSR_APIC_BASE, b | base::EN, 0).unwrap();
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.read_msr(MSR_APIC_BASE, 0), Ok(b | base::EN));
    }

    #[test]
    fn apic_base_invalid_transitions_gp() {
        let b = DEFAULT_APIC_BASE;
        let mut a = enabled();
        // Into the invalid state EN = 0, EXTD = 1.
        assert_eq!(
            a.write_msr(MSR_APIC_BASE, b | base::EXTD, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(a.mode(), ApicMode::XApic);
        // x2APIC -> xAPIC directly.
        x2(&mut a);
        assert_eq!(
            a.write_msr(MSR_APIC_BASE, b | base::EN, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(
            a.write_msr(MSR_APIC_BASE, b | base::EXTD, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(a.mode(), ApicMode::X2Apic);
        // Disabled -> x2APIC directly.
        a.write_msr(MSR_APIC_BASE, b, 0).unwrap();
        assert_eq!(
            a.write_msr(MSR_APIC_BASE, EN_X2, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(a.mode(), ApicMode::Disabled);
    }

    #[test]
    fn apic_base_reserved_bits_gp() {
        let mut a = enabled();
        let ok = DEFAULT_APIC_BASE | base::EN;
        for bit in [0, 7, 9, 48, 63] {
            assert_eq!(
                a.write_msr(MSR_APIC_BASE, ok | 1 << bit, 0),
                Err(ApicError::ReservedBits),
                "bit {bit}"
            );
        }
        assert_eq!(a.apic_base(), ok);
        // The BSP flag is read/write (SDM Vol. 4 Table 2-2).
        a.write_msr(MSR_APIC_BASE, ok | base::BSP, 0).unwrap();
        assert_eq!(a.apic_base(), ok | base::BSP);
        // EXTD is reserved without x2APIC support.
        let mut no_x2 = LocalApic::new(LapicConfig {
            x2apic: false,
            ..cfg()
        });
        assert_eq!(
            no_x2.write_msr(MSR_APIC_BASE, EN_X2, 0),
            Err(ApicError::ReservedBits)
        );
        // A smaller MAXPHYADDR reserves more.
        let mut small = LocalApic::new(LapicConfig {
            phys_addr_bits: 36,
            ..cfg()
        });
        assert_eq!(
            small.write_msr(MSR_APIC_BASE, (1 << 36) | base::EN, 0),
            Err(ApicError::ReservedBits)
        );
        assert!(small
            .write_msr(MSR_APIC_BASE, (1 << 35) | base::EN, 0)
            .is_ok());
    }

    #[test]
    fn apic_base_relocates_the_mmio_page() {
        let mut a = enabled();
        a.write_msr(MSR_APIC_BASE, 0x1_0000_0000 | base::EN, 0)
            .unwrap();
        assert_eq!(a.mmio_base(), Some(0x1_0000_0000));
        // The register file moves with it (same state).
        assert_eq!(rd(&mut a, 0xF0), 0x1FF);
    }

    #[test]
    fn disabling_resets_registers_but_keeps_the_id() {
        let mut a = enabled();
        wr(&mut a, 0x20, 0x0500_0000);
        wr(&mut a, 0x80, 0x50);
        wr(&mut a, 0x320, 0x40);
        a.accept_interrupt(0x60, Trigger::Edge);
        a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE, 0).unwrap();
        assert!(
            !a.accept_interrupt(0x61, Trigger::Edge),
            "a disabled APIC accepts nothing"
        );
        a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE | base::EN, 0)
            .unwrap();
        assert_eq!(rd(&mut a, 0x20), 0x0500_0000);
        assert_eq!(rd(&mut a, 0x80), 0);
        assert_eq!(rd(&mut a, 0xF0), 0xFF);
        assert_eq!(rd(&mut a, 0x320), 0x1_0000);
        assert_eq!(rd(&mut a, 0x230), 0, "IRR cleared");
        // Through x2APIC: the x2APIC ID survives, its low 8 bits are the
        // xAPIC ID afterwards (§11.12.5.1).
        let mut b = LocalApic::new(LapicConfig {
            apic_id: 0x123,
            ..cfg()
        });
        x2(&mut b);
        assert_eq!(b.read_msr(0x802, 0), Ok(0x123));
        b.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE, 0).unwrap();
        b.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE | base::EN, 0)
            .unwrap();
        assert_eq!(rd(&mut b, 0x20), 0x23 << 24);
    }

    #[test]
    fn x2apic_id_and_ldr_are_derived() {
        let mut a = enabled();
        wr(&mut a, 0x20, 0x0700_0000);
        wr(&mut a, 0xD0, 0x0100_0000);
        x2(&mut a);
        assert_eq!(
            a.read_msr(0x802, 0),
            Ok(0x23),
            "the initial ID, not the written one"
        );
        assert_eq!(a.read_msr(0x80D, 0), Ok(0x0002_0008));
        assert_eq!(a.target().ldr, 0x0002_0008);
        assert_eq!(a.target().id, 0x23);
        // State other than ID/LDR carries over.
        assert_eq!(a.read_msr(0x80F, 0), Ok(0x1FF));
    }

    #[test]
    fn init_keeps_id_base_and_mode() {
        let mut a = enabled();
        wr(&mut a, 0x20, 0x0900_0000);
        wr(&mut a, 0x80, 0x30);
        a.accept_interrupt(0x40, Trigger::Edge);
        a.accept_nmi();
        a.init_reset();
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(rd(&mut a, 0x20), 0x0900_0000);
        assert_eq!(rd(&mut a, 0x80), 0);
        assert_eq!(rd(&mut a, 0xF0), 0xFF);
        assert_eq!(rd(&mut a, 0x220), 0);
        assert!(!a.nmi_pending());

        let mut b = enabled();
        x2(&mut b);
        b.write_msr(0x808, 0x30, 0).unwrap();
        b.init_reset();
        assert_eq!(b.mode(), ApicMode::X2Apic, "INIT keeps x2APIC mode");
        assert_eq!(b.read_msr(0x802, 0), Ok(0x23));
        assert_eq!(b.read_msr(0x808, 0), Ok(0));
        assert_eq!(b.read_msr(0x835, 0), Ok(0x1_0000));
        // The BSP gets its virtual wire back, as after RESET.
        let mut c = LocalApic::new(LapicConfig { bsp: true, ..cfg() });
        wr(&mut c, 0x350, 0x1_0000);
        c.init_reset();
        assert_eq!(rd(&mut c, 0x350), 0x700);
    }

    // ----- acceptance, priority, EOI -----

    #[test]
    fn accept_rejects_illegal_vectors_into_esr() {
        let mut a = enabled();
        for v in 0..16 {
            assert!(!a.accept_interrupt(v, Trigger::Edge));
            assert_eq!(esr_now(&mut a), esr::RECEIVE_ILLEGAL_VECTOR, "vector {v}");
        }
        assert!(a.irr.iter().all(|&w| w == 0));
        assert!(a.accept_interrupt(16, Trigger::Edge));
        assert_eq!(esr_now(&mut a), 0);
    }

    #[test]
    fn accept_records_the_trigger_in_tmr() {
        let mut a = enabled();
        a.accept_interrupt(0x41, Trigger::Level);
        assert_eq!(rd(&mut a, 0x220), 1 << 1);
        assert_eq!(rd(&mut a, 0x1A0), 1 << 1);
        a.accept_interrupt(0x41, Trigger::Edge);
        assert_eq!(rd(&mut a, 0x1A0), 0);
    }

    #[test]
    fn tpr_masks_by_priority_class() {
        let mut a = enabled();
        a.accept_interrupt(0x51, Trigger::Edge);
        wr(&mut a, 0x80, 0x50);
        assert_eq!(
            a.highest_injectable(),
            None,
            "class 5 is not above TPR class 5"
        );
        wr(&mut a, 0x80, 0x4F);
        assert_eq!(a.highest_injectable(), Some(0x51));
        wr(&mut a, 0x80, 0x60);
        assert_eq!(a.highest_injectable(), None);
        a.accept_interrupt(0x71, Trigger::Edge);
        assert_eq!(a.highest_injectable(), Some(0x71));
        wr(&mut a, 0x80, 0xFF);
        assert_eq!(a.highest_injectable(), None);
    }

    #[test]
    fn ppr_follows_isr_and_tpr() {
        let mut a = enabled();
        a.accept_interrupt(0x81, Trigger::Edge);
        assert!(a.ack(0x81));
        assert_eq!(rd(&mut a, 0xA0), 0x80);
        wr(&mut a, 0x80, 0x2F);
        assert_eq!(rd(&mut a, 0xA0), 0x80, "ISR class wins over a lower TPR");
        wr(&mut a, 0x80, 0x9A);
        assert_eq!(rd(&mut a, 0xA0), 0x9A, "TPR wins when its class is higher");
        wr(&mut a, 0x80, 0x00);
        a.accept_interrupt(0x85, Trigger::Edge);
        assert_eq!(
            a.highest_injectable(),
            None,
            "same class as the one in service"
        );
        a.accept_interrupt(0x91, Trigger::Edge);
        assert_eq!(a.highest_injectable(), Some(0x91));
        assert!(a.ack(0x91));
        assert_eq!(a.ppr(), 0x90);
        assert_eq!(a.eoi(), None);
        assert_eq!(a.ppr(), 0x80);
        assert_eq!(a.eoi(), None);
        assert_eq!(a.ppr(), 0);
        assert_eq!(a.highest_injectable(), Some(0x85));
    }

    #[test]
    fn apr_follows_the_sdm_formula() {
        let mut a = enabled();
        wr(&mut a, 0x80, 0x30);
        assert_eq!(rd(&mut a, 0x90), 0x30);
        a.accept_interrupt(0x51, Trigger::Edge);
        assert_eq!(rd(&mut a, 0x90), 0x50);
        a.ack(0x51);
        assert_eq!(rd(&mut a, 0x90), 0x50, "ISR class above TPR");
        wr(&mut a, 0x80, 0x6C);
        assert_eq!(rd(&mut a, 0x90), 0x6C);
    }

    #[test]
    fn cr8_is_tpr_bits_7_4() {
        let mut a = enabled();
        a.write_cr8(0xA).unwrap();
        assert_eq!(rd(&mut a, 0x80), 0xA0);
        wr(&mut a, 0x80, 0x5F);
        assert_eq!(a.cr8(), 5);
        assert_eq!(a.write_cr8(0x10), Err(ApicError::ReservedBits));
        assert_eq!(a.tpr(), 0x5F);
        // CR8 masks like TPR.
        a.accept_interrupt(0x31, Trigger::Edge);
        a.write_cr8(3).unwrap();
        assert_eq!(a.highest_injectable(), None);
        a.write_cr8(2).unwrap();
        assert_eq!(a.highest_injectable(), Some(0x31));
    }

    #[test]
    fn ack_moves_irr_to_isr() {
        let mut a = enabled();
        assert!(!a.ack(0x40), "nothing pending");
        a.accept_interrupt(0x40, Trigger::Edge);
        assert!(a.ack(0x40));
        assert!(!irr_has(&a, 0x40) && isr_has(&a, 0x40));
        assert_eq!(rd(&mut a, 0x120), 1);
        assert!(!a.ack(0x40));
        // A second arrival while in service waits in IRR (§11.8.4).
        a.accept_interrupt(0x40, Trigger::Edge);
        assert!(irr_has(&a, 0x40) && isr_has(&a, 0x40));
        assert_eq!(a.highest_injectable(), None);
        a.eoi();
        assert_eq!(a.highest_injectable(), Some(0x40));
    }

    #[test]
    fn eoi_clears_the_highest_isr_and_reports_level_vectors() {
        let mut a = enabled();
        a.accept_interrupt(0x40, Trigger::Level);
        a.accept_interrupt(0x60, Trigger::Edge);
        a.ack(0x40);
        a.ack(0x60);
        assert_eq!(wr(&mut a, 0xB0, 0), LapicEffect::None, "0x60 is edge");
        assert!(!isr_has(&a, 0x60) && isr_has(&a, 0x40));
        assert_eq!(wr(&mut a, 0xB0, 0x1234), LapicEffect::EoiBroadcast(0x40));
        assert_eq!(wr(&mut a, 0xB0, 0), LapicEffect::None, "nothing in service");
        assert_eq!(a.eoi(), None);
    }

    #[test]
    fn eoi_broadcast_suppression() {
        let mut a = enabled();
        wr(&mut a, 0xF0, 0x11FF);
        a.accept_interrupt(0x40, Trigger::Level);
        a.ack(0x40);
        assert_eq!(wr(&mut a, 0xB0, 0), LapicEffect::None);
        assert!(!isr_has(&a, 0x40));
        // x2APIC: same, and EOI must be written with 0.
        let mut b = enabled();
        x2(&mut b);
        b.accept_interrupt(0x40, Trigger::Level);
        b.ack(0x40);
        assert_eq!(b.write_msr(0x80B, 1, 0), Err(ApicError::ReservedBits));
        assert!(isr_has(&b, 0x40), "a refused EOI does nothing");
        assert_eq!(
            b.write_msr(0x80B, 0, 0),
            Ok(LapicEffect::EoiBroadcast(0x40))
        );
    }

    #[test]
    fn software_disable_masks_lvts_and_drops_fixed_interrupts() {
        let mut a = enabled();
        wr(&mut a, 0x320, 0x40);
        wr(&mut a, 0x350, 0x700);
        a.accept_interrupt(0x50, Trigger::Edge);
        wr(&mut a, 0xF0, 0xFF);
        assert_eq!(rd(&mut a, 0x320), 0x1_0040);
        assert_eq!(rd(&mut a, 0x350), 0x1_0700);
        wr(&mut a, 0x320, 0x41);
        assert_eq!(rd(&mut a, 0x320), 0x1_0041, "the mask stays while disabled");
        assert!(!a.accept_interrupt(0x51, Trigger::Edge));
        assert_eq!(a.highest_injectable(), None);
        assert!(irr_has(&a, 0x50), "pending interrupts are held (§11.4.7.2)");
        a.accept_nmi();
        assert!(a.nmi_pending(), "NMIs still arrive");
        wr(&mut a, 0xF0, 0x1FF);
        assert_eq!(rd(&mut a, 0x320), 0x1_0041, "enabling unmasks nothing");
        assert_eq!(a.highest_injectable(), Some(0x50));
    }

    // ----- timer -----

    /// TSC 2 GHz, timer clock 1 GHz: one timer clock is 2 TSC ticks.
    fn timer_apic(lvt_timer: u32, dcr: u32) -> LocalApic {
        let mut a = enabled();
        wr(&mut a, 0x3E0, dcr);
        wr(&mut a, 0x320, lvt_timer);
        a
    }

    #[test]
    fn timer_one_shot_counts_down_and_fires_once() {
        let mut a = timer_apic(0x40, 0xB);
        wr_at(&mut a, 0x380, 100, 1000);
        assert_eq!(a.next_deadline(), Some(1200));
        assert_eq!(a.read_mmio(0x390, 4, 1000), 100);
        assert_eq!(a.read_mmio(0x390, 4, 1100), 50);
        assert_eq!(a.read_mmio(0x390, 4, 1199), 1);
        assert!(!a.update(1199));
        assert!(a.update(1200));
        assert!(irr_has(&a, 0x40));
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_mmio(0x390, 4, 1300), 0);
        assert_eq!(a.read_mmio(0x380, 4, 1300), 100, "the initial count stays");
        a.ack(0x40);
        a.eoi();
        assert!(!a.update(100_000));
        assert!(!irr_has(&a, 0x40));
    }

    #[test]
    fn timer_periodic_reloads_without_drift() {
        let mut a = timer_apic(0x2_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 1000);
        assert!(a.update(1200));
        assert_eq!(a.next_deadline(), Some(1400));
        a.ack(0x40);
        a.eoi();
        // Serviced late: the next period still ends on the grid.
        assert!(a.update(1450));
        assert_eq!(a.next_deadline(), Some(1600));
        assert_eq!(a.read_mmio(0x390, 4, 1500), 50);
        // A period of 4.5 TSC ticks (TSC 3 GHz, timer 2 GHz, 3 counts):
        // deadlines are the rounded-up exact multiples, no accumulated
        // error.
        let mut b = LocalApic::new(LapicConfig {
            tsc_khz: 3_000_000,
            timer_khz: 2_000_000,
            ..cfg()
        });
        wr(&mut b, 0xF0, 0x1FF);
        wr(&mut b, 0x3E0, 0xB);
        wr(&mut b, 0x320, 0x2_0040);
        wr_at(&mut b, 0x380, 3, 0);
        let mut seen = [0u64; 6];
        for d in &mut seen {
            *d = b.next_deadline().unwrap();
            assert!(b.update(*d));
            b.ack(0x40);
            b.eoi();
        }
        assert_eq!(seen, [5, 9, 14, 18, 23, 27]);
    }

    #[test]
    fn timer_periodic_coalesces_missed_periods() {
        let mut a = timer_apic(0x2_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 1000);
        assert!(a.update(2050), "five periods passed: one interrupt");
        assert_eq!(a.next_deadline(), Some(2200));
        a.ack(0x40);
        assert!(!a.update(2199));
        assert_eq!(a.highest_injectable(), None);
    }

    #[test]
    fn timer_divide_values() {
        let expect = [2, 4, 8, 16, 2, 4, 8, 16, 32, 64, 128, 1, 32, 64, 128, 1];
        for (dcr, &div) in expect.iter().enumerate() {
            assert_eq!(timer_divisor(dcr as u32), div, "dcr {dcr:#b}");
            let mut a = timer_apic(0x40, dcr as u32);
            assert_eq!(rd(&mut a, 0x3E0), dcr as u32 & 0xB);
            wr_at(&mut a, 0x380, 10, 0);
            // 10 counts of `div` timer clocks of 2 TSC ticks.
            assert_eq!(
                a.next_deadline(),
                Some(10 * u64::from(div) * 2),
                "dcr {dcr:#b}"
            );
        }
    }

    #[test]
    fn timer_divide_change_keeps_the_current_count() {
        let mut a = timer_apic(0x40, 0xB);
        wr_at(&mut a, 0x380, 100, 0);
        assert_eq!(a.read_mmio(0x390, 4, 100), 50);
        wr_at(&mut a, 0x3E0, 0x0, 100);
        assert_eq!(a.read_mmio(0x390, 4, 100), 50);
        assert_eq!(a.next_deadline(), Some(100 + 50 * 4));
        assert_eq!(a.read_mmio(0x390, 4, 200), 25);
    }

    #[test]
    fn timer_mode_change_disarms() {
        let mut a = timer_apic(0x40, 0xB);
        wr_at(&mut a, 0x380, 100, 0);
        wr_at(&mut a, 0x320, 0x41, 10);
        assert_eq!(
            a.next_deadline(),
            Some(200),
            "same mode, new vector: still counting"
        );
        wr_at(&mut a, 0x320, 0x2_0041, 20);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_mmio(0x390, 4, 30), 0);
        assert_eq!(a.read_mmio(0x380, 4, 30), 0);
        assert!(!a.update(1_000_000));
        // Periodic restarts only with an initial-count write.
        wr_at(&mut a, 0x380, 10, 100);
        assert_eq!(a.next_deadline(), Some(120));
        // TSC-deadline armed, then back to one-shot: disarmed and cleared.
        wr_at(&mut a, 0x320, 0x4_0041, 110);
        a.write_msr(MSR_TSC_DEADLINE, 5000, 110).unwrap();
        assert_eq!(a.next_deadline(), Some(5000));
        wr_at(&mut a, 0x320, 0x41, 120);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_msr(MSR_TSC_DEADLINE, 130), Ok(0));
        wr_at(&mut a, 0x320, 0x4_0041, 140);
        assert_eq!(
            a.read_msr(MSR_TSC_DEADLINE, 150),
            Ok(0),
            "the old deadline is gone"
        );
        assert!(!a.update(10_000));
    }

    #[test]
    fn timer_initial_count_zero_stops() {
        let mut a = timer_apic(0x2_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 0);
        wr_at(&mut a, 0x380, 0, 50);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_mmio(0x390, 4, 60), 0);
        assert!(!a.update(10_000));
    }

    #[test]
    fn timer_masked_counts_without_interrupting() {
        let mut a = timer_apic(0x1_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 0);
        assert_eq!(a.next_deadline(), None, "nothing visible to wait for");
        assert_eq!(a.read_mmio(0x390, 4, 100), 50);
        assert!(!a.update(300));
        assert!(!irr_has(&a, 0x40));
        // Unmasking after the expiry does not deliver it late.
        wr_at(&mut a, 0x320, 0x40, 400);
        assert!(!irr_has(&a, 0x40));
        assert_eq!(a.next_deadline(), None);
        // A masked periodic timer keeps its grid.
        let mut b = timer_apic(0x3_0040, 0xB);
        wr_at(&mut b, 0x380, 100, 0);
        wr_at(&mut b, 0x320, 0x2_0040, 350);
        assert_eq!(b.next_deadline(), Some(400));
        assert!(b.update(400));
    }

    #[test]
    fn tsc_deadline_fires_and_clears() {
        let mut a = timer_apic(0x4_0040, 0);
        assert_eq!(
            a.write_msr(MSR_TSC_DEADLINE, 5000, 1000),
            Ok(LapicEffect::None)
        );
        assert_eq!(a.next_deadline(), Some(5000));
        assert_eq!(a.read_msr(MSR_TSC_DEADLINE, 1000), Ok(5000));
        assert_eq!(a.read_mmio(0x390, 4, 1000), 0, "current count reads 0");
        assert!(!a.update(4999));
        assert!(a.update(5000));
        assert!(irr_has(&a, 0x40));
        assert_eq!(a.read_msr(MSR_TSC_DEADLINE, 5001), Ok(0));
        assert_eq!(a.next_deadline(), None);
        // Re-armed, then disarmed with 0.
        a.write_msr(MSR_TSC_DEADLINE, 9000, 6000).unwrap();
        a.write_msr(MSR_TSC_DEADLINE, 0, 6000).unwrap();
        assert_eq!(a.next_deadline(), None);
        a.ack(0x40);
        assert!(!a.update(10_000));
        assert!(!irr_has(&a, 0x40));
    }

    #[test]
    fn tsc_deadline_in_the_past_fires_at_once() {
        let mut a = timer_apic(0x4_0040, 0);
        a.write_msr(MSR_TSC_DEADLINE, 500, 1000).unwrap();
        assert!(irr_has(&a, 0x40));
        assert_eq!(a.read_msr(MSR_TSC_DEADLINE, 1000), Ok(0));
        assert_eq!(a.next_deadline(), None);
        // Masked: disarms without an interrupt.
        let mut b = timer_apic(0x5_0040, 0);
        b.write_msr(MSR_TSC_DEADLINE, 500, 1000).unwrap();
        assert!(!irr_has(&b, 0x40));
        assert_eq!(b.read_msr(MSR_TSC_DEADLINE, 1000), Ok(0));
    }

    #[test]
    fn tsc_deadline_msr_is_inert_outside_deadline_mode() {
        let mut a = timer_apic(0x40, 0);
        a.write_msr(MSR_TSC_DEADLINE, 5000, 0).unwrap();
        assert_eq!(a.read_msr(MSR_TSC_DEADLINE, 0), Ok(0));
        assert_eq!(a.next_deadline(), None);
        assert!(!a.update(6000));
    }

    #[test]
    fn tsc_deadline_mode_ignores_the_initial_count() {
        let mut a = timer_apic(0x4_0040, 0);
        wr_at(&mut a, 0x380, 100, 0);
        assert_eq!(a.read_mmio(0x380, 4, 0), 0);
        assert_eq!(a.next_deadline(), None);
        assert!(!a.update(10_000));
    }

    #[test]
    fn tsc_deadline_absent_without_its_cpuid_bit() {
        let mut a = LocalApic::new(LapicConfig {
            tsc_deadline: false,
            ..cfg()
        });
        wr(&mut a, 0xF0, 0x1FF);
        assert_eq!(
            a.read_msr(MSR_TSC_DEADLINE, 0),
            Err(ApicError::NoSuchRegister)
        );
        assert_eq!(
            a.write_msr(MSR_TSC_DEADLINE, 1, 0),
            Err(ApicError::NoSuchRegister)
        );
        wr(&mut a, 0x320, 0x4_0040);
        assert_eq!(rd(&mut a, 0x320), 0x40, "bit 18 is reserved: one-shot");
        x2(&mut a);
        assert_eq!(
            a.write_msr(0x832, 0x4_0040, 0),
            Err(ApicError::ReservedBits)
        );
    }

    #[test]
    fn timer_reserved_mode_does_not_count() {
        let mut a = timer_apic(0x6_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 0);
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_mmio(0x390, 4, 10), 0);
        assert!(!a.update(1_000_000));
    }

    #[test]
    fn timer_survives_time_going_backwards() {
        let mut a = timer_apic(0x2_0040, 0xB);
        wr_at(&mut a, 0x380, 100, 1_000_000);
        assert_eq!(a.read_mmio(0x390, 4, 0), 100);
        assert!(!a.update(0));
        assert_eq!(a.next_deadline(), Some(1_000_200));
        // And far in the future, at the end of the TSC's range.
        assert!(a.update(u64::MAX));
        assert!(a.next_deadline().is_some());
    }

    // ----- ICR, SELF IPI -----

    fn sent(e: LapicEffect) -> InterruptMessage {
        match e {
            LapicEffect::Send(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn icr_fixed_physical_xapic() {
        let mut a = enabled();
        assert_eq!(wr(&mut a, 0x310, 0x03FF_FFFF), LapicEffect::None);
        let m = sent(wr(&mut a, 0x300, 0x41));
        assert_eq!(
            m,
            InterruptMessage {
                vector: 0x41,
                delivery: DeliveryMode::Fixed,
                destination_mode: DestinationMode::Physical,
                trigger: Trigger::Edge,
                shorthand: Shorthand::None,
                destination: 3,
                format: DestinationFormat::XApic,
            }
        );
        assert_eq!(rd(&mut a, 0x310), 0x0300_0000);
    }

    #[test]
    fn icr_delivery_modes() {
        let mut a = enabled();
        let cases: &[(u32, DeliveryMode)] = &[
            (0x0141, DeliveryMode::LowestPriority),
            (0x0241, DeliveryMode::Smi),
            (0x0441, DeliveryMode::Nmi),
            (0x4500, DeliveryMode::Init),
            (0x0500, DeliveryMode::Init),
            (0xC500, DeliveryMode::Init),
            (0x8500, DeliveryMode::InitLevelDeassert),
            (0x4608, DeliveryMode::StartUp),
            (0x0341, DeliveryMode::Reserved),
            (0x0741, DeliveryMode::Reserved),
        ];
        for &(lo, mode) in cases {
            let m = sent(wr(&mut a, 0x300, lo));
            assert_eq!(m.delivery, mode, "{lo:#x}");
            let trig = if mode == DeliveryMode::InitLevelDeassert {
                Trigger::Level
            } else {
                Trigger::Edge
            };
            assert_eq!(m.trigger, trig, "{lo:#x}: IPIs are edge-triggered");
        }
        // A level-triggered fixed IPI is still edge (Pentium 4 and later).
        assert_eq!(sent(wr(&mut a, 0x300, 0xC041)).trigger, Trigger::Edge);
        // SIPI and NMI vectors below 16 are not illegal.
        assert_eq!(sent(wr(&mut a, 0x300, 0x4600)).vector, 0);
        assert_eq!(sent(wr(&mut a, 0x300, 0x4400)).delivery, DeliveryMode::Nmi);
        assert_eq!(esr_now(&mut a), 0);
    }

    #[test]
    fn icr_shorthands_and_logical_destinations() {
        let mut a = enabled();
        let sh = |a: &mut LocalApic, lo| sent(wr(a, 0x300, lo)).shorthand;
        assert_eq!(sh(&mut a, 0x4_0041), Shorthand::SelfOnly);
        assert_eq!(sh(&mut a, 0x8_0041), Shorthand::AllIncludingSelf);
        assert_eq!(sh(&mut a, 0xC_0041), Shorthand::AllExcludingSelf);
        wr(&mut a, 0x310, 0x0F00_0000);
        let m = sent(wr(&mut a, 0x300, 0x0841));
        assert_eq!(
            (m.destination_mode, m.destination),
            (DestinationMode::Logical, 0x0F)
        );
    }

    #[test]
    fn icr_illegal_vector_sets_send_illegal_vector() {
        let mut a = enabled();
        for lo in [0x000F, 0x0100, 0x4_0005] {
            assert_eq!(
                wr(&mut a, 0x300, lo),
                LapicEffect::None,
                "{lo:#x} is not sent"
            );
            assert_eq!(esr_now(&mut a), esr::SEND_ILLEGAL_VECTOR);
        }
    }

    #[test]
    fn icr_reads_back_idle_with_defined_bits() {
        let mut a = enabled();
        wr(&mut a, 0x310, 0xFFFF_FFFF);
        wr(&mut a, 0x300, 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, 0x300), ICR_LOW_WRITABLE, "delivery status idle");
        assert_eq!(rd(&mut a, 0x310), 0xFF00_0000);
    }

    #[test]
    fn x2apic_icr_is_64_bits_and_self_ipi_sends_to_self() {
        let mut a = enabled();
        x2(&mut a);
        let m = sent(a.write_msr(0x830, 0x0000_0105_0000_0041, 0).unwrap());
        assert_eq!(
            (m.destination, m.format),
            (0x105, DestinationFormat::X2Apic)
        );
        assert_eq!(a.read_msr(0x830, 0), Ok(0x0000_0105_0000_0041));
        let m = sent(a.write_msr(0x83F, 0x55, 0).unwrap());
        assert_eq!(
            (m.vector, m.delivery, m.shorthand, m.trigger),
            (
                0x55,
                DeliveryMode::Fixed,
                Shorthand::SelfOnly,
                Trigger::Edge
            )
        );
        assert_eq!(a.write_msr(0x83F, 0x05, 0), Ok(LapicEffect::None));
        assert_eq!(esr_now(&mut a), esr::SEND_ILLEGAL_VECTOR);
        assert_eq!(a.write_msr(0x828, 0, 0), Ok(LapicEffect::None));
    }

    // ----- LINT pins, NMI, ExtINT, error LVT -----

    #[test]
    fn lint0_extint_and_lint1_nmi() {
        let mut a = enabled();
        wr(&mut a, 0x350, 0x700);
        wr(&mut a, 0x360, 0x400);
        a.set_lint(Lint::Lint0, true);
        assert!(a.extint_pending());
        a.ack_extint();
        assert!(
            a.extint_pending(),
            "level: pending while the PIC holds INTR"
        );
        a.set_lint(Lint::Lint0, false);
        assert!(!a.extint_pending());
        wr(&mut a, 0x350, 0x1_0700);
        a.set_lint(Lint::Lint0, true);
        assert!(!a.extint_pending(), "masked");
        assert!(a.set_lint(Lint::Lint1, true));
        assert!(a.nmi_pending());
        assert!(!a.set_lint(Lint::Lint1, true), "no edge");
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        a.set_lint(Lint::Lint1, false);
        a.set_lint(Lint::Lint1, true);
        assert!(a.nmi_pending());
    }

    #[test]
    fn lint_fixed_edge_and_level_with_remote_irr() {
        let mut a = enabled();
        // LINT1 fixed: edge even with the level bit (§11.5.1).
        wr(&mut a, 0x360, 0x8045);
        assert!(a.set_lint(Lint::Lint1, true));
        assert!(irr_has(&a, 0x45));
        assert!(!a.set_lint(Lint::Lint1, true));
        // LINT0 fixed level.
        wr(&mut a, 0x350, 0x8046);
        assert!(a.set_lint(Lint::Lint0, true));
        assert!(irr_has(&a, 0x46));
        assert_eq!(rd(&mut a, 0x350) & lvt::REMOTE_IRR, lvt::REMOTE_IRR);
        assert_eq!(rd(&mut a, 0x1A0) & (1 << 6), 1 << 6, "TMR: level");
        a.ack(0x46);
        assert!(!a.set_lint(Lint::Lint0, true), "remote IRR holds it");
        assert!(!irr_has(&a, 0x46));
        // EOI with the line still up: delivered again.
        assert_eq!(wr(&mut a, 0xB0, 0), LapicEffect::EoiBroadcast(0x46));
        assert!(irr_has(&a, 0x46));
        a.ack(0x46);
        a.set_lint(Lint::Lint0, false);
        wr(&mut a, 0xB0, 0);
        assert_eq!(rd(&mut a, 0x350) & lvt::REMOTE_IRR, 0);
        assert!(!irr_has(&a, 0x46));
        // Masked while asserted, then unmasked: delivered.
        wr(&mut a, 0x350, 0x1_8046);
        a.set_lint(Lint::Lint0, true);
        assert!(!irr_has(&a, 0x46));
        wr(&mut a, 0x350, 0x8046);
        assert!(irr_has(&a, 0x46));
    }

    #[test]
    fn lint_pins_with_the_apic_disabled_are_intr_and_nmi() {
        let mut a = enabled();
        a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE, 0).unwrap();
        a.set_lint(Lint::Lint0, true);
        assert!(a.extint_pending());
        assert!(a.set_lint(Lint::Lint1, true));
        assert!(a.nmi_pending());
    }

    #[test]
    fn error_lvt_signals_errors() {
        let mut a = enabled();
        wr(&mut a, 0x370, 0x33);
        a.accept_interrupt(3, Trigger::Edge);
        assert_eq!(a.highest_injectable(), Some(0x33));
        assert_eq!(esr_now(&mut a), esr::RECEIVE_ILLEGAL_VECTOR);
        // An illegal error vector adds the receive error, no interrupt.
        let mut b = enabled();
        wr(&mut b, 0x370, 0x05);
        wr(&mut b, 0x300, 0x01);
        assert_eq!(b.highest_injectable(), None);
        assert_eq!(
            esr_now(&mut b),
            esr::SEND_ILLEGAL_VECTOR | esr::RECEIVE_ILLEGAL_VECTOR
        );
        // The timer with an illegal vector: an error, not an interrupt.
        let mut c = timer_apic(0x07, 0xB);
        wr(&mut c, 0x370, 0x34);
        wr_at(&mut c, 0x380, 1, 0);
        assert!(!c.update(10));
        assert_eq!(c.highest_injectable(), Some(0x34));
        assert_eq!(esr_now(&mut c), esr::RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn nmi_and_extint_messages() {
        let mut a = enabled();
        a.accept_extint();
        assert!(a.extint_pending());
        a.ack_extint();
        assert!(!a.extint_pending());
        a.accept_nmi();
        a.accept_nmi();
        assert!(a.take_nmi());
        assert!(!a.nmi_pending(), "NMIs do not queue");
        // A disabled APIC takes neither message.
        a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE, 0).unwrap();
        a.accept_nmi();
        a.accept_extint();
        assert!(!a.nmi_pending() && !a.extint_pending());
    }

    #[test]
    fn access_paths_do_not_allocate() {
        let mut a = enabled();
        let mut b = enabled();
        x2(&mut b);
        let info = allocation_counter::measure(|| {
            for i in 0..64u64 {
                let off = (i * 0x10) % 0x400;
                a.read_mmio(off, 4, i * 10);
                a.write_mmio(off, 4, i * 0x1111, i * 10);
                let _ = b.read_msr(0x800 + i as u32, i * 10);
                let _ = b.write_msr(0x800 + i as u32, i, i * 10);
                a.accept_interrupt(0x20 + i as u8, Trigger::Level);
                if let Some(v) = a.highest_injectable() {
                    a.ack(v);
                }
                a.eoi();
                a.update(i * 100);
                a.next_deadline();
                a.set_lint(Lint::Lint0, i % 2 == 0);
                let _ = a.target();
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
    }
}

/// Property tests: any sequence of guest register accesses and backend
/// calls keeps the model's invariants and never panics.
#[cfg(test)]
mod props {
    use super::*;
    use crate::proptests::config;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        ReadMmio(u64, u8),
        WriteMmio(u64, u8, u64),
        ReadMsr(u32),
        WriteMsr(u32, u64),
        Accept(u8, bool),
        AckHighest,
        Ack(u8),
        Eoi,
        Lint(bool, bool),
        Cr8(u64),
        Advance(u64),
        Init,
        Nmi,
        /// A register read or write through the interface of the current
        /// mode (MMIO in xAPIC mode, MSR in x2APIC mode).
        ReadReg(u32),
        WriteReg(u32, u64),
        /// An LVT entry (0-5) with a composed value.
        WriteLvt(u32, u64),
        /// ICR high then low (xAPIC) or the 64-bit ICR (x2APIC).
        SendIcr(u64),
        /// The ESR write-then-read.
        LatchEsr,
    }

    /// LVT values: any vector (often legal), delivery mode, polarity,
    /// trigger, mask (mostly clear), timer mode.
    fn lvt_value() -> impl Strategy<Value = u64> {
        (
            prop_oneof![3 => 16u64..256, 1 => 0u64..16],
            // Mostly fixed; NMI and ExtINT for the LINT pins.
            prop_oneof![4 => Just(0u64), 1 => Just(4), 1 => Just(7), 1 => 0u64..8],
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2),
            0u64..4,
        )
            .prop_map(|(v, mode, pol, level, mask, timer)| {
                v | mode << 8
                    | u64::from(pol) << 13
                    | u64::from(level) << 15
                    | u64::from(mask) << 16
                    | timer << 17
            })
    }

    /// ICR values: vector, delivery mode, destination mode, level,
    /// trigger, shorthand, destination (32 bits).
    fn icr_value() -> impl Strategy<Value = u64> {
        (
            any::<u8>(),
            0u64..8,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u64..4,
            prop_oneof![
                0u64..4,
                Just(0xFF),
                Just(0xFFFF_FFFF),
                any::<u32>().prop_map(u64::from)
            ],
        )
            .prop_map(|(v, mode, logical, assert, level, sh, dest)| {
                u64::from(v)
                    | mode << 8
                    | u64::from(logical) << 11
                    | u64::from(assert) << 14
                    | u64::from(level) << 15
                    | sh << 18
                    | dest << 32
            })
    }

    /// Every register index the model knows, and a few holes.
    fn index() -> impl Strategy<Value = u32> {
        prop_oneof![
            8 => prop::sample::select(vec![
                reg::ID, reg::VERSION, reg::TPR, reg::APR, reg::PPR, reg::EOI, reg::RRD,
                reg::LDR, reg::DFR, reg::SVR, reg::ISR + 2, reg::TMR + 2, reg::IRR + 2,
                reg::ESR, reg::LVT_CMCI, reg::ICR, reg::ICR_HIGH, reg::LVT_TIMER,
                reg::LVT_THERMAL, reg::LVT_PERF, reg::LVT_LINT0, reg::LVT_LINT1,
                reg::LVT_ERROR, reg::INITIAL_COUNT, reg::CURRENT_COUNT,
                reg::DIVIDE_CONFIG, reg::SELF_IPI,
            ]),
            1 => 0u32..0x100,
        ]
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => (0u64..0x40).prop_map(|r| r * 0x10),
            1 => 0u64..0x1010,
        ]
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => prop::sample::select(vec![
                0u64, 0x1FF, 0x11FF, 0xFF, 0x40, 0x2_0040, 0x4_0040, 0x6_0040, 0x1_0040,
                0x700, 0x400, 0x8046, 0x4500, 0x4608, 0xC_0041, 0x841, 0xB, 0x3, 10, 1000,
                0x0300_0000, 0xFF00_0000,
            ]),
            1 => any::<u32>().prop_map(u64::from),
            1 => any::<u64>(),
        ]
    }

    fn msr() -> impl Strategy<Value = u32> {
        prop_oneof![
            2 => prop::sample::select(vec![MSR_APIC_BASE, MSR_TSC_DEADLINE]),
            6 => 0x800u32..0x840,
            1 => 0x840u32..0x900,
            1 => any::<u32>(),
        ]
    }

    fn msr_value() -> impl Strategy<Value = u64> {
        let b = DEFAULT_APIC_BASE;
        prop_oneof![
            2 => prop::sample::select(vec![
                b, b | base::EN, b | base::EN | base::EXTD, b | base::EXTD,
                b | base::EN | base::BSP, 0x1_0000_0800,
            ]),
            3 => value(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (offset(), prop::sample::select(vec![1u8, 2, 4, 4, 4, 8])).prop_map(|(o, s)| Op::ReadMmio(o, s)),
            8 => (offset(), prop::sample::select(vec![1u8, 4, 4, 4, 8]), value()).prop_map(|(o, s, v)| Op::WriteMmio(o, s, v)),
            3 => msr().prop_map(Op::ReadMsr),
            6 => (msr(), msr_value()).prop_map(|(m, v)| Op::WriteMsr(m, v)),
            4 => (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
            3 => Just(Op::AckHighest),
            1 => any::<u8>().prop_map(Op::Ack),
            3 => Just(Op::Eoi),
            4 => (any::<bool>(), any::<bool>()).prop_map(|(p, l)| Op::Lint(p, l)),
            1 => (0u64..20).prop_map(Op::Cr8),
            3 => (0u64..3000).prop_map(Op::Advance),
            1 => Just(Op::Init),
            1 => Just(Op::Nmi),
            4 => index().prop_map(Op::ReadReg),
            10 => (index(), value()).prop_map(|(i, v)| Op::WriteReg(i, v)),
            6 => (0u32..6, lvt_value()).prop_map(|(i, v)| Op::WriteLvt(i, v)),
            3 => icr_value().prop_map(Op::SendIcr),
            2 => Just(Op::LatchEsr),
        ]
    }

    fn write_reg(a: &mut LocalApic, index: u32, value: u64, now: u64) {
        if a.mode() == ApicMode::X2Apic {
            let _ = a.write_msr(MSR_X2APIC_FIRST + index, value, now);
        } else {
            a.write_mmio(u64::from(index) << 4, 4, value, now);
        }
    }

    fn check(a: &LocalApic, seen_irr: &[u32; 8], now: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            a.ppr() >= a.tpr(),
            "PPR {:#x} below TPR {:#x}",
            a.ppr(),
            a.tpr()
        );
        prop_assert!(a.ppr() >> 4 >= a.tpr() >> 4);
        // Vectors 0-15 never enter IRR or ISR.
        prop_assert_eq!(a.irr[0] & 0xFFFF, 0);
        prop_assert_eq!(a.isr[0] & 0xFFFF, 0);
        // An ISR bit only for a vector that was accepted into IRR before.
        for (i, (isr, seen)) in a.isr.iter().zip(seen_irr).enumerate() {
            prop_assert_eq!(isr & !seen, 0, "ISR word {} without IRR", i);
        }
        if let Some(v) = a.highest_injectable() {
            prop_assert!(a.software_enabled());
            prop_assert!(vector_bit(&a.irr, v));
            prop_assert_eq!(Some(v), highest_vector(&a.irr));
            prop_assert!(v >> 4 > a.ppr() >> 4);
        }
        // Never the invalid EN = 0, EXTD = 1 state.
        prop_assert_ne!(a.apic_base() & (base::EN | base::EXTD), base::EXTD);
        prop_assert_eq!(a.mmio_base().is_some(), a.mode() == ApicMode::XApic);
        if a.mode() == ApicMode::XApic {
            prop_assert!(a.id() <= 0xFF);
        }
        prop_assert!(a.current_count(now) <= a.initial_count);
        prop_assert_eq!(a.esr & !0xF0, 0);
        prop_assert_eq!(a.esr_pending & !0xF0, 0);
        if !a.software_enabled() && a.mode() != ApicMode::Disabled {
            // Disabled by SVR: every LVT but a reset-time virtual wire is
            // masked.
            for (i, l) in a.lvt.iter().enumerate() {
                if i != LVT_LINT0 {
                    prop_assert_ne!(l & lvt::MASKED, 0, "LVT {} unmasked", i);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any sequence of MMIO/MSR accesses (hostile sizes, offsets,
        /// values, APIC_BASE transitions), acceptances, acks, EOIs, pin
        /// changes, CR8 writes, INITs and time steps: no panic, and the
        /// invariants hold after every step (PPR >= TPR, ISR only for
        /// accepted vectors, highest_injectable above PPR, no illegal
        /// vectors, a valid APIC_BASE state, the timer's next deadline
        /// after an update is in the future).
        #[test]
        fn prop_lapic_any_access_sequence_keeps_invariants(
            x2apic in any::<bool>(),
            tsc_deadline in any::<bool>(),
            bsp in any::<bool>(),
            enable in prop::bool::weighted(0.8),
            to_x2apic in any::<bool>(),
            ops in prop::collection::vec(op(), 1..64),
        ) {
            let mut a = LocalApic::new(LapicConfig {
                apic_id: 3,
                bsp,
                tsc_khz: 2_500_000,
                timer_khz: 1_000_000,
                x2apic,
                tsc_deadline,
                phys_addr_bits: 40,
            });
            if enable {
                a.write_mmio(0xF0, 4, 0x1FF, 0);
            }
            if to_x2apic && x2apic {
                a.write_msr(MSR_APIC_BASE, DEFAULT_APIC_BASE | base::EN | base::EXTD, 0).unwrap();
            }
            let mut now = 0u64;
            let mut seen_irr = [0u32; 8];
            for op in ops {
                match op {
                    Op::ReadMmio(o, s) => {
                        let v = a.read_mmio(o, s, now);
                        prop_assert!(s >= 8 || v >> (8 * u32::from(s)) == 0);
                    }
                    Op::WriteMmio(o, s, v) => { a.write_mmio(o, s, v, now); }
                    Op::ReadMsr(m) => { let _ = a.read_msr(m, now); }
                    Op::WriteMsr(m, v) => { let _ = a.write_msr(m, v, now); }
                    Op::Accept(v, l) => {
                        let t = if l { Trigger::Level } else { Trigger::Edge };
                        let ok = a.accept_interrupt(v, t);
                        prop_assert!(!ok || (v >= 16 && a.software_enabled()));
                    }
                    Op::AckHighest => {
                        if let Some(v) = a.highest_injectable() {
                            prop_assert!(a.ack(v));
                            prop_assert!(vector_bit(&a.isr, v));
                        }
                    }
                    Op::Ack(v) => { a.ack(v); }
                    Op::Eoi => { a.eoi(); }
                    Op::Lint(p, l) => {
                        a.set_lint(if p { Lint::Lint1 } else { Lint::Lint0 }, l);
                    }
                    Op::Cr8(v) => {
                        let r = a.write_cr8(v);
                        prop_assert_eq!(r.is_ok(), v <= 15);
                        if v <= 15 {
                            prop_assert_eq!(a.cr8(), v);
                        }
                    }
                    Op::Advance(dt) => {
                        now += dt;
                        a.update(now);
                        if let Some(d) = a.next_deadline() {
                            prop_assert!(d > now, "deadline {} not after {}", d, now);
                        }
                    }
                    Op::Init => a.init_reset(),
                    Op::Nmi => a.accept_nmi(),
                    Op::ReadReg(i) => {
                        if a.mode() == ApicMode::X2Apic {
                            let _ = a.read_msr(MSR_X2APIC_FIRST + i, now);
                        } else {
                            a.read_mmio(u64::from(i) << 4, 4, now);
                        }
                    }
                    Op::WriteReg(i, v) => write_reg(&mut a, i, v, now),
                    Op::WriteLvt(i, v) => write_reg(&mut a, reg::LVT_TIMER + i, v, now),
                    Op::SendIcr(v) => {
                        let effect = if a.mode() == ApicMode::X2Apic {
                            a.write_msr(MSR_X2APIC_FIRST + reg::ICR, v, now)
                                .unwrap_or(LapicEffect::None)
                        } else {
                            a.write_mmio(0x310, 4, (v >> 32) << 24, now);
                            a.write_mmio(0x300, 4, v & 0xFFFF_FFFF, now)
                        };
                        if let LapicEffect::Send(m) = effect {
                            prop_assert!(
                                m.vector >= 16
                                    || !matches!(m.delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority)
                            );
                        }
                    }
                    Op::LatchEsr => {
                        write_reg(&mut a, reg::ESR, 0, now);
                    }
                }
                check(&a, &seen_irr, now)?;
                for (s, w) in seen_irr.iter_mut().zip(a.irr) {
                    *s |= w;
                }
            }
        }
    }
}
