//! Checked big-endian primitives shared by every binary encoding in idres.
//!
//! The Handle protocol (RFC 3652 §2.1) writes integers big-endian, strings
//! and byte arrays as an `int4` length followed by the bytes. [`Reader`]
//! checks the remaining length before every read, so that no input can make
//! a decoder index out of bounds or allocate more than the input holds.
//! Encoding cannot fail; the `put_*` helpers write into any [`BufMut`].

use bytes::BufMut;

/// Why a byte sequence could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the named field was complete.
    #[error("truncated {field}: needed {needed} bytes at offset {offset}, {remaining} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Offset of the field in the input.
        offset: usize,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A length or count is larger than allowed.
    #[error("{field} of {value} exceeds the limit of {limit}")]
    TooLarge {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: usize,
        /// The largest allowed value.
        limit: usize,
    },
    /// A string field does not hold UTF-8.
    #[error("{field} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        /// The field being read.
        field: &'static str,
        /// Offset of the field in the input.
        offset: usize,
    },
    /// Bytes remain after the structure ended.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// The structure that was read.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A cursor over untrusted bytes that checks every read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unread part of the input.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.rest();
        match rest.split_at_checked(n) {
            Some((head, _)) => {
                self.pos += n;
                Ok(head)
            }
            None => Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                remaining: rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u32` (an `int4` of the Handle protocol).
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads an `int4` length and checks it against `limit` and the input.
    pub fn len(&mut self, field: &'static str, limit: usize) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > limit {
            return Err(DecodeError::TooLarge {
                field,
                value: n,
                limit,
            });
        }
        Ok(n)
    }

    /// Reads an `int4` element count; each element needs at least
    /// `min_element_size` bytes, which bounds the count by the input left.
    pub fn count(
        &mut self,
        field: &'static str,
        limit: usize,
        min_element_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.len(field, limit)?;
        let fits = self.remaining() / min_element_size.max(1);
        if n > fits {
            return Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n.saturating_mul(min_element_size),
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    /// Reads a byte array: an `int4` length and that many bytes.
    pub fn byte_array(
        &mut self,
        field: &'static str,
        limit: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field, limit)?;
        self.take(n, field)
    }

    /// Reads a UTF-8 string: an `int4` length and that many bytes.
    pub fn str(&mut self, field: &'static str, limit: usize) -> Result<&'a str, DecodeError> {
        let offset = self.pos;
        let bytes = self.byte_array(field, limit)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { field, offset })
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, count }),
        }
    }
}

/// Writes an `int4`-prefixed byte array.
///
/// Lengths above `u32::MAX` cannot be produced by any decoder in idres, whose
/// caps are far below it; they are clamped rather than wrapped.
pub fn put_bytes<B: BufMut + ?Sized>(out: &mut B, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.put_u32(len);
    out.put_slice(&bytes[..len as usize]);
}

/// Writes an `int4`-prefixed UTF-8 string.
pub fn put_str<B: BufMut + ?Sized>(out: &mut B, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Writes a length or count as an `int4`.
pub fn put_len<B: BufMut + ?Sized>(out: &mut B, n: usize) {
    out.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
}

/// Encoded size of a byte array or string of `n` bytes.
pub const fn bytes_len(n: usize) -> usize {
    4 + n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut r = Reader::new(&[0, 0, 0, 3, b'a', b'b']);
        assert!(matches!(
            r.str("s", 100),
            Err(DecodeError::Truncated { needed: 3, .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 200]);
        assert!(matches!(
            r.byte_array("b", 10),
            Err(DecodeError::TooLarge { value: 200, .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 2, 0xff, 0xfe]);
        assert!(matches!(r.str("s", 10), Err(DecodeError::BadUtf8 { .. })));
    }

    #[test]
    fn count_is_bounded_by_input() {
        let mut r = Reader::new(&[0x00, 0x10, 0, 0, 1, 2, 3]);
        assert!(r.count("n", usize::MAX, 4).is_err());
        let mut r = Reader::new(&[0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(r.count("n", 10, 4), Ok(1));
    }

    #[test]
    fn round_trip_and_trailing() {
        let mut out = Vec::new();
        put_str(&mut out, "88.118.8/X");
        out.push(7);
        let mut r = Reader::new(&out);
        assert_eq!(r.str("s", 100), Ok("88.118.8/X"));
        assert!(r.finish("x").is_err());
        assert_eq!(r.u8("b"), Ok(7));
        assert!(r.finish("x").is_ok());
    }
}
