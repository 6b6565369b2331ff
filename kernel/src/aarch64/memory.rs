//! The EL2 stage-1 identity map and turning the MMU on.
//!
//! Done in the entry path (start.rs), before `kernel_main`, so that no
//! atomic read-modify-write (spin locks, `log::set_logger`) ever runs with
//! the MMU off: with SCTLR_EL2.M = 0 all data accesses are Device-nGnRnE,
//! where exclusives are IMPLEMENTATION DEFINED and hang on some real cores.
//!
//! Layout (identity, built with [`arch::paging::PageTable`] in the
//! [`Aarch64Stage1`] format, blocks up to 1 GiB where rule `s2_block`'s
//! alignment conditions hold):
//! - RAM (DTB `/memory` ∪ RAM kinds of the boot memory map): Normal
//!   write-back, read/write, execute-never;
//! - the kernel image: .text read-only executable, .rodata read-only,
//!   .data/.bss and the boot stack read/write, the boot stack's guard
//!   (64 KiB below it) unmapped;
//! - everything below 4 GiB that is not RAM (UART, GIC, virtio-mmio, flash):
//!   Device-nGnRE, read/write, execute-never; device ranges the DTB names
//!   above 4 GiB (UART, GIC) likewise. The rest of the 48-bit space faults.
//!
//! - one EL2 stack per secondary CPU the DTB lists for PSCI (at most
//!   [`MAX_SECONDARIES`]), each [`STACK_SIZE`] aligned to twice that with
//!   the [`STACK_SIZE`] below it unmapped, as the boot stack (the rule of
//!   `exceptions.rs`); carved out before the MMU is on, so splitting the
//!   RAM blocks around the guards needs no break-before-make on live
//!   mappings.
//!
//! Table frames come from a [`FrameAllocator`] over the boot memory map; the
//! frames used are then reserved in that map (as `Kernel`), so the
//! allocator `kernel_main` builds never hands them out again.

pub use super::exceptions::STACK_SIZE;
use arch::aarch64::mmu;
use arch::paging::{Aarch64Stage1, Attrs, MapError, PageSize, PageTable, TableAccess, TableAlloc};
use boot::dtb::DtbInfo;
use boot::frame::FrameAllocator;
use boot::{BootInfo, MemoryKind};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;
/// Normal (RAM) ranges kept while building; far above what firmware reports.
const MAX_RANGES: usize = 320;
/// Contiguous runs of table frames remembered for the reservation.
const MAX_RUNS: usize = 32;

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __boot_stack_guard: u8;
    static __boot_stack_bottom: u8;
    static __boot_stack_top: u8;
    static __image_end: u8;
}

/// Link-time layout of the image (physical = virtual).
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub start: u64,
    pub text_end: u64,
    pub rodata_end: u64,
    pub guard: u64,
    pub stack_bottom: u64,
    pub stack_top: u64,
    pub end: u64,
}

pub fn image_layout() -> ImageLayout {
    ImageLayout {
        start: &raw const __image_start as u64,
        text_end: &raw const __text_end as u64,
        rodata_end: &raw const __rodata_end as u64,
        guard: &raw const __boot_stack_guard as u64,
        stack_bottom: &raw const __boot_stack_bottom as u64,
        stack_top: &raw const __boot_stack_top as u64,
        end: &raw const __image_end as u64,
    }
}

/// Secondary CPUs that get an EL2 stack at most (more stay off).
pub const MAX_SECONDARIES: usize = 31;

/// The secondary CPUs' stacks: one block of `2 * count + 1` slots of
/// [`STACK_SIZE`] from `base` (aligned to `2 * STACK_SIZE`); slot `2i + 1`
/// is stack `i`'s guard (unmapped), slot `2i + 2` stack `i`. Slot 0 is
/// ordinary RAM (not reserved). Set once by [`setup`].
static AP_STACKS_BASE: AtomicU64 = AtomicU64::new(0);
static AP_STACKS_COUNT: AtomicU64 = AtomicU64::new(0);

/// How many secondary-CPU stacks [`setup`] made.
pub fn secondary_stacks() -> usize {
    AP_STACKS_COUNT.load(Ordering::Relaxed) as usize
}

/// The top (initial SP) of secondary stack `i` (< [`secondary_stacks`]).
pub fn secondary_stack_top(i: usize) -> Option<u64> {
    (i < secondary_stacks())
        .then(|| AP_STACKS_BASE.load(Ordering::Relaxed) + (2 * i as u64 + 3) * STACK_SIZE)
}

