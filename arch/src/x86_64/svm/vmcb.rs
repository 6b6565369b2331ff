//! The VMCB (virtual machine control block) layout, APM Vol. 2 Appendix B
//! ("Layout of VMCB"): the control area at offset 0, the state-save area at
//! 0x400. Offsets are constants checked against the APM tables by host tests;
//! [`Vmcb`] is a 4 KiB page with typed accessors.

/// Control area (APM Vol. 2 Table B-1).
pub mod ctrl {
    /// Intercept CR reads (bits 15:0) and writes (bits 31:16).
    pub const INTERCEPT_CR: usize = 0x000;
    /// Intercept DR reads (bits 15:0) and writes (bits 31:16).
    pub const INTERCEPT_DR: usize = 0x004;
    /// Intercept exception vectors 0..31.
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Intercepts INTR..SHUTDOWN (see [`super::misc1`]).
    pub const INTERCEPT_MISC1: usize = 0x00c;
    /// Intercepts VMRUN..XSETBV (see [`super::misc2`]).
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const PAUSE_FILTER_THRESHOLD: usize = 0x03c;
    pub const PAUSE_FILTER_COUNT: usize = 0x03e;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    /// Guest ASID (32 bits).
    pub const GUEST_ASID: usize = 0x058;
    /// TLB_CONTROL (8 bits, see [`super::tlb`]).
    pub const TLB_CONTROL: usize = 0x05c;
    /// V_TPR, V_IRQ, V_INTR_MASKING, V_INTR_VECTOR...
    pub const VINTR: usize = 0x060;
    /// Bit 0: interrupt shadow; bit 1: guest interrupt mask (GIF).
    pub const INTERRUPT_SHADOW: usize = 0x068;
    pub const EXITCODE: usize = 0x070;
    pub const EXITINFO1: usize = 0x078;
    pub const EXITINFO2: usize = 0x080;
    pub const EXITINTINFO: usize = 0x088;
    /// Bit 0: NP_ENABLE.
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENTINJ: usize = 0x0a8;
    /// Nested page-table root (nCR3).
    pub const N_CR3: usize = 0x0b0;
    pub const LBR_VIRT: usize = 0x0b8;
    /// VMCB clean bits (32 bits; only with CPUID 8000_000A EDX bit 5).
    pub const CLEAN: usize = 0x0c0;
    /// Next sequential instruction pointer (only with NRIPS).
    pub const NRIP: usize = 0x0c8;
    /// Number of guest instruction bytes fetched (decode assists).
    pub const INSN_LEN: usize = 0x0d0;
    /// Up to 15 guest instruction bytes (decode assists).
    pub const INSN_BYTES: usize = 0x0d1;
}

/// State-save area (APM Vol. 2 Table B-2), offsets from the VMCB start.
pub mod save {
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4cb;
    pub const EFER: usize = 0x4d0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5d8;
    pub const RAX: usize = 0x5f8;
    pub const STAR: usize = 0x600;
    pub const LSTAR: usize = 0x608;
    pub const CSTAR: usize = 0x610;
    pub const SFMASK: usize = 0x618;
    pub const KERNEL_GS_BASE: usize = 0x620;
    pub const SYSENTER_CS: usize = 0x628;
    pub const SYSENTER_ESP: usize = 0x630;
    pub const SYSENTER_EIP: usize = 0x638;
    pub const CR2: usize = 0x640;
    pub const G_PAT: usize = 0x668;
    pub const DBGCTL: usize = 0x670;

    /// Offsets inside a segment register entry (APM Vol. 2 §15.5.1).
    pub const SEG_SELECTOR: usize = 0;
    pub const SEG_ATTRIB: usize = 2;
    pub const SEG_LIMIT: usize = 4;
    pub const SEG_BASE: usize = 8;
}

