//! Rule master_abort: reads of guest-physical addresses with neither RAM nor
//! a device behind them return all ones, writes vanish, and no #PF (or any
//! exception) reaches the guest.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::Ordering;
    use x86_guests::*;

    entry!(main);

    fn main(boot: Boot) {
        let before = EXCEPTIONS.load(Ordering::SeqCst);
        for at in [UNBACKED, 0xc000_0000, boot.ram_size + 0x1000, 0xfed0_0000] {
            // SAFETY: identity-mapped guest-physical addresses without RAM;
            // the hypervisor emulates the accesses (master abort).
            unsafe {
                let r8 = core::ptr::read_volatile(at as *const u8);
                let r16 = core::ptr::read_volatile(at as *const u16);
                let r32 = core::ptr::read_volatile(at as *const u32);
                let r64 = core::ptr::read_volatile(at as *const u64);
                check!(
                    r8 == 0xff && r16 == 0xffff && r32 == u32::MAX && r64 == u64::MAX,
                    "reads at {:#x} are all ones ({:#x} {:#x} {:#x} {:#x})",
                    at,
                    r8,
                    r16,
                    r32,
                    r64
                );
                core::ptr::write_volatile(at as *mut u64, 0x1234_5678);
                core::ptr::write_volatile(at as *mut u8, 0);
                let back = core::ptr::read_volatile(at as *const u64);
                check!(
                    back == u64::MAX,
                    "write at {:#x} vanished ({:#x})",
                    at,
                    back
                );
            }
        }
        check!(
            EXCEPTIONS.load(Ordering::SeqCst) == before,
            "no exception was raised"
        );
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
