//! From the assembly entry to `kernel_main`: find the DTB, check the
//! exception level, build the [`BootInfo`] (Linux Image protocol or our UEFI
//! loader's handoff), turn the MMU on, and go.

use super::memory;
use super::{set_psci, set_uart, Platform, PLATFORM};
use crate::ExitStatus;
use arch::aarch64::regs;
use boot::dtb::{self, DtbError, DtbInfo};
use boot::handoff::{self, Handoff, HandoffModule, HandoffRegion, HANDOFF_MAGIC};
use boot::{BootInfo, MemoryKind};

/// Largest DTB we accept (QEMU's is 1 MiB; Linux caps at 2 MiB).
const DTB_MAX: usize = 2 << 20;
/// Bounds on the handoff arrays, so a corrupt block cannot make us build
/// absurd slices.
const HANDOFF_MAX_REGIONS: u64 = 4096;
const HANDOFF_MAX_MODULES: u64 = 256;
const HANDOFF_MAX_CMDLINE: u64 = 64 * 1024;

/// Prints on the console before the logger exists (no lock, no atomics).
macro_rules! early {
    ($($t:tt)*) => { crate::console::emergency_println(format_args!($($t)*)) };
}

/// Reads the DTB at `addr`: validates the address, the magic and the size
/// before making a slice of it.
fn dtb_slice(addr: u64) -> Result<&'static [u8], &'static str> {
    if addr == 0 {
        return Err("no DTB pointer");
    }
    if !addr.is_multiple_of(8) {
        return Err("DTB pointer not 8-byte aligned");
    }
    // SAFETY: the boot protocol puts a DTB header at `addr` (checked: non-zero,
    // aligned); memory is identity-accessible with the MMU off. Reading 8
    // bytes of RAM has no side effect.
    let head = unsafe { core::ptr::read_volatile(addr as *const [u8; 8]) };
    let size = dtb::total_size(&head).ok_or("no FDT magic at the DTB pointer")? as usize;
    if !(dtb::HEADER_SIZE..=DTB_MAX).contains(&size) {
        return Err("DTB totalsize out of bounds");
    }
    if addr.checked_add(size as u64).is_none() {
        return Err("DTB wraps around the address space");
    }
    // SAFETY: the header says the blob is `size` bytes (bounded above); the
    // region is RAM the firmware/loader filled and that we reserve as `Dtb`,
    // so it stays valid and unmodified for the kernel's lifetime.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, size) })
}

/// Slice of `len` elements of `T` at physical `addr`, after checking
/// alignment and bounds.
///
/// # Safety
/// `addr` must point to `len` initialized `T`s that stay valid and unchanged
/// for the kernel's lifetime (loader data in `Loader` memory).
unsafe fn phys_slice<T>(addr: u64, len: u64, max: u64) -> Option<&'static [T]> {
    if len == 0 {
        return Some(&[]);
    }
    let bytes = len.checked_mul(core::mem::size_of::<T>() as u64)?;
    if addr == 0 || !addr.is_multiple_of(core::mem::align_of::<T>() as u64) || len > max {
        return None;
    }
    addr.checked_add(bytes)?;
    // SAFETY: non-null, aligned, bounded, no wrap-around; validity is the
    // caller's contract.
    Some(unsafe { core::slice::from_raw_parts(addr as *const T, len as usize) })
}

/// Called by entry.rs with the boot registers, on the boot stack, .bss zeroed,
/// MMU off.
#[no_mangle]
extern "C" fn aarch64_start(x0: u64, x1: u64, x2: u64) -> ! {
    // `prepare`'s frame (several copies of the ~20 KiB BootInfo in debug
    // builds) is gone before kernel_main runs: the 64 KiB boot stack is
    // then left to kernel_main and the VMs it runs.
    crate::kernel_main(prepare(x0, x1, x2))
}

/// The boot information, built once by `prepare` (after the MMU is on, so
/// the Once's atomics are safe).
static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

