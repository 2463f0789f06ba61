//! Where a RAUC bundle keeps its signature: the CMS structure (which holds
//! the manifest, and in a verity bundle the root hash of the payload) sits
//! right before the file's last 8 bytes, which give its length as a
//! big-endian u64. The operator hashes that block when a bundle is pushed;
//! a streaming agent fetches the same bytes with two Range requests and
//! compares, because it never holds the whole file to hash.

use std::ops::Range;

/// Length of the trailer that gives the signature's size.
pub const TRAILER_LEN: u64 = 8;

/// Signatures larger than this are refused: a real one (a certificate chain
/// and the manifest) is a few KiB, and a lying size must not make the agent
/// fetch gigabytes into memory.
pub const MAX_SIGNATURE_LEN: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("a bundle of {size} bytes is too small to hold a signature")]
    TooSmall { size: u64 },
    #[error("the trailer gives a signature of {len} bytes, more than the bundle's {size} bytes allow")]
    OutOfRange { len: u64, size: u64 },
    #[error("the trailer gives a signature of {len} bytes (at most {MAX_SIGNATURE_LEN} are accepted)")]
    TooLarge { len: u64 },
    #[error("the trailer gives an empty signature")]
    Empty,
}

/// Byte range of the trailer in a bundle of `size` bytes.
pub fn trailer_range(size: u64) -> Result<Range<u64>, LayoutError> {
    if size <= TRAILER_LEN {
        return Err(LayoutError::TooSmall { size });
    }
    Ok(size - TRAILER_LEN..size)
}

/// Byte range of the signature in a bundle of `size` bytes whose trailer
/// is `trailer`.
pub fn signature_range(size: u64, trailer: [u8; 8]) -> Result<Range<u64>, LayoutError> {
    let end = trailer_range(size)?.start;
    let len = u64::from_be_bytes(trailer);
    if len == 0 {
        return Err(LayoutError::Empty);
    }
    if len > MAX_SIGNATURE_LEN {
        return Err(LayoutError::TooLarge { len });
    }
    if len > end {
        return Err(LayoutError::OutOfRange { len, size });
    }
    Ok(end - len..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_ends_where_the_trailer_starts() {
        assert_eq!(signature_range(1000, 100u64.to_be_bytes()), Ok(892..992));
        assert_eq!(signature_range(108, 100u64.to_be_bytes()), Ok(0..100));
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        assert_eq!(trailer_range(8), Err(LayoutError::TooSmall { size: 8 }));
        assert_eq!(signature_range(107, 100u64.to_be_bytes()), Err(LayoutError::OutOfRange { len: 100, size: 107 }));
        assert_eq!(signature_range(1000, 0u64.to_be_bytes()), Err(LayoutError::Empty));
        let huge = MAX_SIGNATURE_LEN + 1;
        assert_eq!(signature_range(u64::MAX, huge.to_be_bytes()), Err(LayoutError::TooLarge { len: huge }));
        assert_eq!(signature_range(1000, u64::MAX.to_be_bytes()), Err(LayoutError::TooLarge { len: u64::MAX }));
    }
}
