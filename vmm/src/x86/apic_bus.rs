//! Routing interrupt messages to local APICs: which vCPUs an ICR write, an
//! I/O APIC pin or an MSI reaches (SDM §11.6.2 "Determining IPI
//! Destination", §11.12.10 for x2APIC, §11.11 for MSIs).
//!
//! The router is a pure function over a view of the APICs
//! ([`ApicTargets`]: each vCPU's mode, ID, LDR, DFR, enable and PPR, as
//! [`super::lapic::LocalApic::target`] reports them), so it can run on any
//! physical CPU without touching another vCPU's APIC: the core turns the
//! resulting [`Delivery`] into requests plus kicks for the targets. The
//! result is a bitmap of up to 64 vCPUs (`vmm::vm::MAX_VCPUS`); nothing
//! allocates.
//!
//! Decisions where the SDM leaves room (each as KVM does):
//! - Destination 0xFF in the 8-bit format and 0xFFFF_FFFF in the x2APIC
//!   format are broadcasts in both destination modes (§11.6.2.1, §11.6.2.2
//!   "a broadcast ... guarantees a match on all clusters"; §11.12.10).
//! - An 8-bit destination (I/O APIC, MSI, xAPIC ICR) reaching an APIC in
//!   x2APIC mode matches its x2APIC ID (physical) or cluster 0 of its
//!   logical ID (logical); a 32-bit x2APIC-format logical destination never
//!   matches an APIC still in xAPIC mode (mixed modes are unsupported,
//!   §11.12.10).
//! - A DFR model other than flat (0xF) or cluster (0x0) matches no logical
//!   destination.
//! - Lowest priority (§11.6.2.4, whose arbitration is model-specific):
//!   among the software-enabled destinations, the lowest PPR wins; ties go
//!   to the (vector mod n)-th of the n tied vCPUs in index order (KVM's
//!   vector hashing), stateless and deterministic, spreading vectors. With
//!   a shorthand or broadcast (which the SDM calls invalid with lowest
//!   priority) the same rule picks one of all the destinations.
//! - Destinations naming no present vCPU are dropped without an error:
//!   "send accept error" is a P6/Pentium APIC-bus error (§11.5.3), which
//!   later processors never report. An illegal vector is the sender's
//!   ("send illegal vector", checked by the local APIC at the ICR write)
//!   or the receiver's ("receive illegal vector", at acceptance).
//! - SMI, INIT level de-assert and reserved delivery modes reach nobody.

use super::lapic::ApicMode;
use super::{
    DeliveryMode, DestinationFormat, DestinationMode, InterruptMessage, Shorthand, Trigger,
};

/// A set of vCPU indices 0-63.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSet(u64);

impl VcpuSet {
    /// The most vCPUs a set (and so the router) can name.
    pub const CAPACITY: usize = 64;

    pub const fn empty() -> VcpuSet {
        VcpuSet(0)
    }