#[inline(never)]
fn prepare(x0: u64, x1: u64, x2: u64) -> &'static BootInfo {
    let el = regs::current_el();
    let uefi = x2 == HANDOFF_MAGIC && x1 != 0;

    let handoff: Option<Handoff> = if uefi {
        if !x1.is_multiple_of(8) {
            fatal_early("UEFI handoff pointer misaligned");
        }
        // SAFETY: x2 carries the loader's magic, so x1 is the physical
        // address of its Handoff block (aligned, checked), in Loader memory.
        let h = unsafe { core::ptr::read_volatile(x1 as *const Handoff) };
        Some(h)
    } else {
        None
    };

    let dtb_addr = match (x0, handoff) {
        (0, Some(h)) => h.dtb,
        _ => x0,
    };
    let blob = dtb_slice(dtb_addr);
    let parsed: Option<Result<DtbInfo<'static>, DtbError>> = blob.ok().map(DtbInfo::parse);
    let dtb_info = parsed.as_ref().and_then(|r| r.as_ref().ok());
    if let Some(d) = dtb_info {
        if let Some(u) = d.uart {
            set_uart(u.base as usize);
        }
        set_psci(d.psci.map(|p| p.conduit));
    }

    // The exit method (and log level) for early failures: from the DTB's
    // bootargs, or the loader's command line. kernel_main parses it again.
    let early_cmdline: &[u8] = match handoff {
        // SAFETY: the handoff's command line is loader data (bounds checked
        // in phys_slice); see boot_info_from_handoff.
        Some(h) => {
            unsafe { phys_slice(h.cmdline, h.cmdline_len, HANDOFF_MAX_CMDLINE) }.unwrap_or(&[])
        }
        None => dtb_info.and_then(|d| d.bootargs).unwrap_or(&[]),
    };
    crate::options::Options::parse(core::str::from_utf8(early_cmdline).unwrap_or(""));

    if el != 2 {
        wrong_el(el);
    }

    match (&blob, &parsed) {
        (Err(why), _) => early!("hypervisor: warning: DTB at {dtb_addr:#x}: {why}"),
        (_, Some(Err(e))) => early!("hypervisor: warning: DTB at {dtb_addr:#x} is malformed: {e}"),
        _ => {}
    }

    let img = memory::image_layout();
    let mut info = match handoff {
        Some(h) => match boot_info_from_handoff(&h) {
            Ok(i) => i,
            Err(why) => fatal_early(why),
        },
        None => {
            let Some(d) = dtb_info else {
                fatal_early("Image boot needs a valid DTB in x0 (memory map, command line)");
            };
            match dtb::to_boot_info(d, dtb_addr, (img.start, img.end)) {
                Ok(i) => i,
                Err(e) => {
                    early!("hypervisor: DTB: {e}");
                    fatal_early("cannot build the memory map from the DTB");
                }
            }
        }
    };
    // Whatever the loader said, our own image (with .bss and the boot stack)
    // and the DTB are never free memory.
    if info
        .memory_map
        .reserve(img.start, img.end, MemoryKind::Kernel)
        .is_err()
    {
        fatal_early("boot memory map full");
    }
    if let (Ok(b), Some(_)) = (&blob, dtb_info) {
        let end = dtb_addr + b.len() as u64;
        if info
            .memory_map
            .reserve(dtb_addr, end, MemoryKind::Dtb)
            .is_err()
        {
            fatal_early("boot memory map full");
        }
        info.dtb = Some(dtb_addr);
    }

    let mmu = match memory::setup(&mut info, dtb_info) {
        Ok(s) => s,
        Err(e) => {
            early!("hypervisor: EL2 MMU setup failed: {e}");
            fatal_early("cannot build the EL2 page tables");
        }
    };

    // MMU and caches on: atomics are safe from here.
    PLATFORM.call_once(|| Platform {
        dtb: dtb_info.cloned(),
        dtb_addr,
        dtb_problem: match (&blob, &parsed) {
            (Err(why), _) => Some(*why),
            (_, Some(Err(_))) => Some("malformed (see the warning above)"),
            _ => None,
        },
        uefi,
        mmu,
    });
    BOOT_INFO.call_once(|| info)
}

fn boot_info_from_handoff(h: &Handoff) -> Result<BootInfo, &'static str> {
    h.validate()
        .map_err(|_| "UEFI handoff block invalid (magic/version/size)")?;
    // SAFETY: the loader put these arrays in Loader memory that nothing
    // reuses before the kernel reserves it; bounds checked in phys_slice.
    let regions: &[HandoffRegion] =
        unsafe { phys_slice(h.memory_map, h.memory_map_len, HANDOFF_MAX_REGIONS) }
            .ok_or("UEFI handoff memory map pointer/length invalid")?;
    // SAFETY: as above.
    let modules: &[HandoffModule] =
        unsafe { phys_slice(h.modules, h.modules_len, HANDOFF_MAX_MODULES) }
            .ok_or("UEFI handoff module list pointer/length invalid")?;
    // SAFETY: as above.
    let cmdline: &[u8] = unsafe { phys_slice(h.cmdline, h.cmdline_len, HANDOFF_MAX_CMDLINE) }
        .ok_or("UEFI handoff command line pointer/length invalid")?;
    handoff::to_boot_info(h, regions, modules, cmdline)
        .map_err(|_| "UEFI handoff could not be turned into a memory map")
}

/// Entered below EL2: say so and stop. Rust runs fine at EL1 with the MMU
/// off; exits use the command line's method (PSCI through HVC does work
/// from EL1).
fn wrong_el(el: u8) -> ! {
    early!("");
    early!(
        "*** hypervisor: FATAL: entered at EL{el}, not EL2: the hypervisor needs EL2 \
         (QEMU: -M virt,virtualization=on; firmware/boot loader must not drop to EL1)."
    );
    early!("HV-EXIT: failure");
    super::exit(ExitStatus::Failure, crate::options::current_exit_method())
}

/// A fatal problem before the logger exists.
fn fatal_early(why: &str) -> ! {
    early!("*** hypervisor: FATAL: {why}");
    early!("HV-EXIT: failure");
    super::exit(ExitStatus::Failure, crate::options::current_exit_method())
}
