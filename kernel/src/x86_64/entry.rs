//! Entry from the three x86 boot paths into [`crate::kernel_main`].
//!
//! `entry.s` gets the CPU into long mode on the boot stack and calls
//! [`multiboot_entry`] (Multiboot1/2, from 32-bit protected mode) or
//! [`uefi_entry`] (our UEFI loader, already in long mode). Both first make
//! the console and the exception handlers work, so that anything going
//! wrong while reading the boot information is reported, then turn that
//! information into the one [`BootInfo`].

use super::memory::{self, IdentityPhys, EARLY_MAP_LIMIT};
use boot::handoff::{Handoff, HandoffModule, HandoffRegion};
use boot::phys::PhysMemory;
use boot::BootInfo;
use core::arch::global_asm;
use core::fmt::Write;

global_asm!(
    include_str!("entry.s"),
    multiboot_entry = sym multiboot_entry,
    uefi_entry = sym uefi_entry,
    options(att_syntax)
);

/// Where the boot information lives for the rest of the run.
static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// Upper bound on handoff arrays (entries), far above real firmware maps.
const MAX_HANDOFF_ENTRIES: u64 = 4096;

/// Prints a fatal boot error and stops (the exit method is unknown before
/// the command line is parsed, so the CPU just halts).
fn boot_failure(args: core::fmt::Arguments) -> ! {
    let mut w = crate::console::emergency_writer();
    let _ = writeln!(w, "\nhypervisor: cannot boot: {args}");
    let _ = writeln!(w, "HV-EXIT: failure");
    arch::x86_64::devices::serial_flush();
    arch::x86_64::instr::halt_forever()
}

/// Called by `entry.s` in long mode with the early identity map (4 GiB)
/// and `EAX`/`EBX` from the Multiboot loader.
extern "C" fn multiboot_entry(magic: u32, info: u32) -> ! {
    super::early_cpu_init();
    let mem = IdentityPhys::new(EARLY_MAP_LIMIT);
    let kernel = memory::kernel_image();
    let info = u64::from(info);
    let mut bi = match magic {
        boot::multiboot1::BOOTLOADER_MAGIC => match boot::multiboot1::parse(&mem, info, kernel) {
            Ok(bi) => bi,
            Err(e) => boot_failure(format_args!("bad Multiboot1 info at {info:#x}: {e:?}")),
        },
        boot::multiboot2::BOOTLOADER_MAGIC => {
            let parsed = mem
                .slice(info, 8)
                .ok_or(boot::multiboot2::Mb2Error::TooShort)
                .and_then(boot::multiboot2::total_size)
                .and_then(|n| {
                    let block = mem
                        .slice(info, n)
                        .ok_or(boot::multiboot2::Mb2Error::BadTotalSize(n as u32))?;
                    boot::multiboot2::parse(block, info, kernel)
                });
            match parsed {
                Ok(bi) => bi,
                Err(e) => boot_failure(format_args!("bad Multiboot2 info at {info:#x}: {e:?}")),
            }
        }
        other => boot_failure(format_args!(
            "unknown boot loader magic {other:#x} in EAX (expected Multiboot1 {:#x} or Multiboot2 {:#x})",
            boot::multiboot1::BOOTLOADER_MAGIC,
            boot::multiboot2::BOOTLOADER_MAGIC
        )),
    };
    if bi.acpi_rsdp.is_none() {
        bi.acpi_rsdp = boot::acpi::find_rsdp_bios(&mem);
    }
    crate::kernel_main(BOOT_INFO.call_once(|| bi))
}

/// Called by `entry.s` (`_start64`, the ELF entry point) with RDI = the
/// physical address of the loader's [`Handoff`], still on the firmware's
/// page tables.
extern "C" fn uefi_entry(handoff: u64) -> ! {
    super::early_cpu_init();
    // The firmware maps all memory, but do not walk off the end of the
    // address space the CPU can express.
    let mem = IdentityPhys::new(1 << 52);
    let bi = match read_handoff(&mem, handoff) {
        Ok(bi) => bi,
        Err(e) => boot_failure(format_args!("bad UEFI handoff at {handoff:#x}: {e}")),
    };
    let bi = BOOT_INFO.call_once(|| bi);
    // Firmware page tables live in boot-services memory, which is usable
    // from now on: leave them before the frame allocator can hand it out.
    memory::enter_early_map();
    crate::kernel_main(bi)
}

fn read_handoff(mem: &IdentityPhys, addr: u64) -> Result<BootInfo, &'static str> {
    let h: Handoff = memory::read_phys(mem, addr).ok_or("handoff block unreadable")?;
    h.validate().map_err(|_| "bad magic, version or size")?;
    if h.memory_map_len > MAX_HANDOFF_ENTRIES || h.modules_len > MAX_HANDOFF_ENTRIES {
        return Err("implausible array length");
    }
    let regions: &[HandoffRegion] =
        memory::phys_array(mem, h.memory_map, h.memory_map_len as usize)
            .ok_or("memory map unreadable or misaligned")?;
    let modules: &[HandoffModule] = memory::phys_array(mem, h.modules, h.modules_len as usize)
        .ok_or("module list unreadable or misaligned")?;
    let cmdline_len = (h.cmdline_len as usize).min(boot::CMDLINE_MAX + 1);
    let cmdline = if cmdline_len == 0 {
        &[][..]
    } else {
        mem.slice(h.cmdline, cmdline_len)
            .ok_or("command line unreadable")?
    };
    let mut bi = boot::handoff::to_boot_info(&h, regions, modules, cmdline)
        .map_err(|_| "memory map too large")?;
    // The loader reports the kernel's range too; the linker's is authoritative.
    let (kstart, kend) = memory::kernel_image();
    bi.memory_map
        .reserve(kstart, kend, boot::MemoryKind::Kernel)
        .map_err(|_| "memory map too large")?;
    Ok(bi)
}
