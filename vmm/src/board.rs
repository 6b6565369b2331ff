//! One board description per VM: its RAM and each device's address range
//! and interrupt line. It drives the bus registration in [`crate::vm::Vm`],
//! the generated device tree (arm64) and, later, the ACPI tables (x86):
//! device addresses live here and nowhere else.
//!
//! The layouts follow what guests already expect: the PC's legacy I/O
//! ports and local/I/O APIC addresses on x86, QEMU's `virt` machine on
//! arm64 (PLATFORM.md arm64.2).

use alloc::vec::Vec;

use crate::backend::GuestArch;

/// Which address space a device sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// x86 I/O ports.
    Port,
    /// Guest-physical MMIO.
    Mmio,
}

/// An interrupt line as the guest's interrupt controller numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irq {
    /// x86: an ISA IRQ (8259 line, and the I/O APIC pin of the same number
    /// unless an interrupt source override says otherwise).
    Isa(u8),
    /// x86: a global system interrupt above the ISA IRQs (an I/O APIC pin,
    /// level-triggered).
    Gsi(u32),
    /// arm64: a shared peripheral interrupt, by INTID (32..1019).
    Spi(u32),
    /// arm64: a private peripheral interrupt of every vCPU, by INTID (16..31).
    Ppi(u32),
}

/// What a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// 16550 UART (x86 COM1).
    Uart16550,
    /// QEMU's `isa-debug-exit`.
    DebugExit,
    /// QEMU's `fw_cfg` (x86 port interface).
    FwCfg,
    /// The MMIO test device of the scenarios.
    TestDev,
    /// The x86 I/O APIC (its MMIO window; the local APICs are per vCPU
    /// and not on the bus).
    IoApic,
    /// The master and slave 8259 (command and data ports) and their
    /// edge/level control registers.
    PicMaster,
    PicSlave,
    Elcr,
    /// The 8254 (channels 0-2 and the control port) and port 0x61.
    Pit,
    Port61,
    /// The CMOS RTC (index and data ports).
    Rtc,
    /// PL011 UART (arm64).
    Pl011,
    /// GICv3 distributor (arm64).
    GicDistributor,
    /// GICv3 redistributors, one 128 KiB RD + SGI frame pair per vCPU.
    GicRedistributors,
    /// The architected timer's PPIs (no address range).
    ArchTimer,
    /// A virtio-mmio transport (version 2) with a device of this type
    /// (VIRTIO 1.2 §5: 2 block, 4 entropy, ...), in one of the board's
    /// [`VIRTIO_SLOTS`] slots.
    VirtioMmio(u32),
}

/// One device of the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardDevice {
    pub kind: DeviceKind,
    pub space: Space,
    pub base: u64,
    /// Bytes (or ports) it claims; 0 for a device without registers.
    pub size: u64,
    pub irq: Option<Irq>,
}

/// The architected timer's PPIs as the DTB lists them (Arm BSA; QEMU `virt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerPpis {
    pub secure_phys: u32,
    pub phys: u32,
    pub virt: u32,
    pub hyp: u32,
}

/// QEMU `virt`'s timer INTIDs: 29, 30 (CNTP), 27 (CNTV), 26 (CNTHP).
pub const ARM64_TIMER_PPIS: TimerPpis = TimerPpis {
    secure_phys: 29,
    phys: 30,
    virt: 27,
    hyp: 26,
};

/// The arm64 test device's interrupt line (a level SPI).
pub const ARM64_TESTDEV_INTID: u32 = 48;

/// Bytes of one vCPU's redistributor (RD frame + SGI frame, GICv3).
pub const GICR_STRIDE: u64 = 0x2_0000;

