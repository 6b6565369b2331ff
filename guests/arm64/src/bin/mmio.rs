//! Loads and stores of every size (ISV=1 syndromes) to the MMIO test device.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::*;

    entry!(main);

    fn main(_boot: Boot) {
        println!("mmio: test device not wired yet");
        exit(1);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