    pub const fn from_bits(bits: u64) -> VcpuSet {
        VcpuSet(bits)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Adds `index`; indices beyond [`VcpuSet::CAPACITY`] are ignored.
    pub fn insert(&mut self, index: usize) {
        if index < Self::CAPACITY {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < Self::CAPACITY && self.0 & (1 << index) != 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The indices in increasing order.
    pub fn iter(self) -> VcpuSetIter {
        VcpuSetIter(self.0)
    }
}

impl IntoIterator for VcpuSet {
    type Item = usize;
    type IntoIter = VcpuSetIter;
    fn into_iter(self) -> VcpuSetIter {
        self.iter()
    }
}

/// Iterator over a [`VcpuSet`].
#[derive(Clone, Debug)]
pub struct VcpuSetIter(u64);

impl Iterator for VcpuSetIter {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// What routing needs from one local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicTarget {
    /// A disabled APIC receives nothing.
    pub mode: ApicMode,
    /// The 8-bit xAPIC ID or the 32-bit x2APIC ID, per `mode`.
    pub id: u32,
    /// The LDR: logical ID in bits 31:24 (xAPIC), or cluster 31:16 and
    /// member bit in 15:0 (x2APIC).
    pub ldr: u32,
    /// The DFR (model in bits 31:28: 0xF flat, 0x0 cluster); xAPIC only.
    pub dfr: u32,
    /// SVR bit 8: lowest-priority arbitration skips disabled APICs.
    pub software_enabled: bool,
    /// Processor priority, for lowest-priority arbitration.
    pub ppr: u8,
}

/// The vCPUs' APICs as the router sees them: `target(i)` for vCPU `i`, or
/// None for a vCPU that does not exist (never created, or stopped).
pub trait ApicTargets {
    fn count(&self) -> usize;
    fn target(&self, index: usize) -> Option<ApicTarget>;
}

impl ApicTargets for [ApicTarget] {
    fn count(&self) -> usize {
        self.len()
    }
    fn target(&self, index: usize) -> Option<ApicTarget> {
        self.get(index).copied()
    }
}

impl ApicTargets for [Option<ApicTarget>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn target(&self, index: usize) -> Option<ApicTarget> {
        self.get(index).copied().flatten()
    }
}

/// What each destination vCPU gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing (SMI, INIT level de-assert, reserved modes).
    None,
    /// `LocalApic::accept_interrupt(vector, trigger)`.
    Interrupt { vector: u8, trigger: Trigger },
    /// `LocalApic::accept_nmi()`.
    Nmi,
    /// INIT: `LocalApic::init_reset()` plus the vCPU's INIT (an AP then
    /// waits for a start-up IPI).
    Init,
    /// Start-up IPI: a vCPU waiting for SIPI starts in real mode at
    /// `vector << 12`; others ignore it (the core decides: the router
    /// reports it for running vCPUs too).
    StartUp { vector: u8 },
    /// `LocalApic::accept_extint()`: the vector comes from the 8259.
    ExtInt,
}

/// The outcome of routing one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub vcpus: VcpuSet,
    pub action: Action,
}

impl Delivery {
    const NOBODY: Delivery = Delivery {
        vcpus: VcpuSet::empty(),
        action: Action::None,
    };
}

/// Whether `t` is one of the destinations the message's destination field
/// names (no shorthand).
fn matches(msg: &InterruptMessage, t: &ApicTarget) -> bool {
    if t.mode == ApicMode::Disabled {
        return false;
    }
    let dest = msg.destination;
    let broadcast = match msg.format {
        DestinationFormat::XApic => dest == 0xFF,
        DestinationFormat::X2Apic => dest == 0xFFFF_FFFF,
    };
    if broadcast {
        return true;
    }
    match msg.destination_mode {
        DestinationMode::Physical => t.id == dest,
        DestinationMode::Logical => match (msg.format, t.mode) {
            (DestinationFormat::XApic, ApicMode::XApic) => {
                let logical_id = t.ldr >> 24;
                match t.dfr >> 28 {
                    // Flat: one bit per APIC (§11.6.2.2).
                    0xF => logical_id & dest != 0,
                    // Cluster: cluster in bits 7:4, members in 3:0.
                    0x0 => logical_id >> 4 == dest >> 4 && logical_id & dest & 0xF != 0,
                    _ => false,
                }
            }
            // x2APIC cluster (§11.12.10.1): cluster 31:16, members 15:0.
            (_, ApicMode::X2Apic) => t.ldr >> 16 == dest >> 16 && t.ldr & dest & 0xFFFF != 0,
            _ => false,
        },
    }
}

/// Routes `msg`, sent by vCPU `source` (None for the I/O APIC or an MSI,
/// which carry no shorthand), over `targets`. vCPUs with index 64 and up
/// are never reached.
pub fn route<T: ApicTargets + ?Sized>(
    msg: &InterruptMessage,
    source: Option<usize>,
    targets: &T,
) -> Delivery {
    let action = match msg.delivery {
        DeliveryMode::Fixed | DeliveryMode::LowestPriority => Action::Interrupt {
            vector: msg.vector,
            trigger: msg.trigger,
        },
        DeliveryMode::Nmi => Action::Nmi,
        DeliveryMode::Init => Action::Init,
        DeliveryMode::StartUp => Action::StartUp { vector: msg.vector },
        DeliveryMode::ExtInt => Action::ExtInt,
        DeliveryMode::Smi | DeliveryMode::InitLevelDeassert | DeliveryMode::Reserved => {
            return Delivery::NOBODY;
        }
    };
    let n = targets.count().min(VcpuSet::CAPACITY);
    let mut vcpus = VcpuSet::empty();
    for i in 0..n {
        let Some(t) = targets.target(i) else { continue };
        if t.mode == ApicMode::Disabled {
            continue;
        }
        let hit = match msg.shorthand {
            Shorthand::None => matches(msg, &t),
            Shorthand::SelfOnly => source == Some(i),
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => source != Some(i),
        };
        if hit {
            vcpus.insert(i);
        }
    }
    if msg.delivery == DeliveryMode::LowestPriority {
        vcpus = lowest_priority(vcpus, msg.vector, targets);
    }
    Delivery { vcpus, action }
}

/// The one lowest-priority destination among `set` (see the module
/// documentation), or nobody if none is software-enabled.
fn lowest_priority<T: ApicTargets + ?Sized>(set: VcpuSet, vector: u8, targets: &T) -> VcpuSet {
    let enabled = |i: usize| targets.target(i).filter(|t| t.software_enabled);
    let Some(lowest) = set.iter().filter_map(|i| enabled(i).map(|t| t.ppr)).min() else {
        return VcpuSet::empty();
    };
    let tied = || {
        set.iter()
            .filter(move |&i| enabled(i).is_some_and(|t| t.ppr == lowest))
    };
    let pick = usize::from(vector) % tied().count();
    let mut one = VcpuSet::empty();
    if let Some(i) = tied().nth(pick) {
        one.insert(i);
    }
    one
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xapic(id: u32) -> ApicTarget {
        ApicTarget {
            mode: ApicMode::XApic,
            id,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            software_enabled: true,
            ppr: 0,
        }
    }

    fn x2apic(id: u32) -> ApicTarget {
        ApicTarget {
            mode: ApicMode::X2Apic,
            id,
            ldr: ((id >> 4) << 16) | (1 << (id & 0xF)),
            dfr: 0xFFFF_FFFF,
            software_enabled: true,
            ppr: 0,
        }
    }

    fn msg(
        delivery: DeliveryMode,
        mode: DestinationMode,
        destination: u32,
        format: DestinationFormat,
    ) -> InterruptMessage {
        InterruptMessage {
            vector: 0x40,
            delivery,
            destination_mode: mode,
            trigger: Trigger::Edge,
            shorthand: Shorthand::None,
            destination,
            format,
        }
    }

    fn fixed(mode: DestinationMode, destination: u32) -> InterruptMessage {
        msg(
            DeliveryMode::Fixed,
            mode,
            destination,
            DestinationFormat::XApic,
        )
    }

    fn set(ids: &[usize]) -> VcpuSet {
        let mut s = VcpuSet::empty();
        for &i in ids {
            s.insert(i);
        }
        s
    }

    fn to<T: ApicTargets + ?Sized>(m: &InterruptMessage, targets: &T) -> VcpuSet {
        route(m, None, targets).vcpus
    }

    #[test]
    fn vcpu_set_holds_indices_0_to_63() {
        let mut s = VcpuSet::empty();
        s.insert(0);
        s.insert(63);
        s.insert(64);
        s.insert(usize::MAX);
        assert_eq!(s.len(), 2);
        assert!(s.contains(63) && !s.contains(64));
        assert_eq!(s.iter().collect::<std::vec::Vec<_>>(), [0, 63]);
        assert_eq!(s.bits(), 1 | 1 << 63);
        assert!(VcpuSet::CAPACITY >= crate::vm::MAX_VCPUS as usize);
    }

    #[test]
    fn physical_xapic_destinations() {
        let t = [xapic(0), xapic(1), xapic(2), xapic(3)];
        let d = route(&fixed(DestinationMode::Physical, 2), None, &t[..]);
        assert_eq!(d.vcpus, set(&[2]));
        assert_eq!(
            d.action,
            Action::Interrupt {
                vector: 0x40,
                trigger: Trigger::Edge
            }
        );
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 0xFF), &t[..]),
            set(&[0, 1, 2, 3])
        );
        // IDs are the APICs' (software may change xAPIC IDs), not indices.
        let t = [xapic(5), xapic(4)];
        assert_eq!(to(&fixed(DestinationMode::Physical, 4), &t[..]), set(&[1]));
    }

    #[test]
    fn icr_naming_absent_vcpus_reaches_nobody() {
        let t = [xapic(0), xapic(1)];
        for dest in [2, 7, 0xFE] {
            let d = route(&fixed(DestinationMode::Physical, dest), Some(0), &t[..]);
            assert!(d.vcpus.is_empty(), "dest {dest}");
        }
        // Absent slots (None) and disabled APICs are skipped, broadcast too.
        let t = [
            Some(xapic(0)),
            None,
            Some(ApicTarget {
                mode: ApicMode::Disabled,
                ..xapic(2)
            }),
        ];
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 1), &t[..]),
            VcpuSet::empty()
        );
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 2), &t[..]),
            VcpuSet::empty()
        );
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 0xFF), &t[..]),
            set(&[0])
        );
    }

    #[test]
    fn physical_x2apic_destinations_and_broadcast() {
        let t = [x2apic(0), x2apic(1), x2apic(0x100), x2apic(0xFF)];
        let m = |d| {
            msg(
                DeliveryMode::Fixed,
                DestinationMode::Physical,
                d,
                DestinationFormat::X2Apic,
            )
        };
        assert_eq!(to(&m(0x100), &t[..]), set(&[2]));
        assert_eq!(
            to(&m(0xFF), &t[..]),
            set(&[3]),
            "0xFF is an ID in x2APIC format"
        );
        assert_eq!(to(&m(0xFFFF_FFFF), &t[..]), set(&[0, 1, 2, 3]));
        // An 8-bit (I/O APIC, MSI) message to x2APIC-mode APICs.
        assert_eq!(to(&fixed(DestinationMode::Physical, 1), &t[..]), set(&[1]));
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 0xFF), &t[..]),
            set(&[0, 1, 2, 3])
        );
    }

    #[test]
    fn logical_flat() {
        let t: [ApicTarget; 4] = core::array::from_fn(|i| ApicTarget {
            ldr: 1 << (24 + i),
            ..xapic(i as u32)
        });
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x05), &t[..]),
            set(&[0, 2])
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x08), &t[..]),
            set(&[3])
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x30), &t[..]),
            VcpuSet::empty()
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0xFF), &t[..]),
            set(&[0, 1, 2, 3])
        );
        // An APIC whose LDR was never set matches no flat mask.
        let t = [
            xapic(0),
            ApicTarget {
                ldr: 1 << 24,
                ..xapic(1)
            },
        ];
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x7F), &t[..]),
            set(&[1])
        );
    }

    #[test]
    fn logical_cluster() {
        let cluster = |i: u32, logical: u32| ApicTarget {
            ldr: logical << 24,
            dfr: 0x0FFF_FFFF,
            ..xapic(i)
        };
        let t = [
            cluster(0, 0x11),
            cluster(1, 0x12),
            cluster(2, 0x21),
            cluster(3, 0x22),
        ];
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x13), &t[..]),
            set(&[0, 1])
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x22), &t[..]),
            set(&[3])
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x31), &t[..]),
            VcpuSet::empty()
        );
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0xFF), &t[..]),
            set(&[0, 1, 2, 3])
        );
        // Unknown DFR models match nothing.
        let t = [ApicTarget {
            dfr: 0x5FFF_FFFF,
            ..cluster(0, 0x11)
        }];
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0x11), &t[..]),
            VcpuSet::empty()
        );
    }

    #[test]
    fn x2apic_logical_cluster() {
        let t = [x2apic(0), x2apic(1), x2apic(2), x2apic(17)];
        let m = |d| {
            msg(
                DeliveryMode::Fixed,
                DestinationMode::Logical,
                d,
                DestinationFormat::X2Apic,
            )
        };
        assert_eq!(to(&m(0b101), &t[..]), set(&[0, 2]));
        assert_eq!(to(&m(1 << 16 | 0b10), &t[..]), set(&[3]));
        assert_eq!(to(&m(1 << 16 | 0b01), &t[..]), VcpuSet::empty());
        assert_eq!(to(&m(0xFFFF_FFFF), &t[..]), set(&[0, 1, 2, 3]));
        // 32-bit logical destinations never reach xAPIC-mode APICs.
        let mixed = [xapic(0)];
        assert_eq!(to(&m(0x1), &mixed[..]), VcpuSet::empty());
        // An 8-bit logical destination addresses cluster 0.
        assert_eq!(
            to(&fixed(DestinationMode::Logical, 0b11), &t[..]),
            set(&[0, 1])
        );
    }

    #[test]
    fn shorthands_use_the_source() {
        let t = [xapic(0), xapic(1), xapic(2)];
        let with = |s| InterruptMessage {
            shorthand: s,
            destination: 0,
            ..fixed(DestinationMode::Physical, 0)
        };
        assert_eq!(
            route(&with(Shorthand::SelfOnly), Some(1), &t[..]).vcpus,
            set(&[1])
        );
        assert_eq!(
            route(&with(Shorthand::SelfOnly), None, &t[..]).vcpus,
            VcpuSet::empty()
        );
        assert_eq!(
            route(&with(Shorthand::AllIncludingSelf), Some(1), &t[..]).vcpus,
            set(&[0, 1, 2])
        );
        assert_eq!(
            route(&with(Shorthand::AllExcludingSelf), Some(1), &t[..]).vcpus,
            set(&[0, 2])
        );
        // The destination field is ignored with a shorthand.
        let m = InterruptMessage {
            destination: 2,
            ..with(Shorthand::SelfOnly)
        };
        assert_eq!(route(&m, Some(0), &t[..]).vcpus, set(&[0]));
    }

    #[test]
    fn lowest_priority_picks_the_lowest_ppr_and_hashes_ties() {
        let ppr = |i: u32, p: u8| ApicTarget { ppr: p, ..xapic(i) };
        let t = [ppr(0, 0x20), ppr(1, 0x10), ppr(2, 0x10), ppr(3, 0x30)];
        let lp = |v: u8, dest| InterruptMessage {
            vector: v,
            ..msg(
                DeliveryMode::LowestPriority,
                DestinationMode::Physical,
                dest,
                DestinationFormat::XApic,
            )
        };
        // 0x40 % 2 = 0 -> the first tied vCPU; 0x41 -> the second.
        assert_eq!(to(&lp(0x40, 0xFF), &t[..]), set(&[1]));
        assert_eq!(to(&lp(0x41, 0xFF), &t[..]), set(&[2]));
        assert_eq!(
            to(&lp(0x41, 3), &t[..]),
            set(&[3]),
            "one destination: that one"
        );
        // Software-disabled APICs do not take part.
        let t = [
            ApicTarget {
                software_enabled: false,
                ..ppr(0, 0)
            },
            ppr(1, 0x50),
        ];
        assert_eq!(to(&lp(0x40, 0xFF), &t[..]), set(&[1]));
        let t = [ApicTarget {
            software_enabled: false,
            ..ppr(0, 0)
        }];
        assert_eq!(to(&lp(0x40, 0xFF), &t[..]), VcpuSet::empty());
        // A fixed message goes to software-disabled APICs too: they drop it.
        assert_eq!(to(&fixed(DestinationMode::Physical, 0), &t[..]), set(&[0]));
    }

    #[test]
    fn delivery_modes_become_actions() {
        let t = [xapic(0), xapic(1)];
        let a = |d| {
            let r = route(
                &msg(d, DestinationMode::Physical, 1, DestinationFormat::XApic),
                None,
                &t[..],
            );
            (r.vcpus, r.action)
        };
        assert_eq!(a(DeliveryMode::Nmi), (set(&[1]), Action::Nmi));
        assert_eq!(a(DeliveryMode::Init), (set(&[1]), Action::Init));
        assert_eq!(
            a(DeliveryMode::StartUp),
            (set(&[1]), Action::StartUp { vector: 0x40 })
        );
        assert_eq!(a(DeliveryMode::ExtInt), (set(&[1]), Action::ExtInt));
        for d in [
            DeliveryMode::Smi,
            DeliveryMode::InitLevelDeassert,
            DeliveryMode::Reserved,
        ] {
            assert_eq!(a(d), (VcpuSet::empty(), Action::None), "{d:?}");
        }
    }

    #[test]
    fn nmi_init_and_sipi_reach_software_disabled_apics() {
        let t = [ApicTarget {
            software_enabled: false,
            ..xapic(0)
        }];
        for d in [DeliveryMode::Nmi, DeliveryMode::Init, DeliveryMode::StartUp] {
            let m = msg(d, DestinationMode::Physical, 0, DestinationFormat::XApic);
            assert_eq!(to(&m, &t[..]), set(&[0]), "{d:?}");
        }
    }

    #[test]
    fn sipi_to_a_running_vcpu_is_reported() {
        // The router does not know run states: the core ignores a SIPI
        // for a vCPU that is not waiting for one.
        let t = [xapic(0), xapic(1)];
        let m = InterruptMessage {
            vector: 0x9F,
            shorthand: Shorthand::AllExcludingSelf,
            ..msg(
                DeliveryMode::StartUp,
                DestinationMode::Physical,
                0,
                DestinationFormat::XApic,
            )
        };
        let d = route(&m, Some(0), &t[..]);
        assert_eq!(
            (d.vcpus, d.action),
            (set(&[1]), Action::StartUp { vector: 0x9F })
        );
    }

    #[test]
    fn msi_routes_like_any_message() {
        let t = [xapic(0), xapic(1), xapic(2)];
        let m = InterruptMessage::from_msi(0xFEE0_2000, 0x8051 | 1 << 14).unwrap();
        let d = route(&m, None, &t[..]);
        assert_eq!(
            (d.vcpus, d.action),
            (
                set(&[2]),
                Action::Interrupt {
                    vector: 0x51,
                    trigger: Trigger::Level
                }
            )
        );
    }

    #[test]
    fn vcpus_beyond_64_are_never_reached() {
        let t: std::vec::Vec<ApicTarget> = (0..70).map(xapic).collect();
        let d = to(&fixed(DestinationMode::Physical, 0xFF), &t[..]);
        assert_eq!(d.len(), 64);
        assert_eq!(
            to(&fixed(DestinationMode::Physical, 65), &t[..]),
            VcpuSet::empty()
        );
    }

    #[test]
    fn routing_does_not_allocate() {
        let t: [ApicTarget; 64] = core::array::from_fn(|i| xapic(i as u32));
        let info = allocation_counter::measure(|| {
            for d in 0..=255u32 {
                route(&fixed(DestinationMode::Physical, d), Some(1), &t[..]);
                route(&fixed(DestinationMode::Logical, d), Some(1), &t[..]);
                let lp = msg(
                    DeliveryMode::LowestPriority,
                    DestinationMode::Physical,
                    0xFF,
                    DestinationFormat::XApic,
                );
                route(&lp, None, &t[..]);
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
    }
}

/// Property tests: routing any message over any set of APICs.
#[cfg(test)]
mod props {
    use super::*;
    use crate::proptests::config;
    use proptest::prelude::*;

    fn target() -> impl Strategy<Value = Option<ApicTarget>> {
        let t = (
            prop_oneof![1 => Just(ApicMode::Disabled), 4 => Just(ApicMode::XApic), 3 => Just(ApicMode::X2Apic)],
            prop_oneof![4 => 0u32..8, 1 => any::<u32>()],
            prop_oneof![2 => Just(None), 1 => any::<u32>().prop_map(Some)],
            prop_oneof![2 => Just(0xFFFF_FFFFu32), 2 => Just(0x0FFF_FFFF), 1 => any::<u32>()],
            prop::bool::weighted(0.8),
            any::<u8>(),
        )
            .prop_map(|(mode, id, ldr, dfr, software_enabled, ppr)| {
                let ldr = ldr.unwrap_or(match mode {
                    ApicMode::X2Apic => ((id >> 4) << 16) | (1 << (id & 0xF)),
                    _ => (1 << (id & 7)) << 24,
                });
                ApicTarget { mode, id, ldr, dfr, software_enabled, ppr }
            });
        prop_oneof![6 => t.prop_map(Some), 1 => Just(None)]
    }

    fn message() -> impl Strategy<Value = InterruptMessage> {
        (
            any::<u8>(),
            prop::sample::select(vec![
                DeliveryMode::Fixed,
                DeliveryMode::LowestPriority,
                DeliveryMode::Smi,
                DeliveryMode::Nmi,
                DeliveryMode::Init,
                DeliveryMode::InitLevelDeassert,
                DeliveryMode::StartUp,
                DeliveryMode::ExtInt,
                DeliveryMode::Reserved,
            ]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![
                Shorthand::None,
                Shorthand::None,
                Shorthand::SelfOnly,
                Shorthand::AllIncludingSelf,
                Shorthand::AllExcludingSelf,
            ]),
            prop_oneof![4 => 0u32..8, 1 => Just(0xFF), 1 => Just(0xFFFF_FFFF), 1 => any::<u32>()],
            any::<bool>(),
        )
            .prop_map(
                |(vector, delivery, logical, level, shorthand, destination, x2)| InterruptMessage {
                    vector,
                    delivery,
                    destination_mode: if logical {
                        DestinationMode::Logical
                    } else {
                        DestinationMode::Physical
                    },
                    trigger: if level { Trigger::Level } else { Trigger::Edge },
                    shorthand,
                    destination,
                    format: if x2 {
                        DestinationFormat::X2Apic
                    } else {
                        DestinationFormat::XApic
                    },
                },
            )
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Only present, enabled APICs are reached; self / all-but-self
        /// respect the source; lowest priority picks at most one
        /// software-enabled vCPU with the lowest PPR of the fixed
        /// destination set; a physical non-broadcast message reaches only
        /// the APICs with that ID; modes that deliver nothing reach nobody.
        #[test]
        fn prop_route_reaches_only_what_it_names(
            targets in prop::collection::vec(target(), 0..10),
            m in message(),
            source in prop::option::of(0usize..12),
        ) {
            let d = route(&m, source, &targets[..]);
            let present = |i: usize| targets.get(i).copied().flatten().filter(|t| t.mode != ApicMode::Disabled);
            for i in d.vcpus {
                prop_assert!(present(i).is_some(), "vCPU {} is absent or disabled", i);
            }
            if d.action == Action::None {
                prop_assert!(d.vcpus.is_empty());
            }
            match m.shorthand {
                Shorthand::SelfOnly => prop_assert!(d.vcpus.iter().all(|i| Some(i) == source)),
                Shorthand::AllExcludingSelf => prop_assert!(source.is_none_or(|s| !d.vcpus.contains(s))),
                _ => {}
            }
            let fixed = route(&InterruptMessage { delivery: DeliveryMode::Fixed, ..m }, source, &targets[..]);
            if m.delivery == DeliveryMode::LowestPriority {
                prop_assert!(d.vcpus.len() <= 1);
                let candidates: std::vec::Vec<ApicTarget> = fixed.vcpus.iter()
                    .filter_map(present).filter(|t| t.software_enabled).collect();
                prop_assert_eq!(d.vcpus.is_empty(), candidates.is_empty());
                if let Some(i) = d.vcpus.iter().next() {
                    let t = present(i).unwrap();
                    prop_assert!(fixed.vcpus.contains(i) && t.software_enabled);
                    prop_assert!(candidates.iter().all(|c| c.ppr >= t.ppr));
                }
            } else if matches!(m.delivery, DeliveryMode::Fixed | DeliveryMode::Nmi | DeliveryMode::Init | DeliveryMode::StartUp | DeliveryMode::ExtInt) {
                prop_assert_eq!(d.vcpus, fixed.vcpus);
            }
            let broadcast = m.destination == 0xFFFF_FFFF
                || (m.format == DestinationFormat::XApic && m.destination == 0xFF);
            if m.shorthand == Shorthand::None
                && m.destination_mode == DestinationMode::Physical
                && !broadcast
            {
                for i in d.vcpus {
                    prop_assert_eq!(present(i).unwrap().id, m.destination);
                }
            }
            if m.shorthand == Shorthand::AllIncludingSelf && m.delivery == DeliveryMode::Fixed {
                let all = (0..targets.len().min(64)).filter(|&i| present(i).is_some()).count();
                prop_assert_eq!(d.vcpus.len(), all);
            }
        }
    }
}