/// Bits of [`ctrl::INTERCEPT_MISC1`] (APM Vol. 2 Table B-1, offset 0x0C).
pub mod misc1 {
    pub const INTR: u32 = 1 << 0;
    pub const NMI: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const INIT: u32 = 1 << 3;
    /// Virtual interrupt: an exit when the guest would take V_IRQ (the
    /// interrupt window, APM Vol. 2 §15.21.4).
    pub const VINTR: u32 = 1 << 4;
    pub const RDPMC: u32 = 1 << 15;
    pub const CPUID: u32 = 1 << 18;
    /// IRET: how SVM without vNMI learns that the guest's NMI handler
    /// returned (NMIs are blocked until then, SDM §6.7.1).
    pub const IRET: u32 = 1 << 20;
    pub const INVD: u32 = 1 << 22;
    pub const PAUSE: u32 = 1 << 23;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO_PROT: u32 = 1 << 27;
    pub const MSR_PROT: u32 = 1 << 28;
    pub const TASK_SWITCH: u32 = 1 << 29;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Bits of [`ctrl::INTERCEPT_MISC2`] (APM Vol. 2 Table B-1, offset 0x10).
pub mod misc2 {
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const RDTSCP: u32 = 1 << 7;
    pub const ICEBP: u32 = 1 << 8;
    /// WBINVD and WBNOINVD.
    pub const WBINVD: u32 = 1 << 9;
    pub const MONITOR: u32 = 1 << 10;
    pub const MWAIT: u32 = 1 << 11;
    pub const MWAIT_COND: u32 = 1 << 12;
    pub const XSETBV: u32 = 1 << 13;
    pub const RDPRU: u32 = 1 << 14;
}

/// TLB_CONTROL values (APM Vol. 2 §15.16.1).
pub mod tlb {
    pub const DO_NOTHING: u8 = 0;
    /// Flush the entire TLB (all ASIDs): the only flush without flush-by-ASID.
    pub const FLUSH_ALL: u8 = 1;
    /// Flush this guest's ASID (CPUID 8000_000A EDX bit 6).
    pub const FLUSH_ASID: u8 = 3;
}

/// #VMEXIT codes (APM Vol. 2 Appendix C).
pub mod exitcode {
    pub const READ_DR0: u64 = 0x20;
    pub const WRITE_DR0: u64 = 0x30;
    pub const EXCP_BASE: u64 = 0x40;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const INIT: u64 = 0x63;
    pub const VINTR: u64 = 0x64;
    pub const RDPMC: u64 = 0x6f;
    pub const CPUID: u64 = 0x72;
    pub const IRET: u64 = 0x74;
    pub const INVD: u64 = 0x76;
    pub const PAUSE: u64 = 0x77;
    pub const HLT: u64 = 0x78;
    pub const INVLPGA: u64 = 0x7a;
    pub const IOIO: u64 = 0x7b;
    pub const MSR: u64 = 0x7c;
    pub const TASK_SWITCH: u64 = 0x7d;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const RDTSCP: u64 = 0x87;
    pub const ICEBP: u64 = 0x88;
    /// WBINVD or WBNOINVD.
    pub const WBINVD: u64 = 0x89;
    pub const MONITOR: u64 = 0x8a;
    pub const MWAIT: u64 = 0x8b;
    pub const MWAIT_COND: u64 = 0x8c;
    pub const XSETBV: u64 = 0x8d;
    pub const RDPRU: u64 = 0x8e;
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the guest state.
    pub const INVALID: u64 = u64::MAX;
}

/// EFER.SVME: must be set in the host EFER to execute VMRUN and in the
/// guest's VMCB EFER for VMRUN to accept it (APM Vol. 2 §15.5.1).
pub const EFER_SVME: u64 = 1 << 12;
/// The power-on PAT value (APM Vol. 2 §7.8.2).
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// One VMCB: a 4 KiB-aligned page. Fields are read and written by offset
/// through the accessors, never through Rust references to misaligned data.
#[repr(C, align(4096))]
pub struct Vmcb(pub [u8; 4096]);

macro_rules! accessors {
    ($get:ident, $set:ident, $t:ty) => {
        #[inline]
        pub fn $get(&self, off: usize) -> $t {
            const N: usize = core::mem::size_of::<$t>();
            let mut b = [0u8; N];
            b.copy_from_slice(&self.0[off..off + N]);
            <$t>::from_le_bytes(b)
        }
        #[inline]
        pub fn $set(&mut self, off: usize, v: $t) {
            const N: usize = core::mem::size_of::<$t>();
            self.0[off..off + N].copy_from_slice(&v.to_le_bytes());
        }
    };
}

/// A segment register as the VMCB stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcbSeg {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

impl Vmcb {
    pub const fn zeroed() -> Vmcb {
        Vmcb([0; 4096])
    }

