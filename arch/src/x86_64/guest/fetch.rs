//! The instruction at CS:RIP, read through the guest's own page tables
//! ([`super::walk`]): its bytes for the decoder, the byte-at-RIP memo
//! ([`RipWalk`]), and the next RIP of an intercepted instruction when the
//! exit does not give it.
//!
//! The next RIP is an SVM concern in practice: without NRIPS (CPUID
//! 8000_000A EDX bit 3; no QEMU TCG model has it) the VMCB does not hold
//! it, and prefixes (`2E 0F A2` is a CPUID too) make an intercepted
//! instruction longer than its bare form, so resuming at RIP + bare length
//! would run its tail as code. VMX always reports the VM-exit instruction
//! length for instruction exits (SDM Vol. 3C §28.2.5). The walk and the
//! memo are the same for both, so they live here.

use core::cell::Cell;

use super::decode::{self, MAX_INSN};
use super::walk::{self, GuestPhys, HostMapped, HostPhys, PagingRegs};
use super::GuestState;

/// Up to `buf.len()` bytes at CS:RIP through the guest's page tables;
/// returns how many could be read.
#[inline]
pub fn fetch_at_rip(s: &impl GuestState, mem: &impl GuestPhys, buf: &mut [u8]) -> usize {
    walk::fetch(mem, &s.paging(), s.rip_linear(), buf)
}

/// The bytes of the instruction at CS:RIP into `buf`: `assist` when the
/// exit provided them (SVM decode assists; empty otherwise), else fetched
/// through the guest's page tables.
#[inline]
pub fn insn_bytes(
    s: &impl GuestState,
    mem: &impl GuestPhys,
    assist: &[u8],
    buf: &mut [u8; MAX_INSN],
) -> usize {
    let n = assist.len().min(MAX_INSN);
    if n > 0 {
        buf[..n].copy_from_slice(&assist[..n]);
        return n;
    }
    fetch_at_rip(s, mem, buf)
}

/// The fast path for the next RIP of an intercepted instruction whose bare
/// form is `len` bytes starting with `first`: when `first` is not a prefix
/// byte (0F, F4) and the byte at RIP equals it, the instruction that exited
/// has no prefixes, so it is the bare form: one byte read instead of a full
/// decode. `None`: decode it ([`decoded_next_rip`]). The memory arguments
/// are [`RipWalk::byte_at_rip`]'s.
#[inline]
pub fn bare_next_rip<S: GuestState, H: HostPhys, M: HostMapped>(
    s: &S,
    memo: &mut RipWalk,
    host: &H,
    generation: u64,
    mem: impl FnOnce() -> M,
    len: u64,
    first: u8,
) -> Option<u64> {
    (!decode::is_prefix(first) && memo.byte_at_rip(s, host, generation, mem) == Some(first))
        .then(|| s.rip().wrapping_add(len))
}

/// The next RIP from the decoded length of the instruction in `bytes` (the
/// bytes at CS:RIP); `len` is the fallback when they cannot be decoded.
#[inline]
pub fn decoded_next_rip(s: &impl GuestState, bytes: &[u8], len: u64) -> u64 {
    let len = decode::insn_len(bytes, s.bitness()).map_or(len, |l| l as u64);
    s.rip().wrapping_add(len)
}

/// Most entries one guest walk reads (4-level long mode).
const RIP_WALK_MAX: usize = 4;

/// The guest walk behind the last byte-at-RIP read, kept so that the next
/// exit at the same code page REVALIDATES it instead of walking again.
///
/// Not a TLB: the guest may rewrite its page tables without any exit (with
/// nested paging or EPT its tables are plain RAM), so a translation kept on
/// trust could be stale. But `walk::translate` is a pure function of the
/// paging registers, the linear page, and the values of the entries it
/// reads, and each entry's location follows from the registers and the
/// entries read before it. So when the registers, the page and the stage-2
/// generation (which fixes where every guest-physical table lives in host
/// memory) are the same, and every recorded entry still holds its recorded
/// value when read again now, a fresh walk would read the same entries and
/// give the same result. The check re-reads each entry (3-4 host loads)
/// instead of repeating the whole walk; any change, including the A/D bits
/// the CPU sets, makes it walk again. 32-bit (non-PAE) walks, whose entries
/// are 4 bytes, are not recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct RipWalk {
    valid: bool,
    regs: PagingRegs,
    generation: u64,
    /// The linear page (`la & !0xfff`) and the host address of its first byte.
    page: u64,
    host_page: u64,
    len: usize,
    /// (host address, value) of each entry the walk read, in order.
    entries: [(u64, u64); RIP_WALK_MAX],
}

