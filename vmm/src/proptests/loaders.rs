//! The kernel loaders (`loader`: ELF, position-independent ELF, Multiboot
//! 1, arm64 Image, arm64 raw binary) on arbitrary, generated-valid and
//! mutated-valid images: never a host access outside the VM's RAM, a boot
//! state that points into RAM, and valid images land where their headers
//! (or, for a raw binary, QEMU's convention) say.

use super::{config, verdict};
use crate::backend::{GuestArch, Vcpu as _};
use crate::checks::{check_load, LOAD_RAM};
use crate::loader::arm64_image::{self, build::image, ImageHeader, LEGACY_TEXT_OFFSET};
use crate::loader::elf::build::{elf, pie, Rela};
use crate::loader::elf::{EM_386, EM_AARCH64, EM_X86_64, R_AARCH64_RELATIVE};
use crate::loader::raw::{self, Arm64Kind, ARM64_LOAD_OFFSET};
use crate::loader::KernelFormat;
use crate::regs::Reg;
use crate::vm::ram_base;
use proptest::prelude::*;

fn arch() -> impl Strategy<Value = GuestArch> {
    prop_oneof![Just(GuestArch::X86_64), Just(GuestArch::Aarch64)]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// A Multiboot 1 header with the given flags and a.out fields, checksummed.
fn mb_header(flags: u32, aout: [u32; 5]) -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    let mut h = Vec::new();
    for w in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)]
        .into_iter()
        .chain(aout)
    {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h
}

/// Arbitrary bytes, often behind the start of one of the formats.
fn hostile_image() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(600),
        bytes(600).prop_map(|mut b| {
            b.splice(0..b.len().min(4), *b"\x7fELF");
            b
        }),
        (any::<u32>(), any::<[u32; 5]>(), bytes(300), 0usize..8).prop_map(|(f, a, t, pad)| {
            let mut b = vec![0u8; 4 * pad];
            b.extend(mb_header(f, a));
            b.extend(t);
            b
        }),
        (any::<[u64; 3]>(), bytes(200)).prop_map(|(h, code)| image(h[0], h[1], h[2], &code)),
        hostile_pie(),
    ]
}

/// A position-independent ELF with random entry, segment, relocations
/// (mostly `R_AARCH64_RELATIVE`, at any offset) and dynamic tags.
fn hostile_pie() -> impl Strategy<Value = Vec<u8>> {
    let rela = (
        prop_oneof![0x1000u64..0x1100, any::<u64>()],
        prop_oneof![Just(u64::from(R_AARCH64_RELATIVE)), any::<u64>()],
        any::<i64>(),
    );
    (
        prop_oneof![0x1000u64..0x1100, any::<u64>()],
        bytes(64),
        0u64..0x200,
        prop_oneof![Just(0x2000u64), any::<u64>()],
        prop::collection::vec(rela, 0..4),
        prop::collection::vec((0u64..40, any::<u64>()), 0..3),
    )
        .prop_map(|(entry, code, bss, dyn_at, relas, extra)| {
            let memsz = code.len() as u64 + bss;
            pie(
                EM_AARCH64,
                entry,
                &[(0x1000, &code, memsz)],
                dyn_at,
                &relas,
                &extra,
            )
        })
}

