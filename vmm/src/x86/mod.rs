//! x86 interrupt-controller models: the local APIC ([`lapic`]), the I/O APIC
//! ([`ioapic`]) and the routing of interrupt messages between them
//! ([`apic_bus`]).
//!
//! All three are pure state machines: plain structs with `&mut self`
//! methods, explicit inputs (time is a `now` in guest TSC ticks), no locks,
//! no global state, and no allocation after construction, so that the exit
//! path can call them. The vmm core owns them (one [`lapic::LocalApic`] per
//! vCPU, one [`ioapic::IoApic`] per VM) and wires their outputs: an
//! [`InterruptMessage`] goes through [`apic_bus::route`] to a set of vCPUs.
//!
//! Section numbers cite the Intel SDM Vol. 3A edition in which the APIC is
//! chapter 11 ("Advanced Programmable Interrupt Controller"); older editions
//! number the same sections 10.x. The I/O APIC follows the Intel 82093AA
//! datasheet, plus the EOI register of the version-0x20 I/O APICs in later
//! chipsets (ICH and successors).

pub mod apic_bus;
pub mod ioapic;
pub mod lapic;

/// How an interrupt message is delivered (ICR bits 10:8, SDM §11.6.1;
/// I/O APIC redirection entry bits 10:8; MSI data bits 10:8, SDM §11.11.2).
/// The same three bits mean slightly different things in each source, so
/// each decoder maps its own encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector to every destination.
    Fixed,
    /// The vector to the one destination with the lowest priority.
    LowestPriority,
    /// System management interrupt: not modelled, routed to nobody.
    Smi,
    /// Non-maskable interrupt (the vector is ignored).
    Nmi,
    /// INIT: the destinations reset and (APs) wait for a start-up IPI.
    Init,
    /// INIT level de-assert (ICR delivery mode 101 with level 0, trigger 1):
    /// only resynchronizes arbitration IDs, which nothing models (§11.6.1).
    InitLevelDeassert,
    /// Start-up IPI: the vector is the start page (vector << 12).
    StartUp,
    /// External interrupt: the vector comes from an 8259-style controller
    /// through an INTA cycle (I/O APIC and LVT encoding 111).
    ExtInt,
    /// An encoding the source reserves; routed to nobody.
    Reserved,
}

/// Physical (APIC ID) or logical (LDR match) destination (§11.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    Physical,
    Logical,
}

/// Edge- or level-triggered (§11.8.4: the TMR records it at acceptance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// ICR destination shorthand, bits 19:18 (§11.6.1). Messages from the I/O
/// APIC and MSIs always carry [`Shorthand::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field names the targets.
    None,
    /// Only the sending local APIC.
    SelfOnly,
    /// Every local APIC, the sender included.
    AllIncludingSelf,
    /// Every local APIC but the sender.
    AllExcludingSelf,
}

/// Width and meaning of [`InterruptMessage::destination`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationFormat {
    /// 8-bit destination, 0xFF is broadcast: xAPIC ICRs, I/O APIC
    /// redirection entries, MSI addresses (§11.6.2, §11.11.1).
    XApic,
    /// 32-bit destination, 0xFFFF_FFFF is broadcast: ICR writes in x2APIC
    /// mode (§11.12.9, §11.12.10).
    X2Apic,
}

/// One interrupt message on the (virtual) system bus: what an ICR write, an
/// I/O APIC pin or an MSI produces and [`apic_bus::route`] consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub destination_mode: DestinationMode,
    pub trigger: Trigger,
    pub shorthand: Shorthand,
    /// APIC ID (physical) or logical destination, per `format`.
    pub destination: u32,
    pub format: DestinationFormat,
}

/// The fixed part of an MSI address: bits 31:20 are 0xFEE (§11.11.1).
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

/// Why an address/data pair is not an MSI this model delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiError {
    /// Address bits 31:20 are not 0xFEE, or bits 63:32 are set (no
    /// interrupt remapping, so no upper address).
    NotMsiAddress,
    /// Level-triggered with the level bit (data bit 14) clear: a de-assert
    /// message, which delivers nothing (§11.11.2).
    Deassert,
}

