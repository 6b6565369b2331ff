//! Property tests (proptest): what xtask writes for the kernel reads back
//! through the kernel's own readers: `vms.cpio` through `boot::cpio`,
//! `vms.conf` lines through `vmm::config::parse_conf_line`.

use crate::bundle::{
    vms_conf, CpioWriter, DiskLine, SchedLine, VmLine, VIRTIO_SLOTS, VIRTIO_WORDS,
};
use boot::cpio;
use proptest::prelude::*;
use vmm::config::{parse_conf_line, VirtioSpec, VmSpec};

fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// Mostly known `virtio=` words, sometimes words the kernel does not know.
fn virtio_words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            19 => prop::sample::select(VIRTIO_WORDS).prop_map(String::from),
            1 => "[a-z,]{0,6}",
        ],
        0..9,
    )
}

fn vm_line() -> impl Strategy<Value = VmLine> {
    (
        "[A-Za-z0-9._-]{1,32}",
        "[A-Za-z0-9._-]{1,40}",
        prop_oneof![1u32..=4096, any::<u32>()],
        prop_oneof![1u32..=8, any::<u32>()],
        prop_oneof!["[ -~]{0,60}", any::<String>()],
        virtio_words(),
        prop::option::of((
            prop_oneof![
                19 => "[A-Za-z0-9._-]{1,40}",
                1 => "[ -~]{0,12}",
            ],
            any::<bool>(),
            prop_oneof![3 => Just(1u16), 1 => 0u16..=10],
        )),
        prop::option::of(prop_oneof![1u32..=65535, any::<u32>()]),
        prop::option::of(prop_oneof![
            "[0-9]{1,2}(-[0-9]{1,2})?(,[0-9]{1,2}(-[0-9]{1,2})?){0,2}",
            "[ -~]{0,8}",
        ]),
        prop::option::of(prop_oneof![3u32..u32::MAX, any::<u32>()]),
    )
        .prop_map(
            |(name, file, mem_mib, smp, append, virtio, disk, weight, cpus, cid)| VmLine {
                sched: SchedLine { weight, cpus },
                cid,
                name,
                file,
                mem_mib,
                smp,
                append,
                virtio,
                disk: disk.map(|(file, read_only, queues)| DiskLine {
                    file,
                    read_only,
                    queues,
                }),
            },
        )
}

/// A disk file name the bundle cannot hold.
fn bad_disk_name(f: &str) -> bool {
    f.is_empty()
        || f.len() > 100
        || !f
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || [".", "..", "vms.conf"].contains(&f)
}

proptest! {
    #![proptest_config(config(256))]

    /// Any files (names as the writer takes them, any content) written by
    /// `CpioWriter` read back through the kernel's reader in order, with
    /// "./" dropped; `find` returns the first file of a name.
    #[test]
    fn prop_cpio_writer_round_trips_through_boot_reader(
        files in prop::collection::vec(
            ("(\\./)?[^\\x00]{1,20}", prop::collection::vec(any::<u8>(), 0..64)),
            0..6,
        ),
    ) {
        let mut w = CpioWriter::new();
        let mut want = Vec::new();
        for (name, data) in &files {
            if w.file(name, data).is_ok() {
                want.push((name.strip_prefix("./").unwrap_or(name).to_string(), data.clone()));
            }
        }
        let bytes = w.finish();
        prop_assert!(cpio::is_cpio(&bytes));
        let got: Vec<(String, Vec<u8>)> = cpio::entries(&bytes)
            .map(|e| e.map(|e| (e.name.to_string(), e.data.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(&got, &want);
        for (name, _) in &want {
            let first = want.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice());
            prop_assert_eq!(cpio::find(&bytes, name).unwrap(), first);
        }
    }

    /// A VM line that xtask renders is one the kernel accepts, with the
    /// same name, file, memory, vCPUs, command line and virtio devices
    /// (the words in order, then the disk); what it refuses has a reason
    /// (a repeated name, "." or "..", the bundle's own vms.conf, a size
    /// out of range, a quote or control character in the command line, an
    /// unknown virtio word, more than 7 devices, a disk name that is not a
    /// bundle file name or with a queue count out of range, a weight out
    /// of range, a CPU list the kernel refuses, a CID out of range or
    /// without a vsock device).
    #[test]
    fn prop_vms_conf_lines_parse_back_in_the_kernel(
        vms in prop::collection::vec(vm_line(), 1..4),
    ) {
        let conf = match vms_conf(&vms) {
            Ok(c) => c,
            Err(e) => {
                let names_repeat = vms.iter().enumerate().any(|(i, v)| vms[..i].iter().any(|o| o.name == v.name));
                let explained = names_repeat
                    || vms.iter().any(|v| v.mem_mib == 0 || v.smp == 0
                        || [".", ".."].contains(&v.name.as_str())
                        || [".", "..", "vms.conf"].contains(&v.file.as_str())
                        || u64::from(v.mem_mib) > vmm::config::MAX_MEM_MIB
                        || v.append.contains(|c: char| c == '"' || c.is_control())
                        || v.virtio.iter().any(|w| !VIRTIO_WORDS.contains(&w.as_str()))
                        || v.virtio.len() + usize::from(v.disk.is_some()) > VIRTIO_SLOTS
                        || v.disk.as_ref().is_some_and(|d| bad_disk_name(&d.file)
                            || !(1..=vmm::virtio::block::MAX_QUEUES).contains(&d.queues))
                        || v.sched.weight.is_some_and(|w| !(1..=65535).contains(&w))
                        || v.sched.cpus.as_deref().is_some_and(|c| vmm::config::parse_cpu_list(c).is_none())
                        || v.cid.is_some_and(|c| !(3..u32::MAX).contains(&c)
                            || !v.virtio.iter().any(|w| w == "vsock")));
                prop_assert!(explained, "refused without a reason: {e}");
                return Ok(());
            }
        };
        let specs: Vec<VmSpec> = conf
            .lines()
            .map(|l| parse_conf_line(l).map_err(|e| TestCaseError::fail(format!("{l:?}: {e}"))))
            .filter_map(Result::transpose)
            .collect::<Result<_, _>>()?;
        let want: Vec<VmSpec> = vms
            .iter()
            .map(|v| VmSpec {
                name: v.name.clone(),
                kernel: v.file.clone(),
                mem_mib: v.mem_mib.into(),
                vcpus: v.smp,
                cmdline: v.append.clone(),
                virtio: v
                    .virtio
                    .iter()
                    .enumerate()
                    .map(|(i, w)| match w.as_str() {
                        "rng" => VirtioSpec::Rng,
                        "console" => VirtioSpec::Console,
                        "net" => VirtioSpec::Net,
                        // `cid=` is the first vsock device's.
                        "vsock" if v.virtio.iter().position(|x| x == "vsock") == Some(i) => {
                            VirtioSpec::Vsock { cid: v.cid }
                        }
                        "vsock" => VirtioSpec::Vsock { cid: None },
                        w => unreachable!("a virtio word this test does not map yet: {w:?}"),
                    })
                    .chain(v.disk.iter().map(|d| VirtioSpec::Disk {
                        file: d.file.clone(),
                        read_only: d.read_only,
                        queues: d.queues,
                    }))
                    .collect(),
                weight: v.sched.weight.unwrap_or(vmm::sched::DEFAULT_WEIGHT),
                cpus: v
                    .sched
                    .cpus
                    .as_deref()
                    .and_then(vmm::config::parse_cpu_list)
                    .unwrap_or(vmm::sched::CpuSet::ALL),
            })
            .collect();
        prop_assert_eq!(specs, want);
    }
}
