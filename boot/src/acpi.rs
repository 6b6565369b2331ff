//! ACPI: the RSDP, the RSDT/XSDT and the MADT (ACPI 6.5, sections 5.2.5,
//! 5.2.7, 5.2.8 and 5.2.12), parsed from firmware memory read through a
//! [`PhysMemory`].
//!
//! Hand-written rather than the `acpi` crate: we need three tables, no
//! allocation, and explicit bounds on every length the firmware reports
//! (tables are checked for signature, minimum length, an upper length bound
//! and the checksum before any field is used).

use crate::phys::{le_u16, le_u32, le_u64, PhysMemory};

/// Largest table we agree to read (real MADTs/XSDTs are a few KiB).
pub const MAX_TABLE_LEN: u32 = 1 << 20;
/// Size of the common System Description Table header (5.2.6).
pub const SDT_HEADER_LEN: usize = 36;
/// Capacities of [`Madt`].
pub const MAX_CPUS: usize = 256;
pub const MAX_IOAPICS: usize = 16;
pub const MAX_OVERRIDES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// Bytes at the address could not be read.
    Unreadable(u64),
    BadSignature,
    BadChecksum,
    /// A length field below the structure's minimum or above [`MAX_TABLE_LEN`].
    BadLength(u32),
    /// No table with the requested signature in the RSDT/XSDT.
    NotFound([u8; 4]),
}

/// The Root System Description Pointer (5.2.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    pub revision: u8,
    pub rsdt: u32,
    /// XSDT address (revision >= 2 and non-zero).
    pub xsdt: Option<u64>,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// Parses and validates an RSDP: signature, the ACPI 1.0 checksum over the
/// first 20 bytes and, for revision 2+, the length and extended checksum.
pub fn parse_rsdp(mem: &impl PhysMemory, addr: u64) -> Result<Rsdp, AcpiError> {
    let v1 = mem.slice(addr, 20).ok_or(AcpiError::Unreadable(addr))?;
    if &v1[..8] != b"RSD PTR " {
        return Err(AcpiError::BadSignature);
    }
    if !checksum_ok(v1) {
        return Err(AcpiError::BadChecksum);
    }
    let revision = v1[15];
    let rsdt = le_u32(v1, 16).unwrap_or(0);
    if revision < 2 {
        return Ok(Rsdp {
            revision,
            rsdt,
            xsdt: None,
        });
    }
    let head = mem.slice(addr, 36).ok_or(AcpiError::Unreadable(addr))?;
    let len = le_u32(head, 20).unwrap_or(0);
    if !(36..=4096).contains(&len) {
        return Err(AcpiError::BadLength(len));
    }
    let full = mem
        .slice(addr, len as usize)
        .ok_or(AcpiError::Unreadable(addr))?;
    if !checksum_ok(full) {
        return Err(AcpiError::BadChecksum);
    }
    let xsdt = le_u64(full, 24).filter(|&x| x != 0);
    Ok(Rsdp {
        revision,
        rsdt,
        xsdt,
    })
}

/// Legacy BIOS search for the RSDP (5.2.5.1): the first KiB of the EBDA
/// (segment in the BDA word at 0x40E), then 0xE0000-0xFFFFF, on 16-byte
/// boundaries. Returns the first candidate whose checksum is valid.
pub fn find_rsdp_bios(mem: &impl PhysMemory) -> Option<u64> {
    let scan = |start: u64, len: u64| {
        (start..start + len)
            .step_by(16)
            .find(|&a| parse_rsdp(mem, a).is_ok())
    };
    let ebda = mem
        .slice(0x40e, 2)
        .and_then(|b| le_u16(b, 0))
        .map(|seg| u64::from(seg) << 4)
        .filter(|a| (0x8_0000..0xa_0000).contains(a));
    ebda.and_then(|a| scan(a, 1024))
        .or_else(|| scan(0xe_0000, 0x2_0000))
}