impl InterruptMessage {
    /// Decodes an MSI write (SDM §11.11, "Message Signalled Interrupts"):
    /// address bits 19:12 destination ID, bit 3 redirection hint, bit 2
    /// destination mode; data bits 7:0 vector, 10:8 delivery mode, 14
    /// level, 15 trigger mode. A redirection hint (RH = 1) makes a fixed
    /// message lowest-priority (§11.11.1: the message then goes to the
    /// lowest-priority processor of the destination set), as KVM does.
    /// The extended destination ID (address bits 11:5, a hypervisor
    /// extension) and data bits 31:16 are ignored.
    pub fn from_msi(address: u64, data: u32) -> Result<InterruptMessage, MsiError> {
        if address & !0xF_FFFF != MSI_ADDRESS_BASE {
            return Err(MsiError::NotMsiAddress);
        }
        let trigger = if data & (1 << 15) != 0 {
            Trigger::Level
        } else {
            Trigger::Edge
        };
        if trigger == Trigger::Level && data & (1 << 14) == 0 {
            return Err(MsiError::Deassert);
        }
        let redirection_hint = address & (1 << 3) != 0;
        let delivery = match (data >> 8) & 7 {
            0 if redirection_hint => DeliveryMode::LowestPriority,
            m => decode_apic_delivery(m),
        };
        Ok(InterruptMessage {
            vector: data as u8,
            delivery,
            destination_mode: if address & (1 << 2) != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            trigger,
            shorthand: Shorthand::None,
            destination: ((address >> 12) & 0xFF) as u32,
            format: DestinationFormat::XApic,
        })
    }
}

/// The delivery-mode encoding shared by I/O APIC redirection entries and
/// MSI data (82093AA §3.2.4; SDM §11.11.2): 011 and 110 are reserved, 111
/// is ExtINT.
pub(crate) fn decode_apic_delivery(bits: u32) -> DeliveryMode {
    match bits & 7 {
        0 => DeliveryMode::Fixed,
        1 => DeliveryMode::LowestPriority,
        2 => DeliveryMode::Smi,
        4 => DeliveryMode::Nmi,
        5 => DeliveryMode::Init,
        7 => DeliveryMode::ExtInt,
        _ => DeliveryMode::Reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_decodes_address_and_data() {
        // Physical, APIC ID 3, vector 0x41, fixed, edge.
        let m = InterruptMessage::from_msi(0xFEE0_3000, 0x41).unwrap();
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
        // Logical, RH = 1, level assert, NMI.
        let m = InterruptMessage::from_msi(0xFEE0_F00C, 0xC400).unwrap();
        assert_eq!(m.destination_mode, DestinationMode::Logical);
        assert_eq!(m.destination, 0x0F);
        assert_eq!(m.delivery, DeliveryMode::Nmi);
        assert_eq!(m.trigger, Trigger::Level);
        // RH turns fixed into lowest priority.
        let m = InterruptMessage::from_msi(0xFEE0_1008, 0x30).unwrap();
        assert_eq!(m.delivery, DeliveryMode::LowestPriority);
        // Reserved delivery modes stay reserved.
        let m = InterruptMessage::from_msi(0xFEE0_0000, 0x330).unwrap();
        assert_eq!(m.delivery, DeliveryMode::Reserved);
    }

    #[test]
    fn msi_rejects_other_addresses_and_deasserts() {
        assert_eq!(
            InterruptMessage::from_msi(0xFED0_0000, 0x30),
            Err(MsiError::NotMsiAddress)
        );
        assert_eq!(
            InterruptMessage::from_msi(0x1_FEE0_0000, 0x30),
            Err(MsiError::NotMsiAddress)
        );
        assert_eq!(
            InterruptMessage::from_msi(0xFEE0_0000, 0x8030),
            Err(MsiError::Deassert)
        );
    }
}
