//! The ELF loaders (vmm::loader, x86_64 and arm64 ELF64, arm64
//! position-independent ELF64 with its relocations) through
//! vmm::checks::check_load: any image is loaded or refused, never a host
//! access outside the VM's RAM, a boot state inside RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::backend::GuestArch;
use vmm::checks::check_load;
use vmm::loader::elf::{Elf, EM_386, EM_AARCH64, EM_X86_64};

fuzz_target!(|data: &[u8]| {
    if let Ok(elf) = Elf::parse(data, &[EM_386, EM_X86_64, EM_AARCH64]) {
        for s in elf.segments() {
            assert!(s.filesz <= s.memsz && s.offset + s.filesz <= data.len() as u64);
        }
        let e = elf.entry_phys().expect("parse checks the entry");
        let (lo, hi) = elf.phys_extent();
        assert!(lo <= e && e < hi.max(lo + 1));
    }
    for arch in [GuestArch::X86_64, GuestArch::Aarch64] {
        if let Err(e) = check_load(arch, data, "console=ttyS0", 2) {
            panic!("property failed: {e}");
        }
    }
});
