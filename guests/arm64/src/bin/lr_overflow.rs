//! More pending interrupts than the CPU has list registers (QEMU: 4): with
//! IRQs masked the guest makes 12 SGIs (to itself) and the test device's
//! SPI pending, each with its own priority, then unmasks. All 13 must
//! arrive, exactly once each, in priority order (the hypervisor refills the
//! list registers from its vGIC on the underflow maintenance interrupt).
//! Then again with the priority mask (ICC_PMR_EL1) letting only part of
//! them through until it is opened.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use arm64_guests::gic::*;
    use arm64_guests::*;

    const N: usize = 13;
    static mut ORDER: [u64; 32] = [0; 32];
    static mut COUNT: u64 = 0;

    fn count() -> usize {
        load(&raw const COUNT) as usize
    }

    fn handler(intid: u32) {
        let n = count();
        if n < 32 {
            // SAFETY: one vCPU; the handler runs with IRQs masked (in-bounds index).
            unsafe { store(&raw mut ORDER[n], u64::from(intid)) };
        }
        store(&raw mut COUNT, n as u64 + 1);
        if intid == TESTDEV_INTID {
            write32(TESTDEV_LEVEL, 0);
        }
    }

    /// The INTIDs in play and their priorities (distinct, 5 bits kept).
    fn intids() -> [(u32, u8); N] {
        let mut v = [(0u32, 0u8); N];
        for (i, e) in v.iter_mut().enumerate() {
            let intid = if i < 12 { i as u32 } else { TESTDEV_INTID };
            *e = (intid, 0x20 + ((i * 5) % 13) as u8 * 8);
        }
        v
    }

    fn make_pending() {
        for (intid, _) in intids() {
            if intid < 16 {
                send_sgi(intid, 1 << cpu_index());
            }
        }
        write32(TESTDEV_LEVEL, 1);
    }

    fn wait_for(n: usize) {
        let end = cntvct() + 2 * cntfrq();
        while count() < n && cntvct() < end {
            wfi();
        }
    }

    fn check_order(from: usize, want: &[(u32, u8)]) {
        for (k, &(intid, prio)) in want.iter().enumerate() {
            // SAFETY: one vCPU; the handler runs with IRQs masked (in-bounds index).
            let got = unsafe { load(&raw const ORDER[from + k]) } as u32;
            check!(
                got == intid,
                "interrupt {} was {} (want {} of priority {:#x})",
                from + k,
                got,
                intid,
                prio
            );
        }
    }

    fn main(_boot: Boot) {
        init_distributor();
        init_cpu();
        set_handler(handler);
        let all = intids();
        for (intid, prio) in all {
            if intid < 16 {
                enable_private(intid, prio);
            } else {
                enable_spi(intid, prio, false, 0);
            }
        }
        let mut sorted = all;
        sorted.sort_unstable_by_key(|&(i, p)| (p, i));

        // 1. All 13 pending at once, then unmasked.
        make_pending();
        irqs_on();
        wait_for(N);
        irqs_off();
        check!(count() == N, "{} of {} interrupts", count(), N);
        check_order(0, &sorted);
        println!(
            "lr-overflow: {} pending interrupts (4 list registers) taken in priority order: {:?}",
            N,
            sorted.map(|(i, _)| i)
        );

        // 2. The priority mask lets the 5 best through; opened, the rest.
        store(&raw mut COUNT, 0);
        let mask = sorted[5].1; // priorities below it pass
        set_icc_pmr(u64::from(mask));
        make_pending();
        irqs_on();
        wait_for(5);
        let end = cntvct() + cntfrq() / 20;
        while cntvct() < end {
            core::hint::spin_loop();
        }
        let masked = count();
        set_icc_pmr(0xff);
        wait_for(N);
        irqs_off();
        check!(
            masked == 5,
            "{} interrupts got through PMR {:#x}, want 5",
            masked,
            mask
        );
        check!(count() == N, "{} of {} after opening PMR", count(), N);
        check_order(0, &sorted);
        println!(
            "lr-overflow: PMR {:#x}: {} through, the other {} after PMR 0xff, in order",
            mask,
            masked,
            N - masked
        );
        println!("lr-overflow: ok");
    }

    entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {}
