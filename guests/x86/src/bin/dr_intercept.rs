//! Rule dr_intercept: MOV to/from DR0-DR7 are intercepted and emulated; the
//! guest reads back what it wrote, with DR6/DR7 reserved bits as the APM
//! defines them, DR4/DR5 aliasing DR6/DR7, and #GP for DR7 bits 63:32.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use x86_guests::*;

    entry!(main);

    macro_rules! dr {
        (read $n:literal) => {{
            let v: u64;
            // SAFETY: debug-register moves at CPL 0; the hypervisor emulates them.
            unsafe { asm!(concat!("mov {}, dr", $n), out(reg) v) };
            v
        }};
        (write $n:literal, $v:expr) => {{
            let v: u64 = $v;
            // SAFETY: as above; no breakpoint is armed (the hypervisor shadows DR7).
            unsafe { asm!(concat!("mov dr", $n, ", {}"), in(reg) v) };
        }};
    }

    fn main(boot: Boot) {
        let dr6 = dr!(read 6);
        let dr7 = dr!(read 7);
        check!(dr6 == 0xffff_0ff0, "DR6 initial {:#x}", dr6);
        check!(dr7 == 0x400, "DR7 initial {:#x}", dr7);
        dr!(write 0, 0x1000);
        dr!(write 1, 0xffff_8000_0000_2000);
        dr!(write 2, 0x3000);
        dr!(write 3, 0x4321);
        let v = [dr!(read 0), dr!(read 1), dr!(read 2), dr!(read 3)];
        check!(
            v == [0x1000, 0xffff_8000_0000_2000, 0x3000, 0x4321],
            "DR0-3 read back {:x?}",
            v
        );
        dr!(write 7, 0x155);
        check!(
            dr!(read 7) == 0x555,
            "DR7 = 0x155 reads 0x555 (bit 10 fixed): {:#x}",
            dr!(read 7)
        );
        dr!(write 7, 0xffff_dfff);
        check!(
            dr!(read 7) == 0xffff_07ff,
            "DR7 reserved bits 11,12,14,15 read 0: {:#x}",
            dr!(read 7)
        );
        dr!(write 6, 0);
        check!(
            dr!(read 6) == 0xffff_0ff0,
            "DR6 reserved bits read 1: {:#x}",
            dr!(read 6)
        );
        dr!(write 6, 0xf);
        check!(
            dr!(read 6) == 0xffff_0fff,
            "DR6 B0-B3 writable: {:#x}",
            dr!(read 6)
        );
        check!(dr!(read 4) == dr!(read 6), "DR4 aliases DR6 with CR4.DE=0");
        dr!(write 5, 0x401);
        check!(dr!(read 7) == 0x401, "DR5 aliases DR7 with CR4.DE=0");
        // mov dr7, rax is 3 bytes (0f 23 f8).
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(3, || unsafe {
            // SAFETY: faults on purpose; the handler skips it.
            asm!("mov dr7, rax", in("rax") 1u64 << 32)
        });
        check!(
            matches!(e, Some((13, 0, _))),
            "DR7 bits 63:32 set: #GP(0) {:x?}",
            e
        );
        check!(dr!(read 7) == 0x401, "DR7 unchanged after the #GP");
        // A data breakpoint armed through the emulated registers really
        // fires in the guest. Only with `check-breakpoints` on the command
        // line: QEMU 7.2 TCG does not arm breakpoints from the VMCB DR7 on
        // VMRUN (Bochs and hardware do).
        if boot.cmdline().contains("check-breakpoints") {
            watchpoint();
        } else {
            println!("skip: data breakpoint (no check-breakpoints on the command line)");
        }
    }

    fn watchpoint() {
        dr!(write 6, 0);
        dr!(write 0, core::ptr::addr_of!(WATCH) as u64);
        dr!(write 7, 0x400 | 1 | (0b01 << 16) | (0b10 << 18));
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(TRAP, || unsafe {
            // SAFETY: a plain store to our own static; it traps with #DB.
            core::ptr::write_volatile(core::ptr::addr_of_mut!(WATCH), 7)
        });
        dr!(write 7, 0x400);
        check!(
            matches!(e, Some((1, _, _))),
            "write to DR0's address raises #DB: {:x?}",
            e
        );
        let dr6 = dr!(read 6);
        check!(dr6 & 0xf == 1, "DR6.B0 reports breakpoint 0 ({:#x})", dr6);
        // SAFETY: reading our own static.
        check!(
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!(WATCH)) } == 7,
            "the store completed"
        );
        // Disarmed: no more #DB.
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(TRAP, || unsafe {
            // SAFETY: as above.
            core::ptr::write_volatile(core::ptr::addr_of_mut!(WATCH), 8)
        });
        check!(e.is_none(), "no #DB once DR7 is cleared: {:x?}", e);
    }

    static mut WATCH: u64 = 0;
}

#[cfg(not(target_os = "none"))]
fn main() {}
