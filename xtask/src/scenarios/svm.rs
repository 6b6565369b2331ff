//! x86 guests under AMD SVM (QEMU TCG: `-cpu max` or `EPYC,+svm,+npt`).
//! Guest images: `guests/x86` (package `x86-guests`), one `[[bin]]` each.
//!
//! Every guest prints `ok: ...` per check and `PASS`, and ends through
//! isa-debug-exit with 0x10 (VM exit code 33); a failed check prints `FAIL`
//! and exits with 0x11 (35). Each scenario runs on `EPYC,+svm,+npt` (no NRIPS,
//! no decode assists, no flush-by-ASID: the backend decodes and flushes
//! everything itself) and again as `<name>-max` on `-cpu max`.

#[allow(unused_imports)]
use super::*;

/// A failed check, a crash, or a VM stopped for a reason nobody asked for.
const FORBID: &[&str] = guest_forbid!();

pub(super) fn x86(
    name: &'static str,
    vms: Vec<GuestVm>,
    expect: &'static [&'static str],
) -> Scenario {
    Scenario {
        cpu: Some("EPYC,+svm,+npt"),
        forbid: FORBID,
        ..guests(name, Arch::X86_64, vms, expect)
    }
}

/// The scenario on EPYC (no NRIPS) and on `max` (VGIF, no NRIPS either under TCG 7.2).
pub(super) fn both(s: Scenario, max_name: &'static str) -> [Scenario; 2] {
    let max = Scenario {
        name: max_name,
        cpu: Some("max"),
        ..s.clone()
    };
    [s, max]
}

/// A single guest whose checks must all pass.
fn single(
    name: &'static str,
    max_name: &'static str,
    bin: &'static str,
    expect: &'static [&'static str],
) -> [Scenario; 2] {
    both(x86(name, vec![vm(bin, bin)], expect), max_name)
}

