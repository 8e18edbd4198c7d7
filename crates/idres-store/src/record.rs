//! Stored records.
//!
//! A record is stored as one flags byte followed by the values in their
//! Handle wire encoding (`int4` count, then each value). The flags byte
//! lets the resolution path copy the stored values into a reply without
//! decoding them when no filter applies.

use bytes::Bytes;
use idres_model::codec::{DecodeError, Reader};
use idres_model::{decode_values, encode_values, HandleValue, MAX_HANDLE_LEN};

/// Flag: every value is publicly readable.
pub const ALL_PUBLIC: u8 = 0x01;

/// The bytes of a stored record, borrowed from the store's cache where it
/// can be.
#[derive(Clone)]
pub struct RecordBytes(Inner);

#[derive(Clone)]
enum Inner {
    Sled(sled::IVec),
    Owned(Bytes),
    Cached(crate::cache::Entry),
}

impl std::fmt::Debug for RecordBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordBytes({} bytes)", self.raw().len())
    }
}

impl RecordBytes {
    pub(crate) fn from_ivec(v: sled::IVec) -> Self {
        Self(Inner::Sled(v))
    }

    pub(crate) fn from_cache(e: crate::cache::Entry) -> Self {
        Self(Inner::Cached(e))
    }

    /// Wraps bytes in the stored form (flags byte, then values).
    pub fn from_stored(bytes: Bytes) -> Self {
        Self(Inner::Owned(bytes))
    }

    /// Encodes values in the stored form.
    pub fn encode(values: &[HandleValue]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + values.iter().map(|v| v.encoded_len()).sum::<usize>());
        let all_public = values.iter().all(|v| v.permissions.public_read());
        out.push(if all_public { ALL_PUBLIC } else { 0 });
        encode_values(values, &mut out);
        out
    }

    /// The stored form: flags byte, then values.
    pub fn raw(&self) -> &[u8] {
        match &self.0 {
            Inner::Sled(v) => v,
            Inner::Owned(b) => b,
            Inner::Cached(e) => e.record(),
        }
    }

    /// The values in wire form (`int4` count and values), ready to copy
    /// into a resolution reply.
    pub fn encoded_values(&self) -> &[u8] {
        self.raw().get(1..).unwrap_or(&[])
    }

    /// Whether every value may be read by anyone.
    pub fn all_public(&self) -> bool {
        self.raw().first().is_some_and(|f| f & ALL_PUBLIC != 0)
    }

    /// Decodes the values.
    pub fn values(&self) -> Result<Vec<HandleValue>, DecodeError> {
        let mut r = Reader::new(self.encoded_values());
        let values = decode_values(&mut r)?;
        r.finish("record")?;
        Ok(values)
    }

    /// Walks the values without decoding their data.
    pub fn raw_values(&self) -> Result<RawValues<'_>, DecodeError> {
        let mut r = Reader::new(self.encoded_values());
        let left = r.count("value count", idres_model::value::MAX_VALUES, 26)?;
        Ok(RawValues { r, left })
    }
}

/// One value, located but not decoded.
#[derive(Debug, Clone, Copy)]
pub struct RawValue<'a> {
    /// The value's index.
    pub index: u32,
    /// Its type.
    pub value_type: &'a str,
    /// Its permission bits.
    pub permissions: u8,
    /// Its whole wire encoding.
    pub bytes: &'a [u8],
}

/// Iterator over the values of a record.
#[derive(Debug)]
pub struct RawValues<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for RawValues<'a> {
    type Item = Result<RawValue<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.next_value())
    }
}

impl<'a> RawValues<'a> {
    fn next_value(&mut self) -> Result<RawValue<'a>, DecodeError> {
        let start = self.r.rest();
        let before = self.r.remaining();
        let index = self.r.u32("value index")?;
        self.r.take(4 + 1 + 4, "value timestamp and ttl")?;
        let permissions = self.r.u8("value permissions")?;
        let value_type = self.r.str("value type", 256)?;
        self.r
            .byte_array("value data", idres_model::value::MAX_VALUE_DATA)?;
        let refs = self.r.count("reference count", 1024, 8)?;
        for _ in 0..refs {
            self.r.str("reference handle", MAX_HANDLE_LEN)?;
            self.r.u32("reference index")?;
        }
        let used = before - self.r.remaining();
        Ok(RawValue {
            index,
            value_type,
            permissions,
            bytes: &start[..used],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idres_model::Permissions;

    #[test]
    fn flags_and_raw_walk() {
        let mut private = HandleValue::new(2, "EMAIL", "a@b");
        private.permissions = Permissions(0x0C);
        let values = vec![HandleValue::new(1, "URL", "http://x"), private];
        let rec = RecordBytes::from_stored(RecordBytes::encode(&values).into());
        assert!(!rec.all_public());
        assert_eq!(rec.values().unwrap(), values);
        let raw: Vec<_> = rec.raw_values().unwrap().map(|v| v.unwrap()).collect();
        assert_eq!(raw.len(), 2);
        assert_eq!((raw[0].index, raw[0].value_type), (1, "URL"));
        assert_eq!(raw[1].permissions, 0x0C);
        let mut one = Vec::new();
        values[1].encode(&mut one);
        assert_eq!(raw[1].bytes, &one[..]);
        let public = RecordBytes::from_stored(RecordBytes::encode(&values[..1]).into());
        assert!(public.all_public());
    }
}
