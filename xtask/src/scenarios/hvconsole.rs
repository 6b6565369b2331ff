//! The hypervisor console (issue 13, item 7): keys typed on the serial
//! console go to the VM with the input focus, Ctrl-A commands move the
//! focus, list the VMs, print exit statistics and stop a VM. Two echo
//! guests that wait for their UART's receive interrupt with no timer
//! armed (x86: HLT, the 16550's IRQ 4 on I/O APIC pin 4; arm64: WFI, the
//! PL011's SPI), so only typed input wakes them.

use super::arm64::arm;
use super::svm::x86;
use super::{vm, Scenario};

/// The keys, each typed once the hypervisor printed its marker.
const INPUT: &[(&str, &str)] = &[
    ("[echo-b] console-echo: ready", "hello a\r"),
    ("[echo-a] echo: hello a", "\x01n"),
    ("console: input goes to vm 1 (echo-b)", "hi b\r"),
    ("[echo-b] echo: hi b", "\x01l"),
    ("console: vm 1 echo-b (input)", "\x01s"),
    ("vm echo-b: exit statistics", "\x01x"),
    ("stopped from the hypervisor console", "\x01?"),
    ("console:   x      stop the focused VM", "\x010"),
    ("console: input goes to vm 0 (echo-a)", "quit\r"),
];

const EXPECT: &[&str] = &[
    "[echo-a] echo: hello a",
    "console: input goes to vm 1 (echo-b)",
    "[echo-b] echo: hi b",
    "console: vm 0 echo-a: ",
    "console: vm 1 echo-b (input): ",
    "vm echo-b: exit statistics",
    "console: stopping vm echo-b",
    "vm echo-b: stopped: stopped from the hypervisor console",
    "console: hypervisor console: Ctrl-A then",
    "console: input goes to vm 0 (echo-a)",
    "[echo-a] echo: quit",
];

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            input: INPUT,
            expect_each: &[&[
                "[echo-a] ok: woken by the receive interrupt",
                "[echo-a] PASS",
                "vm echo-a: stopped: debug-exit, code 33",
                "HV-EXIT: success",
            ]],
            ..x86(
                "hvconsole-x86",
                vec![vm("console_echo", "echo-a"), vm("console_echo", "echo-b")],
                EXPECT,
            )
        },
        Scenario {
            input: INPUT,
            expect_each: &[&["[echo-a] console-echo: ok, ", "HV-EXIT: success"]],
            ..arm(
                "hvconsole-arm64",
                vec![vm("console_echo", "echo-a"), vm("console_echo", "echo-b")],
                EXPECT,
            )
        },
    ]
}
