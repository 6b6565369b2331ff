//! Reader for cpio "newc" archives (the initramfs format, `cpio -o -H newc`).
//!
//! The VM bundle (`vms.cpio`: guest images plus `vms.conf`) reaches the
//! kernel as one boot module or initrd in this format on every boot path.
//! The archive is untrusted input: every header field is parsed strictly
//! and every length is checked against the buffer before use.

/// One regular file in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpioError {
    /// The header at `offset` does not start with "070701" / "070702".
    BadMagic { offset: usize },
    /// A header field is not 8 hex digits.
    BadField { offset: usize },
    /// A header, name or file body runs past the end of the archive.
    Truncated { offset: usize },
    /// A name is not valid UTF-8 or lacks its NUL terminator.
    BadName { offset: usize },
    /// The archive ends without the `TRAILER!!!` entry.
    NoTrailer,
}

const HEADER_LEN: usize = 110;
const MODE_TYPE_MASK: u32 = 0o170000;
const MODE_REGULAR: u32 = 0o100000;

/// True if `data` starts like a newc archive.
pub fn is_cpio(data: &[u8]) -> bool {
    data.starts_with(b"070701") || data.starts_with(b"070702")
}

/// Iterates the regular files of a newc archive (directories and other
/// entry types are skipped). Stops at the first error, which it yields.
pub fn entries(data: &[u8]) -> Entries<'_> {
    Entries {
        data,
        offset: 0,
        done: false,
    }
}

/// Finds the regular file called `name` (a leading "./" is ignored).
pub fn find<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, CpioError> {
    for e in entries(data) {
        let e = e?;
        if e.name == name {
            return Ok(Some(e.data));
        }
    }
    Ok(None)
}

pub struct Entries<'a> {
    data: &'a [u8],
    offset: usize,
    done: bool,
}

fn field(h: &[u8], index: usize, offset: usize) -> Result<u32, CpioError> {
    let start = 6 + index * 8;
    let digits =
        core::str::from_utf8(&h[start..start + 8]).map_err(|_| CpioError::BadField { offset })?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CpioError::BadField { offset });
    }
    u32::from_str_radix(digits, 16).map_err(|_| CpioError::BadField { offset })
}

const fn pad4(x: usize) -> usize {
    (x + 3) & !3
}

impl<'a> Entries<'a> {
    fn next_entry(&mut self) -> Result<Option<Entry<'a>>, CpioError> {
        loop {
            let offset = self.offset;
            let h = self
                .data
                .get(
                    offset
                        ..offset
                            .checked_add(HEADER_LEN)
                            .ok_or(CpioError::Truncated { offset })?,
                )
                .ok_or(if offset >= self.data.len() {
                    CpioError::NoTrailer
                } else {
                    CpioError::Truncated { offset }
                })?;
            if !is_cpio(h) {
                return Err(CpioError::BadMagic { offset });
            }
            let mode = field(h, 1, offset)?;
            let filesize = field(h, 6, offset)? as usize;
            let namesize = field(h, 11, offset)? as usize;
            let name_start = offset + HEADER_LEN;
            let name_end = name_start
                .checked_add(namesize)
                .ok_or(CpioError::Truncated { offset })?;
            let raw_name = self
                .data
                .get(name_start..name_end)
                .ok_or(CpioError::Truncated { offset })?;
            let (&nul, name) = raw_name.split_last().ok_or(CpioError::BadName { offset })?;
            // The name is NUL-terminated and holds no other NUL: a namesize
            // past the string would make "vms.conf\0junk" a different name
            // from the one every tool shows.
            if nul != 0 || name.contains(&0) {
                return Err(CpioError::BadName { offset });
            }
            let name = core::str::from_utf8(name).map_err(|_| CpioError::BadName { offset })?;
            let data_start = pad4(name_end);
            let data_end = data_start
                .checked_add(filesize)
                .ok_or(CpioError::Truncated { offset })?;
            let body = self
                .data
                .get(data_start..data_end)
                .ok_or(CpioError::Truncated { offset })?;
            if name == "TRAILER!!!" {
                return Ok(None);
            }
            self.offset = pad4(data_end);
            if mode & MODE_TYPE_MASK == MODE_REGULAR {
                let name = name.strip_prefix("./").unwrap_or(name);
                return Ok(Some(Entry { name, data: body }));
            }
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, CpioError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(mode: u32, filesize: usize, name: &str) -> Vec<u8> {
        let mut h = b"070701".to_vec();
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            filesize as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        for f in fields {
            h.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        h
    }

    fn archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(name, mode, data) in files.iter().chain([("TRAILER!!!", 0, &[][..])].iter()) {
            out.extend(header(mode, data.len(), name));
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn reads_files_and_skips_directories() {
        let a = archive(&[
            ("guests", 0o040755, b""),
            ("./vms.conf", 0o100644, b"name=a kernel=hello.elf\n"),
            ("hello.elf", 0o100644, b"\x7fELF12345"),
        ]);
        assert!(is_cpio(&a));
        let files: Vec<_> = entries(&a).map(|e| e.unwrap()).collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "vms.conf");
        assert_eq!(
            files[1],
            Entry {
                name: "hello.elf",
                data: b"\x7fELF12345"
            }
        );
        assert_eq!(find(&a, "hello.elf").unwrap(), Some(&b"\x7fELF12345"[..]));
        assert_eq!(find(&a, "missing").unwrap(), None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let a = archive(&[
            ("vms.conf", 0o100644, b"name=a kernel=x\n"),
            ("x", 0o100644, &[7u8; 33]),
        ]);
        for len in 0..a.len() {
            let r: Result<Vec<_>, _> = entries(&a[..len]).collect();
            assert!(r.is_err(), "truncated at {len} accepted");
        }
    }

    #[test]
    fn hostile_headers() {
        let mut a = archive(&[("x", 0o100644, b"data")]);
        a[0] = b'1';
        assert_eq!(
            entries(&a).next(),
            Some(Err(CpioError::BadMagic { offset: 0 }))
        );
        let mut a = archive(&[("x", 0o100644, b"data")]);
        a[6 + 6 * 8] = b'g'; // filesize field
        assert_eq!(
            entries(&a).next(),
            Some(Err(CpioError::BadField { offset: 0 }))
        );
        let mut a = archive(&[("x", 0o100644, b"data")]);
        a[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"FFFFFFFF"); // huge filesize
        assert_eq!(
            entries(&a).next(),
            Some(Err(CpioError::Truncated { offset: 0 }))
        );
        let mut a = archive(&[("x", 0o100644, b"data")]);
        let mut b = archive(&[("xy", 0o100644, b"data")]);
        b[HEADER_LEN] = 0; // a NUL inside the name (found by the property test)
        assert_eq!(
            entries(&b).next(),
            Some(Err(CpioError::BadName { offset: 0 }))
        );
        a[HEADER_LEN + 1] = b'y'; // name without its NUL
        assert_eq!(
            entries(&a).next(),
            Some(Err(CpioError::BadName { offset: 0 }))
        );
        // Random garbage never panics.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let base = archive(&[("vms.conf", 0o100644, b"abc"), ("g", 0o100644, &[1; 10])]);
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            let _ = entries(&b).count();
        }
    }

    #[test]
    fn missing_trailer() {
        let mut a = archive(&[("x", 0o100644, b"data")]);
        let trailer_at = a.len() - pad4(HEADER_LEN + 11);
        a.truncate(trailer_at);
        let r: Result<Vec<_>, _> = entries(&a).collect();
        assert_eq!(r, Err(CpioError::NoTrailer));
    }
}
