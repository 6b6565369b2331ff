//! Events injected into a guest and the per-vCPU queue that holds them until
//! delivery.
//!
//! Rule `exc_payload`: the side effect of an exception — CR2 for #PF, DR6 for
//! #DB, FAR_EL1 for an arm64 abort — travels with the queued event as its
//! [`Payload`] and is written only when the backend actually delivers the
//! event ([`Event::payload_write`]), never when it is queued. An event that is
//! queued and then replaced, merged into #DF or dropped leaves the guest's
//! registers untouched (as KVM's `kvm_queued_exception` payload does).

use crate::regs::Reg;

/// x86 exception vectors used by name (SDM Vol. 3A Table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const BP: u8 = 3;
    pub const UD: u8 = 6;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
}

/// The deferred side effect of an exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    None,
    /// #PF: the faulting linear address, written to CR2 at delivery.
    Cr2(u64),
    /// #DB: the DR6 bits that report the cause, in "active high" form
    /// (a set bit means the condition happened, also for the active-low
    /// BLD/RTM bits), merged into DR6 at delivery.
    Dr6(u64),
    /// arm64 abort: the faulting virtual address, written to FAR_EL1.
    Far(u64),
}

/// Something to inject into a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// x86 exception, vector 0..=31 (not NMI, vector 2).
    Exception {
        vector: u8,
        error_code: Option<u32>,
        payload: Payload,
    },
    /// x86 non-maskable interrupt.
    Nmi,
    /// x86 maskable external interrupt, vector 32..=255.
    Interrupt { vector: u8 },
    /// "Undefined instruction" in the guest's own architecture: #UD on x86,
    /// an Unknown-reason synchronous exception (EC = 0) on arm64.
    Undefined,
    /// arm64 synchronous exception taken to EL1 with this ESR_EL1 value.
    Arm64Sync { esr: u64, payload: Payload },
    /// arm64 virtual SError.
    Arm64SError,
}

/// Why an event was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// Exception vector above 31, vector 2 (use [`Event::Nmi`]), or interrupt
    /// vector below 32.
    BadVector(u8),
    /// A payload that does not belong to this event (CR2 on a #GP).
    PayloadMismatch,
    /// An interrupt is already waiting for delivery.
    InterruptBusy,
}

impl Event {
    /// #PF with error code `code` for linear address `cr2`.
    pub fn page_fault(cr2: u64, code: u32) -> Event {
        Event::Exception {
            vector: vector::PF,
            error_code: Some(code),
            payload: Payload::Cr2(cr2),
        }
    }

    /// #DB with `dr6` (active-high) cause bits.
    pub fn debug(dr6: u64) -> Event {
        Event::Exception {
            vector: vector::DB,
            error_code: None,
            payload: Payload::Dr6(dr6),
        }
    }

    /// #GP(code).
    pub fn general_protection(code: u32) -> Event {
        Event::Exception {
            vector: vector::GP,
            error_code: Some(code),
            payload: Payload::None,
        }
    }

    /// arm64 synchronous external abort on a data access at `far`, taken from
    /// the current EL1 (ESR: EC 0x25, IL, DFSC 0x10; Arm ARM D17.2.37).
    pub fn arm64_external_data_abort(far: u64) -> Event {
        Self::arm64_external_abort(crate::exit::AccessKind::Read, far)
    }

    /// arm64 synchronous external abort for an access of `kind` at `far`:
    /// a data abort (EC 0x25, WnR for writes) or an instruction abort
    /// (EC 0x21), fault status 0x10, as if taken from EL1. A backend that
    /// delivers it to a guest running at EL0 uses the lower-EL classes
    /// (0x24 / 0x20) instead.
    pub fn arm64_external_abort(kind: crate::exit::AccessKind, far: u64) -> Event {
        use crate::exit::AccessKind;
        let (ec, wnr) = match kind {
            AccessKind::Fetch => (0x21, 0),
            AccessKind::Read => (0x25, 0),
            AccessKind::Write => (0x25, 1 << 6),
        };
        Event::Arm64Sync {
            esr: (ec << 26) | (1 << 25) | wnr | 0x10,
            payload: Payload::Far(far),
        }
    }

    /// Checks vector ranges and that the payload matches the event.
    pub fn validate(&self) -> Result<(), EventError> {
        match *self {
            Event::Exception {
                vector, payload, ..
            } => {
                if vector > 31 || vector == 2 {
                    return Err(EventError::BadVector(vector));
                }
                match (vector, payload) {
                    (_, Payload::None)
                    | (vector::PF, Payload::Cr2(_))
                    | (vector::DB, Payload::Dr6(_)) => Ok(()),
                    _ => Err(EventError::PayloadMismatch),
                }
            }
            Event::Interrupt { vector } if vector < 32 => Err(EventError::BadVector(vector)),
            Event::Arm64Sync {
                payload: Payload::Cr2(_) | Payload::Dr6(_),
                ..
            } => Err(EventError::PayloadMismatch),
            _ => Ok(()),
        }
    }

