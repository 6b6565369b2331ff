//! What a VMCS is set to, as plain values (SDM Vol. 3C ch. 24, 26): the
//! execution controls this hypervisor asks of a CPU ([`Controls`]), a
//! guest's initial state for an entry mode ([`guest_state`]) and the
//! checks VM entry makes on it ([`check_guest_state`], a subset of SDM
//! 26.2-26.3), so that a state the CPU would refuse is named here, before
//! any VMLAUNCH, instead of as VM-entry failure reason 33 ("invalid guest
//! state") without saying which field. Field encodings come from the `x86`
//! crate. Pure and host-tested; the VMWRITEs are the backend's.

use alloc::vec::Vec;

use super::{adjust, fixed_cr, Caps};
use vmm::backend::{Segment, X86ModeState};
use x86::vmx::vmcs::{control, guest};

/// Control bits (SDM Vol. 3C 24.6-24.8, appendix A.3-A.5).
pub mod bits {
    pub const PIN_EXTERNAL_INTERRUPT: u32 = 1 << 0;
    pub const PIN_NMI: u32 = 1 << 3;
    pub const PIN_VIRTUAL_NMI: u32 = 1 << 5;

    pub const PROC_INTERRUPT_WINDOW: u32 = 1 << 2;
    pub const PROC_HLT: u32 = 1 << 7;
    pub const PROC_CR8_LOAD: u32 = 1 << 19;
    pub const PROC_CR8_STORE: u32 = 1 << 20;
    pub const PROC_NMI_WINDOW: u32 = 1 << 22;
    pub const PROC_MOV_DR: u32 = 1 << 23;
    pub const PROC_IO_BITMAPS: u32 = 1 << 25;
    pub const PROC_MSR_BITMAPS: u32 = 1 << 28;
    pub const PROC_SECONDARY: u32 = 1 << 31;

    pub const PROC2_EPT: u32 = 1 << 1;
    pub const PROC2_RDTSCP: u32 = 1 << 3;
    pub const PROC2_VPID: u32 = 1 << 5;
    pub const PROC2_UNRESTRICTED: u32 = 1 << 7;
    pub const PROC2_INVPCID: u32 = 1 << 12;

    pub const EXIT_HOST_64: u32 = 1 << 9;
    pub const EXIT_ACK_INTERRUPT: u32 = 1 << 15;
    pub const EXIT_SAVE_PAT: u32 = 1 << 18;
    pub const EXIT_LOAD_PAT: u32 = 1 << 19;
    pub const EXIT_SAVE_EFER: u32 = 1 << 20;
    pub const EXIT_LOAD_EFER: u32 = 1 << 21;

    pub const ENTRY_IA32E_GUEST: u32 = 1 << 9;
    pub const ENTRY_LOAD_PAT: u32 = 1 << 14;
    pub const ENTRY_LOAD_EFER: u32 = 1 << 15;
}
use bits::*;

/// The five control fields of every VMCS of this hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    /// Without ENTRY_IA32E_GUEST: [`Controls::entry_for`] adds it for a
    /// guest with EFER.LMA.
    pub entry: u32,
}

/// A control the CPU cannot provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    pub field: &'static str,
    pub bits: u32,
}

