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

#[cfg(test)]
mod tests {
    use super::*;

    fn select(io: &mut IoApic, index: u8) {
        io.write_mmio(offset::IOREGSEL, 4, u64::from(index));
    }

    fn read(io: &mut IoApic, index: u8) -> u32 {
        select(io, index);
        io.read_mmio(offset::IOWIN, 4) as u32
    }

    fn write(io: &mut IoApic, index: u8, value: u32) {
        select(io, index);
        io.write_mmio(offset::IOWIN, 4, u64::from(value));
    }

    /// Programs `pin`'s entry (low then high dword, as drivers do).
    fn program(io: &mut IoApic, pin: u8, entry: u64) {
        write(io, 0x11 + 2 * pin, (entry >> 32) as u32);
        write(io, 0x10 + 2 * pin, entry as u32);
    }

    fn entry(io: &IoApic, pin: usize) -> u64 {
        io.redirection_entry(pin).unwrap()
    }

    #[test]
    fn reset_state() {
        let mut io = IoApic::new(0x12);
        assert_eq!(read(&mut io, index::ID), 0x0200_0000, "4-bit ID");
        assert_eq!(read(&mut io, index::VERSION), 0x0017_0020);
        assert_eq!(read(&mut io, index::ARBITRATION), 0x0200_0000);
        for pin in 0..24u8 {
            assert_eq!(read(&mut io, 0x10 + 2 * pin), 0x1_0000, "pin {pin} masked");
            assert_eq!(read(&mut io, 0x11 + 2 * pin), 0);
        }
        for pin in 0..24 {
            assert_eq!(io.set_line(pin, true), None, "masked at reset");
        }
    }

    #[test]
    fn registers_id_version_arbitration_and_unknown_indices() {
        let mut io = IoApic::new(0);
        write(&mut io, index::ID, 0xFFFF_FFFF);
        assert_eq!(read(&mut io, index::ID), 0x0F00_0000);
        assert_eq!(
            read(&mut io, index::ARBITRATION),
            0x0F00_0000,
            "loaded from the ID"
        );
        write(&mut io, index::VERSION, 0);
        write(&mut io, index::ARBITRATION, 0);
        assert_eq!(read(&mut io, index::VERSION), VERSION_VALUE);
        assert_eq!(read(&mut io, index::ARBITRATION), 0x0F00_0000);
        for idx in [0x03, 0x0F, 0x40, 0x80, 0xFF] {
            write(&mut io, idx, 0xFFFF_FFFF);
            assert_eq!(read(&mut io, idx), 0, "index {idx:#x}");
        }
        // IOREGSEL reads back its byte; other offsets read 0.
        io.write_mmio(offset::IOREGSEL, 4, 0x1234_5678);
        assert_eq!(io.read_mmio(offset::IOREGSEL, 4), 0x78);
        assert_eq!(io.read_mmio(0x20, 4), 0);
        assert_eq!(io.read_mmio(offset::EOI, 4), 0);
        io.write_mmio(0x30, 4, 0xFFFF_FFFF);
        io.reset();
        assert_eq!(read(&mut io, index::ID), 0, "reset restores the board's ID");
    }

    #[test]
    fn redirection_entries_keep_read_only_and_reserved_bits() {
        let mut io = IoApic::new(0);
        write(&mut io, 0x11, 0xFFFF_FFFF);
        assert_eq!(read(&mut io, 0x11), 0xFF00_0000, "bits 55:32 reserved");
        write(&mut io, 0x10, 0xFFFF_FFFF);
        assert_eq!(
            read(&mut io, 0x10),
            0x1_AFFF,
            "no remote IRR, status, 31:17"
        );
        // Remote IRR survives writes to a level entry.
        program(&mut io, 1, 0x8031);
        io.set_line(1, true).unwrap();
        write(&mut io, 0x12, 0x8032);
        assert_eq!(entry(&io, 1) & rte::REMOTE_IRR, rte::REMOTE_IRR);
        assert_eq!(entry(&io, 1) & 0xFF, 0x32);
    }