    /// The register write that delivering this event implies, given read
    /// access to the register's current value. Backends call this at
    /// delivery, immediately before they program EVENTINJ / the VM-entry
    /// interruption field / the EL1 exception entry (rule `exc_payload`).
    pub fn payload_write(&self, current: impl FnOnce(Reg) -> u64) -> Option<(Reg, u64)> {
        let payload = match *self {
            Event::Exception { payload, .. } | Event::Arm64Sync { payload, .. } => payload,
            _ => Payload::None,
        };
        match payload {
            Payload::None => None,
            Payload::Cr2(a) => Some((Reg::Cr2, a)),
            Payload::Far(a) => Some((Reg::FarEl1, a)),
            Payload::Dr6(p) => Some((Reg::Dr6, merge_dr6(current(Reg::Dr6), p))),
        }
    }
}

/// DR6 bits that read as 1 when their condition is absent (the reserved
/// ones and RTM, bit 16): a DR6 value XOR this gives the active-high form
/// of a #DB payload (KVM's DR6_ACTIVE_LOW).
pub const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;

/// DR6 after a #DB with `payload` (SDM Vol. 3B §18.2.3): B0-B3 are replaced,
/// the reserved-one and active-low bits (DR6_ACTIVE_LOW = 0xFFFF0FF0) are set
/// and then cleared where the payload reports the active-low condition, bit 12
/// is cleared. Mirrors KVM's `kvm_deliver_exception_payload`.
pub fn merge_dr6(old: u64, payload: u64) -> u64 {
    const TRAP_BITS: u64 = 0xf;
    let mut dr6 = old & !TRAP_BITS;
    dr6 |= DR6_ACTIVE_LOW;
    dr6 |= payload;
    dr6 ^= payload & DR6_ACTIVE_LOW;
    dr6 & !(1 << 12) & 0xffff_ffff
}

/// Exception classes for the double-fault rules (SDM Vol. 3A §6.15,
/// Interrupt 8, Table 6-5).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

fn class(e: &Event) -> Class {
    match *e {
        Event::Exception { vector, .. } => match vector {
            vector::DE | vector::TS | vector::NP | vector::SS | vector::GP => Class::Contributory,
            vector::PF => Class::PageFault,
            vector::DF => Class::DoubleFault,
            _ => Class::Benign,
        },
        _ => Class::Benign,
    }
}

/// What queueing an exception produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// The event waits for delivery (possibly replacing a benign one).
    Queued,
    /// Two exceptions combined into #DF (error code 0, payloads dropped).
    DoubleFault,
    /// A fault while a #DF was pending: the vCPU must shut down.
    TripleFault,
}

/// Events waiting for delivery on one vCPU: at most one exception, one NMI
/// and one interrupt, delivered in that order (SDM Vol. 3A §6.9 priorities,
/// simplified: a pending exception always goes first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingEvents {
    exception: Option<Event>,
    nmi: bool,
    interrupt: Option<u8>,
}

impl PendingEvents {
    pub const fn new() -> Self {
        PendingEvents {
            exception: None,
            nmi: false,
            interrupt: None,
        }
    }

    /// Queues `event`, combining x86 exceptions as the CPU would.
    pub fn queue(&mut self, event: Event) -> Result<Queued, EventError> {
        event.validate()?;
        match event {
            Event::Nmi => self.nmi = true,
            Event::Interrupt { vector } => {
                if self.interrupt.is_some() {
                    return Err(EventError::InterruptBusy);
                }
                self.interrupt = Some(vector);
            }
            _ => return Ok(self.queue_exception(event)),
        }
        Ok(Queued::Queued)
    }

