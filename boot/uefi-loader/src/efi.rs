//! The firmware-facing half of the loader: files from the ESP, page
//! allocations, configuration tables, ExitBootServices and the hand-over.
//! Every decision on untrusted input is made by `uefi_loader::logic`.

use crate::jump;
use ::boot::handoff::{Handoff, HandoffModule, HandoffRegion, HANDOFF_MAGIC, HANDOFF_VERSION};
use ::boot::memory::MemoryKind;
use ::boot::MODULE_NAME_MAX;
use core::ptr::NonNull;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::proto::media::file::{Directory, File, FileAttribute, FileInfo, FileMode, FileType};
use uefi::table::cfg::ConfigTableEntry;
use uefi::{guid, println, CStr16, Guid, Status};
use uefi_loader::logic::{
    self, efi_type, efi_type_name, pages_for, ElfImage, HandoffLayout, RegionWriter, PAGE_SIZE,
};

/// `EFI_DTB_TABLE_GUID` (UEFI 2.10 §4.6.1.3, "Devicetree Tables").
const DTB_TABLE_GUID: Guid = guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");
const KERNEL_FILE: &str = "hypervisor.elf";
const CMDLINE_FILE: &str = "cmdline.txt";
const MODULES_FILE: &str = "modules.txt";
/// The kernel's boot stack: a fresh LOADER_DATA allocation, so the kernel
/// never runs on firmware memory that the map reports as usable.
const KERNEL_STACK_PAGES: usize = 16;

/// A failure, already reported on the console; carries the status the
/// loader returns to the firmware.
pub struct Fail(pub Status);

macro_rules! fail {
    ($status:expr, $($arg:tt)*) => {{
        println!("loader: error: {}", format_args!($($arg)*));
        Fail($status)
    }};
}

/// A file read into whole pages of its own.
struct Loaded {
    addr: u64,
    len: u64,
    pages: usize,
}

