//! Physical memory access and the kernel's own page tables.
//!
//! Until [`init_memory`] runs, the kernel lives on the early map built by
//! `entry.s` (or [`enter_early_map`] on the UEFI path): the first 4 GiB,
//! identity, 2 MiB pages, everything writable and executable. `init_memory`
//! replaces it with the final identity map planned by
//! [`arch::x86_64::kmap::identity_spans`]: RAM write-back and
//! non-executable, non-RAM below 4 GiB uncached, page 0 unmapped, kernel
//! text read-only + executable, rodata read-only, data/bss writable, and an
//! unmapped guard page under the boot stack and each IST stack.

use arch::paging::{Attrs, MapError, PageSize, PageTable, TableAccess, TableAlloc, X86Long4};
use arch::x86_64::cpuid::{CpuInfo, Cpuid};
use arch::x86_64::instr;
use arch::x86_64::kmap::{identity_spans, SpanKind};
use boot::frame::FrameAllocator;
use boot::phys::PhysMemory;
use boot::{BootInfo, MemoryKind};
use core::sync::atomic::{AtomicU64, Ordering};

/// End of the early identity map.
pub const EARLY_MAP_LIMIT: u64 = 4 << 30;
const PAGE: u64 = 4096;

/// Physical addresses `[MAPPED_FLOOR, MAPPED_LIMIT)` are identity-mapped
/// (except the guard pages, which no boot structure can live in: they are
/// inside the kernel image).
static MAPPED_FLOOR: AtomicU64 = AtomicU64::new(1);
static MAPPED_LIMIT: AtomicU64 = AtomicU64::new(EARLY_MAP_LIMIT);

extern "C" {
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __kernel_end: u8;
    static __boot_stack_guard: u8;
    static __ist_df_guard: u8;
    static __ist_df_top: u8;
    static __ist_nmi_guard: u8;
    static __ist_nmi_top: u8;
    static __ist_mc_guard: u8;
    static __ist_mc_top: u8;
    static mut boot_pml4: [u64; 512];
    static mut boot_pdpt: [u64; 512];
    static mut boot_pd: [u64; 2048];
}

