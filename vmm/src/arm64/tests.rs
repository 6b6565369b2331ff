//! Host tests of the vGICv3 model ([`super::vgic`]): every register, hostile
//! writes, routing, SGIs, list-register rounds, and property tests over
//! random access sequences.

use super::lr::{hcr, ListReg, LrState, Vmcr};
use super::timer::{VcpuTimers, CNTV_CTL_EL0, CTL_ENABLE, PTIMER_INTID, VTIMER_INTID};
use super::vgic::*;
use alloc::vec::Vec;

// Offsets used by the tests (IHI 0069 register maps).
const CTLR: u64 = 0x0;
const TYPER: u64 = 0x4;
const IIDR_OFF: u64 = 0x8;
const TYPER2: u64 = 0xc;
const IGROUPR: u64 = 0x80;
const ISENABLER: u64 = 0x100;
const ICENABLER: u64 = 0x180;
const ISPENDR: u64 = 0x200;
const ICPENDR: u64 = 0x280;
const ISACTIVER: u64 = 0x300;
const ICACTIVER: u64 = 0x380;
const IPRIORITYR: u64 = 0x400;
const ITARGETSR: u64 = 0x800;
const ICFGR: u64 = 0xc00;
const SGIR: u64 = 0xf00;
const IROUTER: u64 = 0x6000;
const PIDR2: u64 = 0xffe8;
const GICR_TYPER: u64 = 0x8;
const GICR_WAKER: u64 = 0x14;
const SGI: u64 = GICR_SGI_OFFSET;

/// KVM's MPIDR layout: Aff0 = i % 16, Aff1 = i / 16.
fn mpidrs(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| ((i / 16) << 8) | (i % 16)).collect()
}

fn gic(n: usize) -> Vgic {
    Vgic::new(&mpidrs(n), 64, 5).unwrap()
}

/// Both groups on, every redistributor awake: what a booted guest has.
fn booted(n: usize) -> Vgic {
    let mut g = gic(n);
    g.dist_write(CTLR, 4, 3);
    for v in 0..n {
        g.redist_write(v as u64 * GICR_STRIDE + GICR_WAKER, 4, 0);
    }
    g
}

fn dr(g: &Vgic, off: u64) -> u64 {
    g.dist_read(off, 4)
}

fn rr(g: &Vgic, v: usize, off: u64) -> u64 {
    g.redist_read(v as u64 * GICR_STRIDE + off, 4)
}

fn rw(g: &mut Vgic, v: usize, off: u64, val: u64) -> VcpuMask {
    g.redist_write(v as u64 * GICR_STRIDE + off, 4, val)
}

/// Enables SPI `intid` with a priority and trigger, routed to vCPU `to`.
fn spi(g: &mut Vgic, intid: u32, prio: u8, edge: bool, to: usize) {
    let word = u64::from(intid / 32) * 4;
    g.dist_write(IPRIORITYR + u64::from(intid), 1, u64::from(prio));
    let cfg = ICFGR + u64::from(intid / 16) * 4;
    let bitpos = 2 * (intid % 16) + 1;
    let old = dr(g, cfg);
    let new = if edge {
        old | 1 << bitpos
    } else {
        old & !(1 << bitpos)
    };
    g.dist_write(cfg, 4, new);
    g.dist_write(IROUTER + 8 * u64::from(intid), 8, mpidrs(64)[to]);
    g.dist_write(ISENABLER + word, 4, 1 << (intid % 32));
}

/// Enables private interrupt `intid` of vCPU `v` with a priority.
fn private(g: &mut Vgic, v: usize, intid: u32, prio: u8) {
    g.redist_write(
        v as u64 * GICR_STRIDE + SGI + IPRIORITYR + u64::from(intid),
        1,
        u64::from(prio),
    );
    rw(g, v, SGI + ISENABLER, 1 << intid);
}

fn lr_of(v: u64) -> ListReg {
    ListReg::decode(v)
}

/// The guest acknowledges (P -> A) the list register holding `intid`.
fn ack(lrs: &mut [u64], intid: u32) {
    for l in lrs.iter_mut() {
        let mut d = ListReg::decode(*l);
        if d.intid == intid && d.state == LrState::Pending {
            d.state = LrState::Active;
            *l = d.encode();
            return;
        }
    }
    panic!("{intid} not pending in {lrs:x?}");
}

/// The guest deactivates (A -> I, P+A -> P) the list register holding `intid`.
fn deactivate(lrs: &mut [u64], intid: u32) {
    for l in lrs.iter_mut() {
        let mut d = ListReg::decode(*l);
        if d.intid == intid && d.state.active() {
            d.state = LrState::new(d.state.pending(), false);
            *l = d.encode();
            return;
        }
    }
    panic!("{intid} not active in {lrs:x?}");
}

/// The best pending list register (what the CPU interface acknowledges).
fn best_pending(lrs: &[u64]) -> Option<u32> {
    lrs.iter()
        .map(|&l| lr_of(l))
        .filter(|d| d.state == LrState::Pending)
        .min_by_key(|d| (d.priority, d.intid))
        .map(|d| d.intid)
}

fn intids(lrs: &[u64]) -> Vec<(u32, LrState)> {
    lrs.iter()
        .map(|&l| lr_of(l))
        .filter(|d| d.state != LrState::Invalid)
        .map(|d| (d.intid, d.state))
        .collect()
}

/// Every register of the distributor and of each redistributor, read as
/// 32-bit words, plus the state of every interrupt: to check that a write
/// changed nothing.
fn dump(g: &Vgic) -> (Vec<u64>, Vec<Option<IrqState>>) {
    let mut regs: Vec<u64> = (0..0x1_0000).step_by(4).map(|o| dr(g, o)).collect();
    let mut irqs = Vec::new();
    for v in 0..g.nr_vcpus() {
        for o in (0..GICR_STRIDE).step_by(4) {
            regs.push(rr(g, v, o));
        }
        irqs.extend((0..1024).map(|i| g.irq_state(v, i)));
    }
    regs.push(g.any_target() as u64);
    (regs, irqs)
}

// ---- configuration ----

#[test]
fn new_rejects_bad_configurations() {
    assert_eq!(Vgic::new(&[], 64, 5).err(), Some(VgicError::NoVcpus));
    assert_eq!(
        Vgic::new(&mpidrs(65), 64, 5).err(),
        Some(VgicError::TooManyVcpus(65))
    );
    // Only the affinity fields count: bit 31 (RES1 in MPIDR) and MT differ.
    assert_eq!(
        Vgic::new(&[0x8000_0001, 0x0100_0001], 64, 5).err(),
        Some(VgicError::DuplicateMpidr(0x0100_0001))
    );
    for n in [1, 33, 1000, 1024] {
        assert_eq!(Vgic::new(&[0], n, 5).err(), Some(VgicError::SpiCount(n)));
    }
    for b in [0, 3, 9, 255] {
        assert_eq!(
            Vgic::new(&[0], 64, b).err(),
            Some(VgicError::PriorityBits(b))
        );
    }
    assert!(Vgic::new(&[0], 0, 5).is_ok());
    assert!(Vgic::new(&[0], MAX_SPIS, 8).is_ok());
    assert!(Vgic::new(&mpidrs(MAX_VCPUS), 96, 4).is_ok());
}

#[test]
fn max_vcpus_matches_the_vm() {
    assert_eq!(MAX_VCPUS, crate::vm::MAX_VCPUS as usize);
    assert_eq!(gicr_size(2), 0x4_0000);
    // 64 redistributors fit in QEMU virt's GICR region (0xF60000 bytes).
    assert!(gicr_size(MAX_VCPUS) <= 0xf6_0000);
}

// ---- distributor ----

#[test]
fn gicd_ctlr_has_are_and_ds_fixed_and_both_group_enables() {
    let mut g = gic(2);
    assert_eq!(dr(&g, CTLR), 0x50);
    // ARE/DS cannot be cleared; E1NWF, RWP and the rest are ignored.
    assert_eq!(
        g.dist_write(CTLR, 4, 0xffff_ffff),
        0b11,
        "both vCPUs kicked"
    );
    assert_eq!(dr(&g, CTLR), 0x53);
    assert_eq!(g.dist_write(CTLR, 4, 0xffff_ffff), 0, "no change, no kick");
    g.dist_write(CTLR, 4, 0);
    assert_eq!(dr(&g, CTLR), 0x50);
    g.dist_write(CTLR, 4, 2);
    assert_eq!(dr(&g, CTLR), 0x52);
}

