//! The hostile-guest review's x86 regression scenarios (`guests/x86`
//! `hostile` binary, one `mode=` each): a guest attacks the hypervisor from
//! user or kernel mode, usually next to a well-behaved `hello` VM that must
//! still finish first. Each runs on `EPYC,+svm,+npt` and as `<name>-max` on
//! `-cpu max`.

#[allow(unused_imports)]
use super::*;
// The x86 scenarios' forbidden strings, EPYC model and `max` twin.
use super::svm::{both, x86};

/// A spinning VM first in the run order, then `hello`: hello must finish
/// before the spin is over. Before the fix the spinning VM's turn lasted
/// as long as its loop, so hello only ran afterwards.
fn spin(name: &'static str, max_name: &'static str, append: &'static str) -> [Scenario; 2] {
    let mut s = x86(
        name,
        vec![vm("hostile", "spin").append(append), vm("hello", "hello")],
        &[
            "[hello] PASS",
            "vm hello: stopped: debug-exit, code 33",
            "[spin] hostile: spin over",
            "vm spin: stopped: debug-exit, code 33",
            "all 2 VM(s) stopped (0 crashed)",
            "HV-EXIT: success",
        ],
    );
    s.expect_each = &[&[
        "[spin] hostile: mode",
        "[spin] hostile: spin over",
        "[spin] PASS",
    ]];
    // The point is sharing one CPU with the spinner.
    both(on_cpu0(s), max_name)
}

pub fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    v.extend(spin(
        "hostile-x86-user-cpuid-spin",
        "hostile-x86-user-cpuid-spin-max",
        "mode=user-cpuid-spin gticks=3",
    ));
    v.extend(spin(
        "hostile-x86-kernel-msr-spin",
        "hostile-x86-kernel-msr-spin-max",
        "mode=kernel-msr-spin gticks=3",
    ));
    let mut user = x86(
        "hostile-x86-user-vmmcall",
        vec![vm("hostile", "uv").append("mode=user-vmmcall")],
        &[
            "[uv] from CPL 0",
            "[uv] ok: CONSOLE_WRITE from CPL 0 works",
            "[uv] ok: running at CPL 3",
            "[uv] ok: CONSOLE_WRITE from CPL 3: 0xfffffffffffffffc (-4)",
            "[uv] ok: EXIT from CPL 3: 0xfffffffffffffffc (-4), still running",
            "[uv] ok: YIELD from CPL 3: 0xfffffffffffffffc (-4)",
            "[uv] PASS",
            "vm uv: stopped: debug-exit, code 33",
            "HV-EXIT: success",
        ],
    );
    user.forbid = &[
        "*** EXCEPTION",
        "panicked",
        "HV-EXIT: failure",
        "FAIL",
        "kernel secret",
        "stopped: exit hypercall",
    ];
    v.extend(both(user, "hostile-x86-user-vmmcall-max"));
    // One VM floods the console through CONSOLE_WRITE (400 x 4 KiB) and the
    // UART THR (96,000 bytes); the hello VM next to it finishes, and the
    // console says how much of the flood it dropped.
    let mut flood = x86(
        "hostile-console-flood",
        vec![
            vm("hostile", "flood").append("mode=console-flood rounds=400"),
            vm("hello", "hello"),
        ],
        &[
            "[hello] PASS",
            "vm hello: stopped: debug-exit, code 33",
            "[flood] hostile: flood over",
            "vm flood: stopped: debug-exit, code 33",
            "all 2 VM(s) stopped (0 crashed)",
            "HV-EXIT: success",
        ],
    );
    flood.expect_each = &[&[
        "[flood] hostile: mode console-flood",
        "[WARN ] [flood] ... ",
        "[flood] ok: 400 of 400 CONSOLE_WRITEs of 4 KiB accepted",
        "[flood] PASS",
    ]];
    v.extend(both(flood, "hostile-console-flood-max"));
    // XCR0 pinned to x87|SSE before any guest runs (review finding 8), on
    // the firmware path where the risk is (UEFI) and on Multiboot.
    let xsave = |name, boot| Scenario {
        boot,
        timeout: if boot == Boot::Uefi {
            UEFI_TIMEOUT
        } else {
            KERNEL_TIMEOUT
        },
        ..x86(
            name,
            vec![vm("hostile", "xs").append("mode=xsave")],
            &[
                "[xs] ok: XCR0 is x87|SSE only (0x3)",
                "[xs] ok: VEX instruction #UD",
                // "#UD", or on QEMU TCG (no XSETBV intercept) "#UD or XCR0
                // back to 0x3 at the next turn".
                "[xs] ok: XSETBV #UD",
                "[xs] PASS",
                "vm xs: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        )
    };
    v.extend(both(
        xsave("hostile-x86-xcr0", Boot::Multiboot1),
        "hostile-x86-xcr0-max",
    ));
    v.extend(both(
        xsave("hostile-x86-xcr0-uefi", Boot::Uefi),
        "hostile-x86-xcr0-uefi-max",
    ));
    // Speculation controls hidden consistently (review finding 7).
    v.extend(both(
        x86(
            "hostile-x86-spec-ctrl",
            vec![vm("hostile", "spec").append("mode=spec")],
            &[
                "[spec] ok: CPUID.7.EDX: no SPEC_CTRL",
                "[spec] ok: CPUID.8000_0008.EBX: no RDPRU/IBPB",
                "[spec] ok: WRMSR 0x48 #GP",
                "[spec] ok: WRMSR 0x49 #GP",
                "[spec] ok: RDPRU #UD",
                "[spec] PASS",
                "vm spec: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        "hostile-x86-spec-ctrl-max",
    ));
    v.extend(both(
        x86(
            "hostile-x86-icebp",
            vec![vm("hostile", "icebp").append("mode=icebp")],
            &[
                "[icebp] ok: ICEBP sets no DR6.BS",
                "[icebp] ok: single step raised #DB",
                "[icebp] ok: DR6.BS after a single step",
                "[icebp] ok: running at CPL 3",
                "[icebp] icebp: #3 at CPL 3:",
                "[icebp] hostile: icebp done",
                "[icebp] PASS",
                "vm icebp: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ],
        ),
        "hostile-x86-icebp-max",
    ));
    v
}