/// Whether the MMU is on (then table edits need TLB maintenance).
static MMU_ON: AtomicBool = AtomicBool::new(false);
/// TTBR0_EL2 of the kernel's tables, 0 until built.
static ROOT: AtomicU64 = AtomicU64::new(0);

/// Table memory through the identity map (MMU off: physical; on: identity).
pub struct IdentityAccess;

impl TableAccess for IdentityAccess {
    fn read(&self, table_pa: u64, index: usize) -> u64 {
        assert!(index < arch::paging::ENTRIES * arch::paging::MAX_ROOT_TABLES);
        // SAFETY: `table_pa` is a table frame this module allocated (or the
        // root), identity-mapped (or accessed with the MMU off), and the
        // index is within the (possibly concatenated) table.
        unsafe { core::ptr::read_volatile((table_pa as *const u64).add(index)) }
    }

    fn write(&mut self, table_pa: u64, index: usize, entry: u64) {
        assert!(index < arch::paging::ENTRIES * arch::paging::MAX_ROOT_TABLES);
        // SAFETY: as for `read`; the frames belong to the page tables only.
        unsafe { core::ptr::write_volatile((table_pa as *mut u64).add(index), entry) }
    }

    fn invalidate(&mut self, _input: u64, _size: u64) {
        if MMU_ON.load(Ordering::Relaxed) {
            mmu::flush_tlb_el2();
        }
    }
}

/// Table frames from the boot frame allocator, zeroed, remembered as runs of
/// contiguous frames so they can be reserved afterwards.
struct TrackingAlloc {
    frames: FrameAllocator,
    runs: [(u64, u64); MAX_RUNS],
    nruns: usize,
    count: usize,
}

impl TableAlloc for TrackingAlloc {
    fn alloc_table(&mut self) -> Option<u64> {
        let f = self.frames.alloc_frame()?;
        match self.runs[..self.nruns].last_mut() {
            Some(last) if last.1 == f => last.1 = f + PAGE,
            _ if self.nruns < MAX_RUNS => {
                self.runs[self.nruns] = (f, f + PAGE);
                self.nruns += 1;
            }
            // Too scattered to remember: refuse rather than leak it.
            _ => return None,
        }
        // SAFETY: the frame was just handed out by the allocator, so it is
        // usable RAM nobody else uses, accessed by its physical address with
        // the MMU off.
        unsafe { core::ptr::write_bytes(f as *mut u8, 0, PAGE as usize) };
        self.count += 1;
        Some(f)
    }
}

/// What [`setup`] built, for the log.
#[derive(Clone, Copy, Debug)]
pub struct MmuSummary {
    pub root: u64,
    pub tables: usize,
    pub normal_ranges: usize,
    pub normal_bytes: u64,
    pub device_ranges: usize,
    pub tcr: u64,
}

#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    Map(MapError, u64, u64),
    TooManyRanges,
    BadParange(u8),
    MemoryMapFull,
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Map(e, s, l) => write!(f, "mapping {s:#x}+{l:#x} failed: {e:?}"),
            SetupError::TooManyRanges => write!(f, "more than {MAX_RANGES} RAM ranges"),
            SetupError::BadParange(p) => write!(f, "reserved ID_AA64MMFR0_EL1.PARange {p}"),
            SetupError::MemoryMapFull => write!(f, "boot memory map full"),
        }
    }
}

/// A small sorted set of disjoint page-aligned ranges.
struct Ranges {
    r: [(u64, u64); MAX_RANGES],
    n: usize,
}

impl Ranges {
    const fn new() -> Self {
        Self {
            r: [(0, 0); MAX_RANGES],
            n: 0,
        }
    }

    /// Adds `[start, end)` rounded outward to pages.
    fn add(&mut self, start: u64, end: u64) -> Result<(), SetupError> {
        let (s, e) = (
            start & !(PAGE - 1),
            end.saturating_add(PAGE - 1) & !(PAGE - 1),
        );
        if s >= e {
            return Ok(());
        }
        if self.n == MAX_RANGES {
            return Err(SetupError::TooManyRanges);
        }
        self.r[self.n] = (s, e);
        self.n += 1;
        Ok(())
    }

    /// Sorts and merges overlapping or touching ranges.
    fn normalize(&mut self) {
        let v = &mut self.r[..self.n];
        v.sort_unstable();
        let mut m = 0;
        for i in 0..v.len() {
            if m > 0 && v[i].0 <= v[m - 1].1 {
                v[m - 1].1 = v[m - 1].1.max(v[i].1);
            } else {
                v[m] = v[i];
                m += 1;
            }
        }
        self.n = m;
    }