impl Controls {
    /// What this hypervisor needs, with the CPU's default-1 bits added:
    /// external interrupts and NMIs exit (the host keeps its CPU; an
    /// interrupt is not acknowledged at the exit but taken through the
    /// host's IDT once the exit path enables interrupts, as on SVM), HLT,
    /// MOV DR, every port and MSR through bitmaps, EPT; VPID, unrestricted
    /// guest, RDTSCP and INVPCID where the CPU has them (the guest may use
    /// the last two natively); EFER and PAT switched at entry and exit.
    pub fn for_caps(caps: &Caps) -> Result<Controls, Missing> {
        let need = |field: &'static str, cap: u64, want: u32| {
            adjust(cap, want).map_err(|bits| Missing { field, bits })
        };
        let may = |cap: u64, bits: u32| (cap >> 32) as u32 & bits;
        let pin = need(
            "pin-based",
            caps.pinbased,
            PIN_EXTERNAL_INTERRUPT | PIN_NMI | may(caps.pinbased, PIN_VIRTUAL_NMI),
        )?;
        let proc = need(
            "processor-based",
            caps.procbased,
            // CR8 moves exit: without a TPR shadow they would reach the
            // host's own local APIC (SDM 29.3).
            PROC_HLT
                | PROC_CR8_LOAD
                | PROC_CR8_STORE
                | PROC_MOV_DR
                | PROC_IO_BITMAPS
                | PROC_MSR_BITMAPS
                | PROC_SECONDARY,
        )?;
        let cap2 = caps.procbased2.ok_or(Missing {
            field: "secondary processor-based",
            bits: PROC2_EPT,
        })?;
        let proc2 = need(
            "secondary processor-based",
            cap2,
            PROC2_EPT
                | may(
                    cap2,
                    PROC2_VPID | PROC2_UNRESTRICTED | PROC2_RDTSCP | PROC2_INVPCID,
                ),
        )?;
        let exit = need(
            "VM-exit",
            caps.exit,
            EXIT_HOST_64 | EXIT_SAVE_PAT | EXIT_LOAD_PAT | EXIT_SAVE_EFER | EXIT_LOAD_EFER,
        )?;
        let entry = need("VM-entry", caps.entry, ENTRY_LOAD_PAT | ENTRY_LOAD_EFER)?;
        // "IA-32e mode guest" must be allowed to be 1 for long-mode guests;
        // it is set per entry.
        need("VM-entry", caps.entry, ENTRY_IA32E_GUEST)?;
        Ok(Controls {
            pin,
            proc,
            proc2,
            exit,
            entry: entry & !ENTRY_IA32E_GUEST,
        })
    }

    /// The VM-entry controls for a guest whose EFER is `efer` (SDM 26.2.4:
    /// "IA-32e mode guest" must equal EFER.LMA).
    pub fn entry_for(&self, efer: u64) -> u32 {
        if efer & EFER_LMA != 0 {
            self.entry | ENTRY_IA32E_GUEST
        } else {
            self.entry
        }
    }

    pub fn unrestricted(&self) -> bool {
        self.proc2 & PROC2_UNRESTRICTED != 0
    }

    /// The control fields as (encoding, value) pairs.
    pub fn fields(&self, efer: u64) -> [(u32, u64); 5] {
        [
            (control::PINBASED_EXEC_CONTROLS, u64::from(self.pin)),
            (
                control::PRIMARY_PROCBASED_EXEC_CONTROLS,
                u64::from(self.proc),
            ),
            (
                control::SECONDARY_PROCBASED_EXEC_CONTROLS,
                u64::from(self.proc2),
            ),
            (control::VMEXIT_CONTROLS, u64::from(self.exit)),
            (control::VMENTRY_CONTROLS, u64::from(self.entry_for(efer))),
        ]
    }
}

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// PAT after reset (SDM 11.12.4): WB, WT, UC-, UC, repeated.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// The CR0 a guest runs with for the CR0 it asked for: the VMX fixed bits
/// applied, except PE and PG with unrestricted guest (SDM 26.3.1.1). The
/// guest reads its own value through the read shadow.
pub fn guest_cr0(cr0: u64, caps: &Caps, unrestricted: bool) -> u64 {
    let (mut fixed0, fixed1) = caps.cr0_fixed;
    if unrestricted {
        fixed0 &= !(CR0_PE | CR0_PG);
    }
    fixed_cr(cr0, fixed0, fixed1)
}

/// The CR0 bits the host owns: the fixed ones, but PE and PG with
/// unrestricted guest.
pub fn cr0_mask(caps: &Caps, unrestricted: bool) -> u64 {
    let m = caps.cr0_fixed.0 | !caps.cr0_fixed.1;
    if unrestricted {
        m & !(CR0_PE | CR0_PG)
    } else {
        m
    }
}

