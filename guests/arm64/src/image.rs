//! The checks of the image-format guests, `image_raw` (a flat binary made
//! from its ELF with `llvm-objcopy -O binary`, loaded at RAM + 0x80000 and
//! entered as QEMU `-kernel` enters one: x0 = DTB, no stack, no command-line
//! pointer) and `image_pie` (a position-independent ELF64, ET_DYN, relocated
//! by the loader): where `_start` runs, the device tree in x0, the command
//! line (from x4 or the DTB's `/chosen/bootargs`), and pointers stored in
//! data, which are right only if the loader applied the relocations.

use crate::*;

static FIRST: u32 = 0x1111_1111;
static SECOND: u32 = 0x2222_2222;
/// Absolute pointers in read-only data: in the PIE, R_AARCH64_RELATIVE
/// relocations the loader must apply.
static TABLE: [&u32; 2] = [&FIRST, &SECOND];

extern "C" {
    static _start: u8;
}

/// Where the code runs: `_start`'s address, PC-relative (ADRP + ADD), so
/// the run-time address whatever the link address.
fn start_address() -> u64 {
    let a: u64;
    // SAFETY: computes an address, no memory access.
    unsafe {
        core::arch::asm!(
            "adrp {0}, _start",
            "add {0}, {0}, :lo12:_start",
            out(reg) a,
            options(nomem, nostack)
        )
    };
    a
}

fn be32(a: u64) -> u32 {
    u32::from_be(read32(a))
}

/// The NUL-terminated string at `a` (at most `max` bytes).
fn cstr_at(a: u64, max: u64) -> &'static [u8] {
    let mut n = 0;
    while n < max && read8(a + n) != 0 {
        n += 1;
    }
    // SAFETY: the bytes were just read; they stay in our RAM.
    unsafe { core::slice::from_raw_parts(a as *const u8, n as usize) }
}

/// `/chosen/bootargs` of the flattened device tree at `dtb` (DTSpec 0.4
/// §5: FDT_BEGIN_NODE 1, FDT_END_NODE 2, FDT_PROP 3, FDT_NOP 4, FDT_END 9).
pub fn dtb_bootargs(dtb: u64) -> Option<&'static str> {
    if dtb == 0 || be32(dtb) != 0xd00d_feed {
        return None;
    }
    let structs = dtb + u64::from(be32(dtb + 8));
    let strings = dtb + u64::from(be32(dtb + 12));
    let end = structs + u64::from(be32(dtb + 36));
    let (mut p, mut depth, mut in_chosen) = (structs, 0u32, false);
    while p + 4 <= end {
        let token = be32(p);
        p += 4;
        match token {
            1 => {
                let name = cstr_at(p, end - p);
                depth += 1;
                in_chosen = depth == 2 && name == b"chosen";
                p += (name.len() as u64 + 4) & !3;
            }
            2 => {
                depth = depth.checked_sub(1)?;
                in_chosen = false;
            }
            3 => {
                let (len, name_off) = (u64::from(be32(p)), u64::from(be32(p + 4)));
                let value = p + 8;
                if in_chosen && cstr_at(strings + name_off, 64) == b"bootargs" {
                    let s = cstr_at(value, len);
                    return core::str::from_utf8(s).ok();
                }
                p = value + ((len + 3) & !3);
            }
            4 => {}
            _ => return None,
        }
    }
    None
}

/// Runs the checks of guest `form` ("raw" or "pie"), which must run from
/// `expect_start`.
pub fn check(boot: Boot, form: &str, expect_start: u64) {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) el) };
    let start = start_address();
    println!(
        "image {}: _start at {:#x} (RAM + {:#x}), EL{}",
        form,
        start,
        start - RAM_BASE,
        (el >> 2) & 3
    );
    check!(
        start == expect_start,
        "_start at {:#x}, not {:#x}",
        start,
        expect_start
    );
    check!((el >> 2) & 3 == 1, "not at EL1");
    match boot.dtb_magic() {
        Some(0xd00d_feed) => println!("image {}: dtb at {:#x}: magic ok", form, boot.dtb),
        other => fail(format_args!("dtb at {:#x}: magic {:x?}", boot.dtb, other)),
    }
    if boot.entry_sp == 0 {
        println!(
            "image {}: entered without a stack: own stack, BSS zeroed",
            form
        );
    } else {
        println!(
            "image {}: stack from the loader at {:#x}",
            form, boot.entry_sp
        );
    }
    let bootargs = dtb_bootargs(boot.dtb);
    println!(
        "image {}: bootargs {:?}",
        form,
        bootargs.unwrap_or("(none)")
    );
    if boot.cmdline != 0 {
        println!("image {}: x4 command line {:?}", form, boot.cmdline());
        check!(
            Some(boot.cmdline()) == bootargs,
            "x4 and /chosen/bootargs differ"
        );
    }
    // SAFETY: reading our own statics; volatile so the load really happens.
    let (p0, p1) = unsafe {
        (
            core::ptr::read_volatile(&TABLE[0]) as *const u32,
            core::ptr::read_volatile(&TABLE[1]) as *const u32,
        )
    };
    let (a0, a1) = (&raw const FIRST, &raw const SECOND);
    println!(
        "image {}: pointers in data {:#x} {:#x}, statics at {:#x} {:#x}",
        form, p0 as u64, p1 as u64, a0 as u64, a1 as u64
    );
    check!(p0 == a0 && p1 == a1, "pointers in data not relocated");
    // SAFETY: both point at our statics (just checked).
    let (v0, v1) = unsafe { (core::ptr::read_volatile(p0), core::ptr::read_volatile(p1)) };
    check!(
        v0 == 0x1111_1111 && v1 == 0x2222_2222,
        "values {:#x} {:#x}",
        v0,
        v1
    );
    let start_sym = &raw const _start as u64;
    check!(start_sym == start, "_start symbol at {:#x}", start_sym);
    println!("image {}: ok", form);
}
