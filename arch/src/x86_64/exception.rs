//! Exception frames and crash reports (pure; host-tested).
//!
//! The IDT entry stubs (`idt.rs`) push one uniform [`ExceptionFrame`]: the
//! general-purpose registers, the vector, an error code (0 for vectors
//! without one), then the frame the CPU pushed (SDM Vol. 3A 6.14.2).

use core::fmt::{self, Write};

/// Register state at the time of an exception, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Size of [`ExceptionFrame`]: the stubs rely on it (22 quadwords).
pub const FRAME_SIZE: usize = 22 * 8;

/// Mnemonic and name of architectural exception vectors 0-31 (SDM Vol. 3A
/// Table 6-1; 21 #CP, 28 #HV, 29 #VC, 30 #SX from the AMD APM Vol. 2 8.2).
pub const fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("CSO", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        15 | 22..=27 | 31 => ("#??", "reserved vector"),
        _ => ("INT", "external interrupt"),
    }
}

/// Whether the CPU pushes an error code for this vector (SDM Table 6-1).
pub const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

bitflags::bitflags! {
    /// The #PF error code (SDM Vol. 3A 4.7, Figure 4-12).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFaultErrorCode: u64 {
        /// P: 0 = the page was not present, 1 = a protection violation.
        const PROTECTION_VIOLATION = 1 << 0;
        /// W/R: the access was a write.
        const WRITE = 1 << 1;
        /// U/S: the access was made in user mode (CPL 3).
        const USER = 1 << 2;
        /// RSVD: a reserved bit was set in a paging-structure entry.
        const RESERVED_BIT = 1 << 3;
        /// I/D: the access was an instruction fetch.
        const INSTRUCTION_FETCH = 1 << 4;
        /// PK: a protection-key violation.
        const PROTECTION_KEY = 1 << 5;
        /// SS: a shadow-stack access.
        const SHADOW_STACK = 1 << 6;
    }
}

bitflags::bitflags! {
    /// The flag bits of a selector error code (SDM Vol. 3A 6.13, Figure
    /// 6-7); bits 15:3 are the selector index ([`selector_index`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SelectorErrorCode: u64 {
        /// EXT: an event external to the program caused the exception.
        const EXTERNAL = 1 << 0;
        /// IDT: the index refers to a gate in the IDT.
        const IDT = 1 << 1;
        /// TI: the index refers to the LDT (when IDT is clear).
        const LDT = 1 << 2;
    }
}

/// Bits 15:3 of a selector error code: the descriptor index.
pub const fn selector_index(error_code: u64) -> u64 {
    (error_code >> 3) & 0x1fff
}

/// Writes the decoded #PF error code bits (SDM Vol. 3A 4.7).
fn write_pf_bits(w: &mut dyn Write, e: PageFaultErrorCode) -> fmt::Result {
    type E = PageFaultErrorCode;
    w.write_str(if e.contains(E::PROTECTION_VIOLATION) {
        "protection-violation"
    } else {
        "not-present"
    })?;
    w.write_str(if e.contains(E::WRITE) {
        " write"
    } else {
        " read"
    })?;
    w.write_str(if e.contains(E::USER) {
        " user"
    } else {
        " supervisor"
    })?;
    for (flag, name) in [
        (E::RESERVED_BIT, " reserved-bit"),
        (E::INSTRUCTION_FETCH, " instruction-fetch"),
        (E::PROTECTION_KEY, " protection-key"),
        (E::SHADOW_STACK, " shadow-stack"),
    ] {
        if e.contains(flag) {
            w.write_str(name)?;
        }
    }
    Ok(())
}