/// Physical range of the kernel image (text through bss and boot stacks).
pub fn kernel_image() -> (u64, u64) {
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

/// The guard pages, in address order: boot stack, #DF, NMI, #MC.
pub fn guard_pages() -> [(u64, &'static str); 4] {
    [
        (&raw const __boot_stack_guard as u64, "boot stack"),
        (&raw const __ist_df_guard as u64, "#DF IST stack"),
        (&raw const __ist_nmi_guard as u64, "NMI IST stack"),
        (&raw const __ist_mc_guard as u64, "#MC IST stack"),
    ]
}

/// Tops of the #DF, NMI and #MC IST stacks (16-byte aligned).
pub fn ist_tops() -> [u64; 3] {
    [
        &raw const __ist_df_top as u64,
        &raw const __ist_nmi_top as u64,
        &raw const __ist_mc_top as u64,
    ]
}

/// Physical memory read through the identity map, refusing anything
/// outside `[floor, limit)` so that a bad pointer from a boot loader or
/// firmware table gives an error instead of a page fault.
pub struct IdentityPhys {
    floor: u64,
    limit: u64,
}

impl IdentityPhys {
    /// Readable below `limit` (and what is mapped now, whichever is lower).
    pub fn new(limit: u64) -> Self {
        Self {
            floor: MAPPED_FLOOR.load(Ordering::Relaxed).max(1),
            limit,
        }
    }

    /// Everything the current kernel map covers.
    pub fn mapped() -> Self {
        Self::new(MAPPED_LIMIT.load(Ordering::Relaxed))
    }
}

impl PhysMemory for IdentityPhys {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr < self.floor || end > self.limit || len > isize::MAX as usize {
            return None;
        }
        // [addr, end) is non-null and inside the identity-mapped
        // range, so it is readable memory (RAM, ROM or firmware tables; the
        // callers only ask for boot structures). It is never written by
        // Rust code while the slice lives: boot structures are read-only to
        // the kernel and lie outside every region it allocates from.
        // SAFETY: readable identity-mapped boot memory, never written while borrowed (above).
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// Reads a `T` from physical memory.
///
/// `T` must be plain old data (integers and arrays of them): any bit
/// pattern read is accepted as a value.
pub fn read_phys<T: Copy + PlainData>(mem: &IdentityPhys, addr: u64) -> Option<T> {
    let b = mem.slice(addr, core::mem::size_of::<T>())?;
    // SAFETY: `b` holds size_of::<T>() readable bytes; PlainData types
    // accept any bit pattern; read_unaligned copes with any alignment.
    Some(unsafe { (b.as_ptr() as *const T).read_unaligned() })
}

/// An array of `len` `T`s in physical memory (empty if `len` is 0), or
/// `None` if it is unreadable or misaligned.
pub fn phys_array<T: PlainData>(mem: &IdentityPhys, addr: u64, len: usize) -> Option<&'static [T]> {
    if len == 0 {
        return Some(&[]);
    }
    let bytes = len.checked_mul(core::mem::size_of::<T>())?;
    let b = mem.slice(addr, bytes)?;
    if !addr.is_multiple_of(core::mem::align_of::<T>() as u64) {
        return None;
    }
    // `b` covers len * size_of::<T>() readable bytes at an address
    // aligned for T; PlainData types accept any bit pattern; boot
    // structures stay reserved (Loader) and unmodified for the whole run,
    // so the 'static lifetime holds.
    // SAFETY: aligned, readable, any bit pattern valid, unmodified for the run (above).
    Some(unsafe { core::slice::from_raw_parts(b.as_ptr() as *const T, len) })
}

/// Types for which every bit pattern is a valid value.
pub trait PlainData {}
impl PlainData for boot::handoff::Handoff {}
impl PlainData for boot::handoff::HandoffRegion {}
impl PlainData for boot::handoff::HandoffModule {}

/// UEFI path: leaves the firmware's page tables for the early map (the same
/// one `entry.s` builds on the Multiboot paths).
pub fn enter_early_map() {
    let pml4 = &raw mut boot_pml4 as *mut u64;
    let pdpt = &raw mut boot_pdpt as *mut u64;
    let pd = &raw mut boot_pd as *mut u64;
    // The three tables are the kernel's own, in .bss (zeroed by
    // _start64), not yet used on this path; the early map covers the
    // kernel image (linked at 2 MiB), so the code, stack and statics in use
    // stay mapped across the CR3 write.
    // SAFETY: the early tables are the kernel's own and map everything in use (above).
    unsafe {
        for i in 0..2048u64 {
            pd.add(i as usize).write_volatile(i << 21 | 0x83); // P | RW | PS
        }
        for i in 0..4u64 {
            pdpt.add(i as usize)
                .write_volatile((pd as u64 + i * PAGE) | 3);
        }
        pml4.write_volatile(pdpt as u64 | 3);
        instr::write_cr3(pml4 as u64);
    }
}

/// Page-table frames from the frame allocator, zeroed, and only below the
/// current map's limit (they are written through the identity map).
struct FrameTables<'a> {
    frames: &'a mut FrameAllocator,
    limit: u64,
    count: usize,
}

impl TableAlloc for FrameTables<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        let f = self.frames.alloc_frame()?;
        if f + PAGE > self.limit {
            return None;
        }
        // SAFETY: the frame was just handed out by the frame allocator (so
        // nothing else uses it) and lies below the mapped limit.
        unsafe { core::ptr::write_bytes(f as *mut u8, 0, PAGE as usize) };
        self.count += 1;
        Some(f)
    }
}

/// Page tables reached through the identity map.
pub struct IdentityTables;

