//! arm64 guests at EL1 under the EL2 backend (QEMU TCG `virt,virtualization=on`,
//! `-cpu max` or `cortex-a72`). Guest images: `guests/arm64` (package
//! `arm64-guests`), one `[[bin]]` each. Every scenario runs on `-cpu max`
//! (52-bit PARange, 16-bit VMIDs, VHE present but unused) and again as
//! `<name>-a72` on Cortex-A72 (44-bit PARange, 8-bit VMIDs, no VHE).

#[allow(unused_imports)]
use super::*;

/// A guest that fails a check prints `FAIL:`; any crash is forbidden too.
const FORBID: &[&str] = guest_forbid!();

/// [`FORBID`], and a CPU that never slept while a VM waited in WFI.
const FORBID_IDLE: &[&str] = guest_forbid!("CPU idle 0 time(s)", "all vCPUs halted");

pub(super) fn both(s: Scenario, a72_name: &'static str) -> [Scenario; 2] {
    let a72 = Scenario {
        name: a72_name,
        cpu: Some("cortex-a72"),
        ..s.clone()
    };
    [
        Scenario {
            cpu: Some("max"),
            ..s
        },
        a72,
    ]
}

pub(super) fn arm(
    name: &'static str,
    vms: Vec<GuestVm>,
    expect: &'static [&'static str],
) -> Scenario {
    Scenario {
        forbid: FORBID,
        ..guests(name, Arch::Aarch64, vms, expect)
    }
}

