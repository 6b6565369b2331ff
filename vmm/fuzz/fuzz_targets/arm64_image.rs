//! The Linux arm64 Image loader (vmm::loader::arm64_image and load_arm64)
//! and, for inputs without the Image or ELF magic, the raw-binary loader
//! (vmm::loader::raw) through vmm::checks::check_load: header geometry,
//! placement below the device tree; never outside the VM's RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::backend::GuestArch;
use vmm::checks::check_load;
use vmm::loader::arm64_image::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = parse(data) {
        assert!(h.text_offset < 1 << 30 && h.image_size <= 1 << 30);
        assert!(h.image_size >= data.len() as u64);
    }
    let vcpus = data.first().map_or(1, |&b| u32::from(b % 8) + 1);
    if let Err(e) = check_load(GuestArch::Aarch64, data, "earlycon", vcpus) {
        panic!("property failed: {e}");
    }
});
