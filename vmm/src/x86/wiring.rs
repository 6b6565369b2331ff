//! The x86 interrupt controllers wired into a VM: one local APIC per vCPU,
//! the I/O APIC and the legacy devices whose outputs are lines (8259 pair,
//! PIT, RTC: [`Legacy`]), behind one lock ([`SharedIrqChip`], the innermost
//! lock, never held across a guest entry), plus what the VM core does
//! around each entry, on the APIC's MMIO page and MSRs, on HLT and on
//! INIT/SIPI.
//!
//! Injection (SDM Vol. 3A §6.9 / APM Vol. 2 §15.20): before an entry the
//! core asks the backend whether the guest can take a maskable interrupt
//! now (RFLAGS.IF = 1, no STI/MOV SS shadow, nothing else to deliver:
//! [`X86Interface::interruptible`]). If so, the highest injectable vector
//! is acknowledged (IRR -> ISR) and the backend injects it as an external
//! interrupt (EVENTINJ); if not, the backend asks for an exit when the
//! guest opens its window ([`X86Interface::window`], SVM's VINTR intercept).
//! The local APIC timer's next expiry goes to the backend as a deadline
//! by which the guest must exit ([`X86Interface::wake_at`]).
//!
//! The work is skipped on exits that cannot have changed anything (the
//! common VMMCALL/OUT exits of a guest that does not use interrupts): the
//! lock is taken only when a device or another vCPU raised something
//! (`force`), this vCPU touched its APIC ([`X86Interface::sync`]), its
//! timer is due, its window opened, or its CR8 changed.
//!
//! Nothing here allocates after [`X86Irq::new`]; every guest value (MMIO
//! offsets and sizes, MSR values, ICR destinations naming absent vCPUs,
//! SIPIs to running vCPUs) goes through the models, which validate it.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::apic_bus::{route, Action, ApicTarget, ApicTargets};
use super::ioapic::{IoApic, IOAPIC_PINS};
use super::lapic::{ApicError, LapicConfig, LapicEffect, Lint, LocalApic};
use super::pic::PicPair;
use super::pit::Pit;
use super::rtc::Rtc;
use super::InterruptMessage;
use crate::bus::{BusDevice, IoOutcome};
use crate::irq::{vcpu_bit, EoiList, IrqChip, Msi, SharedIrqChip, VcpuMask, Waker};
use crate::regs::AccessSize;

/// The I/O APIC's MMIO base (the PC default; MP spec, ACPI MADT).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Bytes of its window: IOREGSEL, IOWIN and the EOI register.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// The local APIC timer's input clock given to guests (as KVM's 1 GHz
/// APIC bus): CPUID 0x4000_0010 EBX.
pub const APIC_TIMER_KHZ: u32 = 1_000_000;
/// The MMIO test device's line on x86: GSI 16, the first I/O APIC pin
/// above the ISA IRQs (level-triggered lines live there on a PC).
pub const TESTDEV_GSI: u32 = 16;