    #[test]
    fn iowin_accepts_dword_accesses_only() {
        let mut io = IoApic::new(0);
        select(&mut io, 0x10);
        io.write_mmio(offset::IOWIN, 1, 0x31);
        io.write_mmio(offset::IOWIN, 2, 0x31);
        assert_eq!(entry(&io, 0), rte::MASKED);
        io.write_mmio(offset::IOWIN, 8, 0xFFFF_FFFF_0000_0031);
        assert_eq!(entry(&io, 0), 0x31, "the low 32 bits of an 8-byte write");
        assert_eq!(io.read_mmio(offset::IOWIN, 1), 0x31);
        assert_eq!(io.read_mmio(offset::IOWIN, 2), 0x31);
        assert_eq!(io.read_mmio(offset::IOWIN, 8), 0x31);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edges() {
        let mut io = IoApic::new(0);
        program(&mut io, 1, 0x0300_0000_0000_0031);
        let m = io.set_line(1, true).unwrap();
        assert_eq!(
            m,
            InterruptMessage {
                vector: 0x31,
                delivery: DeliveryMode::Fixed,
                destination_mode: DestinationMode::Physical,
                trigger: Trigger::Edge,
                shorthand: Shorthand::None,
                destination: 3,
                format: DestinationFormat::XApic,
            }
        );
        assert_eq!(io.set_line(1, true), None, "still high: no edge");
        assert_eq!(io.set_line(1, false), None);
        assert!(io.set_line(1, true).is_some());
        assert_eq!(
            entry(&io, 1) & rte::REMOTE_IRR,
            0,
            "no remote IRR for edges"
        );
        assert_eq!(io.pop_message(), None);
    }

    #[test]
    fn masked_edges_are_lost() {
        let mut io = IoApic::new(0);
        program(&mut io, 4, 0x1_0034);
        assert_eq!(io.set_line(4, true), None);
        program(&mut io, 4, 0x34);
        assert_eq!(io.pop_message(), None, "an edge is not remembered");
        assert_eq!(io.set_line(4, true), None, "and the line is still high");
    }

    #[test]
    fn level_line_reasserts_after_eoi_while_high() {
        let mut io = IoApic::new(0);
        program(&mut io, 2, 0x8032);
        let m = io.set_line(2, true).unwrap();
        assert_eq!(m.trigger, Trigger::Level);
        assert_eq!(entry(&io, 2) & rte::REMOTE_IRR, rte::REMOTE_IRR);
        assert_eq!(io.set_line(2, true), None, "remote IRR holds it");
        assert_eq!(io.pop_message(), None);
        // EOI with the line still high: delivered again.
        io.eoi(0x32);
        assert_eq!(io.pop_message(), Some(m));
        assert_eq!(entry(&io, 2) & rte::REMOTE_IRR, rte::REMOTE_IRR);
        assert_eq!(io.pop_message(), None);
        // Dropped, then EOI: nothing more.
        io.set_line(2, false);
        io.eoi(0x32);
        assert_eq!(io.pop_message(), None);
        assert_eq!(entry(&io, 2) & rte::REMOTE_IRR, 0);
        assert!(io.set_line(2, true).is_some());
    }

    #[test]
    fn eoi_of_another_vector_keeps_remote_irr() {
        let mut io = IoApic::new(0);
        program(&mut io, 2, 0x8032);
        io.set_line(2, true).unwrap();
        io.eoi(0x33);
        assert_eq!(io.pop_message(), None);
        assert_eq!(entry(&io, 2) & rte::REMOTE_IRR, rte::REMOTE_IRR);
    }

    #[test]
    fn eoi_register_at_0x40() {
        let mut io = IoApic::new(0);
        program(&mut io, 5, 0x8035);
        program(&mut io, 6, 0x8035);
        io.set_line(5, true).unwrap();
        io.set_line(6, true).unwrap();
        io.write_mmio(offset::EOI, 4, 0x35);
        // Both entries with the vector were cleared; lowest pin first.
        assert_eq!(io.pop_message().map(|m| m.vector), Some(0x35));
        assert_eq!(entry(&io, 5) & rte::REMOTE_IRR, rte::REMOTE_IRR);
        assert_eq!(io.pop_message().map(|m| m.vector), Some(0x35));
        assert_eq!(entry(&io, 6) & rte::REMOTE_IRR, rte::REMOTE_IRR);
        assert_eq!(io.pop_message(), None);
    }

    #[test]
    fn masked_levels_are_remembered() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x1_8039);
        assert_eq!(io.set_line(9, true), None);
        assert_eq!(io.pop_message(), None);
        program(&mut io, 9, 0x8039);
        assert_eq!(io.pop_message().map(|m| m.vector), Some(0x39));
        // Masking does not clear remote IRR; unmasking with it set waits.
        program(&mut io, 9, 0x1_8039);
        program(&mut io, 9, 0x8039);
        assert_eq!(io.pop_message(), None);
        // A line that dropped while masked is not delivered.
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x1_8039);
        io.set_line(9, true);
        io.set_line(9, false);
        program(&mut io, 9, 0x8039);
        assert_eq!(io.pop_message(), None);
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = IoApic::new(0);
        program(&mut io, 3, 0x8033);
        io.set_line(3, true).unwrap();
        // Linux's EOI for I/O APICs without the EOI register: mask and
        // edge, then level again.
        program(&mut io, 3, 0x1_0033);
        assert_eq!(entry(&io, 3) & rte::REMOTE_IRR, 0);
        program(&mut io, 3, 0x8033);
        assert!(io.pop_message().is_some(), "the line is still high");
    }

    #[test]
    fn nmi_smi_init_extint_entries_are_edge() {
        for mode in [2u64, 4, 5, 7] {
            let mut io = IoApic::new(0);
            program(&mut io, 0, 0x8000 | mode << 8 | 0x40);
            let m = io.set_line(0, true).unwrap();
            assert_eq!(m.trigger, Trigger::Edge, "mode {mode}");
            assert_eq!(entry(&io, 0) & rte::REMOTE_IRR, 0);
            assert_eq!(io.set_line(0, true), None);
            io.eoi(0x40);
            assert_eq!(io.pop_message(), None);
        }
    }

    #[test]
    fn message_fields_follow_the_entry() {
        let mut io = IoApic::new(0);
        program(&mut io, 7, 0xAB00_0000_0000_A937);
        let m = io.set_line(7, true).unwrap();
        assert_eq!(m.vector, 0x37);
        assert_eq!(m.delivery, DeliveryMode::LowestPriority);
        assert_eq!(m.destination_mode, DestinationMode::Logical);
        assert_eq!(m.trigger, Trigger::Level);
        assert_eq!(m.destination, 0xAB);
        program(&mut io, 8, 0x0700);
        assert_eq!(io.set_line(8, true).unwrap().delivery, DeliveryMode::ExtInt);
        program(&mut io, 10, 0x0338);
        assert_eq!(
            io.set_line(10, true).unwrap().delivery,
            DeliveryMode::Reserved
        );
    }

    #[test]
    fn pins_beyond_23_are_ignored() {
        let mut io = IoApic::new(0);
        assert_eq!(io.set_line(24, true), None);
        assert_eq!(io.set_line(usize::MAX, true), None);
        assert_eq!(io.redirection_entry(24), None);
        assert!(!io.line(24));
    }

    #[test]
    fn io_apic_paths_do_not_allocate() {
        let mut io = IoApic::new(1);
        let info = allocation_counter::measure(|| {
            for i in 0..64u64 {
                io.write_mmio(offset::IOREGSEL, 4, 0x10 + (i % 48));
                io.write_mmio(offset::IOWIN, 4, 0x8030 + i);
                io.read_mmio(offset::IOWIN, 4);
                io.set_line(i as usize % 24, i % 3 != 0);
                io.eoi(0x30 + i as u8);
                while io.pop_message().is_some() {}
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
    }
}

/// Property tests: any register traffic and line activity keeps the
/// redirection table well-formed and never delivers from a masked pin.
#[cfg(test)]
mod props {
    use super::*;
    use crate::proptests::config;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Select(u8),
        WriteWin(u32),
        ReadWin,
        Mmio(u64, u8, u64),
        Line(usize, bool),
        Eoi(u8),
        Drain,
    }

    /// Redirection-entry-like values: a vector from a small set (so EOIs
    /// match), any delivery mode, logical, polarity, trigger, mask.
    fn entry_low() -> impl Strategy<Value = u32> {
        (
            0x30u32..0x34,
            prop_oneof![3 => Just(0u32), 1 => 0u32..8],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.3),
            any::<bool>(),
        )
            .prop_map(|(v, mode, logical, pol, level, mask, junk)| {
                v | mode << 8
                    | u32::from(logical) << 11
                    | u32::from(pol) << 13
                    | u32::from(level) << 15
                    | u32::from(mask) << 16
                    // Read-only and reserved bits the guest may set.
                    | if junk { 0xFFFE_5000 } else { 0 }
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Mostly pins 0-3, so that several of them get programmed, raised
            // and EOId together.
            4 => prop_oneof![6 => 0x10u8..0x18, 2 => 0x10u8..0x40, 1 => any::<u8>()]
                .prop_map(Op::Select),
            5 => prop_oneof![4 => entry_low(), 1 => any::<u32>()].prop_map(Op::WriteWin),
            2 => Just(Op::ReadWin),
            1 => (0u64..0x50, prop::sample::select(vec![1u8, 2, 4, 8]), any::<u64>())
                .prop_map(|(o, s, v)| Op::Mmio(o, s, v)),
            6 => (prop_oneof![6 => 0usize..4, 2 => 0usize..24, 1 => 24usize..40], any::<bool>())
                .prop_map(|(p, l)| Op::Line(p, l)),
            3 => prop_oneof![4 => 0x30u8..0x34, 1 => any::<u8>()].prop_map(Op::Eoi),
            2 => Just(Op::Drain),
        ]
    }

    fn remote_irrs(io: &IoApic) -> u32 {
        (0..IOAPIC_PINS)
            .filter(|&p| io.redirection[p] & rte::REMOTE_IRR != 0)
            .count() as u32
    }

    proptest! {
        #![proptest_config(config(256))]

        /// No panic; reserved bits 55:17 and delivery status stay 0;
        /// remote IRR only on level entries; a delivery never comes from a
        /// masked entry, carries its entry's vector, and a level delivery
        /// leaves remote IRR set; draining ends within 24 messages.
        #[test]
        fn prop_io_apic_any_sequence_keeps_the_table_well_formed(
            ops in prop::collection::vec(op(), 1..96),
        ) {
            let mut io = IoApic::new(2);
            for op in ops {
                match op {
                    Op::Select(i) => io.write_mmio(offset::IOREGSEL, 4, u64::from(i)),
                    Op::WriteWin(v) => io.write_mmio(offset::IOWIN, 4, u64::from(v)),
                    Op::ReadWin => { io.read_mmio(offset::IOWIN, 4); }
                    Op::Mmio(o, s, v) => {
                        io.write_mmio(o, s, v);
                        let r = io.read_mmio(o, s);
                        prop_assert!(r <= u64::from(u32::MAX));
                    }
                    Op::Line(pin, level) => {
                        let before = io.redirection_entry(pin);
                        let m = io.set_line(pin, level);
                        if let Some(m) = m {
                            let e = before.unwrap();
                            prop_assert_eq!(e & rte::MASKED, 0);
                            prop_assert!(level);
                            prop_assert_eq!(u64::from(m.vector), e & rte::VECTOR);
                            if m.trigger == Trigger::Level {
                                prop_assert_ne!(io.redirection[pin] & rte::REMOTE_IRR, 0);
                            }
                        }
                        if pin >= IOAPIC_PINS {
                            prop_assert!(m.is_none());
                        }
                    }
                    Op::Eoi(v) => io.eoi(v),
                    Op::Drain => {
                        let mut n = 0;
                        while let Some(m) = io.pop_message() {
                            n += 1;
                            prop_assert!(n <= IOAPIC_PINS);
                            prop_assert_eq!(m.trigger, Trigger::Level);
                        }
                    }
                }
                for (pin, &e) in io.redirection.iter().enumerate() {
                    prop_assert_eq!(e & 0x00FF_FFFF_FFFE_0000, 0, "pin {} reserved bits", pin);
                    prop_assert_eq!(e & rte::DELIVERY_STATUS, 0);
                    if e & rte::REMOTE_IRR != 0 {
                        prop_assert_ne!(e & rte::LEVEL, 0, "remote IRR on edge pin {}", pin);
                    }
                }
                // Every pending level pin delivers exactly once per drain.
                let before = remote_irrs(&io);
                let mut copy = io.clone();
                let mut n = 0;
                while copy.pop_message().is_some() {
                    n += 1;
                }
                prop_assert_eq!(remote_irrs(&copy), before + n);
            }
        }
    }
}
