//! Property tests (proptest) of the cpio "newc" reader, which reads the VM
//! bundle (untrusted input) on every boot path. The writer's round trip is
//! tested in xtask against its own `CpioWriter`.

use crate::cpio::{entries, find, CpioError};
use proptest::prelude::*;

fn config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// A newc archive of `(name, mode, data)` entries, as `cpio -o -H newc`.
fn archive(files: &[(String, u32, Vec<u8>)], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        out.extend_from_slice(b"070701");
        let f = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        for v in f {
            out.extend_from_slice(format!("{v:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (n, m, d) in files {
        add(n, *m, d);
    }
    if trailer {
        add("TRAILER!!!", 0, &[]);
    }
    out
}

fn files() -> impl Strategy<Value = Vec<(String, u32, Vec<u8>)>> {
    let mode = prop_oneof![
        4 => Just(0o100644u32),
        1 => Just(0o040755),
        1 => Just(0o120777),
        1 => any::<u32>(),
    ];
    prop::collection::vec(
        (
            "(\\./)?[a-z0-9._/-]{1,12}",
            mode,
            prop::collection::vec(any::<u8>(), 0..40),
        ),
        0..5,
    )
}

/// Checks what the reader yields for `data`: it ends (each entry takes at
/// least a 110-byte header and a NUL), every file body is a slice of
/// `data`, names are NUL-free UTF-8, an error is the last item, and `find`
/// agrees with the iteration.
fn check_reader(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TestCaseError> {
    let mut out = Vec::new();
    let mut items = 0;
    let mut it = entries(data);
    let range = data.as_ptr_range();
    let mut error = None;
    for e in it.by_ref() {
        items += 1;
        prop_assert!(
            items <= data.len() / 112 + 1,
            "more entries than bytes allow"
        );
        match e {
            Ok(e) => {
                prop_assert!(error.is_none(), "an entry after an error");
                let body = e.data.as_ptr_range();
                prop_assert!(
                    e.data.is_empty() || (range.start <= body.start && body.end <= range.end)
                );
                prop_assert!(!e.name.contains('\0'));
                out.push((e.name.to_string(), e.data.to_vec()));
            }
            Err(err) => {
                prop_assert!(error.is_none(), "two errors");
                error = Some(err);
            }
        }
    }
    prop_assert!(it.next().is_none(), "items after the end");
    for (name, body) in &out {
        let first = out
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice());
        match find(data, name) {
            Ok(found) => prop_assert_eq!(found, first),
            // An error after the file: find stops at the first match.
            Err(e) => prop_assert!(
                false,
                "find({name:?}) = {e:?} but {} bytes listed",
                body.len()
            ),
        }
    }
    match error {
        Some(e) => Err(TestCaseError::reject(format!("{e:?}"))),
        None => Ok(out),
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes, and bytes behind a newc magic with hex-digit
    /// fields: the reader ends, stays in bounds and reports at most one
    /// error, last.
    #[test]
    fn prop_cpio_any_bytes_are_read_in_bounds(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            (prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF".to_vec()), 104),
             prop::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(hex, tail)| {
                    let mut d = b"070701".to_vec();
                    d.extend(hex);
                    d.extend(tail);
                    d
                }),
        ],
    ) {
        if let Err(TestCaseError::Fail(m)) = check_reader(&data) {
            return Err(TestCaseError::Fail(m));
        }
    }

    /// Generated archives read back exactly their regular files, in order
    /// ("./" dropped, directories and links skipped); without the trailer
    /// they are an error; with bytes or header fields overwritten the
    /// reader still ends in bounds.
    #[test]
    fn prop_cpio_archives_round_trip_and_mutations_stay_in_bounds(
        files in files(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3, any::<u32>()), 1..6),
    ) {
        let data = archive(&files, true);
        let want: Vec<(String, Vec<u8>)> = files
            .iter()
            .filter(|(_, m, _)| m & 0o170000 == 0o100000)
            .map(|(n, _, d)| (n.strip_prefix("./").unwrap_or(n).to_string(), d.clone()))
            .collect();
        match check_reader(&data) {
            Ok(got) => prop_assert_eq!(got, want),
            Err(e) => return Err(TestCaseError::fail(format!("valid archive: {e}"))),
        }
        let cut = archive(&files, false);
        let last = entries(&cut).last();
        prop_assert_eq!(last, Some(Err(CpioError::NoTrailer)));
        let mut bad = data.clone();
        for (at, byte, kind, field) in edits {
            let at = at % bad.len();
            match kind {
                0 => bad[at] = byte,
                // One of the 13 fields of one of the headers set to
                // any 8 hex digits.
                1 => {
                    let heads: Vec<usize> = (0..bad.len().saturating_sub(110))
                        .filter(|&i| bad[i..].starts_with(b"070701"))
                        .collect();
                    if let Some(&h) = heads.get(at % heads.len().max(1)) {
                        let f = h + 6 + 8 * (field as usize % 13);
                        let v = field.rotate_left(byte.into());
                        bad[f..f + 8].copy_from_slice(format!("{v:08x}").as_bytes());
                    }
                }
                _ => bad.truncate(at),
            }
            if bad.is_empty() {
                break;
            }
        }
        if let Err(TestCaseError::Fail(m)) = check_reader(&bad) {
            return Err(TestCaseError::Fail(m));
        }
    }
}