/// The interrupt state of one x86 vCPU that the backend holds and
/// exchanges with the hardware, KVM's `kvm_queued_interrupt` plus its
/// interrupt-window request.
///
/// Backend -> core: `interruptible` and `rflags_if` (refreshed by
/// `Vcpu::x86_refresh`, on the slow path only), `cr8` and `sync` (after
/// each exit: a changed CR8, a window exit). Core -> backend for the next
/// entry, applied only when `load` is set: `inject`, `inject_nmi`,
/// `window`, `wake_at`, `cr8` (the TPR to load into V_TPR). The rest is
/// the core's bookkeeping. On the common exit neither side does more than
/// test `sync` and `load` (a guest MOV CR8 sets `sync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X86Interface {
    /// The guest takes a maskable interrupt at the next entry: RFLAGS.IF
    /// = 1, no interrupt shadow, and no other event waiting for delivery.
    pub interruptible: bool,
    /// RFLAGS.IF alone (HLT wakes only for interrupts IF lets through).
    pub rflags_if: bool,
    /// An NMI can be injected at the next entry: the last one's handler
    /// returned (IRET), no shadow, nothing else to deliver. NMIs that come
    /// meanwhile wait in the local APIC (one is latched, SDM §6.7.1).
    pub nmi_ready: bool,
    /// CR8 (TPR[7:4]) as the guest left it / as the core wants it loaded.
    pub cr8: u8,
    /// Inject this vector (external interrupt) at the next entry; taken
    /// by the backend.
    pub inject: Option<u8>,
    /// Inject an NMI at the next entry; taken by the backend.
    pub inject_nmi: bool,
    /// Exit as soon as the guest can take an interrupt (VINTR).
    pub window: bool,
    /// Exit by this TSC value (the local APIC timer's next expiry).
    pub wake_at: Option<u64>,
    /// The guest touched its APIC, or an interrupt was raised for it by
    /// its own exit: look before the next entry.
    pub sync: bool,
    /// The CR8 value loaded at the last entry (a change means a guest
    /// MOV CR8).
    pub loaded_cr8: u8,
    /// The core changed the fields above: the backend applies them at the
    /// next entry (and clears it).
    pub load: bool,
    /// Where this vCPU's xAPIC page is (None: x2APIC mode or disabled),
    /// kept by the core as IA32_APIC_BASE changes, so that an MMIO exit
    /// finds it without the controllers' lock.
    pub apic_page: Option<u64>,
}

impl Default for X86Interface {
    fn default() -> Self {
        X86Interface {
            interruptible: false,
            rflags_if: false,
            nmi_ready: false,
            cr8: 0,
            inject: None,
            inject_nmi: false,
            window: false,
            wake_at: None,
            // The first entry looks.
            sync: true,
            loaded_cr8: 0,
            load: false,
            apic_page: Some(super::lapic::DEFAULT_APIC_BASE),
        }
    }
}

/// A guest MOV CR8 (V_TPR, reported after the exit) reaches the TPR
/// before anything reads or uses it.
fn cr8_to_tpr(l: &mut LocalApic, ci: &mut X86Interface) {
    if ci.cr8 != ci.loaded_cr8 {
        let _ = l.write_cr8(u64::from(ci.cr8));
        ci.loaded_cr8 = ci.cr8;
    }
}

/// What HLT found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// An interrupt the guest takes is there: it goes on at once.
    Pending,
    /// Nothing it would take: block until a wake-up or the deadline (TSC).
    Block { deadline: Option<u64> },
}

/// The local APICs as the router sees them.
struct Targets<'a>(&'a [LocalApic]);

impl ApicTargets for Targets<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn target(&self, index: usize) -> Option<ApicTarget> {
        self.0.get(index).map(LocalApic::target)
    }
}

/// The I/O APIC pin of ISA IRQ `irq`: the identity but for IRQ 0 (the
/// PIT), which is on pin 2 (the interrupt source override every PC's
/// MADT has; pin 0 is the 8259's INTR in ExtINT mode).
pub const fn isa_gsi(irq: u8) -> usize {
    if irq == 0 {
        2
    } else {
        irq as usize
    }
}

/// The PC's legacy devices whose outputs are interrupt lines: behind the
/// controllers' lock so that a tick reaches the 8259, the I/O APIC and
/// LINT0 in one step. Time is guest nanoseconds.
pub struct Legacy {
    pub pic: PicPair,
    pub pit: Pit,
    pub rtc: Rtc,
    /// IRQ8 as last driven.
    rtc_line: bool,
}

impl Legacy {
    /// The devices at guest time 0, the RTC showing `wall_clock`.
    pub fn new(wall_clock: u64) -> Legacy {
        Legacy {
            pic: PicPair::bios_default(),
            pit: Pit::new(0),
            rtc: Rtc::new(wall_clock),
            rtc_line: false,
        }
    }
}

