//! The virtio console (§5.3, port 0) driven by test guests through the
//! `virtio-drivers` crate (`guests/virtio` `console`): lines the guest
//! sends through the device's transmit queue appear among the VM's own
//! console lines, prefixed `[vmname]`, in order with its UART lines (one
//! buffer a line, a line in several buffers, a byte a buffer, through
//! `fmt::Write`, and a 200-byte line the console splits after 160 bytes).
//! The guest never prints those texts over the UART, so each one seen came
//! through the virtio device.

use super::arm64::arm;
use super::svm::x86;
use super::{vm, Scenario};

/// What the guest's `console` check shows, after `[con] ` (the UART's
/// `ok:` lines and the device's lines, interleaved as they are sent).
const LINES: &[&str] = &[
    "[con] ok: no console size offered (Ok(None))",
    "[con] ok: no emergency write offered (Err(Unsupported))",
    "[con] virtio console line 1",
    "[con] ok: line 1 sent in one buffer",
    "[con] virtio console line 2 in 4 pieces",
    "[con] ok: line 2 sent in 4 buffers",
    "[con] virtio console line 3 byte by byte",
    "[con] ok: line 3 sent a byte a buffer",
    "[con] virtio console line 4 via fmt",
    "[con] ok: line 4 sent through fmt::Write",
    "[con] chunk 00; chunk 01; chunk 02; chunk 03; chunk 04; chunk 05; chunk 06; chunk 07; \
     chunk 08; chunk 09; chunk 10; chunk 11; chunk 12; chunk 13; chunk 14; chunk 15;",
    "[con] chunk 16; chunk 17; chunk 18; chunk 19;",
    "[con] ok: a 200-byte line sent",
    "[con] ok: no input pending (Ok(None))",
];

const X86: &[&str] = &[
    "vm con: virtio-mmio VirtioMmio(3) at 0xfeb00000, Gsi(17)",
    "[con] virtio-console in slot 0 at 0xfeb00000",
    "[con] PASS",
    "HV-EXIT: success",
];

const ARM: &[&str] = &[
    "vm con: virtio-mmio VirtioMmio(4) at 0xa002000, Spi(64)",
    "vm con: virtio-mmio VirtioMmio(3) at 0xa002200, Spi(65)",
    "[con] virtio-console in slot 1 at 0xa002200",
    "[con] virtio-console: ok",
    "HV-EXIT: success",
];

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            expect_each: &[LINES],
            ..x86(
                "virtio-console-x86",
                vec![vm("virtio_console", "con").virtio("console")],
                X86,
            )
        },
        // Behind an entropy device: the console in the second slot.
        Scenario {
            expect_each: &[LINES],
            ..arm(
                "virtio-console-arm64",
                vec![vm("virtio_console", "con").virtio("rng,console")],
                ARM,
            )
        },
    ]
}
