//! How the arm64 loader tells its formats apart, and the raw binary.
//!
//! QEMU's `-kernel` on arm64 takes an ELF, a U-Boot `uImage`, a Linux
//! `Image` (gzip-compressed or not) and, failing all of those, any file as
//! a raw binary: copied to the start of RAM + 0x80000 (its
//! `KERNEL64_LOAD_ADDR`) and entered there at EL1 (EL2 with
//! `virtualization=on`) with x0 = the DTB. A raw binary has no magic, so
//! [`classify`] decides, first match wins:
//!
//! 1. the `"ARM\x64"` magic at offset 0x38 of a file of at least 64 bytes:
//!    a Linux arm64 `Image` ([`super::arm64_image`]);
//! 2. the ELF magic: an ELF (errors are the ELF parser's; an ELF is never
//!    taken as raw);
//! 3. refused with a [`NotRaw`] reason, because it is recognisably
//!    something else: an empty file, gzip (`1f 8b`: an `Image.gz`, which
//!    QEMU unpacks and we do not), a U-Boot legacy image (magic
//!    0x27051956), a PE/COFF file (`MZ`) without the Image header;
//! 4. anything else: a raw binary.
//!
//! A raw binary must fit between [`ARM64_LOAD_OFFSET`] and the device tree
//! at the top of RAM (else `LoadError::NoRoom`); it is written there and
//! nothing else: the loader cannot know its BSS, so a raw kernel zeroes its
//! own, and it gets no stack (SP_EL1 = 0) and no command-line pointer (the
//! command line is the DTB's `/chosen/bootargs`), as under QEMU.

use super::arm64_image;

/// Where a raw binary, and the virtual address 0 of a position-independent
/// ELF, go: the start of RAM + 512 KiB (QEMU's `KERNEL64_LOAD_ADDR`; also
/// the text_offset of a legacy `Image`).
pub const ARM64_LOAD_OFFSET: u64 = 0x8_0000;

/// A file the arm64 loader does not take as a raw binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRaw {
    /// An empty file.
    Empty,
    /// gzip-compressed (`1f 8b`), e.g. an `Image.gz`: unpack it first.
    Gzip,
    /// A U-Boot legacy image (`uImage`, big-endian magic 0x27051956): give
    /// the kernel inside it.
    UImage,
    /// A PE/COFF file (`MZ`) without the arm64 Image header, e.g. a UEFI
    /// application.
    PeCoff,
}

/// What [`classify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm64Kind {
    Image,
    Elf,
    Raw,
}

/// Decides which arm64 loader takes `image` (module docs).
pub fn classify(image: &[u8]) -> Result<Arm64Kind, NotRaw> {
    if image.len() >= arm64_image::HEADER_SIZE && image[0x38..0x3c] == *b"ARM\x64" {
        return Ok(Arm64Kind::Image);
    }
    if super::elf::is_elf(image) {
        return Ok(Arm64Kind::Elf);
    }
    match image {
        [] => Err(NotRaw::Empty),
        [0x1f, 0x8b, ..] => Err(NotRaw::Gzip),
        [0x27, 0x05, 0x19, 0x56, ..] => Err(NotRaw::UImage),
        [b'M', b'Z', ..] => Err(NotRaw::PeCoff),
        _ => Ok(Arm64Kind::Raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let mut img = super::arm64_image::build::image(0, 0, 0, b"code");
        assert_eq!(classify(&img), Ok(Arm64Kind::Image));
        // The Linux EFI stub's "MZ" in front of the Image header is an Image.
        img[..2].copy_from_slice(b"MZ");
        assert_eq!(classify(&img), Ok(Arm64Kind::Image));
        assert_eq!(classify(b"\x7fELF"), Ok(Arm64Kind::Elf));
        assert_eq!(classify(b"\x7fELF garbage"), Ok(Arm64Kind::Elf));
        assert_eq!(classify(&[]), Err(NotRaw::Empty));
        assert_eq!(classify(&[0x1f, 0x8b, 8, 0]), Err(NotRaw::Gzip));
        assert_eq!(classify(&[0x27, 0x05, 0x19, 0x56, 0]), Err(NotRaw::UImage));
        assert_eq!(classify(b"MZ\x90\x00"), Err(NotRaw::PeCoff));
        // Everything else is raw, however short; a magic cut short is raw too.
        for raw in [
            &b"\x1f"[..],
            b"\x7fEL",
            b"\x1f\x20\x03\xd5",
            &[0u8; 64],
            b"M",
        ] {
            assert_eq!(classify(raw), Ok(Arm64Kind::Raw), "{raw:?}");
        }
        // The Image magic in a file shorter than the header is not an Image.
        let mut short = vec![0u8; 0x3c];
        short[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(classify(&short), Ok(Arm64Kind::Raw));
    }
}