#[test]
fn gicd_id_registers_are_read_only() {
    let mut g = gic(2);
    // ITLinesNumber 2 (96 INTIDs), IDbits 9, A3V, RSS.
    assert_eq!(dr(&g, TYPER), 2 | 9 << 19 | 1 << 24 | 1 << 26);
    assert_eq!(dr(&Vgic::new(&[0], 96, 5).unwrap(), TYPER) & 0x1f, 3);
    assert_eq!(dr(&Vgic::new(&[0], 0, 5).unwrap(), TYPER) & 0x1f, 0);
    assert_eq!(dr(&Vgic::new(&[0], MAX_SPIS, 5).unwrap(), TYPER) & 0x1f, 31);
    assert_eq!(dr(&g, IIDR_OFF), u64::from(IIDR));
    assert_eq!(dr(&g, TYPER2), 0);
    assert_eq!(dr(&g, PIDR2), 0x3b);
    assert_eq!((dr(&g, PIDR2) >> 4) & 0xf, 3, "ArchRev: GICv3");
    assert_eq!(dr(&g, 0xfffc), 0xb1);
    let before = dump(&g);
    for off in [TYPER, IIDR_OFF, TYPER2, PIDR2, 0xffd0, 0xfff0, 0xfffc] {
        assert_eq!(g.dist_write(off, 4, u64::MAX), 0);
    }
    assert!(before == dump(&g));
}

#[test]
fn gicd_bit_registers_set_and_clear_spis_only() {
    let mut g = gic(1);
    // Word 1 = INTIDs 32..63.
    assert_eq!(dr(&g, IGROUPR + 4), 0xffff_ffff, "Group 1 at reset");
    g.dist_write(IGROUPR + 4, 4, 0x0000_ffff);
    assert_eq!(dr(&g, IGROUPR + 4), 0x0000_ffff);
    g.dist_write(ISENABLER + 4, 4, 0x8000_0001);
    g.dist_write(ISENABLER + 4, 4, 0x0000_0010);
    assert_eq!(dr(&g, ISENABLER + 4), 0x8000_0011);
    assert_eq!(dr(&g, ICENABLER + 4), 0x8000_0011);
    g.dist_write(ICENABLER + 4, 4, 0x8000_0000);
    assert_eq!(dr(&g, ISENABLER + 4), 0x11);
    g.dist_write(ISPENDR + 8, 4, 0xf0);
    assert_eq!(dr(&g, ICPENDR + 8), 0xf0);
    g.dist_write(ICPENDR + 8, 4, 0x30);
    assert_eq!(dr(&g, ISPENDR + 8), 0xc0);
    g.dist_write(ISACTIVER + 8, 4, 6);
    assert_eq!(dr(&g, ICACTIVER + 8), 6);
    g.dist_write(ICACTIVER + 8, 4, 2);
    assert_eq!(dr(&g, ISACTIVER + 8), 4);
    assert!(g.irq_state(0, 66).unwrap().active);
    assert!(g.irq_state(0, 71).unwrap().pending);
    // Word 0 (SGIs/PPIs) is the redistributor's with ARE = 1: RAZ/WI here.
    let before = dump(&g);
    for base in [
        IGROUPR, ISENABLER, ICENABLER, ISPENDR, ICPENDR, ISACTIVER, ICACTIVER,
    ] {
        assert_eq!(g.dist_write(base, 4, u64::MAX), 0);
        // Words past the 64 SPIs (3..31): RAZ/WI.
        assert_eq!(g.dist_write(base + 12, 4, u64::MAX), 0);
        assert_eq!(g.dist_write(base + 0x7c, 4, u64::MAX), 0);
        assert_eq!(dr(&g, base + 12), 0);
    }
    assert_eq!(dr(&g, IGROUPR), 0);
    assert!(before == dump(&g));
}

#[test]
fn gicd_last_word_has_no_special_intids() {
    let mut g = Vgic::new(&[0], MAX_SPIS, 5).unwrap();
    g.dist_write(ISPENDR + 31 * 4, 4, u64::MAX);
    assert_eq!(
        dr(&g, ISPENDR + 31 * 4),
        0x0fff_ffff,
        "1020..1023 do not exist"
    );
    assert!(g.irq_state(0, 1019).unwrap().pending);
    assert_eq!(g.irq_state(0, 1020), None);
    g.dist_write(IPRIORITYR + 1016, 4, u64::MAX);
    assert_eq!(dr(&g, IPRIORITYR + 1016), 0xf8f8_f8f8);
    g.dist_write(IPRIORITYR + 1020, 4, u64::MAX);
    assert_eq!(dr(&g, IPRIORITYR + 1020), 0);
    g.dist_write(ICFGR + 63 * 4, 4, u64::MAX);
    assert_eq!(dr(&g, ICFGR + 63 * 4), 0x00aa_aaaa, "1008..1019 only");
    assert_eq!(g.dist_write(IROUTER + 8 * 1020, 8, 1), 0);
    assert_eq!(g.dist_read(IROUTER + 8 * 1020, 8), 0);
}

#[test]
fn gicd_priorities_keep_the_implemented_bits_byte_or_word() {
    let mut g = gic(1);
    g.dist_write(IPRIORITYR + 40, 1, 0xff);
    assert_eq!(
        g.dist_read(IPRIORITYR + 40, 1),
        0xf8,
        "5 bits: 0xff reads 0xf8"
    );
    g.dist_write(IPRIORITYR + 44, 4, 0x1234_5678);
    assert_eq!(dr(&g, IPRIORITYR + 44), 0x1030_5078);
    assert_eq!(g.dist_read(IPRIORITYR + 45, 1), 0x50);
    assert_eq!(g.irq_state(0, 47).unwrap().priority, 0x10);
    // INTIDs 0..31 (the redistributors') and absent SPIs: RAZ/WI.
    g.dist_write(IPRIORITYR, 4, u64::MAX);
    g.dist_write(IPRIORITYR + 31, 1, 0xff);
    g.dist_write(IPRIORITYR + 96, 4, u64::MAX);
    assert_eq!(dr(&g, IPRIORITYR), 0);
    assert_eq!(g.dist_read(IPRIORITYR + 31, 1), 0);
    assert_eq!(dr(&g, IPRIORITYR + 96), 0);
    // A huge value written as a byte keeps its low byte only.
    g.dist_write(IPRIORITYR + 41, 1, u64::MAX - 0xff + 0x48);
    assert_eq!(g.dist_read(IPRIORITYR + 41, 1), 0x48);
    // With 8 priority bits everything is kept, with 4 the top nibble.
    let mut g8 = Vgic::new(&[0], 32, 8).unwrap();
    g8.dist_write(IPRIORITYR + 32, 1, 0xff);
    assert_eq!(g8.dist_read(IPRIORITYR + 32, 1), 0xff);
    let mut g4 = Vgic::new(&[0], 32, 4).unwrap();
    g4.dist_write(IPRIORITYR + 32, 1, 0xff);
    assert_eq!(g4.dist_read(IPRIORITYR + 32, 1), 0xf0);
}

#[test]
fn gicd_icfgr_configures_spis_and_ignores_reserved_bits() {
    let mut g = gic(1);
    assert_eq!(dr(&g, ICFGR + 8), 0, "SPIs level at reset");
    g.dist_write(ICFGR + 8, 4, u64::MAX);
    assert_eq!(dr(&g, ICFGR + 8), 0xaaaa_aaaa, "Int_config[0] is RES0");
    assert!(g.irq_state(0, 32).unwrap().edge && g.irq_state(0, 47).unwrap().edge);
    assert!(!g.irq_state(0, 48).unwrap().edge);
    g.dist_write(ICFGR + 12, 4, 0x5555_5558);
    assert_eq!(dr(&g, ICFGR + 12), 0x8);
    assert!(g.irq_state(0, 49).unwrap().edge);
    // ICFGR0/1 (SGIs, PPIs) are the redistributor's: RAZ/WI here.
    g.dist_write(ICFGR, 4, u64::MAX);
    g.dist_write(ICFGR + 4, 4, u64::MAX);
    assert_eq!(dr(&g, ICFGR), 0);
    assert_eq!(dr(&g, ICFGR + 4), 0);
    assert!(!g.irq_state(0, 27).unwrap().edge);
}

#[test]
fn gicd_irouter_64_and_32_bit_with_reserved_bits_masked() {
    let mut g = gic(2);
    assert_eq!(g.dist_read(IROUTER + 8 * 40, 8), 0);
    g.dist_write(IROUTER + 8 * 40, 8, u64::MAX);
    assert_eq!(g.dist_read(IROUTER + 8 * 40, 8), 0xff_80ff_ffff);
    assert_eq!(dr(&g, IROUTER + 8 * 40), 0x80ff_ffff);
    assert_eq!(dr(&g, IROUTER + 8 * 40 + 4), 0xff);
    // 32-bit halves write independently.
    g.dist_write(IROUTER + 8 * 40, 4, 1);
    assert_eq!(g.dist_read(IROUTER + 8 * 40, 8), 0xff_0000_0001);
    g.dist_write(IROUTER + 8 * 40 + 4, 4, 0);
    assert_eq!(g.dist_read(IROUTER + 8 * 40, 8), 1);
    assert_eq!(g.spi_target(40), Some(1));
    // INTIDs below 32 and absent SPIs have no IROUTER; bytes, halves and
    // misaligned doublewords do nothing.
    let before = dump(&g);
    for (off, size) in [
        (IROUTER, 8),
        (IROUTER + 8 * 31, 8),
        (IROUTER + 8 * 96, 8),
        (IROUTER + 8 * 33, 1),
        (IROUTER + 8 * 33, 2),
        (IROUTER + 8 * 33 + 4, 8),
    ] {
        assert_eq!(g.dist_write(off, size, u64::MAX), 0);
        assert_eq!(g.dist_read(off, size), 0);
    }
    assert!(before == dump(&g));
}

