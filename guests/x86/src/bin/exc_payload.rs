//! Rule exc_payload: page faults of the guest go through the hypervisor
//! (SVM intercepts #PF and reflects it), which must write CR2 at delivery.
//! The handler checks CR2 and the error code of each fault.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use x86_guests::*;

    entry!(main);

    fn set_cr2(v: u64) {
        // SAFETY: CR2 is only a report register; writing it at CPL 0 is harmless.
        unsafe { asm!("mov cr2, {}", in(reg) v) };
    }

    fn cr2() -> u64 {
        let v: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe { asm!("mov {}, cr2", out(reg) v) };
        v
    }

    fn main(_boot: Boot) {
        // Not mapped by the loader's tables (only the first 4 GiB are).
        let a = 0x40_0000_0123u64;
        let b = 0x7f_1234_5678u64;
        set_cr2(0x1111);
        check!(cr2() == 0x1111, "CR2 holds what the guest wrote");
        // `mov rax, [rdi]` is 3 bytes (48 8b 07).
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(3, || unsafe {
            // SAFETY: faults on purpose; the handler skips the instruction.
            asm!("mov rax, [rdi]", in("rdi") a, out("rax") _)
        });
        check!(
            matches!(e, Some((14, 0, c)) if c == a),
            "read #PF: vector/error/CR2 {:x?}",
            e
        );
        check!(cr2() == a, "CR2 after the handler = {:#x}", cr2());
        // `mov [rdi], rax` (48 89 07): error code W=1.
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(3, || unsafe {
            // SAFETY: as above.
            asm!("mov [rdi], rax", in("rdi") b, in("rax") 0u64)
        });
        check!(
            matches!(e, Some((14, 2, c)) if c == b),
            "write #PF: vector/error/CR2 {:x?}",
            e
        );
        // A fault that is not a #PF leaves CR2 alone.
        set_cr2(0x2222);
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(2, || unsafe {
            // SAFETY: ud2 faults on purpose.
            asm!("ud2")
        });
        check!(matches!(e, Some((6, 0, 0x2222))), "#UD keeps CR2: {:x?}", e);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
