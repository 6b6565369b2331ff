//! CPUID as the hypervisor filters it: our leaves at 0x4000_0000 with the
//! signature, "hypervisor present", SVM/VMX/MONITOR hidden, the vmm's
//! local APIC advertised (x2APIC, TSC deadline) with this vCPU's APIC ID.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        let hv = cpuid(0x4000_0000, 0);
        let mut sig = [0u8; 12];
        for (i, w) in hv[1..].iter().enumerate() {
            sig[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let sig = core::str::from_utf8(&sig).unwrap_or("?");
        println!("hypervisor leaf: max {:#x}, signature {:?}", hv[0], sig);
        check!(sig == "RustHvRustHv", "hypervisor signature");
        check!(hv[0] >= 0x4000_0001, "hypervisor max leaf");
        let l1 = cpuid(1, 0);
        check!(l1[2] & (1 << 31) != 0, "CPUID.1:ECX.hypervisor set");
        check!(l1[2] & (1 << 5) == 0, "VMX hidden");
        check!(l1[2] & (1 << 3) == 0, "MONITOR hidden");
        check!(l1[2] & (1 << 21) != 0, "x2APIC advertised");
        check!(l1[2] & (1 << 24) != 0, "TSC-deadline timer advertised");
        check!(l1[1] >> 24 == 0, "APIC ID 0 on the only vCPU");
        let e1 = cpuid(0x8000_0001, 0);
        check!(
            e1[2] & (1 << 2) == 0,
            "SVM hidden (CPUID 8000_0001 ECX bit 2)"
        );
        check!(cpuid(0x8000_000a, 0) == [0; 4], "SVM leaf 8000_000A empty");
        let v = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        for (i, w) in [v[1], v[3], v[2]].iter().enumerate() {
            vendor[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        println!(
            "vendor {:?}, max basic leaf {:#x}",
            core::str::from_utf8(&vendor).unwrap_or("?"),
            v[0]
        );
        check!(
            cpuid(v[0] + 1, 0) == [0; 4],
            "leaf above the maximum reads zeros"
        );
        // SVM is hidden: its instructions are undefined (all 3 bytes long).
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(3, || unsafe {
            // SAFETY: faults on purpose (#UD); the handler skips it.
            core::arch::asm!("vmrun rax", in("rax") 0x1000u64)
        });
        check!(matches!(e, Some((6, _, _))), "VMRUN raises #UD: {:x?}", e);
        // SAFETY: a deliberate exception in this test guest; its IDT handler resumes after the instruction.
        let e = expect_exception(3, || unsafe {
            // SAFETY: as above.
            core::arch::asm!("stgi")
        });
        check!(matches!(e, Some((6, _, _))), "STGI raises #UD: {:x?}", e);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