#[test]
fn gicd_legacy_and_secure_only_registers_are_raz_wi() {
    let mut g = booted(2);
    let before = dump(&g);
    // ITARGETSR (RES0 with ARE), IGRPMODR, NSACR (DS = 1), SGIR (ARE),
    // C/SPENDSGIR, SETSPI/CLRSPI (no MBIS), STATUSR.
    for off in [
        ITARGETSR + 32,
        0xd04,
        0xe08,
        SGIR,
        0xf10,
        0xf20,
        0x40,
        0x48,
        0x10,
    ] {
        g.dist_write(off, 4, u64::MAX);
        assert_eq!(dr(&g, off), 0, "{off:#x}");
    }
    assert!(before == dump(&g));
    assert!(!g.irq_state(0, 0).unwrap().pending, "SGIR sends nothing");
}

#[test]
fn unsupported_widths_and_alignments_are_raz_wi() {
    let mut g = booted(2);
    g.dist_write(ISPENDR + 4, 4, 0xff);
    let before = dump(&g);
    for size in [0u8, 2, 3, 8, 16, 255] {
        for off in [CTLR, ISENABLER + 4, ISPENDR + 4, ICFGR + 8, IGROUPR + 4] {
            assert_eq!(g.dist_write(off, size, u64::MAX), 0, "{off:#x}/{size}");
            assert_eq!(g.dist_read(off, size), 0, "{off:#x}/{size}");
        }
    }
    // Misaligned words; bytes where only words exist.
    for off in [CTLR + 1, ISENABLER + 6, ICFGR + 9, IPRIORITYR + 33] {
        assert_eq!(g.dist_write(off, 4, u64::MAX), 0);
        assert_eq!(g.dist_read(off, 4), 0);
    }
    for off in [CTLR, ISENABLER + 4, ICENABLER + 4, ICFGR + 8] {
        assert_eq!(g.dist_write(off, 1, 0xff), 0);
        assert_eq!(g.dist_read(off, 1), 0);
    }
    // Beyond the frame.
    assert_eq!(g.dist_write(0x1_0000, 4, u64::MAX), 0);
    assert_eq!(g.dist_read(u64::MAX - 3, 4), 0);
    // Redistributor: the same rules.
    for (off, size) in [
        (GICR_WAKER, 2),
        (GICR_WAKER, 8),
        (GICR_WAKER + 1, 4),
        (SGI + ISENABLER, 1),
        (SGI + ISENABLER + 2, 4),
    ] {
        assert_eq!(g.redist_write(off, size, u64::MAX), 0);
        assert_eq!(g.redist_read(off, size), 0);
    }
    assert!(before == dump(&g));
}

// ---- redistributors ----

#[test]
fn gicr_typer_reports_affinity_processor_number_and_last() {
    let m = [0x0, 0x0000_0100, 0x2a_0003_0201];
    let g = Vgic::new(&m, 32, 5).unwrap();
    assert_eq!(g.redist_read(GICR_TYPER, 8), 0);
    assert_eq!(
        g.redist_read(GICR_STRIDE + GICR_TYPER, 8),
        0x0000_0100 << 32 | 1 << 8
    );
    let last = 0x2a03_0201u64 << 32 | 2 << 8 | 1 << 4;
    assert_eq!(g.redist_read(2 * GICR_STRIDE + GICR_TYPER, 8), last);
    assert_eq!(rr(&g, 2, GICR_TYPER), last & 0xffff_ffff);
    assert_eq!(rr(&g, 2, GICR_TYPER + 4), last >> 32);
    assert_eq!(rr(&g, 0, 0x4), u64::from(IIDR));
    assert_eq!(rr(&g, 1, PIDR2), 0x3b);
    assert_eq!(g.vcpu_of_mpidr(0x8000_0000 | 0x2a_0003_0201), Some(2));
    // A Linux-style scan stops at Last; past it everything reads 0.
    assert_eq!(g.redist_read(3 * GICR_STRIDE + GICR_TYPER, 8), 0);
    assert_eq!(g.redist_read(u64::MAX - 7, 8), 0);
}

#[test]
fn gicr_read_only_registers_ignore_writes() {
    let mut g = booted(2);
    let before = dump(&g);
    for off in [
        0x0,
        0x4,
        GICR_TYPER,
        GICR_TYPER + 4,
        0x10,
        0x70,
        0x78,
        0xc0,
        PIDR2,
        SGI + ICFGR,
        SGI + ICFGR + 4,
        SGI + 0xd00,
        SGI + 0xe00,
    ] {
        assert_eq!(rw(&mut g, 1, off, u64::MAX), 0, "{off:#x}");
    }
    assert_eq!(g.redist_write(GICR_STRIDE + GICR_TYPER, 8, u64::MAX), 0);
    assert!(before == dump(&g));
    assert_eq!(rr(&g, 0, SGI + ICFGR), 0xaaaa_aaaa, "SGIs edge");
    assert_eq!(rr(&g, 0, SGI + ICFGR + 4), 0, "PPIs level");
}

#[test]
fn gicr_waker_handshake() {
    let mut g = gic(2);
    // Reset: ProcessorSleep = ChildrenAsleep = 1.
    assert_eq!(rr(&g, 0, GICR_WAKER), 0b110);
    // Linux: clear ProcessorSleep, poll ChildrenAsleep until 0.
    rw(&mut g, 0, GICR_WAKER, 0);
    assert_eq!(rr(&g, 0, GICR_WAKER), 0);
    assert_eq!(rr(&g, 1, GICR_WAKER), 0b110, "per redistributor");
    // ChildrenAsleep is read-only, bits 0 and 31 RAZ/WI.
    rw(&mut g, 0, GICR_WAKER, 0x8000_0005);
    assert_eq!(rr(&g, 0, GICR_WAKER), 0);
    rw(&mut g, 0, GICR_WAKER, 2);
    assert_eq!(rr(&g, 0, GICR_WAKER), 0b110);
}

#[test]
fn gicr_sgi_frame_registers() {
    let mut g = booted(2);
    assert_eq!(rr(&g, 1, SGI + IGROUPR), 0xffff_ffff);
    assert_eq!(rw(&mut g, 1, SGI + ISENABLER, 1 << 27 | 1 << 3), 0b10);
    assert_eq!(rr(&g, 1, SGI + ICENABLER), 1 << 27 | 1 << 3);
    assert_eq!(rr(&g, 0, SGI + ISENABLER), 0, "banked per vCPU");
    rw(&mut g, 1, SGI + ICENABLER, 1 << 3);
    assert_eq!(rr(&g, 1, SGI + ISENABLER), 1 << 27);
    rw(&mut g, 1, SGI + ISPENDR, 1 << 5 | 1 << 20);
    assert_eq!(rr(&g, 1, SGI + ICPENDR), 1 << 5 | 1 << 20);
    rw(&mut g, 1, SGI + ICPENDR, 1 << 20);
    assert_eq!(rr(&g, 1, SGI + ISPENDR), 1 << 5);
    rw(&mut g, 1, SGI + ISACTIVER, 1 << 9);
    assert_eq!(rr(&g, 1, SGI + ICACTIVER), 1 << 9);
    rw(&mut g, 1, SGI + ICACTIVER, u64::MAX);
    assert_eq!(rr(&g, 1, SGI + ISACTIVER), 0);
    rw(&mut g, 1, SGI + IGROUPR, 0xffff_fffe);
    assert_eq!(rr(&g, 1, SGI + IGROUPR), 0xffff_fffe);
    // IPRIORITYR0-7, byte and word.
    rw(&mut g, 1, SGI + IPRIORITYR + 24, 0xffee_ddcc);
    assert_eq!(rr(&g, 1, SGI + IPRIORITYR + 24), 0xf8e8_d8c8);
    g.redist_write(GICR_STRIDE + SGI + IPRIORITYR + 27, 1, 0x17);
    assert_eq!(g.redist_read(GICR_STRIDE + SGI + IPRIORITYR + 27, 1), 0x10);
    assert_eq!(g.irq_state(1, 27).unwrap().priority, 0x10);
    // Words of the SGI frame past word 0: RAZ/WI (no extended PPIs).
    assert_eq!(rw(&mut g, 1, SGI + ISENABLER + 4, u64::MAX), 0);
    assert_eq!(rr(&g, 1, SGI + ISENABLER + 4), 0);
    assert_eq!(rw(&mut g, 1, SGI + IPRIORITYR + 32, u64::MAX), 0);
    // A vCPU that does not exist.
    assert_eq!(rw(&mut g, 2, SGI + ISENABLER, u64::MAX), 0);
    assert_eq!(rr(&g, 2, SGI + ISENABLER), 0);
}

// ---- routing and inputs ----