/// Bytes of one virtio-mmio slot: the registers (0x100) and up to 0x100
/// bytes of configuration space, as on QEMU's `virt` machine.
pub const VIRTIO_SLOT_SIZE: u64 = 0x200;
/// Virtio-mmio slots of a board.
pub const VIRTIO_SLOTS: u32 = 7;
/// arm64: slot `n` at `ARM64_VIRTIO_BASE + n * VIRTIO_SLOT_SIZE` with SPI
/// INTID `ARM64_VIRTIO_INTID + n`: QEMU `virt`'s virtio-mmio transports
/// 16-22 (its slot `k` sits at 0x0a00_0000 + k * 0x200 with INTID 48 + k;
/// slots 0-15 hold our test device and its interrupt registers).
pub const ARM64_VIRTIO_BASE: u64 = 0x0a00_2000;
pub const ARM64_VIRTIO_INTID: u32 = 64;
/// x86: slot `n` at `X86_VIRTIO_BASE + n * VIRTIO_SLOT_SIZE` on I/O APIC
/// pin `X86_VIRTIO_GSI + n` (level, active high), GSIs 17-23, above the
/// test device's 16. Linux finds them with
/// `virtio_mmio.device=512@0xfeb00000:17` (and, later, through ACPI).
pub const X86_VIRTIO_BASE: u64 = 0xfeb0_0000;
pub const X86_VIRTIO_GSI: u32 = 17;

/// A VM's board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    pub arch: GuestArch,
    /// RAM regions, (guest-physical base, bytes), in address order.
    pub ram: Vec<(u64, u64)>,
    pub devices: Vec<BoardDevice>,
    pub vcpus: u32,
}

const fn dev(
    kind: DeviceKind,
    space: Space,
    base: u64,
    size: u64,
    irq: Option<Irq>,
) -> BoardDevice {
    BoardDevice {
        kind,
        space,
        base,
        size,
        irq,
    }
}

impl Board {
    /// The standard board of `arch` with `mem_size` bytes of RAM at
    /// [`crate::vm::ram_base`] and `vcpus` vCPUs.
    pub fn standard(arch: GuestArch, mem_size: u64, vcpus: u32) -> Board {
        let ram = alloc::vec![(crate::vm::ram_base(arch), mem_size)];
        let devices = match arch {
            GuestArch::X86_64 => alloc::vec![
                dev(
                    DeviceKind::Uart16550,
                    Space::Port,
                    0x3f8,
                    8,
                    Some(Irq::Isa(4))
                ),
                dev(DeviceKind::DebugExit, Space::Port, 0xf4, 4, None),
                dev(DeviceKind::PicMaster, Space::Port, 0x20, 2, None),
                dev(DeviceKind::PicSlave, Space::Port, 0xa0, 2, None),
                dev(DeviceKind::Elcr, Space::Port, 0x4d0, 2, None),
                dev(DeviceKind::Pit, Space::Port, 0x40, 4, Some(Irq::Isa(0))),
                dev(DeviceKind::Port61, Space::Port, 0x61, 1, None),
                dev(DeviceKind::Rtc, Space::Port, 0x70, 2, Some(Irq::Isa(8))),
                dev(DeviceKind::FwCfg, Space::Port, 0x510, 2, None),
                dev(
                    DeviceKind::TestDev,
                    Space::Mmio,
                    crate::devices::testdev::TESTDEV_BASE,
                    crate::devices::testdev::TESTDEV_SIZE_WITH_IRQ,
                    Some(Irq::Gsi(crate::x86::wiring::TESTDEV_GSI)),
                ),
                dev(
                    DeviceKind::IoApic,
                    Space::Mmio,
                    crate::x86::wiring::IOAPIC_BASE,
                    crate::x86::wiring::IOAPIC_SIZE,
                    None
                ),
            ],
            GuestArch::Aarch64 => alloc::vec![
                dev(
                    DeviceKind::GicDistributor,
                    Space::Mmio,
                    0x0800_0000,
                    0x1_0000,
                    None
                ),
                // QEMU virt's redistributor region; vCPU i at + i * GICR_STRIDE.
                dev(
                    DeviceKind::GicRedistributors,
                    Space::Mmio,
                    0x080a_0000,
                    0xf6_0000,
                    None
                ),
                dev(
                    DeviceKind::Pl011,
                    Space::Mmio,
                    0x0900_0000,
                    0x1000,
                    Some(Irq::Spi(33))
                ),
                // The first virtio-mmio slots of QEMU virt, free in ours; the
                // RAM-like page, then the interrupt registers of its level
                // line, SPI 48 (virtio-mmio slot 0's INTID on QEMU virt).
                dev(
                    DeviceKind::TestDev,
                    Space::Mmio,
                    0x0a00_0000,
                    crate::devices::testdev::TESTDEV_SIZE_WITH_IRQ,
                    Some(Irq::Spi(ARM64_TESTDEV_INTID)),
                ),
                dev(
                    DeviceKind::ArchTimer,
                    Space::Mmio,
                    0,
                    0,
                    Some(Irq::Ppi(ARM64_TIMER_PPIS.virt))
                ),
            ],
        };
        Board {
            arch,
            ram,
            devices,
            vcpus,
        }
    }