impl Loaded {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` is a live allocation of `pages` pages whose first
        // `len` bytes were filled by `read_file`.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len as usize) }
    }

    fn free(self) {
        free_pages(self.addr, self.pages);
    }
}

fn free_pages(addr: u64, pages: usize) {
    if let Some(ptr) = NonNull::new(addr as *mut u8) {
        // SAFETY: the pages came from `allocate_pages` and no reference into
        // them outlives this call.
        let _ = unsafe { boot::free_pages(ptr, pages) };
    }
}

fn allocate(ty: AllocateType, pages: usize, what: &str) -> Result<u64, Fail> {
    boot::allocate_pages(ty, MemoryType::LOADER_DATA, pages)
        .map(|p| p.as_ptr() as u64)
        .map_err(|e| {
            fail!(
                e.status(),
                "cannot allocate {pages} pages for {what}: {:?}",
                e.status()
            )
        })
}

/// Reads `name` (relative to the ESP root) into fresh LOADER_DATA pages; the
/// rest of the last page is zeroed (modules may be mapped page-wise into a
/// guest, which must not see stale firmware data). `Ok(None)`: no such file.
fn read_file(root: &mut Directory, name: &str) -> Result<Option<Loaded>, Fail> {
    let mut path_buf = [0u16; MODULE_NAME_MAX + 1];
    let path = logic::efi_path(name, &mut path_buf)
        .and_then(|p| CStr16::from_u16_with_nul(p).ok())
        .ok_or_else(|| {
            fail!(
                Status::INVALID_PARAMETER,
                "{name}: not a valid UEFI file name"
            )
        })?;
    let handle = match root.open(path, FileMode::Read, FileAttribute::empty()) {
        Ok(h) => h,
        Err(e) if e.status() == Status::NOT_FOUND => return Ok(None),
        Err(e) => return Err(fail!(e.status(), "cannot open {name}: {:?}", e.status())),
    };
    let mut file = match handle.into_type() {
        Ok(FileType::Regular(f)) => f,
        Ok(FileType::Dir(_)) => {
            return Err(fail!(Status::INVALID_PARAMETER, "{name} is a directory"))
        }
        Err(e) => return Err(fail!(e.status(), "cannot open {name}: {:?}", e.status())),
    };
    #[repr(C, align(8))]
    struct InfoBuf([u8; 1024]);
    let mut info_buf = InfoBuf([0; 1024]);
    let size = file
        .get_info::<FileInfo>(&mut info_buf.0)
        .map_err(|e| fail!(e.status(), "cannot stat {name}: {:?}", e.status()))?
        .file_size();
    let Ok(len) = usize::try_from(size) else {
        return Err(fail!(
            Status::BAD_BUFFER_SIZE,
            "{name}: {size} bytes is too large"
        ));
    };
    let pages = pages_for(size) as usize;
    let addr = allocate(AllocateType::AnyPages, pages, name)?;
    // SAFETY: a fresh allocation of `pages` pages, exclusively ours.
    let buf =
        unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, pages * PAGE_SIZE as usize) };
    let read = file.read(&mut buf[..len]);
    if read != Ok(len) {
        free_pages(addr, pages);
        return Err(match read {
            Ok(n) => fail!(Status::END_OF_FILE, "{name}: read {n} of {len} bytes"),
            Err(e) => fail!(e.status(), "cannot read {name}: {:?}", e.status()),
        });
    }
    buf[len..].fill(0);
    Ok(Some(Loaded {
        addr,
        len: size,
        pages,
    }))
}

/// Tells why `[start, end)` could not be allocated: which firmware memory
/// descriptors cover it.
fn explain_range(start: u64, end: u64) {
    let Ok(map) = boot::memory_map(MemoryType::LOADER_DATA) else {
        println!("loader:   (the firmware's memory map is unavailable)");
        return;
    };
    let mut covered = 0u64;
    for d in map.entries() {
        let d_end = d
            .phys_start
            .saturating_add(d.page_count.saturating_mul(PAGE_SIZE));
        if d.phys_start < end && start < d_end {
            println!(
                "loader:   {:#x}-{:#x} is {} in the firmware's memory map",
                d.phys_start.max(start),
                d_end.min(end),
                efi_type_name(d.ty.0)
            );
            covered += d_end.min(end) - d.phys_start.max(start);
        }
    }
    if covered < end - start {
        println!("loader:   parts of it are not in the firmware's memory map at all (not RAM)");
    }
}

/// Allocates the kernel's page ranges at their physical addresses and copies
/// and zero-fills its segments. On failure, frees what it allocated.
fn place_kernel(img: &ElfImage, file: &[u8]) -> Result<(), Fail> {
    for (i, r) in img.page_ranges().iter().enumerate() {
        let res = boot::allocate_pages(
            AllocateType::Address(r.start),
            MemoryType::LOADER_DATA,
            r.pages() as usize,
        );
        if let Err(e) = res {
            println!(
                "loader: error: cannot allocate the kernel's range {:#x}-{:#x} ({} pages) at its physical address: {:?}",
                r.start,
                r.end,
                r.pages(),
                e.status()
            );
            explain_range(r.start, r.end);
            for done in &img.page_ranges()[..i] {
                free_pages(done.start, done.pages() as usize);
            }
            return Err(Fail(e.status()));
        }
        // SAFETY: just allocated at exactly this address for us.
        unsafe { core::ptr::write_bytes(r.start as *mut u8, 0, (r.end - r.start) as usize) };
    }
    for s in img.segments() {
        // `parse_elf` checked that offset+filesz is inside `file` and that
        // the segment lies inside one of the ranges allocated above.
        let src = &file[s.offset as usize..(s.offset + s.filesz) as usize];
        // SAFETY: destination is inside our fresh allocation (see above) and
        // cannot overlap the source, which is a separate allocation.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), s.paddr as *mut u8, src.len()) };
        println!(
            "loader:   segment {:#x}-{:#x} ({} bytes from file, flags {:#x})",
            s.paddr,
            s.paddr_end(),
            s.filesz,
            s.flags
        );
    }
    Ok(())
}

/// Reads `hypervisor.elf`, validates it and places it. Returns the image.
fn load_kernel(root: &mut Directory) -> Result<ElfImage, Fail> {
    let Some(mut file) = read_file(root, KERNEL_FILE)? else {
        return Err(fail!(
            Status::NOT_FOUND,
            "{KERNEL_FILE} not found in the root of the ESP"
        ));
    };
    println!("loader: read {KERNEL_FILE} ({} bytes)", file.len);
    let img = match logic::parse_elf(file.bytes(), jump::MACHINE) {
        Ok(img) => img,
        Err(e) => {
            file.free();
            return Err(fail!(Status::LOAD_ERROR, "{KERNEL_FILE}: {e}"));
        }
    };
    // The firmware may have put our copy of the file where the kernel must
    // go. Then move the copy (the old one stays allocated meanwhile so the
    // new one cannot land there too).
    let overlaps = |addr: u64, pages: usize| {
        let end = addr + pages as u64 * PAGE_SIZE;
        img.page_ranges()
            .iter()
            .any(|r| addr < r.end && r.start < end)
    };
    if overlaps(file.addr, file.pages) {
        let new = allocate(AllocateType::AnyPages, file.pages, KERNEL_FILE)?;
        // SAFETY: both are our allocations of `pages` pages; distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(
                file.addr as *const u8,
                new as *mut u8,
                file.pages * PAGE_SIZE as usize,
            )
        };
        let old = core::mem::replace(&mut file.addr, new);
        free_pages(old, file.pages);
        if overlaps(file.addr, file.pages) {
            file.free();
            return Err(fail!(
                Status::OUT_OF_RESOURCES,
                "no room to stage {KERNEL_FILE}"
            ));
        }
    }
    let placed = place_kernel(&img, file.bytes());
    file.free();
    placed?;
    println!(
        "loader: kernel at {:#x}-{:#x}, entry {:#x}",
        img.phys_start(),
        img.phys_end(),
        img.entry
    );
    Ok(img)
}

/// Reads an optional file, saying so when it is absent.
fn read_optional(root: &mut Directory, name: &str) -> Result<Option<Loaded>, Fail> {
    let file = read_file(root, name)?;
    if file.is_none() {
        println!("loader: no {name}");
    }
    Ok(file)
}

/// ACPI RSDP (2.0 GUID preferred) and DTB from the configuration table.
fn firmware_tables() -> (u64, u64) {
    uefi::system::with_config_table(|tables: &[ConfigTableEntry]| {
        let find = |g: Guid| {
            tables
                .iter()
                .find(|t| t.guid == g)
                .map(|t| t.address as u64)
                .filter(|&a| a != 0)
        };
        let rsdp = find(ConfigTableEntry::ACPI2_GUID)
            .or_else(|| find(ConfigTableEntry::ACPI_GUID))
            .unwrap_or(0);
        (rsdp, find(DTB_TABLE_GUID).unwrap_or(0))
    })
}

fn check_rsdp(rsdp: u64) -> u64 {
    if rsdp == 0 {
        println!("loader: no ACPI RSDP in the configuration table");
        return 0;
    }
    // SAFETY: the firmware published a table at this identity-mapped
    // address; an RSDP is at least 20 bytes.
    let head = unsafe { core::ptr::read_unaligned(rsdp as *const [u8; 20]) };
    match logic::rsdp_revision(head) {
        Some(rev) => {
            println!("loader: ACPI RSDP at {rsdp:#x} (revision {rev})");
            rsdp
        }
        None => {
            println!("loader: warning: the ACPI table at {rsdp:#x} is not a valid RSDP; ignored");
            0
        }
    }
}

/// Copies the DTB into LOADER_DATA pages: the firmware keeps it in boot
/// services memory, which becomes usable (and would be overwritten) once
/// the kernel runs. Returns the copy's address, or 0.
fn copy_dtb(dtb: u64) -> Result<u64, Fail> {
    if dtb == 0 {
        println!("loader: no DTB in the configuration table");
        return Ok(0);
    }
    // SAFETY: the firmware published an FDT at this identity-mapped address;
    // its header is at least 8 bytes.
    let head = unsafe { core::ptr::read_unaligned(dtb as *const [u8; 8]) };
    let size = match logic::fdt_total_size(head) {
        Ok(size) => size as usize,
        Err(e) => {
            println!("loader: warning: DTB at {dtb:#x}: {e}; ignored");
            return Ok(0);
        }
    };
    let pages = pages_for(size as u64) as usize;
    let copy = allocate(AllocateType::AnyPages, pages, "the DTB")?;
    // SAFETY: the source is the firmware's `size`-byte FDT, the destination a
    // fresh allocation of at least `size` bytes.
    unsafe { core::ptr::copy_nonoverlapping(dtb as *const u8, copy as *mut u8, size) };
    println!("loader: DTB at {dtb:#x} ({size} bytes) copied to {copy:#x}");
    Ok(copy)
}

pub fn run() -> Result<core::convert::Infallible, Fail> {
    println!(
        "loader: hv-loader ({}) on {} (firmware revision {:#x}, UEFI {})",
        jump::ARCH,
        uefi::system::firmware_vendor(),
        uefi::system::firmware_revision(),
        uefi::system::uefi_revision()
    );
    #[cfg(target_arch = "aarch64")]
    println!("loader: running at EL{}", jump::current_el());

    let mut fs = boot::get_image_file_system(boot::image_handle()).map_err(|e| {
        fail!(
            e.status(),
            "no file system on the boot volume: {:?}",
            e.status()
        )
    })?;
    let mut root = fs
        .open_volume()
        .map_err(|e| fail!(e.status(), "cannot open the boot volume: {:?}", e.status()))?;

    let img = load_kernel(&mut root)?;

    // The command line.
    let cmdline_file = read_optional(&mut root, CMDLINE_FILE)?;
    let cmdline = match &cmdline_file {
        Some(f) => logic::parse_cmdline(f.bytes())
            .map_err(|e| fail!(Status::INVALID_PARAMETER, "{CMDLINE_FILE}: {e}"))?,
        None => "",
    };
    println!("loader: command line: \"{cmdline}\"");

    // The modules.
    let modules_file = read_optional(&mut root, MODULES_FILE)?;
    let list = match &modules_file {
        Some(f) => logic::parse_modules(f.bytes())
            .map_err(|e| fail!(Status::INVALID_PARAMETER, "{MODULES_FILE}: {e}"))?,
        None => logic::ModuleList::default(),
    };
    let mut modules = [(0u64, 0u64); ::boot::MAX_MODULES];
    for (i, name) in list.names().iter().enumerate() {
        let Some(m) = read_file(&mut root, name)? else {
            return Err(fail!(
                Status::NOT_FOUND,
                "module {name} (listed in {MODULES_FILE}) not found on the ESP"
            ));
        };
        println!("loader: module {name}: {} bytes at {:#x}", m.len, m.addr);
        modules[i] = (m.addr, m.len);
    }
    let module_count = list.names().len();

    // Firmware tables.
    let (rsdp, dtb) = firmware_tables();
    let rsdp = check_rsdp(rsdp);
    let dtb = copy_dtb(dtb)?;

    // The kernel's boot stack.
    let stack = allocate(
        AllocateType::AnyPages,
        KERNEL_STACK_PAGES,
        "the kernel stack",
    )?;
    let stack_top = stack + (KERNEL_STACK_PAGES as u64) * PAGE_SIZE;

    // The handoff block: Handoff, modules, regions, command line, in one
    // LOADER_DATA allocation made before ExitBootServices.
    let entries = boot::memory_map(MemoryType::LOADER_DATA)
        .map_err(|e| fail!(e.status(), "cannot read the memory map: {:?}", e.status()))?
        .len();
    let capacity = logic::region_capacity(entries);
    let layout = HandoffLayout::new(module_count, capacity, cmdline.len())
        .ok_or_else(|| fail!(Status::BAD_BUFFER_SIZE, "handoff block too large"))?;
    let block_pages = pages_for(layout.size as u64) as usize;
    let block = allocate(AllocateType::AnyPages, block_pages, "the handoff block")?;
    // SAFETY: a fresh allocation of `block_pages` pages, exclusively ours.
    unsafe { core::ptr::write_bytes(block as *mut u8, 0, block_pages * PAGE_SIZE as usize) };
    let base = block as *mut u8;
    for (i, name) in list.names().iter().enumerate() {
        let m = HandoffModule {
            start: modules[i].0,
            len: modules[i].1,
            name: logic::module_name(name),
        };
        // SAFETY: `layout.modules` is 8-aligned and leaves room for
        // `module_count` entries inside the block.
        unsafe {
            (base.add(layout.modules) as *mut HandoffModule)
                .add(i)
                .write(m)
        };
    }
    // SAFETY: the command-line area has `cmdline.len()` bytes in the block.
    unsafe {
        core::ptr::copy_nonoverlapping(cmdline.as_ptr(), base.add(layout.cmdline), cmdline.len())
    };
    let handoff = Handoff {
        magic: HANDOFF_MAGIC,
        version: HANDOFF_VERSION,
        size: size_of::<Handoff>() as u32,
        memory_map: block + layout.regions as u64,
        memory_map_len: 0,
        cmdline: block + layout.cmdline as u64,
        cmdline_len: cmdline.len() as u64,
        modules: block + layout.modules as u64,
        modules_len: module_count as u64,
        acpi_rsdp: rsdp,
        dtb,
        kernel_start: img.phys_start(),
        kernel_end: img.phys_end(),
    };
    // SAFETY: offset 0 of the page-aligned block is reserved for the Handoff.
    unsafe { (base as *mut Handoff).write(handoff) };
    // The text files were copied; give their pages back.
    if let Some(f) = cmdline_file {
        f.free();
    }
    if let Some(f) = modules_file {
        f.free();
    }

    println!(
        "loader: handoff at {block:#x}: {module_count} modules, room for {capacity} memory regions ({entries} now)"
    );
    let walk = jump::firmware_cpu_structures(&mut |_, _| {});
    if walk.tables > 0 {
        println!(
            "loader: firmware page tables: {} pages{}; listed as Loader memory with the GDT and IDT",
            walk.tables,
            if walk.truncated { " (walk truncated: some are unprotected)" } else { "" }
        );
    }
    println!(
        "loader: exiting boot services; jumping to {:#x} (stack top {stack_top:#x})",
        img.entry
    );
    drop(root);
    drop(fs);

    // SAFETY: no protocol or pool allocation is used past this point; only
    // our own LOADER_DATA pages and the returned map.
    let map = unsafe { boot::exit_boot_services(Some(MemoryType::LOADER_DATA)) };

    // SAFETY: the region area of the block holds `capacity` entries and
    // nothing else refers to it.
    let regions = unsafe {
        core::slice::from_raw_parts_mut(base.add(layout.regions) as *mut HandoffRegion, capacity)
    };
    let mut writer = RegionWriter::new(regions);
    // First what must not be overwritten although the firmware calls it
    // boot-services memory (x86: the paging structures and descriptor
    // tables the kernel starts on): if the array fills up, what is dropped
    // is then plain map entries, and a range missing from the map is simply
    // never used. Where these overlap usable entries, the more restrictive
    // kind wins when the kernel normalizes the map.
    let _ = jump::firmware_cpu_structures(&mut |start, len| {
        writer.push(start, len, MemoryKind::Loader)
    });
    for d in map.entries() {
        writer.push_efi(d.ty.0, d.phys_start, d.page_count);
    }
    let count = writer.len() as u64;
    // SAFETY: the Handoff written above; no other reference to it exists.
    unsafe { (*(base as *mut Handoff)).memory_map_len = count };

    // Everything the kernel reads is in LOADER_CODE/LOADER_DATA memory
    // (kernel, handoff block, modules, DTB copy, stack): clean it all to
    // the PoC for a kernel that starts with the MMU off (no-op on x86).
    for d in map.entries() {
        if d.ty.0 == efi_type::LOADER_CODE || d.ty.0 == efi_type::LOADER_DATA {
            jump::clean_to_poc(d.phys_start, d.page_count.saturating_mul(PAGE_SIZE));
        }
    }
    // SAFETY: boot services are gone, the kernel is placed, the handoff
    // block is complete and the stack is ours.
    unsafe { jump::enter_kernel(img.entry, block, dtb, stack_top) }
}