    accessors!(read8, write8, u8);
    accessors!(read16, write16, u16);
    accessors!(read32, write32, u32);
    accessors!(read64, write64, u64);

    pub fn seg(&self, at: usize) -> VmcbSeg {
        VmcbSeg {
            selector: self.read16(at + save::SEG_SELECTOR),
            attrib: self.read16(at + save::SEG_ATTRIB),
            limit: self.read32(at + save::SEG_LIMIT),
            base: self.read64(at + save::SEG_BASE),
        }
    }

    pub fn set_seg(&mut self, at: usize, s: VmcbSeg) {
        self.write16(at + save::SEG_SELECTOR, s.selector);
        self.write16(at + save::SEG_ATTRIB, s.attrib);
        self.write32(at + save::SEG_LIMIT, s.limit);
        self.write64(at + save::SEG_BASE, s.base);
    }

    #[inline]
    pub fn exitcode(&self) -> u64 {
        self.read64(ctrl::EXITCODE)
    }

    #[inline]
    pub fn rip(&self) -> u64 {
        self.read64(save::RIP)
    }
}

/// The guest state the shared x86 code works on, in the VMCB: the
/// state-save area, plus the interrupt shadow of the control area.
impl crate::x86_64::guest::GuestState for Vmcb {
    #[inline]
    fn rip(&self) -> u64 {
        self.read64(save::RIP)
    }
    #[inline]
    fn set_rip(&mut self, rip: u64) {
        self.write64(save::RIP, rip);
    }
    #[inline]
    fn rflags(&self) -> u64 {
        self.read64(save::RFLAGS)
    }
    #[inline]
    fn cr0(&self) -> u64 {
        self.read64(save::CR0)
    }
    #[inline]
    fn cr3(&self) -> u64 {
        self.read64(save::CR3)
    }
    #[inline]
    fn cr4(&self) -> u64 {
        self.read64(save::CR4)
    }
    #[inline]
    fn efer(&self) -> u64 {
        self.read64(save::EFER)
    }
    #[inline]
    fn cpl(&self) -> u8 {
        self.read8(save::CPL)
    }
    #[inline]
    fn cs_base(&self) -> u64 {
        self.read64(save::CS + save::SEG_BASE)
    }
    /// The VMCB's packed attributes (APM Vol. 2 §15.5.1): L is bit 9, D/B
    /// bit 10.
    #[inline]
    fn cs_l_db(&self) -> (bool, bool) {
        let a = self.read16(save::CS + save::SEG_ATTRIB);
        (a & (1 << 9) != 0, a & (1 << 10) != 0)
    }
    #[inline]
    fn dr6(&self) -> u64 {
        self.read64(save::DR6)
    }
    #[inline]
    fn set_dr6(&mut self, v: u64) {
        self.write64(save::DR6, v);
    }
    #[inline]
    fn set_dr7(&mut self, v: u64) {
        self.write64(save::DR7, v);
    }
    #[inline]
    fn interrupt_shadow(&self) -> bool {
        self.read64(ctrl::INTERRUPT_SHADOW) & 1 != 0
    }
    /// Writes the whole 64-bit field (the backend always has).
    #[inline]
    fn clear_interrupt_shadow(&mut self) {
        self.write64(ctrl::INTERRUPT_SHADOW, 0);
    }
}

/// EVENTINJ / EXITINTINFO encoding (APM Vol. 2 §15.20): vector 7:0,
/// type 10:8, EV (error code valid) bit 11, V bit 31, error code 63:32.
pub mod event_inj {
    pub const TYPE_INTR: u64 = 0;
    pub const TYPE_NMI: u64 = 2;
    pub const TYPE_EXCEPTION: u64 = 3;
    pub const TYPE_SOFT_INT: u64 = 4;
    pub const EV: u64 = 1 << 11;
    pub const VALID: u64 = 1 << 31;

