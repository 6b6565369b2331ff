//! MMIO to the test device (vmm testdev, 4 KiB at 0xfeb8_0000): stores and
//! loads of 1, 2, 4 and 8 bytes through several instruction forms, each a
//! nested page fault that the hypervisor decodes.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use x86_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        let p = TESTDEV_BASE;
        // SAFETY: the test device's page is identity-mapped by the loader's
        // tables and emulated by the hypervisor; volatile accesses of each size.
        unsafe {
            core::ptr::write_volatile(p as *mut u64, 0x1122_3344_5566_7788);
            check!(
                core::ptr::read_volatile(p as *const u64) == 0x1122_3344_5566_7788,
                "64-bit store/load"
            );
            check!(
                core::ptr::read_volatile(p as *const u32) == 0x5566_7788,
                "32-bit load"
            );
            check!(
                core::ptr::read_volatile((p + 2) as *const u16) == 0x5566,
                "16-bit load"
            );
            check!(
                core::ptr::read_volatile((p + 7) as *const u8) == 0x11,
                "8-bit load"
            );
            core::ptr::write_volatile((p + 0x10) as *mut u8, 0xab);
            core::ptr::write_volatile((p + 0x12) as *mut u16, 0xcdef);
            core::ptr::write_volatile((p + 0x14) as *mut u32, 0x0bad_f00d);
            check!(
                core::ptr::read_volatile((p + 0x10) as *const u64) == 0x0bad_f00d_cdef_00ab,
                "8/16/32-bit stores"
            );
        }
        // Instruction forms: mov imm32 to memory, movzx, movsx, movsxd, and a
        // load into an 8-bit register that keeps the rest.
        let (mut zx, mut sx, mut sxd, mut low): (u64, u64, u64, u64) = (0, 0, 0, u64::MAX);
        // SAFETY: as above; only the test device is accessed.
        unsafe {
            asm!(
                "mov dword ptr [{p} + 0x20], 0x80008081",
                "movzx {zx:e}, word ptr [{p} + 0x20]",
                "movsx {sx}, byte ptr [{p} + 0x20]",
                "movsxd {sxd}, dword ptr [{p} + 0x20]",
                "mov {low:l}, byte ptr [{p} + 0x21]",
                p = in(reg) p,
                zx = inout(reg) zx,
                sx = inout(reg) sx,
                sxd = inout(reg) sxd,
                low = inout(reg) low,
            );
        }
        check!(zx == 0x8081, "movzx r32, m16 ({:#x})", zx);
        check!(sx == 0xffff_ffff_ffff_ff81, "movsx r64, m8 ({:#x})", sx);
        check!(sxd == 0xffff_ffff_8000_8081, "movsxd r64, m32 ({:#x})", sxd);
        check!(
            low == 0xffff_ffff_ffff_ff80,
            "mov r8, m8 keeps bits 63:8 ({:#x})",
            low
        );
        let mut q: u64 = 0;
        // SAFETY: as above.
        unsafe {
            asm!(
                "mov qword ptr [{p} + 0x28], -2",
                "mov {q}, qword ptr [{p} + 0x28]",
                p = in(reg) p,
                q = inout(reg) q,
            );
        }
        check!(q == u64::MAX - 1, "mov m64, imm32 sign-extends ({:#x})", q);
        // Reads that only set flags (TEST, CMP with an MMIO operand), each
        // with the flags captured right after it; CF=0x1, ZF=0x40, SF=0x80.
        let mut f = [0u64; 5];
        // SAFETY: as above; the flags are read through PUSHFQ/POP.
        unsafe {
            asm!(
                "mov dword ptr [{p} + 0x30], 0x80000001",
                "test dword ptr [{p} + 0x30], 1",
                "pushfq", "pop {f0}",
                "test dword ptr [{p} + 0x30], 2",
                "pushfq", "pop {f1}",
                "cmp dword ptr [{p} + 0x30], 0x80000001",
                "pushfq", "pop {f2}",
                "cmp dword ptr [{p} + 0x30], {two:e}",
                "pushfq", "pop {f3}",
                "cmp {two:e}, dword ptr [{p} + 0x30]",
                "pushfq", "pop {f4}",
                p = in(reg) p,
                two = in(reg) 0x8000_0002u64,
                f0 = out(reg) f[0],
                f1 = out(reg) f[1],
                f2 = out(reg) f[2],
                f3 = out(reg) f[3],
                f4 = out(reg) f[4],
            );
        }
        let st = |v: u64| v & 0x8d5;
        check!(
            st(f[0]) & 0x40 == 0 && st(f[0]) & 0x80 == 0,
            "test m32, imm: bit set, ZF clear ({:#x})",
            f[0]
        );
        check!(
            st(f[1]) & 0x40 != 0,
            "test m32, imm: bit clear, ZF set ({:#x})",
            f[1]
        );
        check!(st(f[2]) & 0x41 == 0x40, "cmp m32, imm: equal ({:#x})", f[2]);
        check!(
            st(f[3]) & 0x1 != 0,
            "cmp m32, r32: below, CF set ({:#x})",
            f[3]
        );
        check!(st(f[4]) & 0x41 == 0, "cmp r32, m32: above ({:#x})", f[4]);
        // ALU ops with an MMIO source (the device word is 0x80000001).
        let (mut a, mut o, mut x, mut ad, mut sb) = (0xffu64, 0x10u64, 1u64, 0x7fff_ffffu64, 0u64);
        let mut fl = [0u64; 2];
        // SAFETY: as above.
        unsafe {
            asm!(
                "and {a:e}, dword ptr [{p} + 0x30]",
                "or {o:e}, dword ptr [{p} + 0x30]",
                "xor {x:e}, dword ptr [{p} + 0x30]",
                "pushfq", "pop {f0}",
                "add {ad:e}, dword ptr [{p} + 0x30]",
                "pushfq", "pop {f1}",
                "sub {sb}, qword ptr [{p} + 0x30]",
                p = in(reg) p,
                a = inout(reg) a,
                o = inout(reg) o,
                x = inout(reg) x,
                ad = inout(reg) ad,
                sb = inout(reg) sb,
                f0 = out(reg) fl[0],
                f1 = out(reg) fl[1],
            );
        }
        check!(
            a == 1 && o == 0x8000_0011 && x == 0x8000_0000,
            "and/or/xor r32, m32 ({:#x} {:#x} {:#x})",
            a,
            o,
            x
        );
        check!(st(fl[0]) & 0x80 != 0, "xor r32, m32: SF set ({:#x})", fl[0]);
        check!(
            ad == 0 && st(fl[1]) & 0x41 == 0x41,
            "add r32, m32: carry out, zero ({:#x}, {:#x})",
            ad,
            fl[1]
        );
        check!(
            sb == 0u64.wrapping_sub(0x8000_0001),
            "sub r64, m64 ({:#x})",
            sb
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