/// Reads a whole System Description Table at `addr` after validating its
/// header length bound and its checksum.
pub fn read_table(mem: &impl PhysMemory, addr: u64) -> Result<&[u8], AcpiError> {
    let head = mem
        .slice(addr, SDT_HEADER_LEN)
        .ok_or(AcpiError::Unreadable(addr))?;
    let len = le_u32(head, 4).unwrap_or(0);
    if len < SDT_HEADER_LEN as u32 || len > MAX_TABLE_LEN {
        return Err(AcpiError::BadLength(len));
    }
    let t = mem
        .slice(addr, len as usize)
        .ok_or(AcpiError::Unreadable(addr))?;
    if !checksum_ok(t) {
        return Err(AcpiError::BadChecksum);
    }
    Ok(t)
}

/// Finds the table with `signature` through the XSDT (preferred) or RSDT
/// named by the RSDP at `rsdp_addr`; returns its address and bytes.
/// Entries that fail validation are skipped.
pub fn find_table<'m>(
    mem: &'m impl PhysMemory,
    rsdp_addr: u64,
    signature: &[u8; 4],
) -> Result<(u64, &'m [u8]), AcpiError> {
    let rsdp = parse_rsdp(mem, rsdp_addr)?;
    let (root_addr, entry_size, root_sig) = match rsdp.xsdt {
        Some(x) => (x, 8, b"XSDT"),
        None => (u64::from(rsdp.rsdt), 4, b"RSDT"),
    };
    let root = read_table(mem, root_addr)?;
    if &root[..4] != root_sig {
        return Err(AcpiError::BadSignature);
    }
    for e in root[SDT_HEADER_LEN..].chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            le_u64(e, 0).unwrap_or(0)
        } else {
            u64::from(le_u32(e, 0).unwrap_or(0))
        };
        if let Ok(t) = read_table(mem, addr) {
            if &t[..4] == signature {
                return Ok((addr, t));
            }
        }
    }
    Err(AcpiError::NotFound(*signature))
}

/// A processor from a Local APIC (type 0) or Local x2APIC (type 9) entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MadtCpu {
    pub apic_id: u32,
    pub uid: u32,
    /// Flags bit 0: usable now.
    pub enabled: bool,
    /// Flags bit 1: may be brought online later (only meaningful if not enabled).
    pub online_capable: bool,
    pub x2apic: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MadtIoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

/// Interrupt Source Override (type 2): ISA IRQ `source` is GSI `gsi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MadtOverride {
    pub source: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// The parts of the MADT the hypervisor uses.
#[derive(Clone, Debug)]
pub struct Madt {
    /// Local APIC physical address (with a type 5 override applied).
    pub local_apic_address: u64,
    /// Flags bit 0 (PCAT_COMPAT): dual 8259s present.
    pub pcat_compat: bool,
    cpus: [MadtCpu; MAX_CPUS],
    cpu_count: usize,
    ioapics: [MadtIoApic; MAX_IOAPICS],
    ioapic_count: usize,
    overrides: [MadtOverride; MAX_OVERRIDES],
    override_count: usize,
    /// Entries dropped because a capacity above was reached.
    pub dropped: usize,
    /// Entries with a length below their type's minimum (skipped).
    pub malformed: usize,
}

impl Madt {
    pub fn cpus(&self) -> &[MadtCpu] {
        &self.cpus[..self.cpu_count]
    }

    /// CPUs that are enabled now.
    pub fn enabled_cpus(&self) -> impl Iterator<Item = &MadtCpu> {
        self.cpus().iter().filter(|c| c.enabled)
    }

    pub fn ioapics(&self) -> &[MadtIoApic] {
        &self.ioapics[..self.ioapic_count]
    }

    pub fn overrides(&self) -> &[MadtOverride] {
        &self.overrides[..self.override_count]
    }
}

