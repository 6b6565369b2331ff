//! The Linux arm64 `Image` format (Documentation/arch/arm64/booting.rst):
//! a 64-byte header at the start of the file.
//!
//! ```text
//! 0x00 code0, code1 (branch to the kernel)   0x08 text_offset (LE)
//! 0x10 image_size (LE, 0 before Linux 3.17)   0x18 flags (LE)
//! 0x20 res2, res3, res4                       0x38 magic "ARM\x64"
//! ```
//! flags: bit 0 big-endian kernel, bits 1-2 page size, bit 3 "may be
//! placed anywhere in RAM" (else as close as possible to the start of RAM).
//! The image is loaded at a 2 MiB-aligned base + `text_offset` and entered
//! at its first byte with x0 = DTB, x1 = x2 = x3 = 0, MMU off, EL1h.

pub const MAGIC: u32 = 0x644d_5241; // "ARM\x64", little endian
pub const HEADER_SIZE: usize = 64;
/// text_offset assumed when image_size is 0 (booting.rst).
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Big-endian kernels are not supported (our guests are little endian).
    BigEndian,
    /// text_offset or image_size is absurd (beyond 1 GiB, or smaller than
    /// the file for image_size).
    BadGeometry,
}

/// The parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (file size if the
    /// header says 0).
    pub image_size: u64,
    pub flags: u64,
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// `Ok(None)` if `image` does not carry the arm64 Image magic.
pub fn parse(image: &[u8]) -> Result<Option<ImageHeader>, ImageError> {
    if image.len() < HEADER_SIZE {
        return Ok(None);
    }
    let magic = u32::from_le_bytes([image[0x38], image[0x39], image[0x3a], image[0x3b]]);
    if magic != MAGIC {
        return Ok(None);
    }
    let mut text_offset = le64(image, 0x08);
    let mut image_size = le64(image, 0x10);
    let flags = le64(image, 0x18);
    if image_size == 0 {
        text_offset = LEGACY_TEXT_OFFSET;
        image_size = image.len() as u64;
    } else if flags & 1 != 0 {
        return Err(ImageError::BigEndian);
    }
    const LIMIT: u64 = 1 << 30;
    if text_offset >= LIMIT || image_size > LIMIT || image_size < image.len() as u64 {
        return Err(ImageError::BadGeometry);
    }
    Ok(Some(ImageHeader {
        text_offset,
        image_size,
        flags,
    }))
}

#[cfg(test)]
pub mod build {
    use alloc::vec::Vec;

    /// An Image of `code` with the given header fields.
    pub fn image(text_offset: u64, image_size: u64, flags: u64, code: &[u8]) -> Vec<u8> {
        let mut v = alloc::vec![0u8; super::HEADER_SIZE];
        v[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        v[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        v[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        v[0x38..0x3c].copy_from_slice(b"ARM\x64");
        v.extend_from_slice(code);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let i = build::image(0, 0x20_0000, 0xa, &[1, 2, 3]);
        assert_eq!(
            parse(&i),
            Ok(Some(ImageHeader {
                text_offset: 0,
                image_size: 0x20_0000,
                flags: 0xa
            }))
        );
        // Legacy: image_size 0 means text_offset 0x80000 and the file size.
        let i = build::image(0x1234, 0, 0, &[0; 100]);
        assert_eq!(
            parse(&i).unwrap().unwrap(),
            ImageHeader {
                text_offset: LEGACY_TEXT_OFFSET,
                image_size: 164,
                flags: 0
            }
        );
        assert_eq!(
            parse(&build::image(0, 0x1000, 1, &[])),
            Err(ImageError::BigEndian)
        );
        assert_eq!(
            parse(&build::image(1 << 30, 0x1000, 0, &[])),
            Err(ImageError::BadGeometry)
        );
        assert_eq!(
            parse(&build::image(0, 10, 0, &[])),
            Err(ImageError::BadGeometry)
        );
        assert_eq!(
            parse(&build::image(0, u64::MAX, 0, &[])),
            Err(ImageError::BadGeometry)
        );
        // Not an Image: no magic, or too short.
        assert_eq!(parse(&[0u8; 64]), Ok(None));
        assert_eq!(parse(b"\x7fELF"), Ok(None));
        assert_eq!(parse(&[]), Ok(None));
    }
}