/// Every interrupt controller of one x86 VM (the model behind the lock).
pub struct X86Apics {
    lapics: Vec<LocalApic>,
    ioapic: IoApic,
    legacy: Legacy,
    /// Guest nanoseconds per TSC tick, as TSC kHz (for the legacy devices).
    tsc_khz: u32,
    /// The TSC at the VM's creation: the legacy devices' time 0 (the RTC
    /// shows the wall clock read then, not that plus the host's uptime).
    epoch: u64,
    /// When the legacy devices next raise a line that reaches a CPU (TSC;
    /// `u64::MAX`: never without an access), and whether an access since
    /// the last look may have changed that: the BSP looks at them only
    /// then (a look walks the PIT and the RTC's calendar: hundreds of
    /// instructions that every APIC access of the BSP paid before).
    legacy_next: u64,
    legacy_dirty: bool,
    /// vCPUs that took an INIT and wait for a start-up IPI.
    wait_for_sipi: VcpuMask,
    /// vCPUs started (the BSP from creation, APs by their SIPI): an INIT
    /// or SIPI to them is ignored (an INIT of a running vCPU is not
    /// modelled: it would need a vCPU reset).
    running: VcpuMask,
    /// Start-up vectors the core has yet to act on, per vCPU.
    sipi: Vec<Option<u8>>,
}

impl X86Apics {
    fn deliver(&mut self, msg: &InterruptMessage, source: Option<usize>) -> VcpuMask {
        let d = route(msg, source, &Targets(&self.lapics));
        let mut kick = 0;
        for i in d.vcpus {
            let bit = vcpu_bit(i);
            let Some(l) = self.lapics.get_mut(i) else {
                continue;
            };
            let hit = match d.action {
                Action::Interrupt { vector, trigger } => l.accept_interrupt(vector, trigger),
                Action::Nmi => {
                    l.accept_nmi();
                    l.nmi_pending()
                }
                Action::ExtInt => {
                    l.accept_extint();
                    false
                }
                Action::Init if self.running & bit == 0 => {
                    l.init_reset();
                    self.wait_for_sipi |= bit;
                    false
                }
                Action::StartUp { vector } if self.wait_for_sipi & bit != 0 => {
                    self.wait_for_sipi &= !bit;
                    self.running |= bit;
                    self.sipi[i] = Some(vector);
                    true
                }
                Action::Init | Action::StartUp { .. } | Action::None => false,
            };
            if hit {
                kick |= bit;
            }
        }
        kick
    }

    /// Level messages the I/O APIC has due (lines still high after an
    /// EOI, or unmasked).
    fn drain_ioapic(&mut self) -> VcpuMask {
        let mut kick = 0;
        // At most one message per pin and pass: remote IRR stops repeats.
        for _ in 0..IOAPIC_PINS {
            let Some(m) = self.ioapic.pop_message() else {
                break;
            };
            kick |= self.deliver(&m, None);
        }
        kick
    }

    /// The I/O APIC's EOI of `vector` (from a LAPIC broadcast or its own
    /// register): the level pins it ends go to `eois`.
    fn ioapic_eoi(&mut self, vector: u8, eois: &mut EoiList) {
        use super::ioapic::rte;
        for pin in 0..IOAPIC_PINS {
            if let Some(e) = self.ioapic.redirection_entry(pin) {
                if e as u8 == vector && e & rte::LEVEL != 0 && e & rte::REMOTE_IRR != 0 {
                    eois.push(pin as u32);
                }
            }
        }
        self.ioapic.eoi(vector);
    }

    /// Applies what an APIC register write of vCPU `v` asks for.
    fn effect(&mut self, v: usize, e: LapicEffect, eois: &mut EoiList) -> VcpuMask {
        match e {
            LapicEffect::None => 0,
            LapicEffect::Send(m) => self.deliver(&m, Some(v)),
            LapicEffect::EoiBroadcast(vector) => {
                self.ioapic_eoi(vector, eois);
                0
            }
        }
    }

