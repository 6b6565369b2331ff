//! The Multiboot 1 loader (vmm::loader::multiboot) through
//! vmm::checks::check_load: header search, a.out kludge and ELF paths,
//! information placement; never outside the VM's RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::backend::GuestArch;
use vmm::checks::check_load;
use vmm::loader::multiboot::find_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = find_header(data) {
        assert!(h.offset + 12 <= data.len() && h.offset < 8192 && h.offset % 4 == 0);
    }
    let (cmdline, image) = match data.split_first() {
        Some((&n, rest)) if n < 64 && rest.len() >= usize::from(n) => {
            let (c, i) = rest.split_at(usize::from(n));
            (String::from_utf8_lossy(c).into_owned(), i)
        }
        _ => (String::new(), data),
    };
    if let Err(e) = check_load(GuestArch::X86_64, image, &cmdline, 1) {
        panic!("property failed: {e}");
    }
});