impl TableAccess for IdentityTables {
    fn read(&self, table_pa: u64, index: usize) -> u64 {
        debug_assert!(index < 512 && table_pa.is_multiple_of(PAGE));
        // SAFETY: table_pa is a table frame allocated by FrameTables (or a
        // live table of the kernel's map), identity-mapped and 8-byte aligned.
        unsafe { ((table_pa + index as u64 * 8) as *const u64).read_volatile() }
    }

    fn write(&mut self, table_pa: u64, index: usize, entry: u64) {
        debug_assert!(index < 512 && table_pa.is_multiple_of(PAGE));
        // SAFETY: as for `read`; the page-table builder only writes entries
        // of tables it owns.
        unsafe { ((table_pa + index as u64 * 8) as *mut u64).write_volatile(entry) }
    }

    fn invalidate(&mut self, input: u64, size: u64) {
        if size <= 64 * PAGE {
            for p in (input..input + size).step_by(PAGE as usize) {
                instr::invlpg(p);
            }
        } else {
            let cr3 = instr::read_cr3();
            // SAFETY: reloading the current CR3 only flushes non-global TLB entries.
            unsafe { instr::write_cr3(cr3) };
        }
    }
}

fn is_ram(kind: MemoryKind) -> bool {
    !matches!(kind, MemoryKind::Reserved | MemoryKind::BadMemory)
}

/// Walks the new tables for a few addresses whose mapping matters before
/// they go live: a mistake here would otherwise surface as an unexplained
/// fault much later (or never, for a missing guard page).
fn verify(pt: &PageTable<X86Long4>, access: &IdentityTables, nx: bool) {
    use arch::paging::MemType;
    let (kstart, kend) = kernel_image();
    let rodata = &raw const __rodata_start as u64;
    let data = &raw const __data_start as u64;
    let t = |a: u64| pt.translate(access, a);
    let bad = |what: &str, ok: bool| {
        if !ok {
            panic!("kernel page tables: self-check failed: {what}");
        }
    };
    bad("page 0 must be unmapped", t(0).is_none());
    for (guard, name) in guard_pages() {
        bad(name, t(guard).is_none());
        bad(name, t(guard + PAGE).is_some_and(|x| x.attrs.write));
    }
    bad(
        "kernel text must be read-only and executable",
        t(kstart).is_some_and(|x| !x.attrs.write && x.attrs.execute && x.pa == kstart),
    );
    bad(
        "kernel rodata must be read-only",
        t(rodata).is_some_and(|x| !x.attrs.write && (!x.attrs.execute || !nx)),
    );
    bad(
        "kernel data must be writable, not executable",
        t(data).is_some_and(|x| x.attrs.write && (!x.attrs.execute || !nx)),
    );
    bad("kernel end must be mapped", t(kend - 1).is_some());
    bad(
        "the local APIC page must be uncached",
        t(0xfee0_0000).is_some_and(|x| x.attrs.mem == MemType::Device),
    );
}

fn check(what: &str, r: Result<(), MapError>) {
    if let Err(e) = r {
        panic!("kernel page tables: cannot map {what}: {e:?}");
    }
}

/// Unmaps the 4 KiB page at `pa` from the kernel's (live) identity map,
/// e.g. a stack guard page; a block around it is split, with table frames
/// from `frames`. Only this CPU's TLB is flushed: call it before other CPUs
/// use the map, or for a page no other CPU has touched.
pub fn unmap_page(frames: &mut FrameAllocator, pa: u64) -> Result<(), MapError> {
    let mut pt = PageTable::from_root(X86Long4, instr::read_cr3() & !0xfff);
    let mut alloc = FrameTables {
        frames,
        limit: MAPPED_LIMIT.load(Ordering::Relaxed),
        count: 0,
    };
    pt.unmap(&mut alloc, &mut IdentityTables, pa, PAGE)?;
    instr::invlpg(pa);
    Ok(())
}