/// Applies byte writes and 8-byte field overwrites at chosen offsets.
fn mutate(mut img: Vec<u8>, edits: &[(usize, u64, bool)]) -> Vec<u8> {
    for &(at, v, wide) in edits {
        if img.is_empty() {
            break;
        }
        let at = at % img.len();
        let n = if wide { 8.min(img.len() - at) } else { 1 };
        img[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
    img
}

fn edits() -> impl Strategy<Value = Vec<(usize, u64, bool)>> {
    // Offsets mostly in the headers (ELF header + program headers, the
    // Multiboot header, the Image header).
    prop::collection::vec(
        (
            prop_oneof![0usize..256, any::<usize>()],
            any::<u64>(),
            any::<bool>(),
        ),
        1..6,
    )
}

/// Up to three disjoint ELF segments in the first half of RAM: (paddr
/// offset from RAM base, virtual minus physical, file bytes, BSS bytes).
type SegSpec = (u64, u64, Vec<u8>, u64);

fn elf_segments() -> impl Strategy<Value = (Vec<SegSpec>, u64)> {
    let seg = (
        0u64..0x8_0000,
        prop_oneof![Just(0u64), Just(0xffff_ffff_8000_0000), any::<u64>()],
        bytes(64),
        0u64..0x4000,
    );
    (prop::collection::vec(seg, 1..=3), any::<u64>())
}

/// The ELF for `arch` from generated segments; segment i lives in its
/// own 640 KiB slot from RAM base + 4 KiB. Returns the image, the
/// segments (paddr, file bytes) and the expected physical entry.
/// What a generated ELF should load: (paddr, file bytes) per segment.
type Placed = Vec<(u64, Vec<u8>)>;

fn valid_elf(arch: GuestArch, segs: &[SegSpec], entry_pick: u64) -> (Vec<u8>, Placed, u64) {
    let base = ram_base(arch) + 0x1000;
    let mut list = Vec::new();
    let mut placed = Vec::new();
    for (i, (off, vdelta, file, bss)) in segs.iter().enumerate() {
        let paddr = base + i as u64 * 0xa_0000 + off;
        let memsz = (file.len() as u64 + bss).max(1);
        // The virtual range must not wrap.
        let vaddr = paddr.wrapping_add(*vdelta);
        let vaddr = if vaddr.checked_add(memsz).is_none() {
            paddr
        } else {
            vaddr
        };
        list.push((paddr, vaddr, file.clone(), memsz));
        placed.push((paddr, file.clone()));
    }
    let (p0, v0, _, m0) = &list[0];
    let entry_off = entry_pick % m0;
    let segs: Vec<(u64, u64, &[u8], u64)> = list
        .iter()
        .map(|(p, v, f, m)| (*p, *v, &f[..], *m))
        .collect();
    let machine = match arch {
        GuestArch::X86_64 => EM_X86_64,
        GuestArch::Aarch64 => EM_AARCH64,
    };
    (
        elf(true, machine, v0 + entry_off, &segs),
        placed,
        p0 + entry_off,
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes, and bytes behind an ELF magic, a checksummed
    /// Multiboot header with random fields or an arm64 Image header with
    /// random fields, for either architecture: loaded or refused, never a
    /// host access outside the VM's RAM, and a boot state inside RAM.
    #[test]
    fn prop_loaders_never_escape_guest_ram(
        arch in arch(),
        img in hostile_image(),
        cmdline in "[ -~]{0,40}",
    ) {
        verdict(check_load(arch, &img, &cmdline, 1).map(|_| ()))?;
    }

    /// Generated ELF64 kernels with 1..3 segments (any virtual offset, BSS)
    /// load at their physical addresses with the entry translated through
    /// its segment; with a few bytes or header fields overwritten they are
    /// loaded or refused, never written outside RAM.
    #[test]
    fn prop_elf_valid_loads_and_mutated_stays_in_ram(
        arch in arch(),
        (segs, entry_pick) in elf_segments(),
        edits in edits(),
    ) {
        let (img, placed, entry) = valid_elf(arch, &segs, entry_pick);
        let loaded = check_load(arch, &img, "elf", 2).map_err(TestCaseError::fail)?;
        let (st, format, mem) = loaded.ok_or_else(|| TestCaseError::fail("valid ELF refused"))?;
        prop_assert_eq!(format, KernelFormat::Elf64);
        prop_assert_eq!(st.pc, entry);
        for (paddr, file) in placed {
            let mut back = vec![0u8; file.len()];
            mem.read(paddr, &mut back).unwrap();
            prop_assert_eq!(back, file);
        }
        verdict(check_load(arch, &mutate(img, &edits), "elf", 2).map(|_| ()))?;
    }

    /// Generated Multiboot 1 kernels, a.out kludge (header anywhere in the
    /// first 8 KiB, any load address in RAM above 1 MiB, BSS, entry) and
    /// ELF32 with the header in its first segment, load where the header
    /// says, enter at its entry with EAX = 0x2BADB002 and the information
    /// outside the image; mutated, they stay inside RAM.
    #[test]
    fn prop_multiboot_valid_loads_and_mutated_stays_in_ram(
        pad in 0usize..64,
        load in (0x10_0000u32..0x20_0000).prop_map(|a| a & !3),
        code in bytes(256),
        end_given in any::<bool>(),
        bss in prop_oneof![Just(0u32), 1u32..0x2_0000],
        entry_pick in any::<u32>(),
        use_elf in any::<bool>(),
        edits in edits(),
    ) {
        let (img, lo, hi, entry) = if use_elf {
            let mut file = mb_header(2, [0; 5])[..12].to_vec();
            file.extend(&code);
            let memsz = file.len() as u64 + u64::from(bss);
            let entry = u64::from(load) + u64::from(entry_pick) % memsz;
            let img = elf(false, EM_386, entry, &[(load.into(), load.into(), &file, memsz)]);
            (img, u64::from(load), u64::from(load) + memsz, entry)
        } else {
            let hoff = 4 * pad as u32;
            let total = hoff + 32 + code.len() as u32;
            let load_end = if end_given { load + total } else { 0 };
            let bss_end = if bss == 0 { 0 } else { load + total + bss };
            let hi = load + total + bss;
            let entry = load + entry_pick % (hi - load);
            let mut img = vec![0x90u8; hoff as usize];
            img.extend(mb_header(1 << 16 | 2, [load + hoff, load, load_end, bss_end, entry]));
            img.extend(&code);
            (img, u64::from(load), u64::from(hi), u64::from(entry))
        };
        let loaded = check_load(GuestArch::X86_64, &img, "console=ttyS0", 1)
            .map_err(TestCaseError::fail)?;
        let (st, format, mem) = loaded.ok_or_else(|| TestCaseError::fail("valid kernel refused"))?;
        prop_assert_eq!(format, KernelFormat::Multiboot1);
        prop_assert_eq!(st.pc, entry);
        let info = st.reg(Reg::Rbx).unwrap();
        prop_assert!(info + 120 <= lo || info >= hi, "information {info:#x} inside the image");
        if !use_elf {
            let mut back = vec![0u8; img.len()];
            mem.read(lo, &mut back).unwrap();
            prop_assert_eq!(back, img.clone());
        }
        verdict(check_load(GuestArch::X86_64, &mutate(img, &edits), "", 1).map(|_| ()))?;
    }

    /// arm64 Image headers round-trip through the parser (legacy size-0
    /// images get text_offset 0x80000), load at RAM base + text_offset
    /// when they fit below the device tree (else NoRoom), and mutated ones
    /// stay inside RAM.
    #[test]
    fn prop_arm64_image_round_trips_and_mutated_stays_in_ram(
        text_offset in prop_oneof![(0u64..0x20_0000).prop_map(|t| t & !0xfff), any::<u64>()],
        size_pick in prop_oneof![Just(0u64), 0u64..LOAD_RAM, any::<u64>()],
        flags in prop_oneof![(0u64..16).prop_map(|f| f & !1), any::<u64>()],
        code in bytes(128),
        edits in edits(),
    ) {
        let img = image(text_offset, size_pick, flags, &code);
        let parsed = arm64_image::parse(&img);
        let legacy = size_pick == 0;
        let (t, s) = if legacy { (LEGACY_TEXT_OFFSET, img.len() as u64) } else { (text_offset, size_pick) };
        if !legacy && flags & 1 != 0 {
            prop_assert!(parsed.is_err());
        } else if t >= 1 << 30 || s > 1 << 30 || s < img.len() as u64 {
            prop_assert!(parsed.is_err());
        } else {
            prop_assert_eq!(parsed, Ok(Some(ImageHeader { text_offset: t, image_size: s, flags })));
            let loaded = check_load(GuestArch::Aarch64, &img, "", 1).map_err(TestCaseError::fail)?;
            if let Some((st, format, mem)) = loaded {
                prop_assert_eq!(format, KernelFormat::Arm64Image);
                prop_assert_eq!(st.pc, ram_base(GuestArch::Aarch64) + t);
                let mut back = vec![0u8; img.len()];
                mem.read(st.pc, &mut back).unwrap();
                prop_assert_eq!(back, img.clone());
            } else {
                // Refused only when it does not fit below the device tree.
                prop_assert!(t + s > LOAD_RAM - 0x1000, "{t:#x}+{s:#x} refused");
            }
        }
        verdict(check_load(GuestArch::Aarch64, &mutate(img, &edits), "", 1).map(|_| ()))?;
    }
}

/// The fuzz seeds of the new arm64 formats load as what they are meant to be.
#[test]
fn fuzz_seeds_of_the_arm64_formats_load() {
    let base = ram_base(GuestArch::Aarch64) + ARM64_LOAD_OFFSET;
    let pie = include_bytes!("../../fuzz/seeds/elf/aarch64-pie");
    let (st, format, mem) = check_load(GuestArch::Aarch64, pie, "", 1).unwrap().unwrap();
    assert_eq!((format, st.pc), (KernelFormat::Elf64Pie, base + 0x1000));
    assert_eq!(mem.read_u64(base + 0x2000), Ok(base + 0x1000));
    assert_eq!(mem.read_u64(base + 0x2008), Ok(base + 0x2000));
    let raw = include_bytes!("../../fuzz/seeds/arm64_image/raw");
    let (st, format, _) = check_load(GuestArch::Aarch64, raw, "", 1).unwrap().unwrap();
    assert_eq!((format, st.pc), (KernelFormat::Arm64Raw, base));
}

/// The fakes used here are the real thing: a loaded kernel starts a vCPU.
#[test]
fn loaded_state_applies_to_a_vcpu() {
    let (img, _, entry) = valid_elf(GuestArch::X86_64, &[(0, 0, vec![0xf4], 0)], 0);
    let (st, _, _) = check_load(GuestArch::X86_64, &img, "", 1).unwrap().unwrap();
    let mut v = crate::testing::ScriptedVcpu::x86([], 1);
    v.apply_boot_state(&st).unwrap();
    assert_eq!(v.get(Reg::Rip), entry);
}

/// A position-independent ELF: 1..3 segments in their own 64 KiB slots
/// (offset, file bytes, BSS), relocations at 8-byte places inside them
/// (segment index, byte offset, addend), an entry in the first.
type PieSpec = (Vec<(u64, Vec<u8>, u64)>, Vec<(usize, u64, i64)>, u64);

fn pie_spec() -> impl Strategy<Value = PieSpec> {
    (
        prop::collection::vec((0u64..0x8000, bytes(64), 8u64..0x400), 1..=3),
        prop::collection::vec((0usize..3, any::<u64>(), any::<i64>()), 0..8),
        any::<u64>(),
    )
}

/// The image and what RAM must hold after loading it at `base`: (guest
/// address, bytes) per segment, relocations applied in order.
fn valid_pie(spec: &PieSpec, base: u64) -> (Vec<u8>, Placed, u64) {
    let (segs, relocs, entry_pick) = spec;
    let vaddr = |i: usize| 0x1_0000 * (i as u64 + 1) + segs[i].0;
    let mut expect: Vec<(u64, Vec<u8>)> = segs
        .iter()
        .enumerate()
        .map(|(i, (_, file, bss))| {
            let mut b = file.clone();
            b.resize(file.len() + *bss as usize, 0);
            (base + vaddr(i), b)
        })
        .collect();
    let mut relas: Vec<Rela> = Vec::new();
    for &(i, at, addend) in relocs {
        let i = i % segs.len();
        let len = expect[i].1.len() as u64;
        let off = at % (len - 7);
        relas.push((vaddr(i) + off, u64::from(R_AARCH64_RELATIVE), addend));
        let v = base.wrapping_add(addend as u64).to_le_bytes();
        expect[i].1[off as usize..off as usize + 8].copy_from_slice(&v);
    }
    let list: Vec<(u64, &[u8], u64)> = segs
        .iter()
        .enumerate()
        .map(|(i, (_, file, bss))| (vaddr(i), &file[..], file.len() as u64 + bss))
        .collect();
    let entry = vaddr(0) + entry_pick % (segs[0].1.len() as u64 + segs[0].2);
    (
        pie(EM_AARCH64, entry, &list, 0x4_0000, &relas, &[]),
        expect,
        base + entry,
    )
}

proptest! {
    #![proptest_config(config(128))]

    /// Any bytes that are neither ELF nor Image nor a refused format load on
    /// arm64 as a raw binary at RAM + 0x80000, as given, when they fit below
    /// the device tree (and only then are refused); others get their
    /// format's verdict. Never outside RAM.
    #[test]
    fn prop_arm64_raw_binaries_load_at_0x80000(
        img in prop_oneof![
            bytes(512),
            // Near the most that fits in LOAD_RAM (the DTB takes the last page).
            (LOAD_RAM - ARM64_LOAD_OFFSET - 0x3000..LOAD_RAM - ARM64_LOAD_OFFSET + 8, any::<u8>())
                .prop_map(|(n, b)| vec![b; n as usize]),
        ],
        cmdline in "[ -~]{0,40}",
    ) {
        let kind = raw::classify(&img);
        let loaded = check_load(GuestArch::Aarch64, &img, &cmdline, 1).map_err(TestCaseError::fail)?;
        match (kind, loaded) {
            (Ok(Arm64Kind::Raw), Some((st, format, _))) => {
                prop_assert_eq!(format, KernelFormat::Arm64Raw);
                prop_assert_eq!(st.pc, ram_base(GuestArch::Aarch64) + ARM64_LOAD_OFFSET);
            }
            (Ok(Arm64Kind::Raw), None) => {
                let n = img.len() as u64;
                prop_assert!(n > LOAD_RAM - ARM64_LOAD_OFFSET - 0x2000, "{n:#x} bytes refused");
            }
            (Err(_), loaded) => prop_assert!(loaded.is_none()),
            (Ok(_), Some((_, format, _))) => prop_assert!(format != KernelFormat::Arm64Raw),
            (Ok(_), None) => {}
        }
    }

    /// Generated position-independent ELFs load with virtual address 0 at
    /// RAM + 0x80000, their bytes and BSS in place, every
    /// `R_AARCH64_RELATIVE` written as base + addend, entered at base +
    /// e_entry; with bytes or header fields overwritten they are loaded or
    /// refused, never written outside RAM.
    #[test]
    fn prop_arm64_pie_valid_loads_and_mutated_stays_in_ram(
        spec in pie_spec(),
        edits in edits(),
    ) {
        let base = ram_base(GuestArch::Aarch64) + ARM64_LOAD_OFFSET;
        let (img, expect, entry) = valid_pie(&spec, base);
        let loaded = check_load(GuestArch::Aarch64, &img, "pie", 1).map_err(TestCaseError::fail)?;
        let (st, format, mem) = loaded.ok_or_else(|| TestCaseError::fail("valid PIE refused"))?;
        prop_assert_eq!(format, KernelFormat::Elf64Pie);
        prop_assert_eq!(st.pc, entry);
        for (at, bytes) in expect {
            let mut back = vec![0u8; bytes.len()];
            mem.read(at, &mut back).unwrap();
            prop_assert_eq!(back, bytes);
        }
        verdict(check_load(GuestArch::Aarch64, &mutate(img, &edits), "pie", 1).map(|_| ()))?;
    }
}