/// Parses a validated MADT (signature "APIC", from [`read_table`]).
/// Interrupt controller structures with a length of 0 or 1 end the walk
/// (they would not advance); unknown types are skipped by their length.
pub fn parse_madt(t: &[u8]) -> Result<Madt, AcpiError> {
    if t.len() < SDT_HEADER_LEN + 8 {
        return Err(AcpiError::BadLength(t.len() as u32));
    }
    if &t[..4] != b"APIC" {
        return Err(AcpiError::BadSignature);
    }
    let mut m = Madt {
        local_apic_address: u64::from(le_u32(t, 36).unwrap_or(0)),
        pcat_compat: le_u32(t, 40).unwrap_or(0) & 1 != 0,
        cpus: [MadtCpu::default(); MAX_CPUS],
        cpu_count: 0,
        ioapics: [MadtIoApic::default(); MAX_IOAPICS],
        ioapic_count: 0,
        overrides: [MadtOverride::default(); MAX_OVERRIDES],
        override_count: 0,
        dropped: 0,
        malformed: 0,
    };
    let mut off = SDT_HEADER_LEN + 8;
    while off + 2 <= t.len() {
        let (typ, len) = (t[off], t[off + 1] as usize);
        if len < 2 {
            m.malformed += 1;
            break;
        }
        let Some(e) = t.get(off..off + len) else {
            m.malformed += 1;
            break;
        };
        off += len;
        let min = match typ {
            0 => 8,
            1 => 12,
            2 => 10,
            5 => 12,
            9 => 16,
            _ => 2,
        };
        if len < min {
            m.malformed += 1;
            continue;
        }
        let flags = |o| le_u32(e, o).unwrap_or(0);
        match typ {
            0 | 9 => {
                let cpu = if typ == 0 {
                    MadtCpu {
                        apic_id: u32::from(e[3]),
                        uid: u32::from(e[2]),
                        enabled: flags(4) & 1 != 0,
                        online_capable: flags(4) & 2 != 0,
                        x2apic: false,
                    }
                } else {
                    MadtCpu {
                        apic_id: flags(4),
                        uid: flags(12),
                        enabled: flags(8) & 1 != 0,
                        online_capable: flags(8) & 2 != 0,
                        x2apic: true,
                    }
                };
                if m.cpu_count < MAX_CPUS {
                    m.cpus[m.cpu_count] = cpu;
                    m.cpu_count += 1;
                } else {
                    m.dropped += 1;
                }
            }
            1 => {
                if m.ioapic_count < MAX_IOAPICS {
                    m.ioapics[m.ioapic_count] = MadtIoApic {
                        id: e[2],
                        address: flags(4),
                        gsi_base: flags(8),
                    };
                    m.ioapic_count += 1;
                } else {
                    m.dropped += 1;
                }
            }
            2 => {
                if m.override_count < MAX_OVERRIDES {
                    m.overrides[m.override_count] = MadtOverride {
                        source: e[3],
                        gsi: flags(4),
                        flags: le_u16(e, 8).unwrap_or(0),
                    };
                    m.override_count += 1;
                } else {
                    m.dropped += 1;
                }
            }
            5 => m.local_apic_address = le_u64(e, 4).unwrap_or(m.local_apic_address),
            _ => {}
        }
    }
    Ok(m)
}