    pub fn encode(vector: u8, typ: u64, error_code: Option<u32>) -> u64 {
        let mut v = u64::from(vector) | (typ << 8) | VALID;
        if let Some(e) = error_code {
            v |= EV | (u64::from(e) << 32);
        }
        v
    }

    pub fn is_valid(v: u64) -> bool {
        v & VALID != 0
    }
}

/// VMCB clean bits (APM Vol. 2 §15.15.3, "VMCB Clean Field"): a set bit
/// tells the CPU that the hypervisor left that group of fields unchanged
/// since this VMCB's last #VMEXIT on this CPU, so a cached copy may be used.
///
/// Rather than marking groups dirty at every write (easy to miss one, and
/// a missed one is silent guest-state corruption on real hardware), the
/// vCPU keeps a [`CleanSnapshot`] of the covered bytes as the CPU left them
/// at #VMEXIT and compares before VMRUN: a group is clean exactly when its
/// bytes are identical. Only used when CPUID 8000_000A EDX bit 5 says the
/// CPU honours the field; QEMU TCG and Bochs do not.
pub mod clean {
    use super::{ctrl, save, Vmcb};

    /// Intercept vectors, TSC offset, pause filter.
    pub const I: u32 = 1 << 0;
    /// IOPM_BASE_PA, MSRPM_BASE_PA.
    pub const IOPM: u32 = 1 << 1;
    pub const ASID: u32 = 1 << 2;
    /// V_TPR, V_IRQ, V_INTR_MASKING, V_INTR_VECTOR...
    pub const TPR: u32 = 1 << 3;
    /// NP_ENABLE, N_CR3, G_PAT.
    pub const NP: u32 = 1 << 4;
    /// CR0, CR3, CR4, EFER.
    pub const CRX: u32 = 1 << 5;
    /// DR6, DR7.
    pub const DRX: u32 = 1 << 6;
    /// GDTR, IDTR.
    pub const DT: u32 = 1 << 7;
    /// CS, DS, SS, ES and CPL.
    pub const SEG: u32 = 1 << 8;
    pub const CR2: u32 = 1 << 9;
    /// DBGCTL, LBR_VIRT and the last-branch records.
    pub const LBR: u32 = 1 << 10;

    /// Byte ranges (start, end) of each group, as VMCB offsets.
    pub const RANGES: &[(u32, usize, usize)] = &[
        (I, ctrl::INTERCEPT_CR, ctrl::INTERCEPT_MISC2 + 8),
        (I, ctrl::PAUSE_FILTER_THRESHOLD, ctrl::IOPM_BASE_PA),
        (I, ctrl::TSC_OFFSET, ctrl::GUEST_ASID),
        (IOPM, ctrl::IOPM_BASE_PA, ctrl::TSC_OFFSET),
        (ASID, ctrl::GUEST_ASID, ctrl::TLB_CONTROL),
        (TPR, ctrl::VINTR, ctrl::VINTR + 8),
        (NP, ctrl::NP_ENABLE, ctrl::NP_ENABLE + 8),
        (NP, ctrl::N_CR3, ctrl::N_CR3 + 8),
        (NP, save::G_PAT, save::G_PAT + 8),
        (LBR, ctrl::LBR_VIRT, ctrl::CLEAN),
        (CRX, save::CR4, save::DR7),
        (CRX, save::EFER, save::EFER + 8),
        (DRX, save::DR7, save::RFLAGS),
        (DT, save::GDTR, save::GDTR + 16),
        (DT, save::IDTR, save::IDTR + 16),
        (SEG, save::ES, save::FS),
        (SEG, save::CPL, save::CPL + 1),
        (CR2, save::CR2, save::CR2 + 8),
        (LBR, save::DBGCTL, save::DBGCTL + 0x28),
    ];

    /// Every group this hypervisor tracks (AVIC, bit 11, is never enabled).
    pub const ALL: u32 = I | IOPM | ASID | TPR | NP | CRX | DRX | DT | SEG | CR2 | LBR;