#[test]
fn irouter_naming_an_absent_vcpu_is_never_delivered() {
    let mut g = booted(2);
    spi(&mut g, 40, 0x80, false, 0);
    g.dist_write(IROUTER + 8 * 40, 8, 0x09);
    assert_eq!(g.spi_target(40), None);
    assert_eq!(g.set_spi(40, true), 0, "nobody to kick");
    let mut out = [0u32; 4];
    assert_eq!(g.pending_for(0, &mut out), 0);
    assert_eq!(g.pending_for(1, &mut out), 0);
    let mut lrs = [0u64; 4];
    assert_eq!(g.fill(0, &mut lrs).used, 0);
    assert_eq!(g.fill(1, &mut lrs).used, 0);
    assert!(g.irq_state(0, 40).unwrap().pending, "it stays pending");
    // Aff3 matters too.
    assert_eq!(g.dist_write(IROUTER + 8 * 40, 8, 1 << 32 | 1), 0);
    // Routing it to vCPU 1 delivers it there, and kicks vCPU 1.
    assert_eq!(g.dist_write(IROUTER + 8 * 40, 8, 1), 0b10);
    assert_eq!(g.pending_for(1, &mut out), 1);
    assert_eq!(out[0], 40);
    assert_eq!(g.pending_for(0, &mut out), 0);
}

#[test]
fn irm_any_routes_to_the_lowest_awake_vcpu() {
    let mut g = gic(3);
    g.dist_write(CTLR, 4, 2);
    spi(&mut g, 50, 0, true, 0);
    g.dist_write(IROUTER + 8 * 50, 8, IROUTER_IRM | 0x2);
    assert_eq!(g.spi_target(50), Some(0), "all asleep: vCPU 0");
    assert_eq!(rw(&mut g, 2, GICR_WAKER, 0), 0b101);
    assert_eq!(g.any_target(), 2);
    assert_eq!(
        g.spi_target(50),
        Some(2),
        "the affinity is ignored with IRM"
    );
    rw(&mut g, 1, GICR_WAKER, 0);
    assert_eq!(g.spi_target(50), Some(1));
    assert_eq!(g.set_spi(50, true), 0b010);
    rw(&mut g, 1, GICR_WAKER, 2);
    assert_eq!(g.spi_target(50), Some(2));
    let mut out = [0; 2];
    assert_eq!(g.pending_for(2, &mut out), 1);
}

#[test]
fn inputs_out_of_range_are_ignored() {
    let mut g = booted(2);
    g.dist_write(ISENABLER + 4, 4, u64::MAX);
    g.dist_write(ISENABLER + 8, 4, u64::MAX);
    let before = dump(&g);
    for intid in [0, 15, 16, 31, 96, 1019, 1020, 1023, 1024, u32::MAX] {
        assert_eq!(g.set_spi(intid, true), 0);
        assert_eq!(g.pulse_spi(intid), 0);
    }
    for (v, intid) in [
        (0, 0),
        (0, 15),
        (0, 32),
        (0, u32::MAX),
        (2, 27),
        (usize::MAX, 27),
    ] {
        assert_eq!(g.set_ppi(v, intid, true), 0);
    }
    assert!(g.irq_state(0, 96).is_none() && g.irq_state(5, 3).is_none());
    let mut out = [0; 4];
    assert_eq!(g.pending_for(7, &mut out), 0);
    let mut lrs = [u64::MAX; 4];
    assert_eq!(g.fill(7, &mut lrs), FillResult::default());
    assert_eq!(lrs, [0; 4]);
    assert_eq!(g.sync(7, &lrs), SyncResult::default());
    assert!(!g.irq_pending(9, Vmcr(u64::MAX)));
    assert!(before == dump(&g));
}

#[test]
fn ppis_follow_their_line_per_vcpu() {
    let mut g = booted(2);
    private(&mut g, 1, VTIMER_INTID, 0xa0);
    assert_eq!(g.set_ppi(1, VTIMER_INTID, true), 0b10);
    assert_eq!(g.set_ppi(1, VTIMER_INTID, true), 0, "no edge, no kick");
    let mut out = [0; 4];
    assert_eq!(g.pending_for(1, &mut out), 1);
    assert_eq!(out[0], VTIMER_INTID);
    assert_eq!(g.pending_for(0, &mut out), 0);
    // A disabled PPI is pending but not delivered; no kick.
    assert_eq!(g.set_ppi(0, PTIMER_INTID, true), 0);
    assert!(g.irq_state(0, PTIMER_INTID).unwrap().pending);
    assert_eq!(g.pending_for(0, &mut out), 0);
    // Lowering the line withdraws a level interrupt.
    g.set_ppi(1, VTIMER_INTID, false);
    assert_eq!(g.pending_for(1, &mut out), 0);
    // ICPENDR cannot clear a level interrupt whose line is high.
    g.set_ppi(1, VTIMER_INTID, true);
    rw(&mut g, 1, SGI + ICPENDR, 1 << VTIMER_INTID);
    assert!(g.irq_state(1, VTIMER_INTID).unwrap().pending);
}

#[test]
fn timer_levels_drive_the_timer_ppis() {
    // The wiring the core does on every exit: the saved virtual timer's
    // level at `now` becomes PPI 27's line.
    let mut g = booted(1);
    private(&mut g, 0, VTIMER_INTID, 0x80);
    let mut t = VcpuTimers::new(62_500_000, 1000);
    t.sysreg_write(CNTV_CTL_EL0, CTL_ENABLE, 1000);
    t.sysreg_write(super::timer::CNTV_CVAL_EL0, 500, 1000);
    let mut kick = 0;
    for (intid, level) in t.lines(1499) {
        kick |= g.set_ppi(0, intid, level);
    }
    assert_eq!(kick, 0);
    for (intid, level) in t.lines(1500) {
        kick |= g.set_ppi(0, intid, level);
    }
    assert_eq!(kick, 1);
    assert!(g.irq_state(0, VTIMER_INTID).unwrap().pending);
}

#[test]
fn sgis_target_by_affinity_and_range_selector() {
    // 20 vCPUs in KVM's layout: vCPU 16..19 have Aff1 = 1.
    let mut g = booted(20);
    for v in 0..20 {
        private(&mut g, v, 3, 0);
    }
    // Aff1 = 1, TargetList bits 0 and 2: vCPUs 16 and 18.
    let v = 3 << 24 | 1 << 16 | 0b101;
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, v), 1 << 16 | 1 << 18);
    assert!(g.irq_state(16, 3).unwrap().pending && g.irq_state(18, 3).unwrap().pending);
    assert!(!g.irq_state(17, 3).unwrap().pending && !g.irq_state(2, 3).unwrap().pending);
    // Aff0 up to 63 with RS: MPIDR Aff0 = i.
    let m: Vec<u64> = (0..40).collect();
    let mut g = Vgic::new(&m, 32, 5).unwrap();
    g.dist_write(CTLR, 4, 2);
    private(&mut g, 37, 1, 0);
    let v = 1 << 24 | 2 << 44 | 1 << 5; // RS 2, bit 5: Aff0 37.
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, v), 1 << 37);
    // A sender may target itself.
    let v = 1 << 24 | 2 << 44 | 1 << 5;
    assert_eq!(g.send_sgi(37, SgiRegister::Sgi1r, v), 1 << 37);
}

#[test]
fn sgi_irm_targets_everyone_else() {
    let mut g = booted(4);
    for v in 0..4 {
        private(&mut g, v, 7, 0);
        private(&mut g, v, 8, 0);
    }
    // IRM = 1: affinity and TargetList are ignored.
    let v = 1 << 40 | 7 << 24 | 0xff << 16 | 0xffff;
    assert_eq!(g.send_sgi(2, SgiRegister::Sgi1r, v), 0b1011);
    assert!(!g.irq_state(2, 7).unwrap().pending);
    assert!(g.irq_state(3, 7).unwrap().pending);
    // A disabled SGI becomes pending without a kick.
    rw(&mut g, 1, SGI + ICENABLER, 1 << 8);
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, 1 << 40 | 8 << 24), 0b1100);
    assert!(g.irq_state(1, 8).unwrap().pending);
    // 64 vCPUs: all but the sender.
    let mut g = booted(64);
    for v in 0..64 {
        private(&mut g, v, 0, 0);
    }
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, 1 << 40), !1);
    assert_eq!(
        g.dist_write(CTLR, 4, 0),
        u64::MAX,
        "every vCPU re-evaluates"
    );
    assert_eq!(
        g.redist_read(63 * GICR_STRIDE + GICR_TYPER, 8) & 1 << 4,
        1 << 4
    );
}

#[test]
fn sgis_to_absent_targets_are_dropped() {
    let mut g = booted(2);
    for v in 0..2 {
        private(&mut g, v, 5, 0);
    }
    let before = dump(&g);
    for v in [
        5u64 << 24 | 0b1100,         // Aff0 2 and 3: absent.
        5 << 24 | 1 << 16 | 0b1,     // Aff1 1.
        5 << 24 | 1 << 32 | 0b1,     // Aff2 1.
        5 << 24 | 1 << 48 | 0b1,     // Aff3 1.
        5 << 24 | 1 << 44 | 0b11,    // RS 1: Aff0 16, 17.
        5 << 24 | 15 << 44 | 0xffff, // RS 15.
        5 << 24,                     // empty TargetList.
    ] {
        assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, v), 0, "{v:#x}");
    }
    // A sender that does not exist sends nothing, even with IRM.
    assert_eq!(g.send_sgi(2, SgiRegister::Sgi1r, 1 << 40 | 5 << 24), 0);
    assert_eq!(g.send_sgi(usize::MAX, SgiRegister::Sgi1r, u64::MAX), 0);
    assert!(before == dump(&g));
    // RES0 bits of the value do not matter.
    let v = 5u64 << 24 | 0b10 | 0xf << 28 | 0xf << 56 | 0x7 << 41;
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, v), 0b10);
}