    /// vCPU `v`'s local APIC (tests, reports).
    pub fn lapic(&self, v: usize) -> Option<&LocalApic> {
        self.lapics.get(v)
    }

    pub fn ioapic(&self) -> &IoApic {
        &self.ioapic
    }
}

/// Line numbers `ISA_LINE + irq` name ISA IRQs of devices outside the
/// controllers (the 16550's IRQ 4): such a line drives the 8259 pair and
/// the I/O APIC pin of the IRQ ([`isa_gsi`]), as an ISA bus line does.
/// Lines below it are I/O APIC pins (GSIs).
pub const ISA_LINE: u32 = 0x100;

impl IrqChip for X86Apics {
    fn has_line(&self, line: u32) -> bool {
        (line as usize) < IOAPIC_PINS || (ISA_LINE..ISA_LINE + 16).contains(&line)
    }

    fn set_line(&mut self, line: u32, level: bool) -> VcpuMask {
        if let Some(irq) = line.checked_sub(ISA_LINE).filter(|&i| i < 16) {
            return self.isa_line(irq as u8, level) | self.update_intr();
        }
        match self.ioapic.set_line(line as usize, level) {
            Some(m) => self.deliver(&m, None),
            None => 0,
        }
    }

    fn pulse_line(&mut self, line: u32) -> VcpuMask {
        let pin = match line.checked_sub(ISA_LINE).filter(|&i| i < 16) {
            Some(irq) => isa_gsi(irq as u8),
            None => line as usize,
        };
        let was = self.ioapic.line(pin);
        let mut kick = 0;
        if was {
            kick |= self.set_line(line, false);
        }
        kick |= self.set_line(line, true);
        kick | self.set_line(line, was)
    }

    fn signal_msi(&mut self, msi: Msi) -> Option<VcpuMask> {
        let m = InterruptMessage::from_msi(msi.address, msi.data).ok()?;
        Some(self.deliver(&m, None))
    }

    fn has_interrupt(&self, vcpu: usize) -> bool {
        self.lapics.get(vcpu).is_some_and(|l| {
            l.highest_injectable().is_some() || l.nmi_pending() || l.extint_pending()
        })
    }
}

/// An x86 VM's interrupt controllers.
pub struct X86Irq {
    chip: Arc<SharedIrqChip<X86Apics>>,
}

/// The result of an APIC register access the core must act on after the
/// lock is released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApicAccess {
    /// RDMSR / MMIO read value.
    pub value: u64,
    /// vCPUs with a start-up IPI to act on ([`X86Irq::take_sipi`]).
    pub startups: VcpuMask,
}

impl X86Irq {
    /// The local APICs of `nr_vcpus` vCPUs (vCPU i has APIC ID i; vCPU 0
    /// is the BSP) with a TSC of `tsc_khz`, x2APIC and TSC-deadline
    /// support, and the I/O APIC. `waker` wakes and kicks the VM's vCPUs.
    /// The legacy devices start at guest time 0 with the RTC at
    /// `wall_clock` (Unix seconds).
    pub fn new(
        nr_vcpus: u32,
        tsc_khz: u32,
        addr_bits: u32,
        wall_clock: u64,
        waker: Arc<dyn Waker>,
    ) -> X86Irq {
        let lapics = (0..nr_vcpus)
            .map(|i| {
                LocalApic::new(LapicConfig {
                    apic_id: i,
                    bsp: i == 0,
                    tsc_khz,
                    timer_khz: APIC_TIMER_KHZ,
                    x2apic: true,
                    tsc_deadline: true,
                    phys_addr_bits: addr_bits.min(52) as u8,
                })
            })
            .collect();
        let chip = X86Apics {
            lapics,
            // ID after the local APICs' (0..n), as firmware numbers them.
            ioapic: IoApic::new(nr_vcpus as u8),
            legacy: Legacy::new(wall_clock),
            tsc_khz,
            epoch: 0,
            legacy_next: u64::MAX,
            legacy_dirty: true,
            wait_for_sipi: 0,
            running: vcpu_bit(0),
            sipi: (0..nr_vcpus).map(|_| None).collect(),
        };
        X86Irq {
            chip: Arc::new(SharedIrqChip::new(chip, waker)),
        }
    }