pub fn scenarios() -> Vec<Scenario> {
    let iso = |name: &'static str, seed: &'static str| GuestVm {
        append: seed,
        ..vm("isolation", name)
    };
    let list = [
        both(
            arm(
                "arm64-hello",
                vec![vm("hello", "hello")],
                &[
                    "virt: arm64 EL2 backend",
                    "[hello] hello from an arm64 guest at EL1",
                    "[hello] dtb at 0x40fff000: magic ok",
                    "[hello] hello through the hypercall",
                    "[hello] hello: done",
                    "vm hello: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "arm64-hello-a72",
        ),
        both(
            arm(
                "arm64-psci",
                vec![vm("psci", "psci")],
                &[
                    "[psci] PSCI_VERSION (hvc): 1.0",
                    "[psci] PSCI_FEATURES(0x8400001f) = -1",
                    "[psci] psci: ok, SYSTEM_OFF over SMC",
                    "vm psci: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "arm64-psci-a72",
        ),
        both(
            arm(
                "arm64-mmio",
                vec![vm("mmio", "mmio")],
                &[
                    "[mmio] mmio: ok",
                    "vm mmio: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "arm64-mmio-a72",
        ),
        both(
            arm(
                "inv_master_abort_arm64",
                vec![vm("master_abort", "ma")],
                &[
                    "[ma] master abort at 0xb000000: reads all ones, writes dropped",
                    "[ma] master abort: LDP (ISV=0) at 0xb000000 -> external abort",
                    "[ma] master_abort: ok",
                    "vm ma: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "inv_master_abort_arm64-a72",
        ),
        both(
            Scenario {
                // Each VM in its own order: time slices interleave them.
                expect_each: &[
                    &[
                        "[iso-a] isolation: seed 1",
                        "[iso-a] isolation: ok (seed 1)",
                        "vm iso-a: stopped: power off",
                    ],
                    &[
                        "[iso-b] isolation: seed 2",
                        "[iso-b] isolation: ok (seed 2)",
                        "vm iso-b: stopped: power off",
                    ],
                ],
                ..arm(
                    "arm64-isolation",
                    vec![iso("iso-a", "seed=1 mem=16"), iso("iso-b", "seed=2 mem=16")],
                    &["all 2 VM(s) stopped (0 crashed)", "HV-EXIT: success"],
                )
            },
            "arm64-isolation-a72",
        ),
        // The GIC virtual CPU interface (ICV_* through ICC_* with
        // HCR_EL2.IMO/FMO) is per vCPU: the writer's priority mask, binary
        // point, group enables and active priorities never reach the
        // reader, which checks its reset values between the writer's turns.
        both(
            Scenario {
                expect_each: &[
                    &[
                        "[icv-a] icv: writer wrote: PMR 0xa8 BPR0",
                        "[icv-a] icv: ok (writer), 8 rounds",
                        "vm icv-a: stopped: power off",
                    ],
                    &[
                        "[icv-b] icv: fresh vCPU: PMR 0x0",
                        "[icv-b] icv: ok (reader), 8 rounds",
                        "vm icv-b: stopped: power off",
                    ],
                ],
                ..arm(
                    "hostile-arm64-icv-leak",
                    vec![
                        vm("icv", "icv-a").append("role=writer"),
                        vm("icv", "icv-b").append("role=reader"),
                    ],
                    &["all 2 VM(s) stopped (0 crashed)", "HV-EXIT: success"],
                )
            },
            "hostile-arm64-icv-leak-a72",
        ),
        // Interrupts and timers (issue 12): the vGICv3 behind the virtual
        // CPU interface, the EL1 virtual timer switched per vCPU, the EL1
        // physical timer emulated, WFI that sleeps.
        // Next to a VM that spins for a second: the timer VM's interrupts
        // also arrive while it waits for the CPU, and its WFI wake-ups end
        // the other VM's turns.
        both(
            arm(
                "irq-arm64-vtimer",
                vec![
                    vm("timer", "vtimer").append("timer=virt"),
                    vm("wfi", "spin").append("role=spinner ms=1000"),
                ],
                &[
                    "[vtimer] vtimer: CNTFRQ 62500000 Hz, virtual count at start",
                    "[vtimer] vtimer: 20 interrupts (10 spinning, 10 in WFI",
                    "[vtimer] vtimer: ok",
                    "vm vtimer: stopped: power off",
                    "all 2 VM(s) stopped (0 crashed)",
                    "HV-EXIT: success",
                ],
            ),
            "irq-arm64-vtimer-a72",
        ),
        both(
            arm(
                "irq-arm64-ptimer",
                vec![
                    vm("timer", "ptimer").append("timer=phys"),
                    vm("wfi", "spin").append("role=spinner ms=1000"),
                ],
                &[
                    "[ptimer] ptimer: CNTFRQ 62500000 Hz, virtual count at start",
                    "[ptimer] ptimer: 20 interrupts (10 spinning, 10 in WFI",
                    "[ptimer] ptimer: ok",
                    "vm ptimer: stopped: power off",
                    "all 2 VM(s) stopped (0 crashed)",
                    "HV-EXIT: success",
                ],
            ),
            "irq-arm64-ptimer-a72",
        ),
        // Two VMs side by side: 2 and 4 vCPUs.
        both(
            Scenario {
                expect_each: &[
                    &[
                        "[sgi2] sgi: 2 vCPUs started by PSCI CPU_ON",
                        "[sgi2] sgi: 2 vCPUs: 10 targeted and 2 broadcast SGIs, each taken exactly once",
                        "[sgi2] sgi: ok",
                        "vm sgi2: stopped: power off",
                    ],
                    &[
                        "[sgi4] sgi: 4 vCPUs started by PSCI CPU_ON",
                        "[sgi4] sgi: 4 vCPUs: 60 targeted and 12 broadcast SGIs, each taken exactly once",
                        "[sgi4] sgi: ok",
                        "vm sgi4: stopped: power off",
                    ],
                ],
                ..arm(
                    "irq-arm64-sgi",
                    vec![
                        GuestVm {
                            smp: 2,
                            ..vm("sgi", "sgi2")
                        },
                        GuestVm {
                            smp: 4,
                            ..vm("sgi", "sgi4")
                        },
                    ],
                    &["all 2 VM(s) stopped (0 crashed)", "HV-EXIT: success"],
                )
            },
            "irq-arm64-sgi-a72",
        ),
        both(
            arm(
                "irq-arm64-spi-level",
                vec![vm("spi_level", "spi")],
                &[
                    "[spi] spi-level: line held high: 3 interrupts, re-asserted after 2 EOIs",
                    "[spi] spi-level: 5 events resampled at EOI: 5 interrupts, 0 events left, 5 EOIs",
                    "[spi] spi-level: edge: 3 pulses while masked -> 1 interrupt(s), one more -> 2",
                    "[spi] spi-level: ok",
                    "vm spi: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "irq-arm64-spi-level-a72",
        ),
        both(
            arm(
                "irq-arm64-lr-overflow",
                vec![vm("lr_overflow", "lr")],
                &[
                    "[lr] lr-overflow: 13 pending interrupts (4 list registers) taken in priority order",
                    "[lr] lr-overflow: PMR 0x48: 5 through, the other 8 after PMR 0xff, in order",
                    "[lr] lr-overflow: ok",
                    "vm lr: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "irq-arm64-lr-overflow-a72",
        ),
        // The sleeper's first WFI lasts longer than the spinner's whole
        // run: the spinner's lines come between the sleeper's sleep and
        // wake-up. Its later sleeps are alone: the CPU idles in WFI.
        both(
            Scenario {
                forbid: FORBID_IDLE,
                ..arm(
                    "wfi-arm64-wake",
                    vec![
                        vm("wfi", "sleeper").append("role=sleeper"),
                        vm("wfi", "spinner").append("role=spinner"),
                    ],
                    &[
                        "[sleeper] wfi: sleep 1: 600 ms on the virtual timer",
                        "[spinner] spin: done",
                        "vm spinner: stopped: power off",
                        "[sleeper] wfi: woke 1 after",
                        "[sleeper] wfi: woke 2 after",
                        "[sleeper] wfi: woke 3 after",
                        "[sleeper] wfi: ok",
                        "all 2 VM(s) stopped (0 crashed); CPU idle",
                        "HV-EXIT: success",
                    ],
                )
            },
            "wfi-arm64-wake-a72",
        ),
        both(
            arm(
                "arm64-undef",
                vec![vm("undef", "undef")],
                &[
                    "[undef] undef: ok, 3 UNDEFINED exceptions taken, still running",
                    "vm undef: stopped: power off",
                    "HV-EXIT: success",
                ],
            ),
            "arm64-undef-a72",
        ),
    ];
    list.into_iter()
        .flatten()
        .map(|s| {
            // The interrupt and timer scenarios measure periods and wait
            // with counter timeouts: deterministic under icount, whatever
            // the host's load (see irq_x86.rs).
            let timed = s.name.starts_with("irq-arm64") || s.name.starts_with("wfi-arm64");
            let s = Scenario {
                icount: timed.then_some(3).or(s.icount),
                ..s
            };
            if timed {
                on_cpu0(s)
            } else {
                s
            }
        })
        .collect()
}