/// Builds the kernel's page tables and switches to them.
pub fn init_memory(info: &BootInfo, frames: &mut FrameAllocator) {
    let cpu = CpuInfo::read(&Cpuid);
    // Without NX support, bit 63 is reserved: map everything executable.
    let attrs = |a: Attrs| Attrs {
        execute: a.execute || !cpu.nx,
        ..a
    };
    let max_block = if cpu.page_1g {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    };
    let ram_top = info
        .memory_map
        .regions()
        .iter()
        .filter(|r| is_ram(r.kind))
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    let top = boot::memory::align_up(ram_top.max(EARLY_MAP_LIMIT), 2 << 20);

    let mut alloc = FrameTables {
        frames,
        limit: MAPPED_LIMIT.load(Ordering::Relaxed),
        count: 0,
    };
    let mut access = IdentityTables;
    let mut pt = match PageTable::<X86Long4>::new(&mut alloc, &mut access) {
        Ok(pt) => pt,
        Err(e) => panic!("kernel page tables: no root table: {e:?}"),
    };

    let (kstart, kend) = kernel_image();
    let ram = info
        .memory_map
        .regions()
        .iter()
        .filter(|r| is_ram(r.kind))
        .map(|r| (r.start, r.end));
    let mut ram_bytes = 0u64;
    let r = identity_spans(
        ram,
        top,
        EARLY_MAP_LIMIT,
        &[(0, PAGE), (kstart, kend)],
        |s, e, kind| {
            let a = match kind {
                SpanKind::Ram => {
                    ram_bytes += e - s;
                    Attrs::RW
                }
                SpanKind::Device => Attrs::DEVICE,
            };
            pt.map(&mut alloc, &mut access, s, s, e - s, attrs(a), max_block)
        },
    );
    check("physical memory", r);

    // The kernel image, section by section.
    let text_end = &raw const __text_end as u64;
    let rodata = &raw const __rodata_start as u64;
    let data = &raw const __data_start as u64;
    let mut map = |what, s: u64, e: u64, a: Attrs| {
        let r = pt.map(
            &mut alloc,
            &mut access,
            s,
            s,
            e - s,
            attrs(a),
            PageSize::Size4K,
        );
        check(what, r);
    };
    map("kernel text", kstart, text_end, Attrs::RX);
    map("kernel text padding", text_end, rodata, Attrs::RO);
    map("kernel rodata", rodata, data, Attrs::RO);
    let mut cursor = data;
    for (guard, _) in guard_pages() {
        map("kernel data", cursor, guard, Attrs::RW);
        cursor = guard + PAGE;
    }
    map("kernel data", cursor, kend, Attrs::RW);

    let tables = alloc.count;
    verify(&pt, &access, cpu.nx);
    // The new map covers everything in use: the kernel image
    // (code, stacks except their unused guard pages, statics), all RAM
    // (boot structures, frames) and the device ranges below 4 GiB. EFER.NXE
    // is set before any NX bit becomes live (and only if the CPU has NX);
    // CR0.WP makes read-only mappings apply to the kernel too.
    // SAFETY: the new map covers everything in use (above).
    unsafe {
        if cpu.nx {
            let efer = instr::rdmsr(instr::IA32_EFER);
            instr::wrmsr(instr::IA32_EFER, efer | instr::EFER_NXE);
        }
        instr::write_cr0(instr::read_cr0() | instr::CR0_WP);
        instr::write_cr3(pt.root());
    }
    MAPPED_LIMIT.store(top, Ordering::Relaxed);
    MAPPED_FLOOR.store(PAGE, Ordering::Relaxed);
    log::info!(
        "paging: identity map of {:#x}..{:#x} ({} MiB RAM), kernel {:#x}..{:#x} (text RX), {} table pages, NX {}, 1G pages {}",
        PAGE,
        top,
        ram_bytes >> 20,
        kstart,
        kend,
        tables,
        if cpu.nx { "on" } else { "unsupported" },
        if cpu.page_1g { "yes" } else { "no" },
    );
}
