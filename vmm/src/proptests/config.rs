//! The `vms.conf` / boot-module line parser (`config`).

use super::{config, verdict};
use crate::checks::{check_conf_line, render_conf_line};
use crate::config::{parse_conf_line, parse_module_line, VirtioSpec, VmSpec, MAX_MEM_MIB};
use proptest::prelude::*;

/// Text made of the syntax's own pieces (keys, `=`, quotes, `#`, white
/// space) and arbitrary characters.
fn line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "name=", "kernel=", "mem=", "smp=", "append=", "=", "\"", " ", "\t", "#", "\n",
            "0", "1", "64", "1048576", "1048577", "-1", "99999999999999999999", "a.elf",
            "/boot/", "x y", "\u{a0}", "é", "\r", "virtio=", "rng", ",", "disk=", ",ro",
            "console", "net", "vsock",
        ]).prop_map(String::from),
        2 => "[ -~]{1,6}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

fn spec() -> impl Strategy<Value = VmSpec> {
    (
        "[A-Za-z0-9._-]{1,32}",
        prop_oneof!["[!-~&&[^\"]][!-~]{0,20}", "[^\"]{1,12}"],
        1..=MAX_MEM_MIB,
        prop_oneof![1u32..=8, 1..=u32::MAX],
        prop_oneof!["[ -~&&[^\"]]{0,40}", "[^\"]{0,12}"],
        prop::collection::vec(
            prop_oneof![
                Just(VirtioSpec::Rng),
                Just(VirtioSpec::Console),
                Just(VirtioSpec::Net),
                Just(VirtioSpec::Vsock { cid: None }),
                (3u32..100).prop_map(|c| VirtioSpec::Vsock { cid: Some(c) })
            ],
            0..=4,
        ),
        prop::option::of((
            "[!-~&&[^\",]]{1,12}",
            any::<bool>(),
            prop_oneof![Just(1u16), 1u16..=crate::virtio::block::MAX_QUEUES],
        )),
        prop_oneof![Just(crate::sched::DEFAULT_WEIGHT), 1u32..=65535],
        prop_oneof![Just(u64::MAX), 1u64..],
    )
        .prop_map(
            |(name, kernel, mem_mib, vcpus, cmdline, plain, disk, weight, cpus)| VmSpec {
                name,
                kernel,
                mem_mib,
                vcpus,
                cmdline,
                virtio: plain
                    .into_iter()
                    .chain(disk.map(|(file, read_only, queues)| VirtioSpec::Disk {
                        file,
                        read_only,
                        queues,
                    }))
                    .collect(),
                weight,
                cpus: crate::sched::CpuSet(cpus),
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    /// Any text as a vms.conf line and as a module command line: no
    /// panic; an accepted spec has a kernel, 1..=MAX_MEM_MIB MiB, at least
    /// one vCPU and a name the VM layer accepts, and renders back to a
    /// line that parses to the same spec.
    #[test]
    fn prop_conf_line_any_text_gives_valid_specs(l in line()) {
        verdict(check_conf_line(&l))?;
    }

    /// Valid specs, rendered with their keys in any order and any white
    /// space between them, parse back to the same spec.
    #[test]
    fn prop_conf_line_round_trips_generated_specs(
        s in spec(),
        order in Just((0..11).collect::<Vec<usize>>()).prop_shuffle(),
        gaps in prop::collection::vec("[ \t]{1,3}", 12),
    ) {
        let Some(rendered) = render_conf_line(&s) else {
            // A kernel name with both white space and a quote: nothing to say.
            return Ok(());
        };
        let words: Vec<&str> = split_words(&rendered);
        // 5 words, then `virtio=`, `cid=`, `disk=`, `queues=`, `weight=`
        // and `cpus=` when the spec has them.
        prop_assert!((5..=11).contains(&words.len()), "{}", rendered);
        let mut line = gaps[11].clone();
        for (i, &w) in order.iter().filter(|&&w| w < words.len()).enumerate() {
            line.push_str(words[w]);
            line.push_str(&gaps[i]);
        }
        prop_assert_eq!(parse_conf_line(&line), Ok(Some(s.clone())), "{}", line);
        verdict(check_conf_line(&line))?;
    }

    /// A module command line of just a path: the VM is named after the
    /// file with a name the VM layer accepts, with the default resources.
    #[test]
    fn prop_module_line_default_name_is_valid(path in "[!-~]{1,60}|[^ \t\n\r\u{c}]{1,20}") {
        let s = parse_module_line(&path).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(&s.kernel, &path);
        verdict(check_conf_line(&path))?;
    }
}

/// Splits a rendered line into its `key=value` words (values in quotes
/// may hold spaces).
fn split_words(l: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = l;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let end = if rest[eq + 1..].starts_with('"') {
            eq + 2 + rest[eq + 2..].find('"').unwrap() + 1
        } else {
            rest[eq..].find(' ').map_or(rest.len(), |i| eq + i)
        };
        out.push(&rest[..end]);
        rest = rest[end..].trim_start_matches(' ');
    }
    out
}
