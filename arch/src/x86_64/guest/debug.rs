//! The guest's debug registers under DR-access intercepts (rule
//! `dr_intercept`): every `MOV DRn` exits and is emulated here.
//!
//! DR0-DR3 are kept as the guest wrote them and loaded into the CPU while
//! the vCPU is bound (neither VMRUN nor VM entry switches them; the
//! hypervisor never uses them itself). DR7 is kept as the guest wrote it
//! and given to the CPU without GD: general detect is not emulated, every
//! DR access exits anyway. DR6 lives where the backend keeps it
//! ([`GuestState::dr6`]: the VMCB on SVM).

use super::decode::MovDr;
use super::GuestState;
use vmm::event::Event;

/// DR6/DR7 reserved bits (SDM Vol. 3B §17.2.3/4, APM Vol. 2 §13.1.1.3/4):
/// DR6 bits 11:4 and 31:16 read as one, bit 12 and bits 63:32 as zero; DR7
/// bit 10 reads as one, bits 11, 12, 14, 15 and 63:32 as zero.
pub const DR6_FIXED1: u64 = 0xffff_0ff0;
pub const DR6_WRITABLE: u64 = 0xe00f;
pub const DR7_FIXED1: u64 = 0x400;
pub const DR7_WRITABLE: u64 = 0xffff_23ff;
/// DR7.GD: general detect (#DB on the next DR access).
pub const DR7_GD: u64 = 1 << 13;
/// CR4.DE: DR4/DR5 are reserved (#UD) instead of aliasing DR6/DR7.
const CR4_DE: u64 = 1 << 3;

/// The guest's DR0-3 and DR7 as it wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    pub dr: [u64; 4],
    pub dr7: u64,
}

impl Default for DebugRegs {
    /// The reset state: DR0-3 zero, DR7 0x400.
    fn default() -> Self {
        DebugRegs {
            dr: [0; 4],
            dr7: DR7_FIXED1,
        }
    }
}

/// What the backend does after [`DebugRegs::emulate_mov`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MovDrOutcome {
    /// The instruction faults; RIP stays.
    Fault(Event),
    /// The guest wrote a debug register; `load_dr03`: DR0-3 changed, load
    /// them into the CPU.
    Written { load_dr03: bool },
    /// The guest reads: this value goes into the instruction's GPR.
    Read(u64),
}

impl DebugRegs {
    /// Sets the guest's DR7 (reserved bits forced) and the DR7 the CPU
    /// applies (the same without GD).
    #[inline]
    pub fn set_dr7(&mut self, s: &mut impl GuestState, v: u64) {
        self.dr7 = (v & DR7_WRITABLE) | DR7_FIXED1;
        s.set_dr7(self.dr7 & !DR7_GD);
    }

    /// Emulates the decoded `MOV DRn, reg` / `MOV reg, DRn` `m`; `gpr` is
    /// the value of its GPR (the source of a write). On success the backend
    /// stores a read value, loads DR0-3 if asked, and completes the
    /// instruction (RIP + `m.len`).
    pub fn emulate_mov(&mut self, s: &mut impl GuestState, m: &MovDr, gpr: u64) -> MovDrOutcome {
        let mut dr = m.dr;
        if dr == 4 || dr == 5 {
            // DR4/DR5 alias DR6/DR7 unless CR4.DE (then #UD).
            if s.cr4() & CR4_DE != 0 {
                return MovDrOutcome::Fault(Event::Undefined);
            }
            dr += 2;
        }
        if m.to_dr {
            let v = gpr;
            if (dr >= 6) && v >> 32 != 0 {
                return MovDrOutcome::Fault(Event::general_protection(0));
            }
            match dr {
                0..=3 => {
                    self.dr[usize::from(dr)] = v;
                    return MovDrOutcome::Written { load_dr03: true };
                }
                6 => s.set_dr6((v & DR6_WRITABLE) | DR6_FIXED1),
                _ => self.set_dr7(s, v),
            }
            MovDrOutcome::Written { load_dr03: false }
        } else {
            let v = match dr {
                0..=3 => self.dr[usize::from(dr)],
                6 => s.dr6(),
                _ => self.dr7,
            };
            // A 32-bit destination in legacy mode: the upper half is zero anyway.
            MovDrOutcome::Read(if s.bitness() == 64 {
                v
            } else {
                v & 0xffff_ffff
            })
        }
    }
}

/// Loads the guest's DR0-DR3 into the CPU's debug registers (at bind and
/// after the guest writes one).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub fn load_dr0_3(drs: &[u64; 4]) {
    // SAFETY: DR0-DR3 only hold addresses; breakpoints are armed by DR7,
    // which the host keeps at 0x400 (#VMEXIT and VM exit reset it) and only
    // the guest's DR7 enables while the guest runs.
    unsafe {
        core::arch::asm!(
            "mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
            in(reg) drs[0], in(reg) drs[1], in(reg) drs[2], in(reg) drs[3],
            options(nostack, nomem)
        )
    };
}
