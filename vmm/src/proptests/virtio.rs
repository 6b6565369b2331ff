//! virtio: split-queue chains and virtio-blk requests (rule `guest_addr`,
//! `vq_barrier` ordering kept under any input), and the virtio-mmio
//! transport's state machine under any register accesses.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{config, verdict};
use crate::bus::BusDevice;
use crate::checks::{check_virtqueue, VqCase, VQ_BASE, VQ_RAM};
use crate::regs::AccessSize;
use crate::virtio::mmio::*;
use crate::virtio::queue::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::virtio::rng::{EntropySource, VirtioRng};
use crate::virtio::{features, status};
use proptest::prelude::*;

const BUFS: u64 = 0x4000;
const TABLE2: u64 = 0x8000;

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..0x4000).prop_map(|o| VQ_BASE + BUFS + o),
        2 => Just(VQ_BASE + TABLE2),
        1 => (0u64..64).prop_map(|o| VQ_BASE + VQ_RAM - o),
        1 => (0u64..64).prop_map(|o| u64::MAX - o),
        1 => (0u64..64).prop_map(|o| VQ_BASE.wrapping_sub(o)),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..600,
        2 => (1u32..8).prop_map(|k| 16 * k),
        1 => Just(u32::MAX),
        1 => Just(VQ_RAM as u32),
        1 => any::<u32>(),
    ]
}

fn flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => 0u16..8,
        1 => Just(VIRTQ_DESC_F_INDIRECT),
        1 => any::<u16>(),
    ]
}

fn next() -> impl Strategy<Value = u16> {
    prop_oneof![6 => 0u16..20, 1 => any::<u16>()]
}

type Desc = (u64, u32, u16, u16);

fn descs() -> impl Strategy<Value = Vec<Desc>> {
    prop::collection::vec((addr(), len(), flags(), next()), 0..20)
}

fn ring_addr(standard: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => Just(VQ_BASE + standard),
        1 => (0u64..0x40).prop_map(|o| VQ_BASE + VQ_RAM - 2 * o),
        1 => (0u64..0x400).prop_map(|o| u64::MAX - o),
        1 => any::<u64>(),
    ]
}

fn encode(d: &[Desc]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(a, l, f, n) in d {
        v.extend_from_slice(&a.to_le_bytes());
        v.extend_from_slice(&l.to_le_bytes());
        v.extend_from_slice(&f.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
    }
    v
}

prop_compose! {
    fn vq_case()(
        size in prop_oneof![4 => prop::sample::select(vec![1u16, 2, 4, 8, 16, 32]), 1 => any::<u16>()],
        desc in ring_addr(0),
        avail in ring_addr(0x1000),
        used in ring_addr(0x2000),
        feat in 0u64..4,
        table in descs(),
        table2 in descs(),
        heads in prop::collection::vec(next(), 0..20),
        avail_idx in prop_oneof![3 => Just(None), 1 => any::<u16>().prop_map(Some)],
        used_event in any::<u16>(),
        blk in any::<bool>(),
        headers in prop::collection::vec((0u32..10, prop_oneof![0u64..20, any::<u64>()]), 0..4),
    ) -> VqCase {
        let mut ram = vec![(0, encode(&table)), (TABLE2, encode(&table2))];
        let mut a = Vec::new();
        a.extend_from_slice(&0u16.to_le_bytes());
        // Mostly heads inside the queue (large generated values stay
        // out of range) and an index at most the queue size ahead.
        let heads: Vec<u16> = heads.iter().map(|&h| if h < 0x100 { h % size.max(1) } else { h }).collect();
        let idx = avail_idx.unwrap_or((heads.len() as u16).min(size));
        a.extend_from_slice(&idx.to_le_bytes());
        for h in &heads {
            a.extend_from_slice(&h.to_le_bytes());
        }
        ram.push((0x1000, a));
        // used_event for the standard layout of the chosen size.
        ram.push((0x1000 + 4 + 2 * u64::from(size), used_event.to_le_bytes().to_vec()));
        for (i, (t, s)) in headers.iter().enumerate() {
            let mut h = t.to_le_bytes().to_vec();
            h.extend_from_slice(&[0; 4]);
            h.extend_from_slice(&s.to_le_bytes());
            ram.push((BUFS + 0x1000 * i as u64, h));
        }
        VqCase {
            size,
            desc,
            avail,
            used,
            features: ((feat & 1) * features::INDIRECT_DESC) | ((feat >> 1) * features::EVENT_IDX),
            ram,
            blk,
        }
    }
}

/// Chains the generator makes well-formed: every buffer served, nothing
/// broken (a sanity check that the strategy reaches the good paths).
#[test]
fn prop_strategy_reaches_valid_chains() {
    let table = [
        (VQ_BASE + BUFS, 16, VIRTQ_DESC_F_NEXT, 1),
        (VQ_BASE + BUFS + 0x100, 513, VIRTQ_DESC_F_WRITE, 0),
    ];
    let mut avail = vec![0, 0, 2, 0, 0, 0, 0, 0];
    avail.resize(0x20, 0);
    let case = VqCase {
        size: 8,
        desc: VQ_BASE,
        avail: VQ_BASE + 0x1000,
        used: VQ_BASE + 0x2000,
        features: 0,
        ram: vec![(0, encode(&table)), (0x1000, avail)],
        blk: true,
    };
    check_virtqueue(&case).unwrap();
}

proptest! {
    #![proptest_config(config(512))]

    /// Any rings, descriptors and buffers: serving never panics, never
    /// touches host memory outside the VM's RAM, every walk terminates
    /// within its bound, the used ring agrees with the device.
    #[test]
    fn prop_virtqueue_chains_stay_in_guest_ram(case in vq_case()) {
        verdict(check_virtqueue(&case))?;
    }
}

struct Zeros;

impl EntropySource for Zeros {
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        buf.fill(0);
        buf.len()
    }
}