    /// The covered bytes of a VMCB as the CPU left them at #VMEXIT.
    pub struct CleanSnapshot {
        /// Control area bytes 0..CLEAN and state-save bytes 0x400..0x698.
        ctrl: [u8; ctrl::CLEAN],
        save: [u8; SAVE_END - SAVE_START],
    }

    const SAVE_START: usize = save::ES;
    const SAVE_END: usize = save::DBGCTL + 0x28;

    impl CleanSnapshot {
        pub const fn new() -> CleanSnapshot {
            CleanSnapshot {
                ctrl: [0; ctrl::CLEAN],
                save: [0; SAVE_END - SAVE_START],
            }
        }

        /// Records the covered bytes (right after #VMEXIT).
        pub fn capture(&mut self, v: &Vmcb) {
            self.ctrl.copy_from_slice(&v.0[..ctrl::CLEAN]);
            self.save.copy_from_slice(&v.0[SAVE_START..SAVE_END]);
        }

        fn old(&self, start: usize, end: usize) -> &[u8] {
            if start >= SAVE_START {
                &self.save[start - SAVE_START..end - SAVE_START]
            } else {
                &self.ctrl[start..end]
            }
        }

        /// The clean bits for the next VMRUN: every group whose bytes are
        /// unchanged since [`capture`](Self::capture).
        pub fn clean_bits(&self, v: &Vmcb) -> u32 {
            let mut dirty = 0;
            for &(bit, start, end) in RANGES {
                if self.old(start, end) != &v.0[start..end] {
                    dirty |= bit;
                }
            }
            ALL & !dirty
        }
    }

    impl Default for CleanSnapshot {
        fn default() -> Self {
            Self::new()
        }
    }
}

#[cfg(test)]
mod tests {

    /// The VMCB's packed CS attributes (L bit 9, D bit 10) give the shared
    /// code its CS.L / CS.D view.
    #[test]
    fn guest_state_code_segment_bitness() {
        use crate::x86_64::guest::GuestState;
        let mut v = Vmcb::zeroed();
        let lma = 1 << 10;
        for (attrib, efer, bits) in [(0xa9b, lma, 64), (0xc9b, 0, 32), (0x09b, 0, 16)] {
            v.write16(save::CS + save::SEG_ATTRIB, attrib);
            v.write64(save::EFER, efer);
            assert_eq!(v.bitness(), bits, "{attrib:#x}");
        }
        v.write64(save::CS + save::SEG_BASE, 0x1_0000);
        v.write64(save::RIP, 0xffff_fff0);
        assert_eq!(v.rip_linear(), 0x1_0000 + 0xffff_fff0 - (1 << 32));
    }

    #[test]
    fn clean_bits_follow_the_bytes_of_each_group() {
        use super::clean::*;
        let mut v = Vmcb::zeroed();
        let mut snap = CleanSnapshot::new();
        snap.capture(&v);
        assert_eq!(snap.clean_bits(&v), ALL);
        // Fields outside every group (always reloaded) keep everything clean.
        v.write64(save::RIP, 0x1000);
        v.write64(save::RAX, 1);
        v.write64(ctrl::EVENTINJ, 1 << 31);
        v.write8(ctrl::TLB_CONTROL, 1);
        assert_eq!(snap.clean_bits(&v), ALL);
        for (off, bit) in [
            (ctrl::INTERCEPT_EXCEPTIONS, I),
            (ctrl::TSC_OFFSET, I),
            (ctrl::MSRPM_BASE_PA, IOPM),
            (ctrl::GUEST_ASID, ASID),
            (ctrl::VINTR, TPR),
            (ctrl::N_CR3, NP),
            (save::G_PAT, NP),
            (save::CR0, CRX),
            (save::CR3, CRX),
            (save::EFER, CRX),
            (save::DR6, DRX),
            (save::DR7, DRX),
            (save::IDTR + 8, DT),
            (save::CS + 8, SEG),
            (save::CR2, CR2),
            (save::DBGCTL, LBR),
        ] {
            let mut w = Vmcb::zeroed();
            w.write8(off, 0x5a);
            assert_eq!(snap.clean_bits(&w), ALL & !bit, "offset {off:#x}");
        }
        // A group changed by the guest and captured at #VMEXIT is clean again.
        let mut w = Vmcb::zeroed();
        w.write64(save::CR3, 0x1000);
        snap.capture(&w);
        assert_eq!(snap.clean_bits(&w), ALL);
    }

