//! A position-independent guest: an ELF64 of type ET_DYN linked from 0x1000
//! (`pie.ld`, `-pie`); the loader puts virtual address 0 at RAM + 0x80000,
//! applies its R_AARCH64_RELATIVE relocations and enters it at RAM +
//! 0x80000 + e_entry (scenario `image-arm64-pie`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        image::check(boot, "pie", RAM_BASE + 0x8_1000);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