    fn queue_exception(&mut self, event: Event) -> Queued {
        let Some(prev) = self.exception else {
            self.exception = Some(event);
            return Queued::Queued;
        };
        let (first, second) = (class(&prev), class(&event));
        match (first, second) {
            (Class::DoubleFault, Class::Contributory | Class::PageFault) => {
                self.exception = None;
                Queued::TripleFault
            }
            (Class::Contributory, Class::Contributory)
            | (Class::PageFault, Class::Contributory | Class::PageFault) => {
                self.exception = Some(Event::Exception {
                    vector: vector::DF,
                    error_code: Some(0),
                    payload: Payload::None,
                });
                Queued::DoubleFault
            }
            _ => {
                // Handled serially: the first is re-raised when the guest
                // re-executes the instruction, so the newer one is delivered.
                self.exception = Some(event);
                Queued::Queued
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exception.is_none() && !self.nmi && self.interrupt.is_none()
    }

    /// The pending exception, if any, with its payload still attached.
    pub fn pending_exception(&self) -> Option<Event> {
        self.exception
    }

    /// Removes and returns the next event to deliver. `nmi_open` and
    /// `irq_open` say whether the guest can take an NMI / interrupt now
    /// (RFLAGS.IF, interrupt shadow, NMI blocking: the backend knows).
    pub fn take(&mut self, nmi_open: bool, irq_open: bool) -> Option<Event> {
        if let Some(e) = self.exception.take() {
            return Some(e);
        }
        if self.nmi && nmi_open {
            self.nmi = false;
            return Some(Event::Nmi);
        }
        if irq_open {
            if let Some(vector) = self.interrupt.take() {
                return Some(Event::Interrupt { vector });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_exc_payload_carried_until_delivery() {
        let mut q = PendingEvents::new();
        assert_eq!(
            q.queue(Event::page_fault(0xdead_b000, 2)),
            Ok(Queued::Queued)
        );
        q.queue(Event::Nmi).unwrap();
        q.queue(Event::Interrupt { vector: 0x30 }).unwrap();
        // The queued #PF still carries its CR2.
        assert_eq!(
            q.pending_exception(),
            Some(Event::Exception {
                vector: vector::PF,
                error_code: Some(2),
                payload: Payload::Cr2(0xdead_b000)
            })
        );
        let e = q.take(true, true).unwrap();
        // CR2 is written only by the delivery, computed from the event.
        assert_eq!(e.payload_write(|_| 0), Some((Reg::Cr2, 0xdead_b000)));
        assert_eq!(q.take(false, false), None); // NMI blocked
        assert_eq!(q.take(true, false), Some(Event::Nmi));
        assert_eq!(q.take(true, true), Some(Event::Interrupt { vector: 0x30 }));
        assert!(q.is_empty());
    }

    #[test]
    fn inv_exc_payload_dr6_merged_at_delivery() {
        // Old DR6 reports B1; a #DB for breakpoint 0 replaces B0-B3.
        let e = Event::debug(1);
        let (reg, v) = e
            .payload_write(|r| {
                assert_eq!(r, Reg::Dr6);
                0xffff_0ff2
            })
            .unwrap();
        assert_eq!((reg, v), (Reg::Dr6, 0xffff_0ff1));
        // Single-step (BS, bit 14) keeps the fixed ones.
        assert_eq!(merge_dr6(0, 1 << 14), 0xffff_4ff0);
        // RTM (bit 16) is active low: reported by clearing it.
        assert_eq!(merge_dr6(0, 1 << 16), 0xfffe_0ff0);
        // Garbage in the upper half of the old value never survives.
        assert_eq!(merge_dr6(u64::MAX, 0), 0xffff_eff0);
    }

    #[test]
    fn inv_exc_payload_dropped_when_merged_into_double_fault() {
        let mut q = PendingEvents::new();
        q.queue(Event::page_fault(0x1000, 0)).unwrap();
        assert_eq!(
            q.queue(Event::page_fault(0x2000, 0)),
            Ok(Queued::DoubleFault)
        );
        let df = q.take(true, true).unwrap();
        assert_eq!(
            df,
            Event::Exception {
                vector: vector::DF,
                error_code: Some(0),
                payload: Payload::None
            }
        );
        assert_eq!(df.payload_write(|_| 0), None);
    }

    #[test]
    fn double_and_triple_fault_rules() {
        let mut q = PendingEvents::new();
        q.queue(Event::general_protection(0)).unwrap();
        assert_eq!(
            q.queue(Event::general_protection(8)),
            Ok(Queued::DoubleFault)
        );
        assert_eq!(q.queue(Event::page_fault(0, 0)), Ok(Queued::TripleFault));
        assert!(q.is_empty());

        // Contributory then #PF: serial, the #PF replaces it.
        q.queue(Event::general_protection(0)).unwrap();
        assert_eq!(q.queue(Event::page_fault(0x42, 0)), Ok(Queued::Queued));
        assert_eq!(q.take(true, true), Some(Event::page_fault(0x42, 0)));

        // Benign first: serial.
        q.queue(Event::Undefined).unwrap();
        assert_eq!(q.queue(Event::general_protection(0)), Ok(Queued::Queued));
        // #DF then benign: serial, no shutdown.
        q.take(true, true);
        q.queue(Event::Exception {
            vector: vector::DF,
            error_code: Some(0),
            payload: Payload::None,
        })
        .unwrap();
        assert_eq!(q.queue(Event::debug(0)), Ok(Queued::Queued));
    }

    #[test]
    fn hostile_events_rejected() {
        let mut q = PendingEvents::new();
        let bad = [
            Event::Exception {
                vector: 32,
                error_code: None,
                payload: Payload::None,
            },
            Event::Exception {
                vector: 2,
                error_code: None,
                payload: Payload::None,
            },
            Event::Exception {
                vector: vector::GP,
                error_code: Some(0),
                payload: Payload::Cr2(1),
            },
            Event::Exception {
                vector: vector::PF,
                error_code: Some(0),
                payload: Payload::Dr6(1),
            },
            Event::Interrupt { vector: 31 },
            Event::Arm64Sync {
                esr: 0,
                payload: Payload::Cr2(0),
            },
        ];
        for e in bad {
            assert!(q.queue(e).is_err(), "{e:?}");
        }
        assert!(q.is_empty());
        q.queue(Event::Interrupt { vector: 32 }).unwrap();
        assert_eq!(
            q.queue(Event::Interrupt { vector: 33 }),
            Err(EventError::InterruptBusy)
        );
        let abort = Event::arm64_external_data_abort(0x900_0000);
        assert_eq!(abort.payload_write(|_| 0), Some((Reg::FarEl1, 0x900_0000)));
    }
}