/// The CR4 a guest runs with (VMXE among the fixed-1 bits).
pub fn guest_cr4(cr4: u64, caps: &Caps) -> u64 {
    fixed_cr(cr4, caps.cr4_fixed.0, caps.cr4_fixed.1)
}

/// The guest's initial state for an entry mode: control registers with
/// the fixed bits (and their guest/host masks and read shadows, so the
/// guest sees what it set), the flat segments, a busy TSS, no LDT, RIP,
/// RFLAGS, DR7, EFER, PAT, and the fields VM entry checks (link pointer,
/// activity and interruptibility state).
pub fn guest_state(ms: &X86ModeState, rip: u64, caps: &Caps, c: &Controls) -> Vec<(u32, u64)> {
    let mut v = Vec::with_capacity(64);
    let cr0 = guest_cr0(ms.cr0, caps, c.unrestricted());
    let cr4 = guest_cr4(ms.cr4, caps);
    v.extend([
        (guest::CR0, cr0),
        (guest::CR3, ms.cr3),
        (guest::CR4, cr4),
        // Every bit the hypervisor forces is the host's: reads see the
        // shadow, writes of them exit. With unrestricted guest PE and PG
        // are the guest's own (it turns paging and long mode on itself: the
        // CPU keeps EFER.LMA and saves it into the "IA-32e mode guest"
        // entry control at every exit, SDM 27.2).
        (
            control::CR0_GUEST_HOST_MASK,
            cr0_mask(caps, c.unrestricted()),
        ),
        (control::CR0_READ_SHADOW, ms.cr0),
        (
            control::CR4_GUEST_HOST_MASK,
            caps.cr4_fixed.0 | !caps.cr4_fixed.1,
        ),
        (control::CR4_READ_SHADOW, ms.cr4),
        (guest::DR7, 0x400),
        (guest::RSP, 0),
        (guest::RIP, rip),
        (guest::RFLAGS, ms.rflags),
        (guest::IA32_EFER_FULL, ms.efer),
        (guest::IA32_PAT_FULL, PAT_RESET),
        (guest::IA32_DEBUGCTL_FULL, 0),
        (guest::LINK_PTR_FULL, u64::MAX),
        (guest::ACTIVITY_STATE, 0),
        (guest::INTERRUPTIBILITY_STATE, 0),
        (guest::PENDING_DBG_EXCEPTIONS, 0),
        (guest::IA32_SYSENTER_CS, 0),
        (guest::IA32_SYSENTER_ESP, 0),
        (guest::IA32_SYSENTER_EIP, 0),
        (guest::GDTR_BASE, 0),
        (guest::GDTR_LIMIT, 0xffff),
        (guest::IDTR_BASE, 0),
        (guest::IDTR_LIMIT, 0xffff),
    ]);
    let seg = |sel, base, limit, ar, s: &Segment| {
        [
            (sel, u64::from(s.selector)),
            (base, s.base),
            (limit, u64::from(s.limit)),
            (ar, u64::from(s.vmx_access_rights())),
        ]
    };
    v.extend(seg(
        guest::CS_SELECTOR,
        guest::CS_BASE,
        guest::CS_LIMIT,
        guest::CS_ACCESS_RIGHTS,
        &ms.cs,
    ));
    for (sel, base, limit, ar) in [
        (
            guest::SS_SELECTOR,
            guest::SS_BASE,
            guest::SS_LIMIT,
            guest::SS_ACCESS_RIGHTS,
        ),
        (
            guest::DS_SELECTOR,
            guest::DS_BASE,
            guest::DS_LIMIT,
            guest::DS_ACCESS_RIGHTS,
        ),
        (
            guest::ES_SELECTOR,
            guest::ES_BASE,
            guest::ES_LIMIT,
            guest::ES_ACCESS_RIGHTS,
        ),
        (
            guest::FS_SELECTOR,
            guest::FS_BASE,
            guest::FS_LIMIT,
            guest::FS_ACCESS_RIGHTS,
        ),
        (
            guest::GS_SELECTOR,
            guest::GS_BASE,
            guest::GS_LIMIT,
            guest::GS_ACCESS_RIGHTS,
        ),
    ] {
        v.extend(seg(sel, base, limit, ar, &ms.data));
    }
    v.extend(seg(
        guest::TR_SELECTOR,
        guest::TR_BASE,
        guest::TR_LIMIT,
        guest::TR_ACCESS_RIGHTS,
        &ms.tr,
    ));
    v.extend([
        (guest::LDTR_SELECTOR, 0),
        (guest::LDTR_BASE, 0),
        (guest::LDTR_LIMIT, 0),
        (guest::LDTR_ACCESS_RIGHTS, AR_UNUSABLE),
    ]);
    v
}

