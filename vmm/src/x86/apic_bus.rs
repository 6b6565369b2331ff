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