#[derive(Default)]
struct Level(spin::Mutex<bool>);

impl crate::irq::IrqSink for Level {
    fn set_line(&self, _line: u32, level: bool) {
        *self.0.lock() = level;
    }
    fn pulse_line(&self, _line: u32) {
        *self.0.lock() = false;
    }
    fn signal_msi(&self, _msi: crate::irq::Msi) -> bool {
        false
    }
}

fn reg() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => prop::sample::select(vec![
            REG_DEVICE_FEATURES_SEL, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL,
            REG_QUEUE_SEL, REG_QUEUE_NUM, REG_QUEUE_READY, REG_QUEUE_NOTIFY,
            REG_INTERRUPT_ACK, REG_STATUS, REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH,
            REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DEVICE_LOW,
            REG_QUEUE_DEVICE_HIGH, REG_CONFIG_GENERATION, CONFIG_SPACE,
        ]),
        1 => 0u64..0x200,
        1 => any::<u64>(),
    ]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..16,
        2 => prop::sample::select(vec![1u64, 3, 7, 0xf, 0xb, 0x8f, 0x4f]),
        2 => (0u64..0x10).prop_map(|o| (VQ_BASE + 0x1000 * o) & 0xffff_ffff),
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any register accesses to a virtio-rng transport: no panic; the
    /// line is high exactly while InterruptStatus is not 0; DRIVER_OK
    /// never without FEATURES_OK; FEATURES_OK only with VERSION_1 and
    /// offered features; a reset leaves Status and InterruptStatus 0.
    #[test]
    fn prop_mmio_transport_state_machine(
        ops in prop::collection::vec(
            (reg(), prop::sample::select(vec![AccessSize::B4, AccessSize::B4, AccessSize::B1, AccessSize::B8]), value(), any::<bool>()),
            0..64,
        ),
    ) {
        let mem = Arc::new(crate::testing::guest_ram(VQ_BASE, VQ_RAM, 48));
        let line = Arc::new(Level::default());
        let mut t = MmioTransport::new(
            VirtioRng::new(Zeros),
            mem,
            crate::irq::IrqLine::new(line.clone(), 7, crate::irq::Trigger::Level),
        );
        for (off, size, v, is_read) in ops {
            if is_read {
                t.read(off, size);
            } else {
                t.write(off, size, v);
            }
            let st = t.read(REG_STATUS, AccessSize::B4) as u32;
            let is = t.read(REG_INTERRUPT_STATUS, AccessSize::B4) as u32;
            prop_assert_eq!(*line.0.lock(), is != 0, "line vs InterruptStatus {:#x}", is);
            prop_assert!(st & status::DRIVER_OK == 0 || st & status::FEATURES_OK != 0, "status {:#x}", st);
            if st & status::FEATURES_OK != 0 {
                let f = t.driver_features();
                prop_assert!(f & features::VERSION_1 != 0 && f & !t.offered_features() == 0, "features {:#x}", f);
            }
            prop_assert!(!t.is_active() || st & status::DRIVER_OK != 0);
            if off == REG_STATUS && !is_read && size == AccessSize::B4 && v as u32 == 0 {
                prop_assert_eq!((st, is), (0, 0));
            }
        }
    }
}