/// RSDP → XSDT/RSDT → MADT → [`Madt`].
pub fn madt_from_rsdp(mem: &impl PhysMemory, rsdp_addr: u64) -> Result<Madt, AcpiError> {
    let (_, t) = find_table(mem, rsdp_addr, b"APIC")?;
    parse_madt(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::FakeMemory;

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let s = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        bytes[at] = 0u8.wrapping_sub(s);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; SDT_HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let n = t.len() as u32;
        t[4..8].copy_from_slice(&n.to_le_bytes());
        t[8] = 1;
        t[10..16].copy_from_slice(b"BOCHS ");
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp_v2(xsdt: u64, rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = 2;
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    /// QEMU-like MADT: 2 CPUs (one disabled but online-capable), 1 I/O APIC,
    /// 2 overrides, a local APIC NMI, and an x2APIC entry.
    fn madt_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        b.extend_from_slice(&[0, 8, 1, 1, 2, 0, 0, 0]);
        b.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        b.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]);
        b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
        let mut x2 = vec![9, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&x2);
        b
    }

    /// Memory at 0xe0000 with RSDP at 0xf5a40, XSDT/RSDT and MADT + FACP.
    fn machine(v2: bool) -> FakeMemory {
        let mut m = FakeMemory::new(0, 0x10_0000);
        let madt = sdt(b"APIC", &madt_body());
        let facp = sdt(b"FACP", &[0; 40]);
        m.write(0x7000, &facp);
        m.write(0x8000, &madt);
        let xsdt = sdt(b"XSDT", &[0x7000u64, 0x8000].map(u64::to_le_bytes).concat());
        let rsdt = sdt(b"RSDT", &[0x7000u32, 0x8000].map(u32::to_le_bytes).concat());
        m.write(0x6000, &xsdt);
        m.write(0x6800, &rsdt);
        if v2 {
            m.write(0xf5a40, &rsdp_v2(0x6000, 0x6800));
        } else {
            m.write(0xf5a40, &rsdp_v1(0x6800));
        }
        m
    }

    #[test]
    fn finds_rsdp_in_bios_area_and_ebda() {
        let mut m = machine(true);
        assert_eq!(find_rsdp_bios(&m), Some(0xf5a40));
        // An EBDA copy is found first.
        m.write(0x40e, &0x9fc0u16.to_le_bytes());
        m.write(0x9fc00 + 0x20, &rsdp_v1(0x6800));
        assert_eq!(find_rsdp_bios(&m), Some(0x9fc20));
        // A signature with a bad checksum is not a hit.
        let mut m = FakeMemory::new(0, 0x10_0000);
        let mut bad = rsdp_v1(0x6800);
        bad[9] ^= 1;
        m.write(0xe0010, &bad);
        assert_eq!(find_rsdp_bios(&m), None);
        // No memory at all there: no panic.
        assert_eq!(find_rsdp_bios(&FakeMemory::new(0, 0x1000)), None);
    }

    #[test]
    fn parses_madt_via_xsdt_and_rsdt() {
        for v2 in [true, false] {
            let m = machine(v2);
            let madt = madt_from_rsdp(&m, 0xf5a40).unwrap();
            assert_eq!(madt.local_apic_address, 0xfee0_0000);
            assert!(madt.pcat_compat);
            let ids: Vec<_> = madt.cpus().iter().map(|c| (c.apic_id, c.enabled)).collect();
            assert_eq!(ids, vec![(0, true), (1, false), (300, true)]);
            assert!(madt.cpus()[1].online_capable);
            assert!(madt.cpus()[2].x2apic);
            assert_eq!(madt.cpus()[2].uid, 7);
            assert_eq!(madt.enabled_cpus().count(), 2);
            assert_eq!(
                madt.ioapics(),
                &[MadtIoApic {
                    id: 0,
                    address: 0xfec0_0000,
                    gsi_base: 0
                }]
            );
            assert_eq!(madt.overrides().len(), 2);
            assert_eq!(madt.overrides()[1].gsi, 9);
            assert_eq!(madt.overrides()[1].flags, 0x0d);
            assert_eq!((madt.dropped, madt.malformed), (0, 0));
        }
    }

    #[test]
    fn rsdp_validation() {
        let mut m = FakeMemory::new(0, 0x1000);
        assert_eq!(parse_rsdp(&m, 0xff0), Err(AcpiError::Unreadable(0xff0)));
        m.write(0x100, b"RSD PTX ");
        assert_eq!(parse_rsdp(&m, 0x100), Err(AcpiError::BadSignature));
        let mut r = rsdp_v2(0x6000, 0);
        r[30] ^= 0x40; // breaks only the extended checksum
        m.write(0x200, &r);
        assert_eq!(parse_rsdp(&m, 0x200), Err(AcpiError::BadChecksum));
        let mut r = rsdp_v2(0x6000, 0);
        r[20..24].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        m.write(0x300, &r);
        assert_eq!(parse_rsdp(&m, 0x300), Err(AcpiError::BadLength(u32::MAX)));
        // Revision 2 with a zero XSDT falls back to the RSDT.
        m.write(0x400, &rsdp_v2(0, 0x1234));
        assert_eq!(
            parse_rsdp(&m, 0x400),
            Ok(Rsdp {
                revision: 2,
                rsdt: 0x1234,
                xsdt: None
            })
        );
    }

    #[test]
    fn table_validation_and_hostile_lengths() {
        let mut m = machine(true);
        // Corrupt MADT checksum: skipped, so not found.
        m.bytes[0x8000 + 20] ^= 1;
        assert_eq!(
            madt_from_rsdp(&m, 0xf5a40).unwrap_err(),
            AcpiError::NotFound(*b"APIC")
        );
        // A length field larger than memory / than the bound.
        let mut m = machine(true);
        m.write_u32(0x8004, 0x7fff_ffff);
        assert_eq!(
            read_table(&m, 0x8000),
            Err(AcpiError::BadLength(0x7fff_ffff))
        );
        m.write_u32(0x8004, 0x10_0000);
        assert_eq!(read_table(&m, 0x8000), Err(AcpiError::Unreadable(0x8000)));
        m.write_u32(0x8004, 4);
        assert_eq!(read_table(&m, 0x8000), Err(AcpiError::BadLength(4)));
        // XSDT entry pointing at nonsense / past memory: skipped.
        let mut m = machine(true);
        let xsdt = sdt(
            b"XSDT",
            &[u64::MAX - 3, 0x8000].map(u64::to_le_bytes).concat(),
        );
        m.write(0x6000, &xsdt);
        assert!(madt_from_rsdp(&m, 0xf5a40).is_ok());
        // Root table with the wrong signature.
        let mut m = machine(true);
        let fake = sdt(b"RSDT", &[0u8; 8]);
        m.write(0x6000, &fake);
        assert_eq!(
            madt_from_rsdp(&m, 0xf5a40).unwrap_err(),
            AcpiError::BadSignature
        );
    }

    #[test]
    fn hostile_madt_entries() {
        // Entry length 0: stops the walk (no infinite loop).
        let mut body = madt_body()[..8].to_vec();
        body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        body.extend_from_slice(&[0, 0, 0, 5, 1, 0, 0, 0]);
        body.extend_from_slice(&[0, 8, 0, 6, 1, 0, 0, 0]);
        let madt = parse_madt(&sdt(b"APIC", &body)).unwrap();
        assert_eq!(madt.cpus().len(), 1);
        assert_eq!(madt.malformed, 1);
        // Too-short typed entry skipped; entry running past the end stops.
        let mut body = madt_body()[..8].to_vec();
        body.extend_from_slice(&[1, 4, 0, 0]);
        body.extend_from_slice(&[0, 8, 0, 3, 1, 0, 0, 0]);
        body.extend_from_slice(&[9, 40, 0, 0]);
        let madt = parse_madt(&sdt(b"APIC", &body)).unwrap();
        assert_eq!(madt.ioapics().len(), 0);
        assert_eq!(madt.cpus()[0].apic_id, 3);
        assert_eq!(madt.malformed, 2);
        // More CPUs than the capacity.
        let mut body = madt_body()[..8].to_vec();
        for i in 0..(MAX_CPUS + 5) {
            body.extend_from_slice(&[0, 8, 0, i as u8, 1, 0, 0, 0]);
        }
        let madt = parse_madt(&sdt(b"APIC", &body)).unwrap();
        assert_eq!(madt.cpus().len(), MAX_CPUS);
        assert_eq!(madt.dropped, 5);
        // Wrong signature / too short.
        assert_eq!(
            parse_madt(&sdt(b"FACP", &[0; 8])).unwrap_err(),
            AcpiError::BadSignature
        );
        assert!(matches!(
            parse_madt(&sdt(b"APIC", &[0; 4])),
            Err(AcpiError::BadLength(_))
        ));
        // Local APIC address override (type 5).
        let mut body = madt_body()[..8].to_vec();
        body.extend_from_slice(&[5, 12, 0, 0]);
        body.extend_from_slice(&0x1_fee0_0000u64.to_le_bytes());
        let madt = parse_madt(&sdt(b"APIC", &body)).unwrap();
        assert_eq!(madt.local_apic_address, 0x1_fee0_0000);
    }
}