#[test]
fn sgi_groups_follow_the_register() {
    let mut g = booted(2);
    private(&mut g, 1, 2, 0);
    private(&mut g, 1, 4, 0);
    // SGI 2 in Group 0, SGI 4 in Group 1.
    rw(&mut g, 1, SGI + IGROUPR, !(1 << 2));
    let to1 = |i: u64| i << 24 | 0b10;
    assert_eq!(
        g.send_sgi(0, SgiRegister::Sgi0r, to1(4)),
        0,
        "Group 1 via SGI0R"
    );
    assert_eq!(g.send_sgi(0, SgiRegister::Asgi1r, to1(4)), 0);
    assert!(!g.irq_state(1, 4).unwrap().pending);
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi0r, to1(2)), 0b10);
    rw(&mut g, 1, SGI + ICPENDR, u64::MAX);
    assert_eq!(g.send_sgi(0, SgiRegister::Asgi1r, to1(2)), 0b10);
    rw(&mut g, 1, SGI + ICPENDR, u64::MAX);
    // SGI1R generates either group (DS = 1).
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, to1(2)), 0b10);
    assert_eq!(g.send_sgi(0, SgiRegister::Sgi1r, to1(4)), 0b10);
    // The LR carries the group.
    let mut lrs = [0; 4];
    g.fill(1, &mut lrs);
    let l: Vec<_> = lrs[..2]
        .iter()
        .map(|&x| (lr_of(x).intid, lr_of(x).group1))
        .collect();
    assert_eq!(l, [(2, false), (4, true)]);
}

#[test]
fn sgi_request_decoding() {
    let r = SgiRequest::decode(0x00ab_c123_0a45_f00f);
    assert_eq!(r.target_list, 0xf00f);
    assert_eq!(r.aff1, 0x45);
    assert_eq!(r.intid, 0xa);
    assert_eq!(r.aff2, 0x23);
    assert!(r.all_but_self);
    assert_eq!(r.rs, 0xc);
    assert_eq!(r.aff3, 0xab);
    assert!(SgiRequest::decode(0x1 << 16 | 0x8).names(0x0103));
    assert!(!SgiRequest::decode(0x1 << 16 | 0x8).names(0x0102));
}

#[test]
fn group_enables_and_interrupt_enables_gate_delivery() {
    let mut g = gic(1);
    spi(&mut g, 40, 0x10, true, 0);
    spi(&mut g, 41, 0x20, true, 0);
    g.dist_write(IGROUPR + 4, 4, !(1 << 9)); // 41 in Group 0.
    g.set_spi(40, true);
    g.set_spi(41, true);
    let mut out = [0; 4];
    assert_eq!(g.pending_for(0, &mut out), 0, "GICD_CTLR enables off");
    g.dist_write(CTLR, 4, 2);
    assert_eq!(g.pending_for(0, &mut out), 1);
    assert_eq!(out[0], 40);
    g.dist_write(CTLR, 4, 1);
    assert_eq!(g.pending_for(0, &mut out), 1);
    assert_eq!(out[0], 41);
    g.dist_write(CTLR, 4, 3);
    assert_eq!(g.pending_for(0, &mut out), 2);
    assert_eq!(out[..2], [40, 41]);
    // Disabled, or active: not pending_for.
    g.dist_write(ICENABLER + 4, 4, 1 << 8);
    g.dist_write(ISACTIVER + 4, 4, 1 << 9);
    assert_eq!(g.pending_for(0, &mut out), 0);
    // A shorter output gets the best.
    g.dist_write(ISENABLER + 4, 4, 1 << 8);
    g.dist_write(ICACTIVER + 4, 4, 1 << 9);
    assert_eq!(g.pending_for(0, &mut out[..1]), 1);
    assert_eq!(out[0], 40);
}

#[test]
fn pending_for_orders_by_priority_then_intid() {
    let mut g = booted(1);
    let prios = [
        (33u32, 0x80u8),
        (34, 0x10),
        (35, 0x80),
        (60, 0x08),
        (27, 0x10),
        (3, 0xf8),
    ];
    for &(i, p) in &prios {
        if i < 32 {
            private(&mut g, 0, i, p);
        } else {
            spi(&mut g, i, p, true, 0);
        }
    }
    for &(i, _) in &prios {
        if i < 32 {
            rw(&mut g, 0, SGI + ISPENDR, 1 << i);
        } else {
            g.pulse_spi(i);
        }
    }
    let mut out = [0; 8];
    assert_eq!(g.pending_for(0, &mut out), 6);
    assert_eq!(out[..6], [60, 27, 34, 33, 35, 3]);
}

// ---- list registers ----

#[test]
fn more_pending_than_list_registers_delivered_in_priority_order() {
    let mut g = booted(1);
    // Ten edge SPIs, priorities in scrambled order, raised at once.
    let prios = [0x50u8, 0x10, 0x90, 0x30, 0x00, 0x70, 0x20, 0x80, 0x40, 0x60];
    for (i, &p) in prios.iter().enumerate() {
        spi(&mut g, 40 + i as u32, p, true, 0);
    }
    for i in 0..10 {
        g.set_spi(40 + i, true);
        g.set_spi(40 + i, false);
    }
    let mut handled = Vec::new();
    let mut rounds = 0;
    loop {
        let mut lrs = [0u64; 4];
        let f = g.fill(0, &mut lrs);
        if f.used == 0 {
            break;
        }
        rounds += 1;
        assert_eq!(f.hcr() & hcr::UIE != 0, f.more_pending);
        // The list registers hold the best four, in order.
        let seen: Vec<u8> = intids(&lrs)
            .iter()
            .map(|&(i, _)| prios[(i - 40) as usize])
            .collect();
        let sorted = {
            let mut s = seen.clone();
            s.sort();
            s
        };
        assert_eq!(seen, sorted);
        // The guest takes what the CPU interface signals, best first,
        // until at most one LR is valid (the underflow maintenance
        // interrupt), then exits.
        while intids(&lrs).len() > 1 || (!f.more_pending && !intids(&lrs).is_empty()) {
            let i = best_pending(&lrs).unwrap();
            ack(&mut lrs, i);
            deactivate(&mut lrs, i);
            handled.push(i);
        }
        g.sync(0, &lrs);
    }
    assert!(rounds >= 3, "{rounds}");
    let order: Vec<u8> = handled.iter().map(|&i| prios[(i - 40) as usize]).collect();
    assert_eq!(
        order,
        [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90]
    );
    assert_eq!(handled.len(), 10, "each exactly once");
}

#[test]
fn a_higher_priority_interrupt_displaces_a_pending_one_at_the_next_fill() {
    let mut g = booted(1);
    for i in 0..5 {
        spi(&mut g, 40 + i, 0x40 + 8 * i as u8, true, 0);
        g.pulse_spi(40 + i);
    }
    let mut lrs = [0u64; 4];
    assert!(g.fill(0, &mut lrs).more_pending);
    assert_eq!(
        intids(&lrs).iter().map(|x| x.0).collect::<Vec<_>>(),
        [40, 41, 42, 43]
    );
    // While the guest runs, a better one arrives: kick, exit, sync, fill.
    spi(&mut g, 60, 0x00, true, 0);
    assert_eq!(g.pulse_spi(60), 1);
    g.sync(0, &lrs);
    g.fill(0, &mut lrs);
    assert_eq!(
        intids(&lrs).iter().map(|x| x.0).collect::<Vec<_>>(),
        [60, 40, 41, 42]
    );
    // 43 went back to the distributor, still pending.
    assert!(g.irq_state(0, 43).unwrap().pending);
}

#[test]
fn level_spi_is_resampled_when_the_guest_deactivates_it() {
    let mut g = booted(1);
    spi(&mut g, 33, 0x80, false, 0);
    assert_eq!(g.set_spi(33, true), 1);
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    let l = lr_of(lrs[0]);
    assert_eq!(
        (l.intid, l.state, l.eoi, l.priority),
        (33, LrState::Pending, true, 0x80)
    );
    // Acknowledged; the guest runs its handler and exits (an MMIO access).
    ack(&mut lrs, 33);
    let mut eois = Vec::new();
    assert_eq!(g.sync_full(0, &lrs, 0, |i| eois.push(i)).level_eois, 0);
    assert!(g.irq_state(0, 33).unwrap().active);
    g.fill(0, &mut lrs);
    // Active only: a level interrupt is never pending and active in an LR.
    assert_eq!(intids(&lrs), [(33, LrState::Active)]);
    // The device still asserts the line when the guest EOIs: the EOI
    // maintenance interrupt brings it back at once.
    deactivate(&mut lrs, 33);
    let r = g.sync_full(0, &lrs, 0, |i| eois.push(i));
    assert_eq!((r.level_eois, &eois[..]), (1, &[33][..]));
    g.fill(0, &mut lrs);
    assert_eq!(intids(&lrs), [(33, LrState::Pending)]);
    // This time the handler clears the device before the EOI.
    ack(&mut lrs, 33);
    g.sync(0, &lrs);
    assert_eq!(g.set_spi(33, false), 0);
    g.fill(0, &mut lrs);
    deactivate(&mut lrs, 33);
    g.sync(0, &lrs);
    assert_eq!(g.fill(0, &mut lrs).used, 0);
    assert_eq!(
        g.irq_state(0, 33).map(|s| s.pending || s.active),
        Some(false)
    );
}

