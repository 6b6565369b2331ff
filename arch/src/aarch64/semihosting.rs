//! Arm semihosting (Arm IHI 0082), just enough to end an emulator run with
//! a status: SYS_EXIT with ADP_Stopped_ApplicationExit and a code.
//!
//! AArch64 convention: x0 = operation, x1 = pointer to the parameter block
//! (even for SYS_EXIT), `HLT #0xF000`. When the emulator has semihosting
//! off, the HLT is an undefined instruction at EL2 (EC 0); the exception
//! handler recognizes it by [`hlt_address`] and falls back.

/// SYS_EXIT.
pub const SYS_EXIT: u64 = 0x18;
/// ADP_Stopped_ApplicationExit: the reason that carries an exit code.
pub const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Parameter block of SYS_EXIT for `code`.
pub const fn exit_block(code: u32) -> [u64; 2] {
    [ADP_STOPPED_APPLICATION_EXIT, code as u64]
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hw {
    core::arch::global_asm!(
        ".section .text.arch_semihosting, \"ax\"",
        ".global arch_semihosting_call",
        ".global arch_semihosting_hlt",
        ".balign 4",
        "arch_semihosting_call:",
        "arch_semihosting_hlt:",
        "    hlt #0xf000",
        "    ret",
    );

    extern "C" {
        fn arch_semihosting_call(op: u64, param: *const u64) -> u64;
        static arch_semihosting_hlt: u32;
    }

    /// Address of the `HLT #0xF000` instruction, to recognize the undefined
    /// instruction exception it raises when semihosting is off.
    pub fn hlt_address() -> u64 {
        &raw const arch_semihosting_hlt as u64
    }

    /// SYS_EXIT with `code`: the emulator exits with that status. Returns
    /// only if the emulator ignored the call.
    pub fn exit(code: u32) {
        let block = super::exit_block(code);
        // SAFETY: SYS_EXIT reads the two-word block, which lives on our
        // stack for the duration of the call; it has no other effect on
        // this program's memory.
        unsafe { arch_semihosting_call(super::SYS_EXIT, block.as_ptr()) };
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use hw::*;

#[cfg(test)]
mod tests {
    #[test]
    fn exit_block_layout() {
        assert_eq!(super::exit_block(33), [0x20026, 33]);
    }
}