    /// The legacy devices' time 0 is TSC `now` (the VM's creation; set once
    /// the VM has its clock, before any vCPU runs).
    pub fn set_epoch(&self, now: u64) {
        self.chip.with(|c| c.epoch = now);
    }

    /// The shared controllers (device lines are made from it).
    pub fn chip(&self) -> &Arc<SharedIrqChip<X86Apics>> {
        &self.chip
    }

    /// Whether the controllers' lock is held now (tests: never while a
    /// guest runs).
    #[cfg(any(test, feature = "testing"))]
    pub fn locks_held(&self) -> bool {
        self.chip.is_locked()
    }

    /// Whether [`X86Irq::before_entry`] has anything to do: cheap, no lock.
    #[inline]
    pub fn needs_sync(ci: &X86Interface, now: impl FnOnce() -> u64) -> bool {
        ci.sync || ci.wake_at.is_some_and(|d| now() >= d)
    }

    /// Before vCPU `v` enters at TSC `now`: timer expiries, then an NMI or
    /// the highest injectable vector for the backend to inject (acked now)
    /// or an interrupt-window request, and the timer's next deadline.
    pub fn before_entry(&self, v: usize, ci: &mut X86Interface, now: u64) {
        let kick = self.chip.with(|c| {
            // The legacy devices' ticks reach the controllers when the BSP
            // looks (their deadlines are the BSP's wake-ups).
            let (mut kick, legacy_deadline) = if v == 0 { c.legacy_due(now) } else { (0, None) };
            let Some(l) = c.lapics.get_mut(v) else {
                return kick;
            };
            cr8_to_tpr(l, ci);
            l.update(now);
            let mut window = false;
            let mut extint = false;
            if l.nmi_pending() && ci.nmi_ready && !ci.inject_nmi {
                // Blocked NMIs wait: the backend reports the end of the
                // handler (IRET) with `sync`.
                ci.inject_nmi = l.take_nmi();
            }
            if let Some(vector) = l.highest_injectable() {
                if ci.interruptible && ci.inject.is_none() && !ci.inject_nmi {
                    l.ack(vector);
                    ci.inject = Some(vector);
                } else {
                    window = true;
                }
            } else if l.extint_pending() {
                // The 8259's vector, fetched by the INTA cycle (SDM
                // §11.5.1: ExtINT bypasses the IRR and priorities).
                if ci.interruptible && ci.inject.is_none() && !ci.inject_nmi {
                    l.ack_extint();
                    extint = true;
                } else {
                    window = true;
                }
            }
            ci.window = window;
            ci.cr8 = l.cr8() as u8;
            ci.loaded_cr8 = ci.cr8;
            // Only a deadline still ahead (a timer that fired is in IRR).
            let lapic_deadline = l.next_deadline().filter(|&d| d > now);
            ci.wake_at = match (lapic_deadline, legacy_deadline.filter(|&d| d > now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            ci.sync = false;
            ci.load = true;
            if extint {
                ci.inject = Some(c.legacy.pic.acknowledge());
                kick |= c.update_intr() & !vcpu_bit(0);
            }
            kick
        });
        self.chip.wake(kick & !vcpu_bit(v));
    }

    /// HLT of vCPU `v` at `now` (after the exit's own state is in `ci`):
    /// goes on if an NMI or an interrupt the guest takes (IF = 1) is
    /// there, else blocks until the timer's next expiry or a wake-up.
    pub fn halt(&self, v: usize, ci: &mut X86Interface, now: u64) -> Halt {
        let (halt, kick) = self.chip.with(|c| {
            let (kick, legacy_deadline) = if v == 0 { c.legacy_due(now) } else { (0, None) };
            let Some(l) = c.lapics.get_mut(v) else {
                return (Halt::Block { deadline: None }, kick);
            };
            cr8_to_tpr(l, ci);
            l.update(now);
            let takes = l.highest_injectable().is_some() || l.extint_pending();
            if l.nmi_pending() || (ci.rflags_if && takes) {
                return (Halt::Pending, kick);
            }
            if !ci.rflags_if {
                // CLI; HLT: only an NMI (or INIT) ends it.
                return (Halt::Block { deadline: None }, kick);
            }
            let lapic = l.next_deadline().filter(|&d| d > now);
            let deadline = match (lapic, legacy_deadline.filter(|&d| d > now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            (Halt::Block { deadline }, kick)
        });
        self.chip.wake(kick & !vcpu_bit(v));
        halt
    }

    /// Whether `gpa` is in vCPU `v`'s xAPIC page (the page moves with
    /// IA32_APIC_BASE and is gone in x2APIC mode).
    pub fn is_mmio(&self, v: usize, gpa: u64) -> bool {
        self.chip.with(|c| {
            c.lapics
                .get(v)
                .and_then(LocalApic::mmio_base)
                .is_some_and(|b| gpa & !0xFFF == b)
        })
    }

    /// An xAPIC MMIO access of vCPU `v` (`write`: the value). Level EOIs
    /// go to `eois` for their devices (then call [`X86Irq::after_eois`]).
    pub fn mmio(
        &self,
        v: usize,
        ci: &mut X86Interface,
        m: &crate::exit::Mmio,
        now: u64,
        eois: &mut EoiList,
    ) -> ApicAccess {
        let (gpa, size) = (m.gpa, m.size);
        let write = match m.op {
            crate::exit::MmioOp::Write(v) => Some(v),
            crate::exit::MmioOp::Read(_)
            | crate::exit::MmioOp::ReadFlags(_)
            | crate::exit::MmioOp::ReadAlu { .. } => None,
        };
        ci.sync = true;
        let mut out = ApicAccess::default();
        let kick = self.chip.with(|c| {
            let Some(l) = c.lapics.get_mut(v) else {
                return 0;
            };
            cr8_to_tpr(l, ci);
            let offset = gpa & 0xFFF;
            let size = size.bytes() as u8;
            match write {
                None => {
                    out.value = l.read_mmio(offset, size, now);
                    0
                }
                Some(val) => {
                    let e = l.write_mmio(offset, size, val, now);
                    let k = c.effect(v, e, eois);
                    out.startups = c.pending_sipis();
                    k
                }
            }
        });
        self.wake_others(v, ci, kick);
        out
    }

    /// An APIC MSR access of vCPU `v` (IA32_APIC_BASE, IA32_TSC_DEADLINE,
    /// the x2APIC range): `None` if `msr` is not one; an error is #GP(0).
    pub fn msr(
        &self,
        v: usize,
        ci: &mut X86Interface,
        msr: u32,
        write: Option<u64>,
        now: u64,
        eois: &mut EoiList,
    ) -> Option<Result<ApicAccess, ApicError>> {
        if !LocalApic::is_apic_msr(msr) {
            return None;
        }
        ci.sync = true;
        let mut kick = 0;
        let r = self.chip.with(|c| {
            let l = c.lapics.get_mut(v)?;
            cr8_to_tpr(l, ci);
            Some(match write {
                None => l
                    .read_msr(msr, now)
                    .map(|value| ApicAccess { value, startups: 0 }),
                Some(val) => match l.write_msr(msr, val, now) {
                    Ok(e) => {
                        if msr == super::lapic::MSR_APIC_BASE {
                            ci.apic_page = l.mmio_base();
                        }
                        kick = c.effect(v, e, eois);
                        Ok(ApicAccess {
                            value: 0,
                            startups: c.pending_sipis(),
                        })
                    }
                    Err(e) => Err(e),
                },
            })
        })?;
        self.wake_others(v, ci, kick);
        Some(r)
    }

    /// After the devices heard of `eois`: level lines still high are
    /// delivered again.
    pub fn after_eois(&self) {
        self.chip.update(X86Apics::drain_ioapic);
    }

    /// Wakes the vCPUs in `kick` but `v` itself, which looks before its
    /// next entry anyway.
    fn wake_others(&self, v: usize, ci: &mut X86Interface, kick: VcpuMask) {
        if kick & vcpu_bit(v) != 0 {
            ci.sync = true;
        }
        self.chip.wake(kick & !vcpu_bit(v));
    }

    /// The start-up vector sent to vCPU `v`, if one waits (taken).
    pub fn take_sipi(&self, v: usize) -> Option<u8> {
        self.chip.with(|c| c.sipi.get_mut(v).and_then(Option::take))
    }

    /// Whether vCPU `v` has an NMI or an unmasked interrupt pending
    /// (IF aside).
    pub fn has_interrupt(&self, v: usize) -> bool {
        self.chip.has_interrupt(v)
    }

    /// vCPU `v`'s timer's next expiry (a blocked vCPU's wake-up time).
    pub fn next_deadline(&self, v: usize) -> Option<u64> {
        self.chip
            .with(|c| c.lapics.get(v).and_then(LocalApic::next_deadline))
    }
}

impl X86Apics {
    /// Guest nanoseconds (since the epoch) at TSC `now`.
    fn ns(&self, now: u64) -> u64 {
        let t = now.saturating_sub(self.epoch);
        u64::try_from(u128::from(t) * 1_000_000 / u128::from(self.tsc_khz.max(1)))
            .unwrap_or(u64::MAX)
    }

    /// TSC value at guest nanosecond `ns` (rounded up: never early).
    fn tsc(&self, ns: u64) -> u64 {
        u64::try_from((u128::from(ns) * u128::from(self.tsc_khz.max(1))).div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .saturating_add(self.epoch)
    }

    /// ISA IRQ `irq` to `level` on both controllers it reaches: the 8259
    /// pair and the I/O APIC pin ([`isa_gsi`]).
    fn isa_line(&mut self, irq: u8, level: bool) -> VcpuMask {
        self.legacy.pic.set_irq(irq, level);
        let gsi = isa_gsi(irq) as u32;
        IrqChip::set_line(self, gsi, level)
    }

    /// The legacy devices' outputs brought up to TSC `now`: PIT channel 0's
    /// rising edges pulse IRQ0, the RTC drives IRQ8, and the 8259's INTR
    /// drives the BSP's LINT0. Returns the vCPUs to kick.
    pub fn poll_legacy(&mut self, now: u64) -> VcpuMask {
        let ns = self.ns(now);
        let mut kick = 0;
        if self.legacy.pit.irq0_edges(ns) > 0 {
            // Coalesced: one edge per look, as a missed tick would be.
            kick |= self.isa_line(0, true);
            kick |= self.isa_line(0, false);
        }
        let rtc = self.legacy.rtc.irq_level(ns);
        if rtc != self.legacy.rtc_line {
            self.legacy.rtc_line = rtc;
            kick |= self.isa_line(8, rtc);
        }
        kick | self.update_intr()
    }

    /// The 8259's INTR output to the BSP's LINT0 (virtual wire, MP spec
    /// §3.6.2.2; an unmasked ExtINT LVT makes it pending there).
    fn update_intr(&mut self) -> VcpuMask {
        let intr = self.legacy.pic.pending();
        match self.lapics.first_mut() {
            Some(l) => {
                l.set_lint(Lint::Lint0, intr);
                if l.extint_pending() || l.highest_injectable().is_some() {
                    vcpu_bit(0)
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    /// Whether ISA IRQ `irq` reaches a CPU: unmasked at the 8259 (the
    /// slave's through the cascade) or at its I/O APIC pin.
    fn isa_unmasked(&self, irq: u8) -> bool {
        use super::ioapic::rte;
        use super::pic::Chip;
        let pic = &self.legacy.pic;
        let at_pic = match irq {
            0..=7 => pic.imr(Chip::Master) & (1 << irq) == 0,
            _ => pic.imr(Chip::Slave) & (1 << (irq - 8)) == 0 && pic.imr(Chip::Master) & 4 == 0,
        };
        let at_ioapic = self
            .ioapic
            .redirection_entry(isa_gsi(irq))
            .is_some_and(|e| e & rte::MASKED == 0);
        at_pic || at_ioapic
    }

    /// The next TSC value at which a legacy device raises a line that
    /// reaches a CPU (a masked PIT does not wake a halted BSP every 55 ms;
    /// its edges wait in the model until the line is unmasked).
    fn legacy_deadline(&mut self, now: u64) -> Option<u64> {
        let ns = self.ns(now);
        let pit = if self.isa_unmasked(0) {
            self.legacy.pit.next_irq0_deadline(ns)
        } else {
            None
        };
        let rtc = if self.isa_unmasked(8) {
            self.legacy.rtc.next_irq_deadline(ns)
        } else {
            None
        };
        let d = match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(self.tsc(d).max(now))
    }

    /// The BSP's look at the legacy devices before an entry or on HLT:
    /// their edges up to `now` if one is due or an access may have changed
    /// them; returns the vCPUs to kick and the next deadline still ahead.
    fn legacy_due(&mut self, now: u64) -> (VcpuMask, Option<u64>) {
        let mut kick = 0;
        if self.legacy_dirty || now >= self.legacy_next {
            kick = self.poll_legacy(now);
            self.legacy_next = self.legacy_deadline(now).unwrap_or(u64::MAX);
            self.legacy_dirty = false;
        }
        let next =
            (self.legacy_next != u64::MAX && self.legacy_next > now).then_some(self.legacy_next);
        (kick, next)
    }

    /// The legacy devices, locked with the controllers (their port
    /// devices run `f`, then propagate the outputs at TSC `now`).
    pub fn with_legacy<R>(
        &mut self,
        now: u64,
        f: impl FnOnce(&mut Legacy, u64) -> R,
    ) -> (R, VcpuMask) {
        let ns = self.ns(now);
        let r = f(&mut self.legacy, ns);
        self.legacy_dirty = true;
        (r, self.poll_legacy(now))
    }

    fn pending_sipis(&self) -> VcpuMask {
        self.sipi
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .fold(0, |m, (i, _)| m | vcpu_bit(i))
    }
}

/// The I/O APIC's window on the MMIO bus.
pub struct IoApicDevice(pub Arc<SharedIrqChip<X86Apics>>);

impl BusDevice for IoApicDevice {
    fn name(&self) -> &'static str {
        "ioapic"
    }

    fn read(&mut self, offset: u64, size: AccessSize) -> u64 {
        self.0
            .with(|c| c.ioapic.read_mmio(offset, size.bytes() as u8))
    }

    fn write(&mut self, offset: u64, size: AccessSize, value: u64) -> IoOutcome {
        // Unmasking a pin whose line is high delivers it. An EOI through
        // the register ends level pins as a LAPIC broadcast would (their
        // devices are not told on this path: Linux uses it only to clear
        // remote IRR of lines it then re-checks).
        self.0.update(|c| {
            if offset == super::ioapic::offset::EOI {
                let mut eois = EoiList::new();
                c.ioapic_eoi(value as u8, &mut eois);
            } else {
                c.ioapic.write_mmio(offset, size.bytes() as u8, value);
                // A pin of a legacy device may have been (un)masked.
                c.legacy_dirty = true;
            }
            c.drain_ioapic() | vcpu_bit(0)
        });
        IoOutcome::Done
    }
}