#[test]
fn level_spi_lowered_before_the_ack_is_withdrawn() {
    let mut g = booted(1);
    spi(&mut g, 34, 0x80, false, 0);
    g.set_spi(34, true);
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    g.set_spi(34, false);
    g.sync(0, &lrs); // still pending in the LR: the guest did not take it
    assert_eq!(g.fill(0, &mut lrs).used, 0);
    assert_eq!(lrs, [0; 4]);
}

#[test]
fn software_pending_level_interrupt_is_consumed_by_the_ack() {
    let mut g = booted(1);
    spi(&mut g, 35, 0x80, false, 0);
    g.dist_write(ISPENDR + 4, 4, 1 << 3);
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    ack(&mut lrs, 35);
    deactivate(&mut lrs, 35);
    g.sync(0, &lrs);
    assert!(!g.irq_state(0, 35).unwrap().pending);
    // Set pending again while active: pending after the deactivation.
    g.dist_write(ISPENDR + 4, 4, 1 << 3);
    g.fill(0, &mut lrs);
    ack(&mut lrs, 35);
    g.sync(0, &lrs);
    g.dist_write(ISPENDR + 4, 4, 1 << 3);
    g.fill(0, &mut lrs);
    assert_eq!(intids(&lrs), [(35, LrState::Active)]);
    deactivate(&mut lrs, 35);
    g.sync(0, &lrs);
    assert!(g.irq_state(0, 35).unwrap().pending);
}

#[test]
fn edge_spi_is_not_lost() {
    let mut g = booted(1);
    spi(&mut g, 48, 0x40, true, 0);
    g.set_spi(48, true);
    g.set_spi(48, false);
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    let l = lr_of(lrs[0]);
    assert_eq!((l.intid, l.state, l.eoi), (48, LrState::Pending, false));
    // In the LR, not in the distributor's latch.
    assert!(!g.irq_state(0, 48).unwrap().pending);
    // The guest did not take it before the exit: it comes back.
    g.sync(0, &lrs);
    assert!(g.irq_state(0, 48).unwrap().pending);
    g.fill(0, &mut lrs);
    // A second edge while the first is still pending in the LR merges.
    g.set_spi(48, true);
    g.set_spi(48, false);
    g.sync(0, &lrs);
    g.fill(0, &mut lrs);
    assert_eq!(intids(&lrs), [(48, LrState::Pending)]);
    // An edge while the guest handles it: pending and active, then again.
    ack(&mut lrs, 48);
    g.sync(0, &lrs);
    assert_eq!(g.pulse_spi(48), 1, "the owner is kicked");
    g.fill(0, &mut lrs);
    assert_eq!(intids(&lrs), [(48, LrState::PendingActive)]);
    deactivate(&mut lrs, 48);
    ack(&mut lrs, 48);
    deactivate(&mut lrs, 48);
    g.sync(0, &lrs);
    assert_eq!(g.fill(0, &mut lrs).used, 0);
}

#[test]
fn a_fill_without_sync_takes_the_list_registers_as_unchanged() {
    let mut g = booted(1);
    spi(&mut g, 40, 0x40, true, 0);
    g.pulse_spi(40);
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    let first = lrs;
    // The backend re-enters without reading the LRs back.
    g.fill(0, &mut lrs);
    assert_eq!(lrs, first);
    g.sync(0, &lrs);
    assert!(g.irq_state(0, 40).unwrap().pending);
}

#[test]
fn sync_ignores_list_registers_it_did_not_fill() {
    let mut g = booted(2);
    spi(&mut g, 40, 0x40, true, 0);
    spi(&mut g, 41, 0x48, false, 0);
    private(&mut g, 0, 27, 0x10);
    g.pulse_spi(40);
    g.dist_write(ISACTIVER + 4, 4, 1 << 9); // 41 active
    let mut lrs = [0u64; 4];
    g.fill(0, &mut lrs);
    assert_eq!(
        intids(&lrs),
        [(41, LrState::Active), (40, LrState::Pending)]
    );
    let before: Vec<_> = [27, 40, 41, 42]
        .iter()
        .map(|&i| g.irq_state(0, i))
        .collect();
    // Garbage: another INTID, an invented pending state on the active
    // one, HW = 1, and valid-looking entries beyond what fill wrote.
    let mut bad = lrs;
    bad[0] = ListReg::virtual_irq(41, 0, true, LrState::PendingActive, false).encode();
    bad[1] = ListReg::virtual_irq(27, 0, true, LrState::Pending, false).encode();
    bad[2] = ListReg::virtual_irq(42, 0, true, LrState::Pending, false).encode();
    bad[3] = ListReg {
        hw: Some(27),
        ..lr_of(bad[2])
    }
    .encode();
    g.sync(0, &bad);
    let after: Vec<_> = [27, 40, 41, 42]
        .iter()
        .map(|&i| g.irq_state(0, i))
        .collect();
    assert_eq!(before[0], after[0], "27 never raised");
    assert_eq!(before[3], after[3], "42 never raised");
    assert!(after[1].unwrap().pending, "40 kept as filled");
    assert!(after[2].unwrap().active && !after[2].unwrap().pending);
    // Fewer list registers than were filled: the missing ones are unchanged.
    g.fill(0, &mut lrs);
    g.sync(0, &lrs[..1]);
    assert!(g.irq_state(0, 40).unwrap().pending);
}

#[test]
fn an_spi_is_in_one_vcpus_list_registers_only() {
    let mut g = booted(2);
    spi(&mut g, 40, 0x40, true, 0);
    g.pulse_spi(40);
    let mut l0 = [0u64; 4];
    let mut l1 = [0u64; 4];
    g.fill(0, &mut l0);
    assert_eq!(intids(&l0), [(40, LrState::Pending)]);
    // Rerouted while vCPU 0 holds it in an LR: both are kicked, vCPU 1 does
    // not take it yet.
    assert_eq!(g.dist_write(IROUTER + 8 * 40, 8, 1), 0b11);
    assert_eq!(g.fill(1, &mut l1).used, 0);
    // vCPU 0 exits without taking it: it goes back, and vCPU 1 is kicked.
    assert_eq!(g.sync(0, &l0).kick, 0b10);
    assert_eq!(g.fill(0, &mut l0).used, 0);
    g.fill(1, &mut l1);
    assert_eq!(intids(&l1), [(40, LrState::Pending)]);
}

#[test]
fn an_active_spi_stays_with_the_vcpu_that_took_it() {
    let mut g = booted(2);
    spi(&mut g, 40, 0x40, false, 0);
    g.set_spi(40, true);
    let mut l0 = [0u64; 4];
    let mut l1 = [0u64; 4];
    g.fill(0, &mut l0);
    ack(&mut l0, 40);
    g.sync(0, &l0);
    g.dist_write(IROUTER + 8 * 40, 8, 1);
    // vCPU 1 is the target now, but vCPU 0 must deactivate it.
    assert_eq!(g.fill(1, &mut l1).used, 0);
    g.fill(0, &mut l0);
    assert_eq!(intids(&l0), [(40, LrState::Active)]);
    g.set_spi(40, false);
    deactivate(&mut l0, 40);
    g.sync(0, &l0);
    g.set_spi(40, true);
    assert_eq!(g.fill(0, &mut l0).used, 0);
    assert!(intids(&l1).is_empty());
    g.fill(1, &mut l1);
    assert_eq!(intids(&l1), [(40, LrState::Pending)]);
}

#[test]
fn single_list_register_uses_the_eoi_bit_to_refill() {
    let mut g = booted(1);
    spi(&mut g, 40, 0x10, true, 0);
    spi(&mut g, 41, 0x20, true, 0);
    g.pulse_spi(40);
    g.pulse_spi(41);
    let mut lrs = [0u64; 1];
    let f = g.fill(0, &mut lrs);
    assert!(f.more_pending);
    assert_eq!(f.hcr(), hcr::EN, "UIE would fire at once with one LR");
    assert!(lr_of(lrs[0]).eoi);
    // Without more pending, an edge LR has no EOI bit.
    g.sync(0, &lrs);
    g.dist_write(ICPENDR + 4, 4, 1 << 9);
    let f = g.fill(0, &mut lrs);
    assert!(!f.more_pending && !lr_of(lrs[0]).eoi);
    // No list registers at all: everything waits.
    let f = g.fill(0, &mut []);
    assert_eq!((f.used, f.more_pending), (0, true));
}

