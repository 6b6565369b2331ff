//! virtio devices (issue 14) driven by test guests through the
//! `virtio-drivers` crate (`guests/virtio`): the entropy device with its
//! level interrupt, and block devices over generated disk images (the
//! pattern of `guests::disk_pattern`), one writable and one read-only VM
//! side by side.

use super::arm64::arm;
use super::svm::x86;
use super::{vm, GuestVm, Scenario};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        x86(
            "virtio-rng-x86",
            vec![vm("virtio_rng", "rng").virtio("rng")],
            &[
                "vm rng: virtio-mmio VirtioMmio(4) at 0xfeb00000, Gsi(17)",
                "[rng] virtio-rng in slot 0 at 0xfeb00000, GSI 17",
                "[rng] ok: two 64-byte requests filled",
                "[rng] ok: a 4096-byte request filled",
                "[rng] ok: one interrupt, acknowledged (1)",
                "[rng] ok: InterruptStatus 0 after the acknowledgement",
                "[rng] PASS",
                "HV-EXIT: success",
            ],
        ),
        arm(
            "virtio-rng-arm64",
            vec![vm("virtio_rng", "rng").virtio("rng")],
            &[
                "vm rng: virtio-mmio VirtioMmio(4) at 0xa002000, Spi(64)",
                "[rng] virtio-rng in slot 0 at 0xa002000, INTID 64",
                "[rng] ok: two 64-byte requests filled",
                "[rng] ok: a 4096-byte request filled",
                "[rng] ok: one interrupt, acknowledged (1)",
                "[rng] ok: InterruptStatus 0 after the acknowledgement",
                "[rng] virtio-rng: ok",
                "HV-EXIT: success",
            ],
        ),
        Scenario {
            expect_each: &[
                &[
                    "[blk] virtio-blk: 64 sectors, read-write",
                    "[blk] ok: read 64 sectors with the image's contents",
                    "[blk] ok: GET_ID \"hv-vblk0\"",
                    "[blk] ok: read beyond the end fails with IOERR",
                    "[blk] ok: sectors 2-4 read back as written, sector 1 untouched",
                    "[blk] ok: last sector written and read back",
                    "[blk] ok: FLUSH",
                    "[blk] PASS",
                ],
                &[
                    "[blk-ro] virtio-blk: 40 sectors, read-only",
                    "[blk-ro] ok: read 40 sectors with the image's contents",
                    "[blk-ro] ok: write to a read-only disk refused (Err(IoError))",
                    "[blk-ro] ok: read-only disk unchanged",
                    "[blk-ro] PASS",
                ],
            ],
            ..x86(
                "virtio-blk-x86",
                vec![
                    vm("virtio_blk", "blk")
                        .disk(64, false)
                        .append("sectors=64 ro=0"),
                    vm("virtio_blk", "blk-ro")
                        .disk(40, true)
                        .virtio("rng")
                        .append("sectors=40 ro=1"),
                ],
                &["HV-EXIT: success"],
            )
        },
        Scenario {
            expect_each: &[
                &[
                    "vm blk: disk \"blk.disk\": 2 request queues (VIRTIO_BLK_F_MQ)",
                    "[blk] virtio-blk: 64 sectors, read-write",
                    "[blk] ok: read 64 sectors with the image's contents",
                    "[blk] ok: GET_ID \"hv-vblk0\"",
                    "[blk] ok: read beyond the end fails with IOERR",
                    "[blk] ok: sectors 2-4 read back as written, sector 1 untouched",
                    "[blk] ok: last sector written and read back",
                    "[blk] ok: FLUSH",
                    "[blk] virtio-blk: ok",
                ],
                &[
                    "[blk-ro] virtio-blk: 40 sectors, read-only",
                    "[blk-ro] ok: read 40 sectors with the image's contents",
                    "[blk-ro] ok: write to a read-only disk refused (Err(IoError))",
                    "[blk-ro] ok: read-only disk unchanged",
                    "[blk-ro] virtio-blk: ok",
                ],
            ],
            ..arm(
                "virtio-blk-arm64",
                // The writable disk with 2 request queues (VIRTIO_BLK_F_MQ
                // offered; virtio-drivers takes queue 0 only).
                vec![
                    vm("virtio_blk", "blk")
                        .disk(64, false)
                        .disk_queues(2)
                        .append("sectors=64 ro=0"),
                    vm("virtio_blk", "blk-ro")
                        .disk(40, true)
                        .virtio("rng")
                        .append("sectors=40 ro=1"),
                ],
                &["HV-EXIT: success"],
            )
        },
        // Rule guest_addr from inside a guest: a hostile driver next to a
        // well-behaved VM with the same device type; both end well.
        Scenario {
            expect_each: &[
                &[
                    "[hostile] ok: QueueReady refused: descriptors beyond RAM",
                    "[hostile] ok: QueueReady refused: used ring crossing the end of RAM",
                    "[hostile] ok: a good request: Some(16) bytes",
                    "[hostile] ok: a buffer beyond RAM: the request fails alone",
                    "[hostile] ok: a buffer straddling the end of RAM: the request fails alone",
                    "[hostile] ok: the last bytes of RAM untouched",
                    "[hostile] ok: a descriptor loop fails alone",
                    "[hostile] ok: a runaway available index: DEVICE_NEEDS_RESET",
                    "[hostile] ok: after a reset, a request is served again",
                    "[hostile] PASS",
                ],
                &["[rng] ok: one interrupt, acknowledged (1)", "[rng] PASS"],
            ],
            ..x86(
                "inv_guest_addr-x86",
                vec![
                    vm("virtio_hostile", "hostile").virtio("rng"),
                    vm("virtio_rng", "rng").virtio("rng"),
                ],
                &["HV-EXIT: success"],
            )
        },
        Scenario {
            expect_each: &[
                &[
                    "[hostile] ok: QueueReady refused: descriptors beyond RAM",
                    "[hostile] ok: QueueReady refused: used ring crossing the end of RAM",
                    "[hostile] ok: a good request: Some(16) bytes",
                    "[hostile] ok: a buffer beyond RAM: the request fails alone",
                    "[hostile] ok: a buffer straddling the end of RAM: the request fails alone",
                    "[hostile] ok: the last bytes of RAM untouched",
                    "[hostile] ok: a descriptor loop fails alone",
                    "[hostile] ok: a runaway available index: DEVICE_NEEDS_RESET",
                    "[hostile] ok: after a reset, a request is served again",
                    "[hostile] virtio-hostile: ok",
                ],
                &[
                    "[rng] ok: one interrupt, acknowledged (1)",
                    "[rng] virtio-rng: ok",
                ],
            ],
            ..arm(
                "inv_guest_addr-arm64",
                vec![
                    vm("virtio_hostile", "hostile")
                        .virtio("rng")
                        .append("ram=16"),
                    vm("virtio_rng", "rng").virtio("rng"),
                ],
                &["HV-EXIT: success"],
            )
        },
        // Two VMs exchange frames through the hypervisor's switch.
        Scenario {
            expect_each: &[
                &[
                    "vm net-a: virtio-net MAC 02:48:56:00:00:01 on switch port",
                    "[net-a] ok: broadcast sent",
                    "[net-a] ok: unicast reply from [02, 48, 56, 00, 00, 02]",
                    "[net-a] ok: a 1514-byte frame sent",
                    "[net-a] ok: b got the full-size frame",
                    "[net-a] PASS",
                ],
                &[
                    "[net-b] ok: broadcast hello from [02, 48, 56, 00, 00, 01]",
                    "[net-b] ok: unicast reply sent",
                    "[net-b] ok: a full-size frame of 1514 bytes, intact",
                    "[net-b] ok: acknowledgement sent",
                    "[net-b] PASS",
                ],
            ],
            ..x86(
                "virtio-net-x86",
                vec![
                    vm("virtio_net", "net-a").virtio("net").append("role=a"),
                    vm("virtio_net", "net-b").virtio("net").append("role=b"),
                ],
                &["HV-EXIT: success"],
            )
        },
        Scenario {
            expect_each: &[
                &[
                    "vm net-a: virtio-net MAC 02:48:56:00:00:01 on switch port",
                    "[net-a] ok: broadcast sent",
                    "[net-a] ok: unicast reply from [02, 48, 56, 00, 00, 02]",
                    "[net-a] ok: b got the full-size frame",
                    "[net-a] virtio-net: ok",
                ],
                &[
                    "[net-b] ok: broadcast hello from [02, 48, 56, 00, 00, 01]",
                    "[net-b] ok: a full-size frame of 1514 bytes, intact",
                    "[net-b] virtio-net: ok",
                ],
            ],
            ..arm(
                "virtio-net-arm64",
                vec![
                    vm("virtio_net", "net-a").virtio("net").append("role=a"),
                    vm("virtio_net", "net-b").virtio("rng,net").append("role=b"),
                ],
                &["HV-EXIT: success"],
            )
        },
        // Rule vq_barrier inside a guest, on one vCPU: EVENT_IDX to the
        // letter (no request stranded by avail_event, interrupts exactly
        // at used_event). The cross-CPU race waits for host SMP.
        x86(
            "inv_vq_barrier-x86",
            vec![vm("virtio_hostile", "evidx").virtio("rng").append("test=event-idx")],
            &[
                "[evidx] ok: the device offers EVENT_IDX",
                "[evidx] event-idx: 120 requests in 40 rounds, 40 notifications, 0 stranded, 0 wrong interrupts",
                "[evidx] ok: no request stranded by avail_event",
                "[evidx] ok: interrupts exactly when used_event was crossed",
                "[evidx] PASS",
                "HV-EXIT: success",
            ],
        ),
        arm(
            "inv_vq_barrier-arm64",
            vec![vm("virtio_hostile", "evidx").virtio("rng").append("test=event-idx")],
            &[
                "[evidx] ok: the device offers EVENT_IDX",
                "[evidx] event-idx: 120 requests in 40 rounds, 40 notifications, 0 stranded, 0 wrong interrupts",
                "[evidx] virtio-event-idx: ok",
                "HV-EXIT: success",
            ],
        ),
        // Streams to the hypervisor's echo service and between two VMs
        // (CIDs 3 and 4: the VM index + 3).
        Scenario {
            expect_each: &[
                &[
                    "vm vs-a: virtio-vsock CID 3",
                    "[vs-a] ok: connected to the echo service",
                    "[vs-a] ok: the echo service sent back Ok(\"hello vsock\")",
                    "[vs-a] ok: connected to VM b (CID 4)",
                    "[vs-a] ok: VM b answered Ok(\"pong\")",
                    "[vs-a] PASS",
                ],
                &[
                    "[vs-b] ok: accepted a connection from CID 3",
                    "[vs-b] ok: VM a sent Ok(\"ping\")",
                    "[vs-b] PASS",
                ],
            ],
            ..x86(
                "virtio-vsock-x86",
                vec![
                    vm("virtio_vsock", "vs-a").virtio("vsock").append("role=a peer=4"),
                    vm("virtio_vsock", "vs-b").virtio("vsock").append("role=b"),
                ],
                &["HV-EXIT: success"],
            )
        },
        Scenario {
            expect_each: &[
                &[
                    "vm vs-a: virtio-vsock CID 42",
                    "[vs-a] ok: the echo service sent back Ok(\"hello vsock\")",
                    "[vs-a] ok: VM b answered Ok(\"pong\")",
                    "[vs-a] virtio-vsock: ok",
                ],
                &[
                    "[vs-b] ok: VM a sent Ok(\"ping\")",
                    "[vs-b] virtio-vsock: ok",
                ],
            ],
            ..arm(
                "virtio-vsock-arm64",
                // CIDs from the VM config (`cid=`; x86 keeps the defaults).
                vec![
                    GuestVm {
                        cid: Some(42),
                        ..vm("virtio_vsock", "vs-a").virtio("vsock").append("role=a peer=77")
                    },
                    GuestVm {
                        cid: Some(77),
                        ..vm("virtio_vsock", "vs-b").virtio("vsock").append("role=b")
                    },
                ],
                &["HV-EXIT: success"],
            )
        },
    ]
}