    /// Adds a virtio-mmio transport for a device of type `device_id` in
    /// the next free slot; `None` when all [`VIRTIO_SLOTS`] are taken.
    pub fn add_virtio(&mut self, device_id: u32) -> Option<BoardDevice> {
        let n = self
            .devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::VirtioMmio(_)))
            .count() as u32;
        if n >= VIRTIO_SLOTS {
            return None;
        }
        let (base, irq) = match self.arch {
            GuestArch::X86_64 => (X86_VIRTIO_BASE, Irq::Gsi(X86_VIRTIO_GSI + n)),
            GuestArch::Aarch64 => (ARM64_VIRTIO_BASE, Irq::Spi(ARM64_VIRTIO_INTID + n)),
        };
        let d = dev(
            DeviceKind::VirtioMmio(device_id),
            Space::Mmio,
            base + u64::from(n) * VIRTIO_SLOT_SIZE,
            VIRTIO_SLOT_SIZE,
            Some(irq),
        );
        self.devices.push(d);
        Some(d)
    }

    /// The virtio-mmio transports, in slot order.
    pub fn virtio(&self) -> impl Iterator<Item = &BoardDevice> {
        self.devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::VirtioMmio(_)))
    }

    /// Linux's `virtio_mmio.device=` words for the virtio transports
    /// (x86, where no firmware table lists them yet), space-separated.
    pub fn virtio_cmdline(&self) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        for d in self.virtio() {
            if let Some(Irq::Gsi(gsi)) = d.irq {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str(&alloc::format!(
                    "virtio_mmio.device={}@{:#x}:{}",
                    d.size,
                    d.base,
                    gsi
                ));
            }
        }
        s
    }

    /// The first device of `kind`.
    pub fn find(&self, kind: DeviceKind) -> Option<&BoardDevice> {
        self.devices.iter().find(|d| d.kind == kind)
    }

    /// (base, size) of the first device of `kind`, if the board has one.
    pub fn range(&self, kind: DeviceKind) -> Option<(u64, u64)> {
        self.find(kind).map(|d| (d.base, d.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: &BoardDevice, b: &BoardDevice) -> bool {
        a.space == b.space
            && a.size > 0
            && b.size > 0
            && a.base < b.base + b.size
            && b.base < a.base + a.size
    }

    #[test]
    fn virtio_slots_fill_in_order_and_stop_at_the_last() {
        for arch in [GuestArch::X86_64, GuestArch::Aarch64] {
            let mut b = Board::standard(arch, 64 << 20, 1);
            let slots: Vec<BoardDevice> = (0..VIRTIO_SLOTS)
                .map(|i| b.add_virtio(if i % 2 == 0 { 2 } else { 4 }).unwrap())
                .collect();
            assert_eq!(b.add_virtio(4), None, "{arch:?}: only {VIRTIO_SLOTS} slots");
            assert_eq!(b.virtio().count(), VIRTIO_SLOTS as usize);
            for (i, d) in slots.iter().enumerate() {
                assert_eq!(d.base, slots[0].base + i as u64 * VIRTIO_SLOT_SIZE);
                let want = match arch {
                    GuestArch::X86_64 => Irq::Gsi(X86_VIRTIO_GSI + i as u32),
                    GuestArch::Aarch64 => Irq::Spi(ARM64_VIRTIO_INTID + i as u32),
                };
                assert_eq!(d.irq, Some(want));
            }
            // Every line is distinct from the other devices' lines.
            for d in &b.devices {
                for e in &b.devices {
                    if !core::ptr::eq(d, e) && d.irq.is_some() && d.kind != DeviceKind::ArchTimer {
                        assert_ne!(d.irq, e.irq, "{d:?} and {e:?} share a line");
                    }
                }
            }
            check_layout(&b);
        }
        // x86 GSIs stay on the I/O APIC's 24 pins.
        assert!(X86_VIRTIO_GSI + VIRTIO_SLOTS <= crate::x86::ioapic::IOAPIC_PINS as u32);
        // arm64: QEMU virt's slot numbering (INTID 48 + k at 0x0a00_0000 + k * 0x200).
        let k = (ARM64_VIRTIO_BASE - 0x0a00_0000) / VIRTIO_SLOT_SIZE;
        assert_eq!(u64::from(ARM64_VIRTIO_INTID), 48 + k);
        let mut x = Board::standard(GuestArch::X86_64, 16 << 20, 1);
        assert_eq!(x.virtio_cmdline(), "");
        x.add_virtio(4);
        x.add_virtio(2);
        assert_eq!(
            x.virtio_cmdline(),
            "virtio_mmio.device=512@0xfeb00000:17 virtio_mmio.device=512@0xfeb00200:18"
        );
    }

    fn check_layout(b: &Board) {
        let (ram, len) = b.ram[0];
        for (i, d) in b.devices.iter().enumerate() {
            for e in &b.devices[i + 1..] {
                assert!(!overlap(d, e), "{d:?} overlaps {e:?}");
            }
            if d.space == Space::Mmio && d.size > 0 {
                assert!(
                    d.base + d.size <= ram || d.base >= ram + len,
                    "{d:?} in RAM"
                );
            }
        }
    }

    #[test]
    fn standard_boards_are_consistent() {
        for arch in [GuestArch::X86_64, GuestArch::Aarch64] {
            let b = Board::standard(arch, 64 << 20, 4);
            let (ram, len) = b.ram[0];
            for (i, d) in b.devices.iter().enumerate() {
                for e in &b.devices[i + 1..] {
                    assert!(!overlap(d, e), "{d:?} overlaps {e:?}");
                }
                if d.space == Space::Mmio && d.size > 0 {
                    assert!(
                        d.base + d.size <= ram || d.base >= ram + len,
                        "{d:?} in RAM"
                    );
                }
            }
        }
        let arm = Board::standard(GuestArch::Aarch64, 128 << 20, 2);
        assert_eq!(arm.range(DeviceKind::Pl011), Some((0x0900_0000, 0x1000)));
        assert_eq!(arm.find(DeviceKind::Pl011).unwrap().irq, Some(Irq::Spi(33)));
        // One redistributor per vCPU fits the region for every vCPU count.
        let (_, rsize) = arm.range(DeviceKind::GicRedistributors).unwrap();
        assert!(rsize / GICR_STRIDE >= u64::from(crate::vm::MAX_VCPUS));
        let x86 = Board::standard(GuestArch::X86_64, 16 << 20, 1);
        assert_eq!(x86.range(DeviceKind::Uart16550), Some((0x3f8, 8)));
        assert_eq!(x86.find(DeviceKind::Pl011), None);
    }
}
