//! A raw binary guest: xtask flattens this ELF (linked at 0x4008_0000) with
//! `llvm-objcopy -O binary`; the loader puts the file at RAM + 0x80000 and
//! enters it with x0 = DTB and no stack, as QEMU `-kernel` does with a file
//! that is neither ELF nor an Image (scenario `image-arm64-raw`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        image::check(boot, "raw", RAM_BASE + 0x8_0000);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