#[test]
fn active_overflow_and_eoicount() {
    let mut g = booted(1);
    // Six interrupts the guest took, nested: all active.
    for i in 0..6u32 {
        spi(&mut g, 40 + i, 0x80 - 8 * i as u8, true, 0);
    }
    g.dist_write(ISACTIVER + 4, 4, 0x3f << 8);
    g.pulse_spi(60);
    spi(&mut g, 60, 0, true, 0);
    let mut lrs = [0u64; 4];
    let f = g.fill(0, &mut lrs);
    assert!(f.active_overflow && f.more_pending);
    assert_ne!(f.hcr() & hcr::LRENPIE, 0);
    // The four best actives are in the list registers.
    assert_eq!(
        intids(&lrs).iter().map(|x| x.0).collect::<Vec<_>>(),
        [45, 44, 43, 42]
    );
    // EOImode 0: the guest EOIs 45..42 from the LRs, then 41 and 40 find no
    // LR and count in EOIcount.
    for i in [45, 44, 43, 42] {
        deactivate(&mut lrs, i);
    }
    g.sync_full(0, &lrs, 1, |_| {});
    assert!(g.irq_state(0, 40).unwrap().active);
    assert!(!g.irq_state(0, 41).unwrap().active, "the better one first");
    assert!(!g.irq_state(0, 42).unwrap().active);
    let f = g.fill(0, &mut lrs);
    assert!(!f.active_overflow);
    assert_eq!(
        intids(&lrs),
        [(40, LrState::Active), (60, LrState::Pending)]
    );
    // An EOIcount with nothing left to deactivate changes nothing.
    g.sync_full(0, &lrs, 31, |_| {});
    assert!(g.irq_state(0, 40).unwrap().active, "40 was in an LR");
}

#[test]
fn irq_pending_is_the_wfi_wake_condition() {
    let mut g = booted(1);
    spi(&mut g, 40, 0x80, true, 0);
    let vmcr = |pmr: u64, eng: u64| Vmcr(pmr << 24 | eng);
    assert!(!g.irq_pending(0, vmcr(0xff, 3)));
    g.pulse_spi(40);
    assert!(g.irq_pending(0, vmcr(0xff, 3)));
    assert!(g.irq_pending(0, vmcr(0x88, 2)));
    assert!(!g.irq_pending(0, vmcr(0x80, 3)), "PMR masks equal priority");
    assert!(
        !g.irq_pending(0, vmcr(0xff, 1)),
        "Group 1 disabled in ICV_IGRPEN1"
    );
    // Something of better priority active: no preemption, no wake-up.
    spi(&mut g, 41, 0x40, true, 0);
    g.dist_write(ISACTIVER + 4, 4, 1 << 9);
    assert!(!g.irq_pending(0, vmcr(0xff, 3)));
    g.dist_write(ICACTIVER + 4, 4, 1 << 9);
    assert!(g.irq_pending(0, vmcr(0xff, 3)));
}

