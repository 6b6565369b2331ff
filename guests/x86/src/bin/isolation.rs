//! Two instances with different patterns (command line `pattern=0xNN`):
//! each fills all of its free RAM with its pattern, checks that GPAs beyond
//! its RAM read as all ones (never the other VM's pattern), yields so the
//! other VM runs, and then finds its own pattern intact everywhere.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use x86_guests::*;

    entry!(main);

    fn pattern(cmdline: &str) -> u8 {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pattern=0x"))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0xa5)
    }

    /// RAM that holds nothing of ours: below the image (1 MiB) and after the
    /// command line that follows the loader's tables and stack.
    fn free_ranges(boot: &Boot) -> [(u64, u64); 2] {
        let after = (boot.cmdline + boot.cmdline().len() as u64 + 1 + 0xfff) & !0xfff;
        [(0x1000, 0x10_0000), (after, boot.ram_size)]
    }

    fn scan(ranges: &[(u64, u64); 2], word: u64) -> Option<u64> {
        for &(s, e) in ranges {
            let mut a = s;
            while a < e {
                // SAFETY: our own RAM, identity-mapped, not used by code or stack.
                if unsafe { core::ptr::read_volatile(a as *const u64) } != word {
                    return Some(a);
                }
                a += 8;
            }
        }
        None
    }

    fn main(boot: Boot) {
        let p = pattern(boot.cmdline());
        let word = u64::from_ne_bytes([p; 8]);
        let ranges = free_ranges(&boot);
        println!(
            "isolation: pattern {:#04x}, RAM {} MiB, free from {:#x}",
            p,
            boot.ram_size >> 20,
            ranges[1].0
        );
        for &(s, e) in &ranges {
            // SAFETY: our own free RAM (see free_ranges).
            unsafe { core::ptr::write_bytes(s as *mut u8, p, (e - s) as usize) };
        }
        check!(
            scan(&ranges, word).is_none(),
            "pattern written over all free RAM"
        );
        let mut bad = None;
        let mut at = boot.ram_size;
        while at < boot.ram_size + (64 << 20) {
            // SAFETY: beyond our RAM: emulated, reads as all ones.
            let v = unsafe { core::ptr::read_volatile(at as *const u64) };
            if v != u64::MAX {
                bad = Some((at, v));
                break;
            }
            at += 1 << 20;
        }
        check!(bad.is_none(), "64 MiB beyond RAM read all ones: {:?}", bad);
        for _ in 0..8 {
            hypercall(HC_YIELD, 0, 0);
        }
        let lost = scan(&ranges, word);
        check!(
            lost.is_none(),
            "own pattern intact after the other VM ran: {:?}",
            lost
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
