//! x86 platform devices as pure state machines: the interrupt controllers
//! (the local APIC [`lapic`], the I/O APIC [`ioapic`] and the routing of
//! interrupt messages between them, [`apic_bus`]) and the legacy devices
//! ([`pic`]: the 8259A pair with the ELCR, [`pit`]: the 8254 and port 0x61,
//! [`rtc`]: the MC146818 CMOS RTC; their time is nanoseconds of guest time).
//!
//! All are pure state machines: plain structs with `&mut self`
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
pub mod cpuid;
pub mod flags;
pub mod ioapic;
pub mod lapic;
pub mod legacy;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod wiring;

#[cfg(test)]
mod vm_tests;

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
    use super::apic_bus::{route, Action, ApicTarget, VcpuSet};
    use super::ioapic::IoApic;
    use super::lapic::{base, LapicConfig, LapicEffect, LocalApic, DEFAULT_APIC_BASE};
    use super::*;

    /// `n` software-enabled vCPUs with APIC IDs 0..n, TSC 2 GHz, timer
    /// 1 GHz.
    fn vcpus<const N: usize>() -> [LocalApic; N] {
        core::array::from_fn(|i| {
            let mut a = LocalApic::new(LapicConfig {
                apic_id: i as u32,
                bsp: i == 0,
                tsc_khz: 2_000_000,
                timer_khz: 1_000_000,
                x2apic: true,
                tsc_deadline: true,
                phys_addr_bits: 48,
            });
            a.write_mmio(0xF0, 4, 0x1FF, 0);
            a
        })
    }

    fn view<const N: usize>(apics: &[LocalApic; N]) -> [ApicTarget; N] {
        core::array::from_fn(|i| apics[i].target())
    }

    /// What the core does with a delivery: each target's own APIC takes
    /// the action (here directly; the core posts a request and kicks).
    fn deliver(apics: &mut [LocalApic], d: super::apic_bus::Delivery) {
        for i in d.vcpus {
            match d.action {
                Action::Interrupt { vector, trigger } => {
                    apics[i].accept_interrupt(vector, trigger);
                }
                Action::Nmi => apics[i].accept_nmi(),
                Action::ExtInt => apics[i].accept_extint(),
                Action::Init => apics[i].init_reset(),
                Action::StartUp { .. } | Action::None => {}
            }
        }
    }

    fn send(
        apics: &mut [LocalApic],
        from: usize,
        effect: LapicEffect,
        targets: &[ApicTarget],
    ) -> super::apic_bus::Delivery {
        let LapicEffect::Send(m) = effect else {
            panic!("no message: {effect:?}");
        };
        let d = route(&m, Some(from), targets);
        deliver(apics, d);
        d
    }

    #[test]
    fn fixed_ipi_from_one_vcpu_to_another() {
        let mut apics = vcpus::<3>();
        let t = view(&apics);
        apics[0].write_mmio(0x310, 4, 2 << 24, 0);
        let e = apics[0].write_mmio(0x300, 4, 0x4051, 0);
        let d = send(&mut apics, 0, e, &t);
        assert_eq!(d.vcpus, VcpuSet::from_bits(0b100));
        assert_eq!(apics[2].highest_injectable(), Some(0x51));
        assert_eq!(apics[1].highest_injectable(), None);
        assert_eq!(apics[0].highest_injectable(), None);
    }

    #[test]
    fn broadcast_and_self_ipis() {
        let mut apics = vcpus::<4>();
        let t = view(&apics);
        // All excluding self.
        let e = apics[1].write_mmio(0x300, 4, 0xC_0052, 0);
        send(&mut apics, 1, e, &t);
        let got: [bool; 4] = core::array::from_fn(|i| apics[i].highest_injectable() == Some(0x52));
        assert_eq!(got, [true, false, true, true]);
        // x2APIC SELF IPI.
        apics[3]
            .write_msr(0x1B, DEFAULT_APIC_BASE | base::EN | base::EXTD, 0)
            .unwrap();
        let t = view(&apics);
        let e = apics[3].write_msr(0x83F, 0x63, 0).unwrap();
        let d = send(&mut apics, 3, e, &t);
        assert_eq!(d.vcpus, VcpuSet::from_bits(0b1000));
        assert_eq!(apics[3].highest_injectable(), Some(0x63));
    }

    #[test]
    fn init_sipi_sipi_reaches_the_application_processors() {
        let mut apics = vcpus::<3>();
        apics[2].accept_interrupt(0x70, Trigger::Edge);
        let t = view(&apics);
        // INIT assert to all but self, then SIPI with vector 0x9A.
        let e = apics[0].write_mmio(0x300, 4, 0xC_4500, 0);
        let d = send(&mut apics, 0, e, &t);
        assert_eq!(
            (d.vcpus, d.action),
            (VcpuSet::from_bits(0b110), Action::Init)
        );
        assert_eq!(apics[2].highest_injectable(), None, "INIT cleared IRR");
        assert!(!apics[2].software_enabled(), "and the SVR");
        let e = apics[0].write_mmio(0x300, 4, 0xC_469A, 0);
        let d = send(&mut apics, 0, e, &t);
        assert_eq!(d.action, Action::StartUp { vector: 0x9A });
        assert_eq!(d.vcpus, VcpuSet::from_bits(0b110));
    }

    #[test]
    fn lowest_priority_follows_the_published_ppr() {
        let mut apics = vcpus::<3>();
        apics[0].write_cr8(5).unwrap();
        apics[1].write_cr8(2).unwrap();
        apics[2].write_cr8(9).unwrap();
        let t = view(&apics);
        let e = apics[0].write_mmio(0x300, 4, 0x8_0141, 0);
        let d = send(&mut apics, 0, e, &t);
        assert_eq!(d.vcpus, VcpuSet::from_bits(0b010));
        assert_eq!(apics[1].highest_injectable(), Some(0x41));
    }

    #[test]
    fn io_apic_level_line_through_the_lapic_and_back() {
        let mut apics = vcpus::<2>();
        let t = view(&apics);
        let mut io = IoApic::new(2);
        // Pin 10 -> vCPU 1, vector 0x3A, level.
        io.write_mmio(0x00, 4, 0x10 + 2 * 10 + 1);
        io.write_mmio(0x10, 4, 1 << 24);
        io.write_mmio(0x00, 4, 0x10 + 2 * 10);
        io.write_mmio(0x10, 4, 0x803A);
        let m = io.set_line(10, true).unwrap();
        deliver(&mut apics, route(&m, None, &t[..]));
        let v = apics[1].highest_injectable().unwrap();
        assert_eq!(v, 0x3A);
        assert!(apics[1].ack(v));
        // The guest's handler does not quiet the device: EOI re-delivers.
        let e = apics[1].write_mmio(0xB0, 4, 0, 0);
        assert_eq!(e, LapicEffect::EoiBroadcast(0x3A));
        io.eoi(0x3A);
        let m = io.pop_message().unwrap();
        deliver(&mut apics, route(&m, None, &t[..]));
        assert!(apics[1].ack(0x3A));
        // Now the device drops its line before the EOI: nothing more.
        io.set_line(10, false);
        assert_eq!(
            apics[1].write_mmio(0xB0, 4, 0, 0),
            LapicEffect::EoiBroadcast(0x3A)
        );
        io.eoi(0x3A);
        assert_eq!(io.pop_message(), None);
        assert_eq!(apics[1].highest_injectable(), None);
    }

    #[test]
    fn directed_eoi_with_broadcast_suppression() {
        let mut apics = vcpus::<1>();
        apics[0].write_mmio(0xF0, 4, 0x11FF, 0);
        let t = view(&apics);
        let mut io = IoApic::new(0);
        io.write_mmio(0x00, 4, 0x10);
        io.write_mmio(0x10, 4, 0x8041);
        let m = io.set_line(0, true).unwrap();
        deliver(&mut apics, route(&m, None, &t[..]));
        assert!(apics[0].ack(0x41));
        assert_eq!(apics[0].write_mmio(0xB0, 4, 0, 0), LapicEffect::None);
        assert_eq!(io.pop_message(), None, "remote IRR still set");
        // The OS EOIs the I/O APIC itself (version 0x20's EOI register).
        io.write_mmio(0x40, 4, 0x41);
        assert!(io.pop_message().is_some(), "the line is still high");
    }

    #[test]
    fn msi_to_a_logical_destination() {
        let mut apics = vcpus::<4>();
        for (i, a) in apics.iter_mut().enumerate() {
            a.write_mmio(0xD0, 4, 1 << (24 + i), 0);
        }
        let t = view(&apics);
        let m = InterruptMessage::from_msi(0xFEE0_A004, 0x45).unwrap();
        deliver(&mut apics, route(&m, None, &t[..]));
        let got: [bool; 4] = core::array::from_fn(|i| apics[i].highest_injectable() == Some(0x45));
        assert_eq!(got, [false, true, false, true]);
    }

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