pub fn scenarios() -> Vec<Scenario> {
    let list = [
        single(
            "svm-hello",
            "svm-hello-max",
            "hello",
            &[
                "virt: SVM enabled",
                "[hello] hello from an ELF64 guest",
                "[hello] hello through the hypercall",
                "[hello] PASS",
                "vm hello: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        both(
            x86(
                "svm-multiboot",
                vec![vm("multiboot", "mb").append("mb-arg=42 second")],
                &[
                    "Multiboot1 kernel",
                    "[mb] multiboot guest in long mode: magic 0x2badb002",
                    "[mb] mmap: base 0x000000000 length 0x00009fc00 type 1",
                    "[mb] mmap: base 0x000100000",
                    "[mb] cmdline: \"mb-arg=42 second\"",
                    "[mb] PASS",
                    "vm mb: stopped: debug-exit, code 33",
                    "HV-EXIT: success",
                ],
            ),
            "svm-multiboot-max",
        ),
        single(
            "svm-cpuid",
            "svm-cpuid-max",
            "cpuid",
            &[
                "[cpuid] ok: hypervisor signature",
                "[cpuid] ok: SVM hidden",
                "[cpuid] ok: VMRUN raises #UD",
                "[cpuid] PASS",
                "HV-EXIT: success",
            ],
        ),
        single(
            "svm-msr",
            "svm-msr-max",
            "msr",
            &[
                "[msr] ok: EFER.SVME hidden",
                "[msr] ok: rdmsr 0x12345678 raises #GP(0)",
                "[msr] PASS",
                "HV-EXIT: success",
            ],
        ),
        single(
            "svm-io",
            "svm-io-max",
            "io",
            &[
                "[io] ok: UART scratch register keeps 0x5a",
                "[io] ok: unclaimed port reads all ones (dword)",
                "[io] PASS",
                "vm io: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        single(
            "svm-mmio",
            "svm-mmio-max",
            "mmio",
            &[
                "[mmio] ok: 64-bit store/load",
                "[mmio] ok: movsxd r64, m32",
                "[mmio] ok: mov m64, imm32 sign-extends",
                "[mmio] ok: test m32, imm: bit clear, ZF set",
                "[mmio] ok: cmp r32, m32: above",
                "[mmio] ok: and/or/xor r32, m32",
                "[mmio] ok: add r32, m32: carry out, zero",
                "[mmio] PASS",
                "HV-EXIT: success",
            ],
        ),
        single(
            "inv_master_abort",
            "inv_master_abort-max",
            "master_abort",
            &[
                "[master_abort] ok: reads at 0xfe000000 are all ones",
                "[master_abort] ok: write at 0xfe000000 vanished",
                "[master_abort] ok: no exception was raised",
                "[master_abort] PASS",
                "HV-EXIT: success",
            ],
        ),
        both(
            Scenario {
                // Each VM in its own order: time slices interleave them.
                expect_each: &[
                    &[
                        "[iso-a] ok: pattern written over all free RAM",
                        "[iso-a] ok: own pattern intact after the other VM ran",
                        "[iso-a] PASS",
                    ],
                    &[
                        "[iso-b] ok: pattern written over all free RAM",
                        "[iso-b] ok: own pattern intact after the other VM ran",
                        "[iso-b] PASS",
                    ],
                ],
                ..x86(
                    "svm-isolation",
                    vec![
                        vm("isolation", "iso-a").append("pattern=0x5a"),
                        vm("isolation", "iso-b").append("pattern=0xc3"),
                    ],
                    &["all 2 VM(s) stopped (0 crashed)", "HV-EXIT: success"],
                )
            },
            "svm-isolation-max",
        ),
        both(
            Scenario {
                // Each VM in its own order: time slices interleave them.
                expect_each: &[
                    &[
                        "[tf] triple_fault: loading an empty IDT",
                        "vm tf: stopped: triple fault [Rip=",
                    ],
                    &[
                        "[hello] hello from an ELF64 guest",
                        "[hello] PASS",
                        "vm hello: stopped: debug-exit, code 33",
                    ],
                ],
                ..x86(
                    "svm-triple-fault",
                    vec![vm("triple_fault", "tf"), vm("hello", "hello")],
                    &["all 2 VM(s) stopped (1 crashed)"],
                )
            },
            "svm-triple-fault-max",
        ),
        // #PF interception is off by default (nested paging needs no #PF
        // exits); `svm-intercept-pf` turns it on so the guest's faults go
        // through the hypervisor's reflection, which writes CR2 at delivery.
        both(
            Scenario {
                append: "svm-intercept-pf",
                ..x86(
                    "inv_exc_payload",
                    vec![vm("exc_payload", "exc_payload")],
                    &[
                        "guest #PF intercepted and reflected",
                        "[exc_payload] ok: read #PF",
                        "[exc_payload] ok: write #PF",
                        "[exc_payload] ok: #UD keeps CR2",
                        "[exc_payload] PASS",
                        "HV-EXIT: success",
                    ],
                )
            },
            "inv_exc_payload-max",
        ),
        single(
            "inv_dr_intercept",
            "inv_dr_intercept-max",
            "dr_intercept",
            &[
                "[dr_intercept] ok: DR0-3 read back",
                "[dr_intercept] ok: DR7 reserved bits",
                "[dr_intercept] ok: DR7 bits 63:32 set: #GP(0)",
                "[dr_intercept] PASS",
                "HV-EXIT: success",
            ],
        ),
    ];
    let mut v: Vec<Scenario> = list.into_iter().flatten().collect();
    // `cargo xtask bench --check` (xtask/bench-smoke.sh): the exit round
    // trips and interrupt figures stay under their regression bounds.
    v.push(Scenario {
        script: Some(&["xtask/bench-smoke.sh"]),
        timeout: Duration::from_secs(300),
        expect_status: 0,
        expect: &[
            "cpuid-exit-roundtrip:",
            "vmmcall-roundtrip:",
            "portio-out-roundtrip:",
            // Round trips before latencies, as the guest prints them.
            "x86-eoi-roundtrip:",
            "x86-x2apic-eoi-roundtrip:",
            "x86-self-ipi-roundtrip:",
            "x86-lapic-timer-latency:",
            "x86-lapic-timer-hlt-latency:",
            "x86-ipi-latency:",
            "x86-ipi-hlt-latency:",
        ],
        // `bench: EPYC...: <error>` is a failure; a run that hit QEMU 7.2's
        // EVENTINJ re-delivery is a `bench: note (EPYC...)` and runs once
        // more (README "Benchmarks").
        forbid: &["check FAILED", "bench: EPYC"],
        ..boot(
            "bench-smoke",
            Arch::X86_64,
            Boot::Multiboot1,
            KERNEL_TIMEOUT,
        )
    });
    // Two VMs from a TOML configuration (issue 13 item 4): names, guests,
    // memory sizes and command lines as the file gives them.
    let mut toml = x86(
        "config-toml",
        Vec::new(),
        &[
            "vm toml-hello: 16 MiB",
            "vm toml-mb: 24 MiB",
            "all 2 VM(s) stopped (0 crashed)",
            "HV-EXIT: success",
        ],
    );
    toml.config = Some("xtask/configs/two-vms-x86.toml");
    toml.expect_each = &[
        &[
            "[toml-hello] cmdline: \"from a TOML file\"",
            "[toml-hello] PASS",
        ],
        &["[toml-mb] cmdline: \"mb-arg=42 second\"", "[toml-mb] PASS"],
    ];
    v.push(toml);
    v
}