#[test]
fn the_exit_path_does_not_allocate() {
    let mut g = booted(4);
    for i in 0..40 {
        spi(&mut g, 32 + i, (i * 8) as u8, i % 2 == 0, (i % 4) as usize);
    }
    for v in 0..4 {
        private(&mut g, v, 27, 0x20);
        private(&mut g, v, 1, 0x10);
    }
    let mut timers = VcpuTimers::new(62_500_000, 0);
    let info = allocation_counter::measure(|| {
        let mut out = [0u32; 8];
        for round in 0..20u64 {
            for i in 0..40 {
                g.set_spi(32 + i, (round + u64::from(i)) % 3 != 0);
            }
            g.send_sgi(0, SgiRegister::Sgi1r, 1 << 40 | 1 << 24);
            g.dist_write(ISENABLER + 4, 4, u64::MAX);
            g.dist_read(IROUTER + 8 * 40, 8);
            g.redist_write(SGI + IPRIORITYR, 4, round);
            timers.sysreg_write(super::timer::CNTP_TVAL_EL0, round, 1000 * round);
            for v in 0..4 {
                for (intid, level) in timers.lines(1000 * round) {
                    g.set_ppi(v, intid, level);
                }
                let mut lrs = [0u64; 4];
                let f = g.fill(v, &mut lrs);
                let _ = f.hcr();
                if let Some(i) = best_pending(&lrs) {
                    ack(&mut lrs, i);
                }
                g.sync_full(v, &lrs, 1, |_| {});
                g.pending_for(v, &mut out);
                g.irq_pending(v, Vmcr(0xff << 24 | 3));
                let _ = timers.next_deadline(round);
            }
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

// ---- properties ----

mod props {
    use super::*;
    use crate::proptests::config;
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    const NR: usize = 3;

    #[derive(Clone, Debug)]
    enum Op {
        DistWrite(u64, u8, u64),
        DistRead(u64, u8),
        RedistWrite(u64, u8, u64),
        SetSpi(u32, bool),
        Pulse(u32),
        SetPpi(usize, u32, bool),
        Sgi(usize, u8, u64),
        Fill(usize, usize),
        /// Sync with legal guest transitions (one per LR: 0 none, 1 ack,
        /// 2 deactivate, 3 ack then deactivate) or, with `garbage`, random
        /// values.
        Sync(usize, [u8; 4], Option<[u64; 4]>, u32),
        WakerWrite(usize, u64),
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0u64..0x1000,
            2 => 0x6000u64..0x6400,
            1 => 0xffd0u64..0x10000,
            1 => any::<u64>(),
        ]
    }

    fn size() -> impl Strategy<Value = u8> {
        prop_oneof![4 => Just(4u8), 1 => Just(1u8), 1 => Just(8u8), 1 => any::<u8>()]
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            2 => any::<u64>(),
            2 => (0u64..32).prop_map(|b| 1 << b),
            1 => Just(u64::MAX),
            1 => (0u64..4).prop_map(|v| v | (IROUTER_IRM * (v & 1))),
        ]
    }

    fn intid() -> impl Strategy<Value = u32> {
        prop_oneof![8 => 32u32..96, 2 => 0u32..1024, 1 => any::<u32>()]
    }

    /// ICC_SGI1R_EL1 values: mostly naming the vCPUs there are.
    fn sgi_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..16, 0u64..16, prop::bool::weighted(0.2)).prop_map(|(i, t, irm)| i << 24 | t | u64::from(irm) << 40),
            1 => any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (offset(), size(), value()).prop_map(|(o, s, v)| Op::DistWrite(o, s, v)),
            1 => (offset(), size()).prop_map(|(o, s)| Op::DistRead(o, s)),
            2 => ((0u64..(NR as u64 + 1) * GICR_STRIDE), size(), value()).prop_map(|(o, s, v)| {
                // Mostly the SGI frame's registers.
                let o = if o % 3 == 0 { o } else { o / GICR_STRIDE * GICR_STRIDE + SGI + (o % 0x480) };
                Op::RedistWrite(o, s, v)
            }),
            6 => (intid(), prop::bool::weighted(0.7)).prop_map(|(i, l)| Op::SetSpi(i, l)),
            2 => intid().prop_map(Op::Pulse),
            3 => (0usize..NR + 1, 14u32..33, prop::bool::weighted(0.7)).prop_map(|(v, i, l)| Op::SetPpi(v, i, l)),
            3 => (0usize..NR + 1, 0u8..3, sgi_value()).prop_map(|(f, r, v)| Op::Sgi(f, r, v)),
            6 => (0usize..NR + 1, 0usize..6).prop_map(|(v, n)| Op::Fill(v, n)),
            6 => (0usize..NR + 4, any::<[u8; 4]>(), prop::option::weighted(0.15, any::<[u64; 4]>()), prop::sample::select(vec![0u32, 0, 0, 1, 2]))
                .prop_map(|(v, t, g, e)| Op::Sync(v, t, g, e)),
            1 => (0usize..NR, any::<u64>()).prop_map(|(v, w)| Op::WakerWrite(v, w)),
        ]
    }

    /// Interrupts as (vCPU or 255 for an SPI, INTID).
    type Keys = BTreeSet<(usize, u32)>;

    /// Every pending interrupt: in the model, or pending in a list register
    /// some fill wrote and no sync has folded yet; and the edge-triggered
    /// ones among them (by the current configuration in the model, by the
    /// configuration at the fill for list registers). Private INTIDs are
    /// keyed by vCPU, SPIs by 255.
    fn pending_sets(g: &Vgic, lrs: &[Vec<u64>], lr_edges: &[BTreeSet<u32>]) -> (Keys, Keys) {
        let mut all = BTreeSet::new();
        let mut edges = BTreeSet::new();
        let mut add = |k: (usize, u32), edge: bool| {
            all.insert(k);
            if edge {
                edges.insert(k);
            }
        };
        for v in 0..NR {
            for i in 0..32 {
                let st = g.irq_state(v, i).unwrap();
                if st.pending {
                    add((v, i), st.edge);
                }
            }
        }
        for i in 32..1020 {
            if let Some(st) = g.irq_state(0, i).filter(|x| x.pending) {
                add((255, i), st.edge);
            }
        }
        for (v, l) in lrs.iter().enumerate() {
            for d in l.iter().map(|&x| ListReg::decode(x)) {
                if d.state.pending() {
                    let k = (if d.intid < 32 { v } else { 255 }, d.intid);
                    add(k, lr_edges[v].contains(&d.intid));
                }
            }
        }
        (all, edges)
    }

    fn guest(lrs: &mut [u64], t: &[u8; 4]) {
        for (l, &t) in lrs.iter_mut().zip(t) {
            let mut d = ListReg::decode(*l);
            let ack = |s: LrState| {
                if s == LrState::Pending {
                    LrState::Active
                } else {
                    s
                }
            };
            let deact = |s: LrState| LrState::new(s.pending(), false);
            d.state = match t % 4 {
                1 => ack(d.state),
                2 => deact(d.state),
                3 => deact(ack(d.state)),
                _ => d.state,
            };
            *l = d.encode();
        }
    }

    /// A configured GIC: groups on, everything enabled, awake; edge/level
    /// and Group 0/1 from `edges`/`groups`, priorities from `prios`.
    #[derive(Clone, Debug)]
    struct Setup {
        edges: u64,
        groups: u64,
        prios: [u8; 16],
    }

    fn setup() -> impl Strategy<Value = Option<Setup>> {
        prop::option::weighted(
            0.8,
            (any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(edges, groups, prios)| {
                Setup {
                    edges,
                    groups: groups | groups >> 1, // mostly Group 1
                    prios,
                }
            }),
        )
    }

    fn run(ops: &[Op], spis: u32, setup: Option<Setup>) -> Result<(), TestCaseError> {
        let mut g = Vgic::new(&mpidrs(NR), spis, 5).unwrap();
        if let Some(s) = setup {
            g.dist_write(CTLR, 4, 3);
            for w in 1..=spis as u64 / 32 {
                g.dist_write(ISENABLER + 4 * w, 4, u64::MAX);
                g.dist_write(IGROUPR + 4 * w, 4, s.groups >> (w * 7));
                g.dist_write(ICFGR + 8 * w, 4, s.edges);
                g.dist_write(ICFGR + 8 * w + 4, 4, s.edges >> 32);
            }
            for i in 32..32 + spis as u64 {
                g.dist_write(IPRIORITYR + i, 1, u64::from(s.prios[(i % 16) as usize]));
                g.dist_write(IROUTER + 8 * i, 8, (i * 7 / 3) % (NR as u64 + 1));
            }
            for v in 0..NR {
                rw(&mut g, v, GICR_WAKER, 0);
                rw(&mut g, v, SGI + ISENABLER, u64::MAX);
                rw(&mut g, v, SGI + IGROUPR, s.groups);
                for i in 0..32 {
                    let p = s.prios[(i + v) % 16];
                    g.redist_write(
                        v as u64 * GICR_STRIDE + SGI + IPRIORITYR + i as u64,
                        1,
                        u64::from(p),
                    );
                }
            }
        }
        // The list registers each vCPU holds (as the hardware would).
        let mut held: Vec<Vec<u64>> = vec![Vec::new(); NR];
        let mut last = 0;
        // The edge-triggered INTIDs among them, as configured at the fill.
        let mut held_edge: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); NR];
        for op in ops {
            match *op {
                Op::DistWrite(o, s, v) => {
                    g.dist_write(o, s, v);
                }
                Op::DistRead(o, s) => {
                    g.dist_read(o, s);
                }
                Op::RedistWrite(o, s, v) => {
                    g.redist_write(o, s, v);
                    g.redist_read(o, s);
                }
                Op::SetSpi(i, l) => {
                    g.set_spi(i, l);
                }
                Op::Pulse(i) => {
                    g.pulse_spi(i);
                }
                Op::SetPpi(v, i, l) => {
                    g.set_ppi(v, i, l);
                }
                Op::Sgi(f, r, v) => {
                    let reg =
                        [SgiRegister::Sgi1r, SgiRegister::Asgi1r, SgiRegister::Sgi0r][r as usize];
                    let k = g.send_sgi(f, reg, v);
                    prop_assert_eq!(k >> NR, 0, "kicks name vCPUs that exist");
                }
                Op::Fill(v, n) => {
                    last = v;
                    let (before, before_edges) = pending_sets(&g, &held, &held_edge);
                    let mut lrs = vec![0u64; n];
                    let f = g.fill(v, &mut lrs);
                    if v < NR {
                        held[v] = lrs.clone();
                        held_edge[v] = lrs
                            .iter()
                            .map(|&x| ListReg::decode(x).intid)
                            .filter(|&i| g.irq_state(v, i).is_some_and(|x| x.edge))
                            .collect();
                    }
                    let (after, _) = pending_sets(&g, &held, &held_edge);
                    // Fill moves pending state into list registers: it adds
                    // none and loses no edge (a level interrupt whose line
                    // dropped while it sat in an LR is withdrawn).
                    prop_assert!(
                        after.is_subset(&before),
                        "fill made {:?} pending",
                        after.difference(&before).collect::<Vec<_>>()
                    );
                    prop_assert!(
                        before_edges.is_subset(&after),
                        "fill lost {:?}",
                        before_edges.difference(&after).collect::<Vec<_>>()
                    );
                    prop_assert!(f.used <= n);
                    // No INTID twice in one vCPU's LRs; no SPI in two vCPUs'.
                    let mut seen = BTreeSet::new();
                    for (w, l) in held.iter().enumerate() {
                        for d in l.iter().map(|&x| ListReg::decode(x)) {
                            if d.state == LrState::Invalid {
                                continue;
                            }
                            prop_assert!(d.hw.is_none());
                            let k = (if d.intid < 32 { w } else { 255 }, d.intid);
                            prop_assert!(seen.insert(k), "{:?} twice: {:x?}", k, held);
                        }
                    }
                }
                Op::Sync(v, t, garbage, eoicount) => {
                    // NR + 1 and above: the vCPU filled last.
                    let v = if v > NR { last } else { v };
                    let (before, _) = pending_sets(&g, &held, &held_edge);
                    let mut lrs = if v < NR { held[v].clone() } else { Vec::new() };
                    match garbage {
                        Some(gb) => lrs = gb.to_vec(),
                        None => guest(&mut lrs, &t),
                    }
                    // An edge the guest left pending must survive (a level
                    // one follows its line, which may have dropped).
                    let kept: BTreeSet<u32> = lrs
                        .iter()
                        .map(|&x| ListReg::decode(x))
                        .filter(|d| garbage.is_none() && d.state.pending())
                        .map(|d| d.intid)
                        .filter(|i| v < NR && held_edge[v].contains(i))
                        .collect();
                    let r = g.sync_full(v, &lrs, eoicount, |_| {});
                    prop_assert_eq!(r.kick >> NR, 0);
                    if v < NR {
                        held[v].clear();
                        held_edge[v].clear();
                    }
                    let (after, _) = pending_sets(&g, &held, &held_edge);
                    prop_assert!(
                        after.is_subset(&before),
                        "sync made {:?} pending",
                        after.difference(&before).collect::<Vec<_>>()
                    );
                    for i in kept {
                        let k = (if i < 32 { v } else { 255 }, i);
                        prop_assert!(after.contains(&k), "{:?} lost", k);
                    }
                }
                Op::WakerWrite(v, w) => {
                    g.redist_write(v as u64 * GICR_STRIDE + GICR_WAKER, 4, w);
                }
            }
            for v in 0..NR + 1 {
                let mut out = [0u32; 5];
                let n = g.pending_for(v, &mut out);
                prop_assert!(n <= 5);
                g.irq_pending(v, Vmcr(u64::MAX));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(300))]

        /// No access sequence panics; fill never puts an interrupt in two
        /// LRs (of one vCPU, or an SPI in two vCPUs'); fill only moves
        /// pending state into LRs; sync never creates pending interrupts
        /// that were not raised, and loses none the guest left pending.
        #[test]
        fn prop_vgic_access_sequences(ops in prop::collection::vec(op(), 1..96), spis in prop::sample::select(vec![0u32, 32, 64, 64, 64, 64]), setup in setup()) {
            run(&ops, spis, setup)?;
        }

        #[test]
        fn prop_timer_tval_cval_agree(cval in any::<u64>(), now in any::<u64>(), off in any::<u64>(), tval in any::<u32>()) {
            let mut t = VcpuTimers::new(62_500_000, off);
            t.sysreg_write(super::super::timer::CNTV_CVAL_EL0, cval, now);
            let count = now.wrapping_sub(off);
            prop_assert_eq!(t.sysreg_read(super::super::timer::CNTV_TVAL_EL0, now), Some(u64::from(cval.wrapping_sub(count) as u32)));
            t.sysreg_write(super::super::timer::CNTV_TVAL_EL0, u64::from(tval), now);
            prop_assert_eq!(t.sysreg_read(super::super::timer::CNTV_TVAL_EL0, now), Some(u64::from(tval)));
            t.sysreg_write(CNTV_CTL_EL0, CTL_ENABLE, now);
            // The deadline, when finite, is when the level rises.
            if let Some(d) = t.virt_deadline(now) {
                prop_assert!(d >= now);
                if d < u64::MAX {
                    prop_assert!(t.virt_level(d));
                    if d > now {
                        prop_assert!(!t.virt_level(d - 1));
                    }
                }
            }
        }
    }
}