/// Writes a crash report. The first line contains `*** EXCEPTION`; then
/// the CPU frame, CR2/CR3 and all general-purpose registers.
pub fn write_report(w: &mut dyn Write, f: &ExceptionFrame, cr2: u64, cr3: u64) -> fmt::Result {
    let (mnemonic, name) = exception_name(f.vector);
    write!(
        w,
        "\n*** EXCEPTION {mnemonic} ({name}), vector {}, error code {:#x}",
        f.vector, f.error_code
    )?;
    if f.vector == 14 {
        w.write_str(" [")?;
        write_pf_bits(w, PageFaultErrorCode::from_bits_retain(f.error_code))?;
        w.write_str("]")?;
    } else if has_error_code(f.vector) && f.error_code != 0 && f.vector != 8 {
        // Selector error code (SDM 6.13): EXT, IDT, TI, index.
        let e = SelectorErrorCode::from_bits_retain(f.error_code);
        let table = if e.contains(SelectorErrorCode::IDT) {
            "IDT"
        } else if e.contains(SelectorErrorCode::LDT) {
            "LDT"
        } else {
            "GDT"
        };
        write!(
            w,
            " [{table} index {}{}]",
            selector_index(f.error_code),
            if e.contains(SelectorErrorCode::EXTERNAL) {
                " external"
            } else {
                ""
            }
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "RIP={:#018x} CS={:#06x} RFLAGS={:#010x} RSP={:#018x} SS={:#06x}",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    )?;
    writeln!(w, "CR2={cr2:#018x} CR3={cr3:#018x}")?;
    writeln!(
        w,
        "RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}",
        f.rax, f.rbx, f.rcx, f.rdx
    )?;
    writeln!(
        w,
        "RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}",
        f.rsi, f.rdi, f.rbp, f.r8
    )?;
    writeln!(
        w,
        "R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}",
        f.r9, f.r10, f.r11, f.r12
    )?;
    writeln!(
        w,
        "R13={:#018x} R14={:#018x} R15={:#018x}",
        f.r13, f.r14, f.r15
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_matches_stub_layout() {
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), FRAME_SIZE);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 17 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, ss), 21 * 8);
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u64> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, vec![8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(exception_name(14).0, "#PF");
        assert_eq!(exception_name(15).0, "#??");
        assert_eq!(exception_name(32).0, "INT");
    }

    #[test]
    fn page_fault_report_has_all_fields() {
        let f = ExceptionFrame {
            vector: 14,
            error_code: 0x2,
            rip: 0x20_1234,
            cs: 0x8,
            rflags: 0x10046,
            rsp: 0x30_0ff8,
            ss: 0x10,
            rax: 0xaaaa,
            r15: 0xf15,
            ..Default::default()
        };
        let mut s = String::new();
        write_report(&mut s, &f, 0x2f_f000, 0x1000).unwrap();
        assert!(s.contains("*** EXCEPTION #PF (page fault), vector 14, error code 0x2"));
        assert!(s.contains("[not-present write supervisor]"));
        assert!(s.contains("RIP=0x0000000000201234"));
        assert!(s.contains("CR2=0x00000000002ff000"));
        assert!(s.contains("CR3=0x0000000000001000"));
        assert!(s.contains("RAX=0x000000000000aaaa"));
        assert!(s.contains("R15=0x0000000000000f15"));
        assert!(s.contains("RFLAGS=0x00010046"));
        for reg in [
            "RBX=", "RCX=", "RDX=", "RSI=", "RDI=", "RBP=", "R8 =", "R9 =", "R10=",
        ] {
            assert!(s.contains(reg), "{reg} missing");
        }
    }

    #[test]
    fn gp_report_decodes_selector_error_code() {
        let f = ExceptionFrame {
            vector: 13,
            error_code: 0x1a, // IDT, index 3
            ..Default::default()
        };
        let mut s = String::new();
        write_report(&mut s, &f, 0, 0).unwrap();
        assert!(s.contains("#GP (general protection)"));
        assert!(s.contains("[IDT index 3]"));
        // LDT (TI), external, and bits above 15 ignored by the index.
        let f = ExceptionFrame {
            vector: 11,
            error_code: 0xffff_0000_0000_0000 | (5 << 3) | 0x5,
            ..Default::default()
        };
        let mut s = String::new();
        write_report(&mut s, &f, 0, 0).unwrap();
        assert!(s.contains("[LDT index 5 external]"), "{s}");
    }

    #[test]
    fn page_fault_bits_all_and_none() {
        let mut s = String::new();
        write_pf_bits(&mut s, PageFaultErrorCode::from_bits_retain(u64::MAX)).unwrap();
        assert_eq!(
            s,
            "protection-violation write user reserved-bit instruction-fetch protection-key shadow-stack"
        );
        s.clear();
        write_pf_bits(&mut s, PageFaultErrorCode::empty()).unwrap();
        assert_eq!(s, "not-present read supervisor");
        assert_eq!(PageFaultErrorCode::all().bits(), 0x7f);
    }
}