    fn as_slice(&self) -> &[(u64, u64)] {
        &self.r[..self.n]
    }

    fn overlaps(&self, s: u64, e: u64) -> bool {
        self.as_slice().iter().any(|&(a, b)| s < b && a < e)
    }
}

/// [`setup`]'s two range sets (10 KiB), kept off the boot stack:
/// `prepare` and `setup` together came within a few hundred bytes of its
/// 64 KiB, and went past it (into the guard, unnoticed until the MMU came
/// on) with the secondary-stack code.
struct Scratch(core::cell::UnsafeCell<(Ranges, Ranges)>);

// SAFETY: only `setup` uses it, once, on the boot CPU alone.
unsafe impl Sync for Scratch {}

static SCRATCH: Scratch = Scratch(core::cell::UnsafeCell::new((Ranges::new(), Ranges::new())));

fn is_ram(kind: MemoryKind) -> bool {
    !matches!(kind, MemoryKind::BadMemory | MemoryKind::Reserved)
}

/// Builds the identity map, reserves its frames in `info.memory_map`,
/// invalidates stale cache lines over everything written so far, and turns
/// the EL2 MMU and caches on. Must run once, with the MMU off.
pub fn setup(info: &mut BootInfo, dtb: Option<&DtbInfo>) -> Result<MmuSummary, SetupError> {
    let img = image_layout();

    // SAFETY: setup runs once, on the boot CPU, before any other CPU is
    // started; nothing else touches the scratch sets.
    let (normal, device) = unsafe { &mut *SCRATCH.0.get() };
    *normal = Ranges::new();
    *device = Ranges::new();
    if let Some(d) = dtb {
        for m in d.memory.as_slice() {
            normal.add(m.base, m.end())?;
        }
    }
    for r in info.memory_map.regions().iter().filter(|r| is_ram(r.kind)) {
        normal.add(r.start, r.end)?;
    }
    normal.add(img.start, img.end)?;
    normal.normalize();

    // Device: the gaps below 4 GiB, plus DTB devices above it.
    let mut cursor = 0;
    for &(s, e) in normal.as_slice() {
        if s >= FOUR_GIB {
            break;
        }
        device.add(cursor, s)?;
        cursor = e;
    }
    if cursor < FOUR_GIB {
        device.add(cursor, FOUR_GIB)?;
    }
    if let Some(d) = dtb {
        let mut extra = [None; 3];
        extra[0] = d.uart;
        if let Some(g) = &d.gic {
            extra[1] = Some(g.distributor);
            extra[2] = g.redistributors.as_slice().first().copied();
        }
        for r in extra.into_iter().flatten() {
            let (s, e) = (r.base, r.end());
            if s >= FOUR_GIB && !normal.overlaps(s, e) && !device.overlaps(s, e) {
                device.add(s, e)?;
            }
        }
    }
    device.normalize();

    // Secondary stacks: before the tables, so their block is not counted
    // as table frames; reserved with them below.
    let secondaries = dtb.map_or(0, |d| {
        let me = arch::aarch64::regs::mpidr_affinity();
        d.cpus()
            .iter()
            .filter(|c| c.start_method(me, true) == boot::dtb::CpuStart::Psci)
            .count()
            .min(MAX_SECONDARIES)
    });
    let pa_range = arch::aarch64::id::Mmfr0(arch::aarch64::regs::id_aa64mmfr0_el1()).pa_range();
    let tcr = mmu::tcr_el2(pa_range).ok_or(SetupError::BadParange(pa_range))?;

    let mut alloc = TrackingAlloc {
        frames: FrameAllocator::new(&info.memory_map, super::FRAME_FLOOR),
        runs: [(0, 0); MAX_RUNS],
        nruns: 0,
        count: 0,
    };
    let ap_stacks = match secondaries {
        0 => None,
        n => {
            let slots = 2 * n as u64 + 1;
            alloc
                .frames
                .alloc_contiguous(slots * STACK_SIZE, 2 * STACK_SIZE)
                .map(|base| (base, n, slots))
        }
    };
    let mut access = IdentityAccess;
    let mut pt: PageTable<Aarch64Stage1> =
        PageTable::new(&mut alloc, &mut access).map_err(|e| SetupError::Map(e, 0, 0))?;
    let mut map = |s: u64, e: u64, attrs: Attrs| {
        if s >= e {
            return Ok(());
        }
        pt.map(
            &mut alloc,
            &mut access,
            s,
            s,
            e - s,
            attrs,
            PageSize::Size1G,
        )
        .map_err(|err| SetupError::Map(err, s, e - s))
    };

    let mut normal_bytes = 0;
    for &(s, e) in normal.as_slice() {
        normal_bytes += e - s;
        // RAM around the image; the image itself gets its own permissions.
        if e <= img.start || s >= img.end {
            map(s, e, Attrs::RW)?;
        } else {
            map(s, img.start.max(s), Attrs::RW)?;
            map(img.end.min(e), e, Attrs::RW)?;
        }
    }
    map(img.start, img.text_end, Attrs::RX)?;
    map(img.text_end, img.rodata_end, Attrs::RO)?;
    map(img.rodata_end, img.guard, Attrs::RW)?;
    // [guard, stack_bottom) stays unmapped.
    map(img.stack_bottom, img.stack_top, Attrs::RW)?;
    map(img.stack_top, img.end, Attrs::RW)?;
    for &(s, e) in device.as_slice() {
        map(s, e, Attrs::DEVICE)?;
    }
    // The secondary stacks' guards: RAM mapped above, unmapped here (the
    // MMU is off: no TLB to keep coherent; blocks split as needed).
    if let Some((base, n, _)) = ap_stacks {
        unmap_guards(&mut pt, &mut alloc, base, n)?;
    }
    let root = pt.root();

    let (runs, nruns, tables) = (alloc.runs, alloc.nruns, alloc.count);
    if let Some((base, _, slots)) = ap_stacks {
        info.memory_map
            .reserve(
                base + STACK_SIZE,
                base + slots * STACK_SIZE,
                MemoryKind::Kernel,
            )
            .map_err(|_| SetupError::MemoryMapFull)?;
    }
    for &(s, e) in &runs[..nruns] {
        info.memory_map
            .reserve(s, e, MemoryKind::Kernel)
            .map_err(|_| SetupError::MemoryMapFull)?;
    }

    // Everything written so far went to memory around the caches. Drop any
    // stale lines firmware left for it before the caches come on.
    // SAFETY: with the caches off nothing here has dirty lines worth keeping
    // (the loader cleaned the caches before jumping to us).
    unsafe {
        mmu::invalidate_dcache_range(img.start, img.end);
        for &(s, e) in &runs[..nruns] {
            mmu::invalidate_dcache_range(s, e);
        }
    }

    // SAFETY: the MMU is off (entry.rs set SCTLR_EL2), and the tables map
    // this code (.text RX), its stack and data (RW) and the UART (device)
    // at their physical addresses, with contents identical to memory.
    unsafe { mmu::enable_el2(mmu::MAIR_EL2, tcr, root, mmu::SCTLR_EL2_MMU_ON) };
    MMU_ON.store(true, Ordering::Relaxed);
    ROOT.store(root, Ordering::Relaxed);
    if let Some((base, n, _)) = ap_stacks {
        AP_STACKS_BASE.store(base, Ordering::Relaxed);
        AP_STACKS_COUNT.store(n as u64, Ordering::Relaxed);
    }

    Ok(MmuSummary {
        root,
        tables,
        normal_ranges: normal.n,
        normal_bytes,
        device_ranges: device.n,
        tcr,
    })
}

/// Unmaps the guards of the `n` secondary stacks from `base` (out of line:
/// `setup` runs on the boot stack under `prepare`'s large frame, and the
/// walk's locals must not add to it while the MMU is enabled).
#[inline(never)]
fn unmap_guards(
    pt: &mut PageTable<Aarch64Stage1>,
    alloc: &mut TrackingAlloc,
    base: u64,
    n: usize,
) -> Result<(), SetupError> {
    for i in 0..n as u64 {
        let guard = base + (2 * i + 1) * STACK_SIZE;
        pt.unmap(alloc, &mut IdentityAccess, guard, STACK_SIZE)
            .map_err(|e| SetupError::Map(e, guard, STACK_SIZE))?;
    }
    Ok(())
}

/// TTBR0_EL2 of the kernel's identity map (0 before [`setup`]), for later
/// users of the same tables (per-CPU stacks, SMP bring-up).
#[allow(dead_code)]
pub fn root() -> u64 {
    ROOT.load(Ordering::Relaxed)
}
