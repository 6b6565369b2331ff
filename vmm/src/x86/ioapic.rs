//! The I/O APIC (Intel 82093AA datasheet), version 0x20: 24 pins and the
//! EOI register at 0x40 that later chipsets added, as a pure state
//! machine.
//!
//! Registers are reached indirectly: IOREGSEL (offset 0x00) selects,
//! IOWIN (0x10) reads and writes the selected register. Each pin has a
//! 64-bit redirection entry; a pin's input (`set_line`) produces an
//! [`InterruptMessage`] for [`super::apic_bus::route`]:
//! - edge-triggered: on a rising edge if unmasked; a masked edge is lost
//!   (82093AA §3.2.4, as QEMU and KVM);
//! - level-triggered: while the line is asserted, unmasked and remote IRR
//!   is clear; delivery sets remote IRR, an EOI for the entry's vector
//!   (the local APICs' broadcast or the EOI register) clears it, and a line
//!   still asserted then delivers again. A masked level is remembered and
//!   delivered when unmasked.
//!
//! After [`IoApic::write_mmio`] or [`IoApic::eoi`], the caller drains
//! [`IoApic::pop_message`]: each returned message has its pin's remote IRR
//! set, so the loop ends after at most 24 messages. Nothing allocates.
//!
//! Choices: `set_line` takes the asserted state of the line; the polarity
//! bit is stored but does not invert (the board wires devices so that
//! "asserted" is what they report, as QEMU and KVM do). Remote IRR is set
//! when the message is sent, whether or not a local APIC accepts it.
//! Delivery status always reads idle (delivery is instantaneous). NMI,
//! SMI, INIT and ExtINT entries are edge-triggered whatever their trigger
//! bit says (the datasheet requires edge for them).

use super::{decode_apic_delivery, DeliveryMode, DestinationFormat, DestinationMode};
use super::{InterruptMessage, Shorthand, Trigger};

/// Pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// Version 0x20: the version with the EOI register.
pub const IOAPIC_VERSION: u32 = 0x20;
/// The version register: version and the highest entry index (23).
pub const VERSION_VALUE: u32 = IOAPIC_VERSION | ((IOAPIC_PINS as u32 - 1) << 16);

/// MMIO offsets.
pub mod offset {
    pub const IOREGSEL: u64 = 0x00;
    pub const IOWIN: u64 = 0x10;
    /// Write a vector: EOI for level entries with that vector.
    pub const EOI: u64 = 0x40;
}

/// Register indices written to IOREGSEL (82093AA §3.2).
pub mod index {
    pub const ID: u8 = 0x00;
    pub const VERSION: u8 = 0x01;
    pub const ARBITRATION: u8 = 0x02;
    /// Entry n: low dword at 0x10 + 2n, high dword at 0x11 + 2n.
    pub const REDIRECTION_TABLE: u8 = 0x10;
}

/// Redirection entry bits (82093AA §3.2.4).
pub mod rte {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE: u64 = 0x7 << 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const POLARITY_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DESTINATION: u64 = 0xFF << 56;
    /// The bits software writes; remote IRR and delivery status are
    /// read-only, bits 55:17 reserved.
    pub const WRITABLE: u64 =
        VECTOR | DELIVERY_MODE | LOGICAL | POLARITY_LOW | LEVEL | MASKED | DESTINATION;
}

/// One I/O APIC.
#[derive(Clone, Debug)]
pub struct IoApic {
    /// The ID the board gives it (bits 27:24 of the ID register).
    reset_id: u8,
    id: u8,
    arbitration_id: u8,
    ioregsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// Asserted lines, one bit per pin.
    lines: u32,
}

impl IoApic {
    /// An I/O APIC with ID `id` (4 bits, as the 82093AA's ID register;
    /// higher bits dropped), every entry masked (§3.2.4 reset state).
    pub fn new(id: u8) -> IoApic {
        let mut io = IoApic {
            reset_id: id & 0xF,
            id: 0,
            arbitration_id: 0,
            ioregsel: 0,
            redirection: [0; IOAPIC_PINS],
            lines: 0,
        };
        io.reset();
        io
    }

    /// RESET: the board's ID, every entry masked with its other bits 0.
    /// Line levels are the devices' and stay.
    pub fn reset(&mut self) {
        self.id = self.reset_id;
        self.arbitration_id = self.reset_id;
        self.ioregsel = 0;
        self.redirection = [rte::MASKED; IOAPIC_PINS];
    }

    /// Entry `pin` (for inspection), None beyond pin 23.
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// Whether `pin`'s line is asserted.
    pub fn line(&self, pin: usize) -> bool {
        pin < IOAPIC_PINS && self.lines & (1 << pin) != 0
    }

