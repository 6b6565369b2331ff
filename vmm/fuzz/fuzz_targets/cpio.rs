//! The cpio newc reader (boot::cpio) on any bytes: it ends, every file
//! body is a slice of the input, names hold no NUL, an error is the last item, `find` agrees
//! with the iteration.
#![no_main]

use boot::cpio::{entries, find};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let range = data.as_ptr_range();
    let mut files = Vec::new();
    let mut items = 0;
    let mut errored = false;
    for e in entries(data) {
        items += 1;
        assert!(items <= data.len() / 112 + 1);
        assert!(!errored, "an item after an error");
        match e {
            Ok(e) => {
                let b = e.data.as_ptr_range();
                assert!(e.data.is_empty() || (range.start <= b.start && b.end <= range.end));
                // The name every tool shows: no NUL inside it.
                assert!(!e.name.contains('\0'), "name {:?}", e.name);
                files.push((e.name, e.data));
            }
            Err(_) => errored = true,
        }
    }
    for (name, _) in &files {
        let first = files.iter().find(|(n, _)| n == name).map(|(_, d)| *d);
        assert_eq!(find(data, name).ok().flatten(), first);
    }
});