    #[test]
    fn clean_ranges_lie_in_the_vmcb_and_skip_always_reloaded_fields() {
        use super::clean::RANGES;
        for &(_, start, end) in RANGES {
            assert!(start < end && end <= 4096);
            for f in [
                save::RIP,
                save::RSP,
                save::RAX,
                save::RFLAGS,
                ctrl::EVENTINJ,
                ctrl::TLB_CONTROL,
                ctrl::CLEAN,
            ] {
                assert!(!(start..end).contains(&f), "{f:#x} in {start:#x}..{end:#x}");
            }
        }
    }
    use super::*;

    #[test]
    fn offsets_match_apm_tables() {
        // APM Vol. 2 Table B-1 (control area).
        assert_eq!(ctrl::IOPM_BASE_PA, 0x40);
        assert_eq!(ctrl::MSRPM_BASE_PA, 0x48);
        assert_eq!(ctrl::GUEST_ASID, 0x58);
        assert_eq!(ctrl::TLB_CONTROL, 0x5c);
        assert_eq!(ctrl::EXITCODE, 0x70);
        assert_eq!(ctrl::EXITINTINFO, 0x88);
        assert_eq!(ctrl::NP_ENABLE, 0x90);
        assert_eq!(ctrl::EVENTINJ, 0xa8);
        assert_eq!(ctrl::N_CR3, 0xb0);
        assert_eq!(ctrl::CLEAN, 0xc0);
        assert_eq!(ctrl::NRIP, 0xc8);
        assert_eq!(ctrl::INSN_BYTES, 0xd1);
        // Table B-2 (state save): segments are 16 bytes apart from 0x400.
        let segs = [
            save::ES,
            save::CS,
            save::SS,
            save::DS,
            save::FS,
            save::GS,
            save::GDTR,
            save::LDTR,
            save::IDTR,
            save::TR,
        ];
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(*s, 0x400 + 16 * i);
        }
        assert_eq!(save::CPL, 0x4cb);
        assert_eq!(save::EFER, 0x4d0);
        assert_eq!(save::CR4, 0x548);
        assert_eq!(save::RIP, 0x578);
        assert_eq!(save::RSP, 0x5d8);
        assert_eq!(save::RAX, 0x5f8);
        assert_eq!(save::CR2, 0x640);
        assert_eq!(save::G_PAT, 0x668);
        assert_eq!(core::mem::size_of::<Vmcb>(), 4096);
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
    }

    #[test]
    fn accessors_are_little_endian_and_bounded() {
        let mut v = alloc_vmcb();
        v.write64(save::RIP, 0x1122_3344_5566_7788);
        assert_eq!(v.read8(save::RIP), 0x88);
        assert_eq!(v.read32(save::RIP + 4), 0x1122_3344);
        let s = VmcbSeg {
            selector: 0x10,
            attrib: 0xc93,
            limit: 0xffff_ffff,
            base: 0x1000,
        };
        v.set_seg(save::DS, s);
        assert_eq!(v.seg(save::DS), s);
        assert_eq!(v.read16(save::DS + 2), 0xc93);
    }

    #[test]
    fn event_inj_encoding() {
        // #GP(0): vector 13, type 3, EV, V.
        assert_eq!(
            event_inj::encode(13, event_inj::TYPE_EXCEPTION, Some(0)),
            0x8000_0b0d
        );
        assert_eq!(
            event_inj::encode(14, event_inj::TYPE_EXCEPTION, Some(2)),
            0x2_8000_0b0e
        );
        assert_eq!(event_inj::encode(2, event_inj::TYPE_NMI, None), 0x8000_0202);
        assert!(event_inj::is_valid(0x8000_0000));
        assert!(!event_inj::is_valid(0x7fff_ffff));
    }

    pub(crate) fn alloc_vmcb() -> Box<Vmcb> {
        Box::new(Vmcb::zeroed())
    }
}