    fn read_register(&self) -> u32 {
        match self.ioregsel {
            index::ID => u32::from(self.id) << 24,
            index::VERSION => VERSION_VALUE,
            index::ARBITRATION => u32::from(self.arbitration_id) << 24,
            r @ 0x10..=0x3F => {
                let e = self.redirection[usize::from((r - 0x10) / 2)];
                if r & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            // Unimplemented indices read 0 (as QEMU and KVM).
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.ioregsel {
            // The arbitration ID is loaded whenever the ID is written.
            index::ID => {
                self.id = ((value >> 24) & 0xF) as u8;
                self.arbitration_id = self.id;
            }
            r @ 0x10..=0x3F => {
                let pin = usize::from((r - 0x10) / 2);
                let old = self.redirection[pin];
                let (half, shift) = if r & 1 == 0 {
                    (0xFFFF_FFFF, 0)
                } else {
                    (0xFFFF_FFFF << 32, 32)
                };
                let writable = rte::WRITABLE & half;
                let mut e = (old & !writable) | ((u64::from(value) << shift) & writable);
                // Remote IRR means nothing for an edge entry: switching to
                // edge clears it (Linux relies on this to clear a stuck
                // remote IRR on I/O APICs without the EOI register).
                if e & rte::LEVEL == 0 {
                    e &= !rte::REMOTE_IRR;
                }
                self.redirection[pin] = e;
            }
            // Version, arbitration and unimplemented indices: read-only.
            _ => {}
        }
    }

    /// An MMIO read at `offset` of `size` bytes: IOREGSEL and IOWIN
    /// return their value truncated to the access size (8-byte reads get
    /// the 32-bit value); other offsets read 0.
    pub fn read_mmio(&self, offset: u64, size: u8) -> u64 {
        let v = match offset {
            offset::IOREGSEL => u32::from(self.ioregsel),
            offset::IOWIN => self.read_register(),
            _ => 0,
        };
        match size {
            1 => u64::from(v & 0xFF),
            2 => u64::from(v & 0xFFFF),
            _ => u64::from(v),
        }
    }

    /// An MMIO write: IOREGSEL takes the low byte (any size); IOWIN takes
    /// 4- and 8-byte writes (the low 32 bits; the datasheet requires dword
    /// accesses, smaller writes are ignored); the EOI register takes the
    /// vector in the low byte. Other offsets are ignored. Unmasking an
    /// asserted level line or an EOI may make a pin deliverable: drain
    /// [`IoApic::pop_message`] afterwards.
    pub fn write_mmio(&mut self, offset: u64, size: u8, value: u64) {
        match offset {
            offset::IOREGSEL => self.ioregsel = value as u8,
            offset::IOWIN if matches!(size, 4 | 8) => self.write_register(value as u32),
            offset::EOI => self.eoi(value as u8),
            _ => {}
        }
    }

    /// Level semantics apply only to fixed and lowest-priority entries.
    fn is_level(e: u64) -> bool {
        e & rte::LEVEL != 0
            && matches!(
                decode_apic_delivery(((e & rte::DELIVERY_MODE) >> 8) as u32),
                DeliveryMode::Fixed | DeliveryMode::LowestPriority
            )
    }

    fn message(e: u64) -> InterruptMessage {
        InterruptMessage {
            vector: e as u8,
            delivery: decode_apic_delivery(((e & rte::DELIVERY_MODE) >> 8) as u32),
            destination_mode: if e & rte::LOGICAL != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            trigger: if Self::is_level(e) {
                Trigger::Level
            } else {
                Trigger::Edge
            },
            shorthand: Shorthand::None,
            destination: (e >> 56) as u32,
            format: DestinationFormat::XApic,
        }
    }

    /// Delivers `pin` if it is a level entry, asserted, unmasked and
    /// without remote IRR: sets remote IRR.
    fn deliver_level(&mut self, pin: usize) -> Option<InterruptMessage> {
        let e = self.redirection[pin];
        if !Self::is_level(e) || !self.line(pin) || e & (rte::MASKED | rte::REMOTE_IRR) != 0 {
            return None;
        }
        self.redirection[pin] = e | rte::REMOTE_IRR;
        Some(Self::message(e))
    }

    /// A device sets `pin`'s line (`level`: asserted). Returns the message
    /// to route, if the change delivers one (see the module
    /// documentation). Pins beyond 23 are ignored.
    pub fn set_line(&mut self, pin: usize, level: bool) -> Option<InterruptMessage> {
        if pin >= IOAPIC_PINS {
            return None;
        }
        let rising = level && !self.line(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let e = self.redirection[pin];
        if Self::is_level(e) {
            self.deliver_level(pin)
        } else if rising && e & rte::MASKED == 0 {
            Some(Self::message(e))
        } else {
            None
        }
    }

    /// EOI for `vector` (a local APIC's broadcast, or the EOI register):
    /// clears remote IRR of every level entry with that vector. Drain
    /// [`IoApic::pop_message`] afterwards for lines still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for e in &mut self.redirection {
            if *e & rte::VECTOR == u64::from(vector) && *e & rte::LEVEL != 0 {
                *e &= !rte::REMOTE_IRR;
            }
        }
    }

    /// The next level message due (lowest pin first), with its remote IRR
    /// now set; None when no pin is due.
    pub fn pop_message(&mut self) -> Option<InterruptMessage> {
        let mut due = self.lines;
        while due != 0 {
            let pin = due.trailing_zeros() as usize;
            due &= due - 1;
            if let Some(m) = self.deliver_level(pin) {
                return Some(m);
            }
        }
        None
    }
}