/// Control fields this hypervisor keeps at 0 (SDM 24.6-24.8): no #PF
/// error-code filter, no CR3 targets, no MSR load/store lists, no event
/// to inject yet. Written explicitly: VMCLEAR leaves a VMCS's contents
/// undefined.
pub const ZERO_FIELDS: [u32; 7] = [
    control::PAGE_FAULT_ERR_CODE_MASK,
    control::PAGE_FAULT_ERR_CODE_MATCH,
    control::CR3_TARGET_COUNT,
    control::VMEXIT_MSR_STORE_COUNT,
    control::VMEXIT_MSR_LOAD_COUNT,
    control::VMENTRY_MSR_LOAD_COUNT,
    control::VMENTRY_INTERRUPTION_INFO_FIELD,
];

/// Access rights: the segment is unusable (SDM 24.4.1).
pub const AR_UNUSABLE: u64 = 1 << 16;

/// Why VM entry would refuse a guest state: the field and the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadGuestState {
    pub field: &'static str,
    pub rule: &'static str,
}

fn bad(field: &'static str, rule: &'static str) -> Result<(), BadGuestState> {
    Err(BadGuestState { field, rule })
}

/// The VM-entry checks on a guest state (`fields`, as [`guest_state`]
/// makes them or as a backend later changes them) with the VM-entry
/// controls `entry` (SDM 26.3.1; a subset: control registers, EFER, CS,
/// SS, TR, LDTR, RFLAGS, GDTR/IDTR limits, activity state, link pointer).
pub fn check_guest_state(
    fields: &[(u32, u64)],
    entry: u32,
    caps: &Caps,
    unrestricted: bool,
) -> Result<(), BadGuestState> {
    let get = |f: u32| {
        fields
            .iter()
            .rev()
            .find(|(e, _)| *e == f)
            .map_or(0, |&(_, v)| v)
    };
    let cr0 = get(guest::CR0);
    let cr4 = get(guest::CR4);
    let efer = get(guest::IA32_EFER_FULL);
    let ia32e = entry & ENTRY_IA32E_GUEST != 0;
    if guest_cr0(cr0, caps, unrestricted) != cr0 {
        return bad("CR0", "a VMX fixed bit differs (IA32_VMX_CR0_FIXED0/1)");
    }
    if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
        return bad("CR0", "PG without PE");
    }
    if guest_cr4(cr4, caps) != cr4 || cr4 & CR4_VMXE == 0 {
        return bad("CR4", "a VMX fixed bit differs (IA32_VMX_CR4_FIXED0/1)");
    }
    if ia32e && (cr0 & CR0_PG == 0 || cr4 & CR4_PAE == 0) {
        return bad("CR0/CR4", "an IA-32e mode guest needs PG and PAE");
    }
    if entry & ENTRY_LOAD_EFER != 0
        && ((efer & EFER_LMA != 0) != ia32e
            || (cr0 & CR0_PG != 0 && (efer & EFER_LMA != 0) != (efer & EFER_LME != 0)))
    {
        return bad(
            "IA32_EFER",
            "LMA must equal the IA-32e mode guest control (and LME with paging)",
        );
    }
    let ar = |f: u32| get(f) as u32;
    let cs_ar = ar(guest::CS_ACCESS_RIGHTS);
    let (cs_l, cs_db) = (cs_ar & (1 << 13) != 0, cs_ar & (1 << 14) != 0);
    if ia32e && cs_l && cs_db {
        return bad("CS access rights", "L and D/B both set in IA-32e mode");
    }
    if cs_ar & (1 << 7) == 0 || cs_ar & (1 << 4) == 0 || cs_ar & 0x8 == 0 {
        return bad("CS access rights", "not a present code segment");
    }
    let ss_ar = ar(guest::SS_ACCESS_RIGHTS);
    if ss_ar & (1 << 16) == 0 && (ss_ar >> 5 & 3) != (cs_ar >> 5 & 3) && !unrestricted {
        return bad("SS access rights", "SS.DPL differs from CS.DPL");
    }
    let tr_ar = ar(guest::TR_ACCESS_RIGHTS);
    let tr_type = tr_ar & 0xf;
    if tr_ar & (1 << 16) != 0
        || tr_ar & (1 << 4) != 0
        || tr_ar & (1 << 7) == 0
        || !(tr_type == 11 || (tr_type == 3 && !ia32e))
    {
        return bad(
            "TR access rights",
            "TR must be a usable, present, busy TSS (32/64-bit in IA-32e mode)",
        );
    }
    let ldtr_ar = ar(guest::LDTR_ACCESS_RIGHTS);
    if ldtr_ar & (1 << 16) == 0
        && (ldtr_ar & 0xf != 2 || ldtr_ar & (1 << 4) != 0 || ldtr_ar & (1 << 7) == 0)
    {
        return bad(
            "LDTR access rights",
            "a usable LDTR must be a present LDT descriptor",
        );
    }
    let rflags = get(guest::RFLAGS);
    if rflags & 2 == 0 || rflags & !0x3f_7fd7 != 0 {
        return bad("RFLAGS", "bit 1 must be 1 and reserved bits 0");
    }
    if get(guest::GDTR_LIMIT) > 0xffff || get(guest::IDTR_LIMIT) > 0xffff {
        return bad("GDTR/IDTR limit", "above 0xffff");
    }
    if get(guest::ACTIVITY_STATE) > 3 {
        return bad("activity state", "not 0-3");
    }
    if get(guest::LINK_PTR_FULL) != u64::MAX {
        return bad(
            "VMCS link pointer",
            "must be all ones without VMCS shadowing",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::haswell;
    use super::*;
    use vmm::backend::{x86_mode_state, EntryMode};

    fn setup() -> (Caps, Controls) {
        let caps = Caps::read(haswell);
        let c = Controls::for_caps(&caps).unwrap();
        (caps, c)
    }

    #[test]
    fn controls_for_bochs_haswell() {
        let (_, c) = setup();
        assert_eq!(
            c.pin & (PIN_EXTERNAL_INTERRUPT | PIN_NMI),
            PIN_EXTERNAL_INTERRUPT | PIN_NMI
        );
        assert_ne!(c.pin & 0x16, 0, "default-1 pin bits kept");
        assert_ne!(c.proc & PROC_SECONDARY, 0);
        assert_eq!(c.proc & PROC_INTERRUPT_WINDOW, 0, "armed only when needed");
        assert_eq!(
            c.proc2 & (PROC2_EPT | PROC2_VPID | PROC2_UNRESTRICTED),
            PROC2_EPT | PROC2_VPID | PROC2_UNRESTRICTED
        );
        assert_ne!(c.exit & EXIT_HOST_64, 0);
        assert_eq!(c.entry & ENTRY_IA32E_GUEST, 0);
        assert_ne!(c.entry_for(EFER_LMA | EFER_LME) & ENTRY_IA32E_GUEST, 0);
        assert_eq!(c.fields(0)[4].1 & u64::from(ENTRY_IA32E_GUEST), 0);
    }

    #[test]
    fn missing_controls_are_named() {
        let caps = Caps::read(haswell);
        let no_ept = Caps {
            procbased2: Some(0),
            ..caps
        };
        assert_eq!(
            Controls::for_caps(&no_ept),
            Err(Missing {
                field: "secondary processor-based",
                bits: PROC2_EPT
            })
        );
        let no_hlt = Caps {
            procbased: caps.procbased & !(u64::from(PROC_HLT) << 32),
            ..caps
        };
        assert_eq!(Controls::for_caps(&no_hlt).unwrap_err().bits, PROC_HLT);
        // Without unrestricted guest the controls still work (optional).
        let no_ug = Caps {
            procbased2: caps
                .procbased2
                .map(|v| v & !(u64::from(PROC2_UNRESTRICTED) << 32)),
            ..caps
        };
        assert!(!Controls::for_caps(&no_ug).unwrap().unrestricted());
    }

    #[test]
    fn every_entry_mode_passes_the_entry_checks() {
        let (caps, c) = setup();
        for mode in [
            EntryMode::X86Long64 { cr3: 0x1000 },
            EntryMode::X86Protected32,
            EntryMode::X86Real { cs_base: 0x9_0000 },
        ] {
            let ms = x86_mode_state(mode).unwrap();
            let f = guest_state(&ms, 0x10_0000, &caps, &c);
            assert_eq!(
                check_guest_state(&f, c.entry_for(ms.efer), &caps, true),
                Ok(()),
                "{mode:?}"
            );
            // The guest reads back the CR0/CR4 it was given.
            let get = |e: u32| f.iter().find(|x| x.0 == e).unwrap().1;
            assert_eq!(get(control::CR0_READ_SHADOW), ms.cr0);
            assert_eq!(get(control::CR4_READ_SHADOW), ms.cr4);
            assert_ne!(get(guest::CR4) & CR4_VMXE, 0);
            assert_ne!(get(control::CR4_GUEST_HOST_MASK) & CR4_VMXE, 0);
        }
        // Protected and real mode without paging need unrestricted guest:
        // CR0.PE/PG are then fixed to 1.
        let ms = x86_mode_state(EntryMode::X86Protected32).unwrap();
        let no_ug = Controls {
            proc2: c.proc2 & !PROC2_UNRESTRICTED,
            ..c
        };
        let f = guest_state(&ms, 0, &caps, &no_ug);
        let cr0 = f.iter().find(|x| x.0 == guest::CR0).unwrap().1;
        assert_eq!(cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
    }

    #[test]
    fn bad_guest_states_are_named() {
        let (caps, c) = setup();
        let ms = x86_mode_state(EntryMode::X86Long64 { cr3: 0x1000 }).unwrap();
        let good = guest_state(&ms, 0x10_0000, &caps, &c);
        let entry = c.entry_for(ms.efer);
        let with = |f: u32, v: u64| {
            let mut g = good.clone();
            g.push((f, v));
            check_guest_state(&g, entry, &caps, true).unwrap_err().field
        };
        assert_eq!(with(guest::CR4, 0x20), "CR4");
        assert_eq!(with(guest::CR0, 0x8000_0020), "CR0");
        assert_eq!(with(guest::IA32_EFER_FULL, 0), "IA32_EFER");
        assert_eq!(with(guest::CS_ACCESS_RIGHTS, 0x609b), "CS access rights");
        assert_eq!(with(guest::TR_ACCESS_RIGHTS, 0x10000), "TR access rights");
        assert_eq!(with(guest::TR_ACCESS_RIGHTS, 0x83), "TR access rights");
        assert_eq!(
            with(guest::LDTR_ACCESS_RIGHTS, 0x82 | 0x10),
            "LDTR access rights"
        );
        assert_eq!(with(guest::RFLAGS, 0), "RFLAGS");
        assert_eq!(with(guest::RFLAGS, 0x2 | 1 << 22), "RFLAGS");
        assert_eq!(with(guest::GDTR_LIMIT, 0x1_0000), "GDTR/IDTR limit");
        assert_eq!(with(guest::ACTIVITY_STATE, 4), "activity state");
        assert_eq!(with(guest::LINK_PTR_FULL, 0), "VMCS link pointer");
        // Long mode without the IA-32e entry control.
        assert_eq!(
            check_guest_state(&good, c.entry, &caps, true)
                .unwrap_err()
                .field,
            "IA32_EFER"
        );
    }
}