impl RipWalk {
    /// Whether a walk is recorded.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// How many guest entries the recorded walk read.
    pub fn entries_read(&self) -> usize {
        self.len
    }

    /// The stage-2 generation of the recorded walk.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The byte at CS:RIP (the exit path's prefix check): the last walk
    /// revalidated when it was for the same page, else one recorded walk;
    /// then the aligned u64 around the byte (same page, so the same RAM).
    ///
    /// `host` reads host memory, `generation` is the stage-2 generation
    /// now, and `mem` makes the guest-physical view for a full walk (only
    /// then: building it on the fast path costs stores on every exit).
    #[inline]
    pub fn byte_at_rip<S: GuestState, H: HostPhys, M: HostMapped>(
        &mut self,
        s: &S,
        host: &H,
        generation: u64,
        mem: impl FnOnce() -> M,
    ) -> Option<u8> {
        let la = s.rip_linear();
        let regs = s.paging();
        let host_page = if self.valid
            && self.page == la & !0xfff
            && self.generation == generation
            && self.regs == regs
            && self.entries[..self.len.min(RIP_WALK_MAX)]
                .iter()
                .all(|&(hpa, v)| host.read_phys_u64(hpa) == Some(v))
        {
            self.host_page
        } else {
            self.walk_again(&mem(), la, regs, generation)?
        };
        let at = host_page + (la & 0xfff);
        let word = host.read_phys_u64(at & !7)?;
        Some((word >> (8 * (at & 7))) as u8)
    }

    /// The full walk for [`Self::byte_at_rip`], recorded for the next exit.
    #[cold]
    fn walk_again<M: HostMapped>(
        &mut self,
        mem: &M,
        la: u64,
        regs: PagingRegs,
        generation: u64,
    ) -> Option<u64> {
        self.valid = false;
        let rec = Recording {
            mem,
            log: Cell::new(([(0, 0); RIP_WALK_MAX], 0, true)),
        };
        let gpa = walk::translate(&rec, &regs, la).ok()?;
        // Stage-2 leaves are at least 4 KiB, so the page is contiguous in
        // host memory.
        let host_page = mem.host_pa(gpa)? - (gpa & 0xfff);
        let (entries, len, ok) = rec.log.get();
        *self = RipWalk {
            valid: ok,
            regs,
            generation,
            page: la & !0xfff,
            host_page,
            len,
            entries,
        };
        Some(host_page)
    }
}

/// Guest-physical reads that record the host address and value of each
/// 8-byte entry a walk reads (for [`RipWalk`]); any other kind of read, or
/// more than [`RIP_WALK_MAX`] entries, makes the record unusable.
struct Recording<'a, M: HostMapped> {
    mem: &'a M,
    log: Cell<WalkLog>,
}

/// The entries read so far, how many, and whether the record is usable.
type WalkLog = ([(u64, u64); RIP_WALK_MAX], usize, bool);

impl<M: HostMapped> GuestPhys for Recording<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let (e, n, _) = self.log.get();
        self.log.set((e, n, false));
        self.mem.read(gpa, buf)
    }

    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let (mut e, n, ok) = self.log.get();
        let hpa = if gpa & 7 == 0 {
            self.mem.host_pa(gpa)
        } else {
            None
        };
        let Some(hpa) = hpa else {
            self.log.set((e, n, false));
            return self.mem.read_u64(gpa);
        };
        let v = self.mem.read_host_u64(hpa)?;
        match e.get_mut(n) {
            Some(slot) => {
                *slot = (hpa, v);
                self.log.set((e, n + 1, ok));
            }
            None => self.log.set((e, n, false)),
        }
        Some(v)
    }
}
