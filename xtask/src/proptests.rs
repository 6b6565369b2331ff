//! Property tests (proptest): what xtask writes for the kernel reads back
//! through the kernel's own readers: `vms.cpio` through `boot::cpio`,
//! `vms.conf` lines through `vmm::config::parse_conf_line`.

use crate::bundle::{vms_conf, CpioWriter, VmLine};
use boot::cpio;
use proptest::prelude::*;
use vmm::config::{parse_conf_line, VmSpec};

fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

fn vm_line() -> impl Strategy<Value = VmLine> {
    (
        "[A-Za-z0-9._-]{1,32}",
        "[A-Za-z0-9._-]{1,40}",
        prop_oneof![1u32..=4096, any::<u32>()],
        prop_oneof![1u32..=8, any::<u32>()],
        prop_oneof!["[ -~]{0,60}", any::<String>()],
    )
        .prop_map(|(name, file, mem_mib, smp, append)| VmLine {
            name,
            file,
            mem_mib,
            smp,
            append,
            virtio: Vec::new(),
            disk: None,
        })
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
    /// same name, file, memory, vCPUs and command line; what it refuses
    /// has a reason (a repeated name, "." or "..", the bundle's own
    /// vms.conf, a size out of range, a quote or control character in the
    /// command line).
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
                        || v.append.contains(|c: char| c == '"' || c.is_control()));
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
                virtio: Vec::new(),
            })
            .collect();
        prop_assert_eq!(specs, want);
    }
}
