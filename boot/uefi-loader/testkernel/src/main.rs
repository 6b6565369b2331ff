//! Test kernel for `hv-loader`: entered the way the real kernel is (see
//! `boot::handoff`), it checks the register ABI and the handoff block,
//! prints `TEST:` lines on the serial port and exits QEMU with 33 (all
//! checks passed) or 35 (x86: isa-debug-exit; arm64: semihosting SYS_EXIT).
//!
//! Checks: handoff magic/version/size; x86: interrupts off, the firmware's
//! paging structures and GDT not in usable memory; arm64: x2 = magic, x0 =
//! handoff.dtb, MMU and caches off; .data intact and .bss zeroed; the stack
//! in Loader memory; `to_boot_info` succeeds; a module named `pattern.bin`
//! holds bytes `i % 251`; the DTB copy (if any) has the FDT magic.
#![no_std]
#![no_main]

#[cfg(target_arch = "aarch64")]
use boot::handoff::HANDOFF_MAGIC;
use boot::handoff::{kind_from_u32, to_boot_info, Handoff, HandoffModule, HandoffRegion};
use boot::MemoryKind;
use core::fmt::Write;

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "mov rsi, rsp",
    "pushfq",
    "pop rdx",
    "call x86_main",
    "2: hlt",
    "jmp 2b",
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "mov x3, sp",
    "mrs x4, CurrentEL",
    "lsr x4, x4, #2",
    "cmp x4, #2",
    "b.ne 1f",
    "mrs x5, sctlr_el2",
    "b 3f",
    "1: mrs x5, sctlr_el1",
    "3: bl arm_main",
    "2: wfe",
    "b 2b",
);

struct Serial;

#[cfg(target_arch = "x86_64")]
impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            loop {
                let lsr: u8;
                // SAFETY: reads COM1's line status register.
                unsafe { core::arch::asm!("in al, dx", out("al") lsr, in("dx") 0x3fdu16) };
                if lsr & 0x20 != 0 {
                    break;
                }
            }
            // SAFETY: writes COM1's transmit register.
            unsafe { core::arch::asm!("out dx, al", in("al") b, in("dx") 0x3f8u16) };
        }
        Ok(())
    }
}

#[cfg(target_arch = "aarch64")]
impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        const PL011: usize = 0x0900_0000; // QEMU virt
        for b in s.bytes() {
            // SAFETY: PL011 FR (+0x18) and DR (+0) on the QEMU virt board.
            unsafe {
                while core::ptr::read_volatile((PL011 + 0x18) as *const u32) & 0x20 != 0 {}
                core::ptr::write_volatile(PL011 as *mut u32, b as u32);
            }
        }
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => {{ let _ = writeln!(Serial, "TEST: {}", format_args!($($arg)*)); }};
}

fn exit(pass: bool) -> ! {
    say!("{}", if pass { "PASS" } else { "FAIL" });
    #[cfg(target_arch = "x86_64")]
    // SAFETY: isa-debug-exit at 0xf4: 0x10 -> QEMU status 33, 0x11 -> 35.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") 0xf4u16, in("eax") if pass { 0x10u32 } else { 0x11 })
    };
    #[cfg(target_arch = "aarch64")]
    {
        let block = [0x20026u64, if pass { 33 } else { 35 }];
        // SAFETY: semihosting SYS_EXIT with a pointer to {reason, status}.
        unsafe { core::arch::asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr()) };
    }
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("panic: {info}");
    exit(false)
}

static mut BSS: [u64; 2048] = [0; 2048];
static mut DATA: u64 = 0x1122_3344_5566_7788;

/// Checks and records a failure.
fn check(ok: &mut bool, cond: bool, what: &str) {
    if !cond {
        say!("check failed: {what}");
        *ok = false;
    }
}

#[cfg(target_arch = "x86_64")]
#[no_mangle]
extern "C" fn x86_main(handoff: u64, sp: u64, rflags: u64) -> ! {
    say!("entered: rdi={handoff:#x} rsp={sp:#x} rflags={rflags:#x}");
    let mut ok = true;
    check(&mut ok, rflags & (1 << 9) == 0, "interrupts off");
    check(&mut ok, rflags & (1 << 10) == 0, "direction flag clear");
    common(handoff, 0, sp, ok)
}

#[cfg(target_arch = "aarch64")]
#[no_mangle]
extern "C" fn arm_main(dtb: u64, handoff: u64, magic: u64, sp: u64, el: u64, sctlr: u64) -> ! {
    say!("entered: x0={dtb:#x} x1={handoff:#x} x2={magic:#x} sp={sp:#x} EL{el} SCTLR={sctlr:#x}");
    let mut ok = true;
    check(&mut ok, magic == HANDOFF_MAGIC, "x2 = HANDOFF_MAGIC");
    check(&mut ok, sctlr & 0x1005 == 0, "SCTLR M, C and I clear");
    common(handoff, dtb, sp, ok)
}

/// # Safety
/// `addr` points to `len` readable `T`s.
unsafe fn slice<'a, T>(addr: u64, len: u64) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { core::slice::from_raw_parts(addr as *const T, len as usize) }
}

