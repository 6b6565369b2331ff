//! Exit statistics (issue 13, item 5): a guest with known exits under the
//! kernel option `stats`; its VM's table (reason, count, share, average and
//! maximum handling time) must appear when it stops.

use super::arm64::arm;
use super::svm::x86;
use super::{vm, Scenario};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            append: "stats",
            // Guest time from the instruction count: under a loaded host a
            // stall of the QEMU thread let the 10 ms slice timer expire
            // between two port accesses (an `end-of-slice` row and 649-651
            // exits, with or without the other CPUs started).
            icount: Some(3),
            ..x86(
                "stats-x86",
                vec![vm("io", "io")],
                &[
                    "[io] PASS",
                    "vm io: stopped: debug-exit, code 33",
                    // 648 port accesses of the io guest (its UART, scratch
                    // and unclaimed-port checks); the total may hold a
                    // time-slice end on a loaded host.
                    "vm io: exit statistics: ",
                    "vm io:   io                   648 ",
                    " us  max ",
                    "HV-EXIT: success",
                ],
            )
        },
        Scenario {
            append: "stats",
            ..arm(
                "stats-arm64",
                vec![vm("mmio", "mmio")],
                &[
                    "[mmio] mmio: ok",
                    "vm mmio: stopped: power off",
                    "vm mmio: exit statistics: ",
                    "vm mmio:   mmio ",
                    " us  max ",
                    "vm mmio:   hypercall ",
                    "HV-EXIT: success",
                ],
            )
        },
    ]
}
