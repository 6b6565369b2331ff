//! Segment and gate descriptor encodings for long mode (pure; host-tested).
//!
//! Intel SDM Vol. 3A: 3.4.5 (segment descriptors), 7.2.3 (TSS descriptor in
//! 64-bit mode), 7.7 (64-bit TSS), 6.14.1 (64-bit IDT gate descriptors).

/// GDT selectors shared by the early boot GDT (entry assembly) and the
/// final one ([`gdt_entries`]): keep them equal so that reloading the GDT
/// never invalidates a loaded selector.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

/// 64-bit code segment: L=1, D=0, P=1, DPL=0, type=execute/read (accessed).
pub const CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// Data segment: P=1, DPL=0, type=read/write (accessed), G=1, D/B=1.
pub const DATA: u64 = 0x00CF_9300_0000_FFFF;

/// Interrupt stack table slots (1-based as in the IDT gate's IST field).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

/// Size of the 64-bit Task-State Segment (SDM 7.7, Figure 7-11): RSP0-2,
/// IST1-7, no I/O permission bitmap. The TSS itself is the `x86_64` crate's
/// `TaskStateSegment` (same layout, checked in the tests below).
pub const TSS_SIZE: usize = 104;

/// The two GDT quadwords of an available 64-bit TSS descriptor (type 9,
/// P=1, DPL=0) for a TSS at `base` spanning `limit + 1` bytes.
pub const fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89u64 << 40)
        | (((limit as u64 >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    [low, base >> 32]
}

/// The whole GDT: null, kernel code, kernel data, TSS (two slots).
pub const fn gdt_entries(tss_base: u64) -> [u64; 5] {
    let tss = tss_descriptor(tss_base, TSS_SIZE as u32 - 1);
    [0, CODE64, DATA, tss[0], tss[1]]
}

/// A 64-bit IDT gate (SDM 6.14.1, Figure 6-8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdtGate {
    offset_low: u16,
    selector: u16,
    /// Bits 2:0 IST index, rest zero.
    ist: u8,
    /// P, DPL, 0, type (0xE = interrupt gate: IF cleared on entry).
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

impl IdtGate {
    pub const MISSING: IdtGate = IdtGate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        _reserved: 0,
    };

    /// A present DPL-0 interrupt gate to `handler` in `selector`, using IST
    /// slot `ist` (0 = no stack switch unless the privilege level changes).
    pub const fn interrupt(handler: u64, selector: u16, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist: ist & 7,
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }

    pub const fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_mid as u64) << 16 | (self.offset_high as u64) << 32
    }

    pub const fn ist(&self) -> u8 {
        self.ist
    }

    pub const fn is_present(&self) -> bool {
        self.type_attr & 0x80 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `x86_64` crate's TSS (used by `tables.rs`) has the SDM layout:
    /// IST1 at 0x24, I/O map base at 0x66, "no bitmap" by default.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn crate_tss_layout_matches_sdm() {
        use ::x86_64::structures::tss::TaskStateSegment;
        use core::mem::{offset_of, size_of};
        assert_eq!(size_of::<TaskStateSegment>(), TSS_SIZE);
        assert_eq!(offset_of!(TaskStateSegment, privilege_stack_table), 0x04);
        assert_eq!(offset_of!(TaskStateSegment, interrupt_stack_table), 0x24);
        assert_eq!(offset_of!(TaskStateSegment, iomap_base), 0x66);
        assert_eq!({ TaskStateSegment::new().iomap_base }, TSS_SIZE as u16);
    }

    /// Our descriptors are bit-for-bit the crate's flat kernel segments and
    /// its TSS descriptor (a second, independent encoding of SDM 3.4.5/7.2.3).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn descriptors_agree_with_the_x86_64_crate() {
        use ::x86_64::structures::gdt::{Descriptor, DescriptorFlags};
        use ::x86_64::structures::tss::TaskStateSegment;
        assert_eq!(CODE64, DescriptorFlags::KERNEL_CODE64.bits());
        assert_eq!(DATA, DescriptorFlags::KERNEL_DATA.bits());
        let tss: &'static TaskStateSegment = Box::leak(Box::new(TaskStateSegment::new()));
        let base = tss as *const TaskStateSegment as u64;
        match Descriptor::tss_segment(tss) {
            Descriptor::SystemSegment(lo, hi) => {
                assert_eq!(tss_descriptor(base, TSS_SIZE as u32 - 1), [lo, hi]);
                assert_eq!(&gdt_entries(base)[3..], &[lo, hi]);
            }
            d => panic!("not a system descriptor: {d:?}"),
        }
    }

    #[test]
    fn segment_descriptors_have_the_sdm_bits() {
        // Code: L (bit 53) = 1, D (bit 54) = 0, P (47), S (44), type execute (43).
        assert_eq!(CODE64 >> 53 & 1, 1);
        assert_eq!(CODE64 >> 54 & 1, 0);
        assert_eq!(CODE64 >> 47 & 1, 1);
        assert_eq!(CODE64 >> 44 & 1, 1);
        assert_eq!(CODE64 >> 43 & 1, 1);
        assert_eq!(CODE64 >> 45 & 3, 0); // DPL 0
                                         // Data: writable (bit 41), not code.
        assert_eq!(DATA >> 41 & 1, 1);
        assert_eq!(DATA >> 43 & 1, 0);
        assert_eq!(KERNEL_CS as usize / 8, 1);
        assert_eq!(KERNEL_DS as usize / 8, 2);
        assert_eq!(TSS_SEL as usize / 8, 3);
    }

    #[test]
    fn tss_descriptor_splits_base_and_limit() {
        let [lo, hi] = tss_descriptor(0xffff_8000_1234_5678, 0x6_7fff);
        assert_eq!(lo & 0xffff, 0x7fff); // limit 15:0
        assert_eq!(lo >> 48 & 0xf, 0x6); // limit 19:16
        assert_eq!(lo >> 16 & 0xff_ffff, 0x34_5678); // base 23:0
        assert_eq!(lo >> 56, 0x12); // base 31:24
        assert_eq!(hi, 0xffff_8000); // base 63:32
        assert_eq!(lo >> 40 & 0xf, 0x9); // type: available 64-bit TSS
        assert_eq!(lo >> 47 & 1, 1); // present
        assert_eq!(lo >> 44 & 1, 0); // system descriptor (S = 0)
        let g = gdt_entries(0x1000);
        assert_eq!(g[0], 0);
        assert_eq!(g[3] & 0xffff, 103);
    }

    #[test]
    fn idt_gate_round_trips_handler_and_ist() {
        assert_eq!(core::mem::size_of::<IdtGate>(), 16);
        let g = IdtGate::interrupt(0xffff_ffff_8012_3456, KERNEL_CS, IST_DOUBLE_FAULT);
        assert_eq!(g.handler(), 0xffff_ffff_8012_3456);
        assert_eq!(g.ist(), 1);
        assert!(g.is_present());
        assert_eq!(g.type_attr, 0x8E);
        assert_eq!(g.selector, 0x08);
        assert!(!IdtGate::MISSING.is_present());
        assert_eq!(IdtGate::interrupt(0, 8, 9).ist(), 1); // only 3 bits
    }
}