fn common(addr: u64, dtb_reg: u64, sp: u64, mut ok: bool) -> ! {
    if addr == 0 || addr % 8 != 0 {
        say!("bad handoff pointer {addr:#x}");
        exit(false);
    }
    // SAFETY: the loader passes the address of its Handoff (checked above
    // for null and alignment; its fields are validated before use).
    let h: Handoff = unsafe { core::ptr::read_volatile(addr as *const Handoff) };
    if let Err(e) = h.validate() {
        say!("handoff invalid: {e:?}");
        exit(false);
    }
    say!(
        "handoff: version {} size {} regions {} modules {} cmdline_len {}",
        h.version,
        h.size,
        h.memory_map_len,
        h.modules_len,
        h.cmdline_len
    );
    say!(
        "kernel {:#x}-{:#x} rsdp {:#x} dtb {:#x}",
        h.kernel_start,
        h.kernel_end,
        h.acpi_rsdp,
        h.dtb
    );
    #[cfg(target_arch = "aarch64")]
    check(&mut ok, dtb_reg == h.dtb, "x0 = handoff.dtb");
    let _ = dtb_reg;

    // SAFETY: static data of this image, read volatile to see memory.
    let (bss_zero, data) = unsafe {
        let bss = &raw const BSS;
        (
            (0..2048).all(|i| core::ptr::read_volatile((bss as *const u64).add(i)) == 0),
            core::ptr::read_volatile(&raw const DATA),
        )
    };
    check(&mut ok, bss_zero, ".bss zeroed");
    check(&mut ok, data == 0x1122_3344_5566_7788, ".data loaded");

    // SAFETY: the handoff's arrays are loader data of the stated lengths.
    let (regions, modules, cmdline) = unsafe {
        (
            slice::<HandoffRegion>(h.memory_map, h.memory_map_len),
            slice::<HandoffModule>(h.modules, h.modules_len),
            slice::<u8>(h.cmdline, h.cmdline_len),
        )
    };
    let in_loader = regions.iter().any(|r| {
        kind_from_u32(r.kind) == MemoryKind::Loader && sp > r.start && sp <= r.start + r.len
    });
    check(&mut ok, in_loader, "stack in Loader memory");

    for m in modules {
        let end = m.name.iter().position(|&b| b == 0).unwrap_or(m.name.len());
        let name = core::str::from_utf8(&m.name[..end]).unwrap_or("?");
        // SAFETY: a module is `len` bytes of loader data at `start`.
        let data = unsafe { slice::<u8>(m.start, m.len) };
        match name.rsplit(['/', '\\']).next() {
            Some("pattern.bin") => {
                let good = data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
                check(&mut ok, good, "pattern.bin contents");
                say!("module {name}: {} bytes, pattern ok={good}", m.len);
            }
            _ => say!(
                "module {name}: {} bytes: {:?}",
                m.len,
                core::str::from_utf8(data).unwrap_or("<binary>").trim_end()
            ),
        }
    }

    if h.dtb != 0 {
        // SAFETY: the loader's DTB copy starts with the FDT header.
        let magic = unsafe { core::ptr::read_volatile(h.dtb as *const u32) };
        check(&mut ok, u32::from_be(magic) == 0xd00d_feed, "DTB magic");
    }

    match to_boot_info(&h, regions, modules, cmdline) {
        Ok(info) => {
            say!("cmdline \"{}\"", info.cmdline.as_str());
            let usable: u64 = info
                .memory_map
                .regions()
                .iter()
                .filter(|r| r.kind == MemoryKind::Usable)
                .map(|r| r.end - r.start)
                .sum();
            say!(
                "boot info: {} regions, {} MiB usable, {} modules",
                info.memory_map.regions().len(),
                usable >> 20,
                info.modules().len()
            );
            #[cfg(target_arch = "x86_64")]
            x86_firmware_structures(&info, &mut ok);
        }
        Err(e) => {
            say!("to_boot_info: {e:?}");
            ok = false;
        }
    }
    exit(ok)
}

/// Every paging-structure page reachable from CR3, and the GDT, must be
/// outside usable memory: the kernel still runs on them.
#[cfg(target_arch = "x86_64")]
fn x86_firmware_structures(info: &boot::BootInfo, ok: &mut bool) {
    let usable = |a: u64| {
        info.memory_map
            .regions()
            .iter()
            .any(|r| r.kind == MemoryKind::Usable && a >= r.start && a < r.end)
    };
    fn walk(t: u64, level: u32, usable: &dyn Fn(u64) -> bool, n: &mut u32, bad: &mut u32) {
        *n += 1;
        if usable(t) {
            *bad += 1;
        }
        if level == 1 {
            return;
        }
        for i in 0..512 {
            // SAFETY: a paging structure in use (reached from CR3), identity mapped.
            let e = unsafe { core::ptr::read_volatile((t + i * 8) as *const u64) };
            if e & 1 == 0 || ((level == 2 || level == 3) && e & 0x80 != 0) {
                continue;
            }
            walk(e & 0xf_ffff_f000, level - 1, usable, n, bad);
        }
    }
    let (cr3, cr4): (u64, u64);
    // SAFETY: reading control registers at CPL0.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) cr3);
        core::arch::asm!("mov {}, cr4", out(reg) cr4);
    }
    let levels = if cr4 & (1 << 12) != 0 { 5 } else { 4 };
    let (mut n, mut bad) = (0, 0);
    walk(cr3 & 0xf_ffff_f000, levels, &usable, &mut n, &mut bad);
    let mut gdt = [0u8; 10];
    // SAFETY: SGDT stores 10 bytes into the buffer.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) gdt.as_mut_ptr()) };
    let base = u64::from_le_bytes([
        gdt[2], gdt[3], gdt[4], gdt[5], gdt[6], gdt[7], gdt[8], gdt[9],
    ]);
    say!("page tables: {n} pages, {bad} in usable memory; GDT at {base:#x}");
    check(ok, bad == 0, "paging structures outside usable memory");
    check(ok, !usable(base), "GDT outside usable memory");
}
