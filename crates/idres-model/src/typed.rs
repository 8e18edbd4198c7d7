//! Typed views of the reserved value types (RFC 3651 §3.2).
//!
//! The data of `HS_ADMIN`, `HS_VLIST`, `HS_SITE` and `HS_SERV` values has a
//! fixed binary layout; these types decode and encode it. Decoding is
//! checked like every other decoder in idres.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes};

use crate::codec::{self, DecodeError, Reader};
use crate::value::{types, HandleValue, ValueReference};
use crate::MAX_HANDLE_LEN;

/// Permission bits of an `HS_ADMIN` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AdminPermissions(pub u16);

impl AdminPermissions {
    /// Create handles under the prefix.
    pub const ADD_HANDLE: u16 = 0x0001;
    /// Delete handles.
    pub const DELETE_HANDLE: u16 = 0x0002;
    /// Create derived prefixes.
    pub const ADD_DERIVED_PREFIX: u16 = 0x0004;
    /// Delete derived prefixes.
    pub const DELETE_DERIVED_PREFIX: u16 = 0x0008;
    /// Modify values.
    pub const MODIFY_VALUE: u16 = 0x0010;
    /// Remove values.
    pub const REMOVE_VALUE: u16 = 0x0020;
    /// Add values.
    pub const ADD_VALUE: u16 = 0x0040;
    /// Modify HS_ADMIN values.
    pub const MODIFY_ADMIN: u16 = 0x0080;
    /// Remove HS_ADMIN values.
    pub const REMOVE_ADMIN: u16 = 0x0100;
    /// Add HS_ADMIN values.
    pub const ADD_ADMIN: u16 = 0x0200;
    /// Read values without public read permission.
    pub const READ_VALUE: u16 = 0x0400;
    /// List the handles under a prefix.
    pub const LIST_HANDLES: u16 = 0x0800;
    /// Every bit.
    pub const ALL: AdminPermissions = AdminPermissions(0x0FFF);

    /// Whether every bit of `bits` is set.
    pub fn allows(self, bits: u16) -> bool {
        self.0 & bits == bits
    }

    /// The 12-character bit string of the JSON API, most significant first
    /// (`"011111110011"` is 0x7F3).
    pub fn to_bit_string(self) -> String {
        (0..12)
            .rev()
            .map(|i| if self.0 & (1 << i) != 0 { '1' } else { '0' })
            .collect()
    }

    /// Parses the 12-character bit string of the JSON API.
    pub fn from_bit_string(s: &str) -> Option<Self> {
        if s.len() != 12 {
            return None;
        }
        s.bytes()
            .try_fold(0u16, |acc, b| match b {
                b'0' => Some(acc << 1),
                b'1' => Some((acc << 1) | 1),
                _ => None,
            })
            .map(AdminPermissions)
    }
}

/// The data of an `HS_ADMIN` value: who administers the handle, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRef {
    /// What the administrator may do.
    pub permissions: AdminPermissions,
    /// The administrator's identity handle.
    pub handle: String,
    /// The index of the key value in the identity handle.
    pub index: u32,
}

impl AdminRef {
    /// Decodes `HS_ADMIN` data.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let permissions = AdminPermissions(r.u16("admin permissions")?);
        let handle = r.str("admin handle", MAX_HANDLE_LEN)?.to_owned();
        let index = r.u32("admin index")?;
        r.finish("HS_ADMIN data")?;
        Ok(Self {
            permissions,
            handle,
            index,
        })
    }

    /// Encodes `HS_ADMIN` data.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(2 + 4 + self.handle.len() + 4);
        out.put_u16(self.permissions.0);
        codec::put_str(&mut out, &self.handle);
        out.put_u32(self.index);
        out.into()
    }
}

/// The data of an `HS_VLIST` value: a group of identities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueList(pub Vec<ValueReference>);

impl ValueList {
    /// Decodes `HS_VLIST` data.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let n = r.count("vlist count", 65_536, 8)?;
        let mut refs = Vec::with_capacity(n);
        for _ in 0..n {
            let handle = r.str("vlist handle", MAX_HANDLE_LEN)?.to_owned();
            let index = r.u32("vlist index")?;
            refs.push(ValueReference { handle, index });
        }
        r.finish("HS_VLIST data")?;
        Ok(Self(refs))
    }

    /// Encodes `HS_VLIST` data.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        codec::put_len(&mut out, self.0.len());
        for r in &self.0 {
            codec::put_str(&mut out, &r.handle);
            out.put_u32(r.index);
        }
        out.into()
    }
}

/// Interface kinds of a server (RFC 3651 §3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceType(pub u8);

impl InterfaceType {
    /// Administration only.
    pub const ADMIN: InterfaceType = InterfaceType(1);
    /// Resolution only.
    pub const QUERY: InterfaceType = InterfaceType(2);
    /// Both.
    pub const BOTH: InterfaceType = InterfaceType(3);

    /// Whether the interface answers resolution requests.
    pub fn answers_queries(self) -> bool {
        self.0 & 2 != 0
    }
}

/// Transport of a server interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransportProtocol(pub u8);

impl TransportProtocol {
    /// UDP.
    pub const UDP: TransportProtocol = TransportProtocol(0);
    /// TCP.
    pub const TCP: TransportProtocol = TransportProtocol(1);
    /// HTTP.
    pub const HTTP: TransportProtocol = TransportProtocol(2);
    /// HTTPS.
    pub const HTTPS: TransportProtocol = TransportProtocol(3);
}

/// One way to reach a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interface {
    /// Which requests it takes.
    pub kind: InterfaceType,
    /// Its transport.
    pub protocol: TransportProtocol,
    /// Its port.
    pub port: u32,
}

/// One server of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Number of the server within its site.
    pub server_id: u32,
    /// Address; IPv4 is carried as an IPv4-mapped 16-byte address with
    /// twelve zero bytes, as the protocol writes it.
    pub address: IpAddr,
    /// The server's public key (may be empty).
    pub public_key: Bytes,
    /// How to reach it.
    pub interfaces: Vec<Interface>,
}

/// Site flag: the site is a primary site.
pub const SITE_PRIMARY: u8 = 0x80;
/// Site flag: the service has more than one primary.
pub const SITE_MULTI_PRIMARY: u8 = 0x40;

/// The data of an `HS_SITE` value (RFC 3651 §3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    /// Data format version (1).
    pub version: u16,
    /// Protocol major version spoken.
    pub protocol_major: u8,
    /// Protocol minor version spoken.
    pub protocol_minor: u8,
    /// Serial number of this site description.
    pub serial: u16,
    /// [`SITE_PRIMARY`], [`SITE_MULTI_PRIMARY`].
    pub flags: u8,
    /// How handles are spread over servers: 0 by prefix, 1 by suffix,
    /// 2 by whole handle.
    pub hash_option: u8,
    /// Filter applied before hashing (usually empty).
    pub hash_filter: String,
    /// Name/value attributes, such as `desc`.
    pub attributes: Vec<(String, String)>,
    /// The servers.
    pub servers: Vec<ServerInfo>,
}

impl SiteInfo {
    /// A primary site of one server with query-and-admin interfaces over
    /// UDP and TCP on `addr`'s port.
    pub fn single(addr: std::net::SocketAddr, description: &str) -> Self {
        let port = u32::from(addr.port());
        Self {
            version: 1,
            protocol_major: 2,
            protocol_minor: 10,
            serial: 1,
            flags: SITE_PRIMARY,
            hash_option: 0,
            hash_filter: String::new(),
            attributes: vec![("desc".to_owned(), description.to_owned())],
            servers: vec![ServerInfo {
                server_id: 1,
                address: addr.ip(),
                public_key: Bytes::new(),
                interfaces: vec![
                    Interface {
                        kind: InterfaceType::BOTH,
                        protocol: TransportProtocol::TCP,
                        port,
                    },
                    Interface {
                        kind: InterfaceType::QUERY,
                        protocol: TransportProtocol::UDP,
                        port,
                    },
                ],
            }],
        }
    }

    /// Decodes `HS_SITE` data.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let version = r.u16("site version")?;
        let protocol_major = r.u8("site protocol major")?;
        let protocol_minor = r.u8("site protocol minor")?;
        let serial = r.u16("site serial")?;
        let flags = r.u8("site flags")?;
        let hash_option = r.u8("site hash option")?;
        let hash_filter = r.str("site hash filter", 1024)?.to_owned();
        let n = r.count("site attribute count", 1024, 8)?;
        let mut attributes = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("site attribute name", 4096)?.to_owned();
            let value = r.str("site attribute value", 65_536)?.to_owned();
            attributes.push((name, value));
        }
        let n = r.count("site server count", 1024, 4 + 16 + 4 + 4)?;
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            let server_id = r.u32("server id")?;
            let raw = r.take(16, "server address")?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(raw);
            let v6 = Ipv6Addr::from(octets);
            let address = if octets[..12].iter().all(|b| *b == 0) {
                IpAddr::V4(Ipv4Addr::new(
                    octets[12], octets[13], octets[14], octets[15],
                ))
            } else {
                IpAddr::V6(v6)
            };
            let public_key = Bytes::copy_from_slice(r.byte_array("server public key", 65_536)?);
            let k = r.count("server interface count", 64, 6)?;
            let mut interfaces = Vec::with_capacity(k);
            for _ in 0..k {
                let kind = InterfaceType(r.u8("interface type")?);
                let protocol = TransportProtocol(r.u8("interface protocol")?);
                let port = r.u32("interface port")?;
                interfaces.push(Interface {
                    kind,
                    protocol,
                    port,
                });
            }
            servers.push(ServerInfo {
                server_id,
                address,
                public_key,
                interfaces,
            });
        }
        r.finish("HS_SITE data")?;
        Ok(Self {
            version,
            protocol_major,
            protocol_minor,
            serial,
            flags,
            hash_option,
            hash_filter,
            attributes,
            servers,
        })
    }

    /// Encodes `HS_SITE` data.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(128);
        out.put_u16(self.version);
        out.put_u8(self.protocol_major);
        out.put_u8(self.protocol_minor);
        out.put_u16(self.serial);
        out.put_u8(self.flags);
        out.put_u8(self.hash_option);
        codec::put_str(&mut out, &self.hash_filter);
        codec::put_len(&mut out, self.attributes.len());
        for (name, value) in &self.attributes {
            codec::put_str(&mut out, name);
            codec::put_str(&mut out, value);
        }
        codec::put_len(&mut out, self.servers.len());
        for s in &self.servers {
            out.put_u32(s.server_id);
            let octets = match s.address {
                IpAddr::V4(v4) => {
                    let mut o = [0u8; 16];
                    o[12..].copy_from_slice(&v4.octets());
                    o
                }
                IpAddr::V6(v6) => v6.octets(),
            };
            out.put_slice(&octets);
            codec::put_bytes(&mut out, &s.public_key);
            codec::put_len(&mut out, s.interfaces.len());
            for i in &s.interfaces {
                out.put_u8(i.kind.0);
                out.put_u8(i.protocol.0);
                out.put_u32(i.port);
            }
        }
        out.into()
    }

    /// Whether any query interface of any server is at `addr`.
    pub fn serves_at(&self, addr: std::net::SocketAddr) -> bool {
        self.servers.iter().any(|s| {
            (s.address == addr.ip() || addr.ip().is_unspecified())
                && s.interfaces
                    .iter()
                    .any(|i| i.port == u32::from(addr.port()))
        })
    }
}

/// Checks that a value of a reserved type carries data of that type's form.
pub(crate) fn check_typed(v: &HandleValue) -> Result<(), DecodeError> {
    let t = v.value_type.as_str();
    if t.eq_ignore_ascii_case(types::HS_ADMIN) {
        AdminRef::decode(&v.data).map(drop)
    } else if t.eq_ignore_ascii_case(types::HS_VLIST) {
        ValueList::decode(&v.data).map(drop)
    } else if t.eq_ignore_ascii_case(types::HS_SITE)
        || t.eq_ignore_ascii_case(types::HS_SITE_PREFIX)
    {
        SiteInfo::decode(&v.data).map(drop)
    } else if t.eq_ignore_ascii_case(types::HS_SERV)
        || t.eq_ignore_ascii_case(types::HS_SERV_PREFIX)
        || t.eq_ignore_ascii_case(types::HS_ALIAS)
    {
        let s = std::str::from_utf8(&v.data).map_err(|_| DecodeError::BadUtf8 {
            field: "service handle",
            offset: 0,
        })?;
        crate::Handle::parse(s)
            .map(drop)
            .map_err(|_| DecodeError::Invalid {
                field: "service handle",
                reason: "not a handle",
            })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_golden_and_bits() {
        let a = AdminRef {
            permissions: AdminPermissions(0x7F3),
            handle: "0.NA/88".into(),
            index: 200,
        };
        let bytes = a.encode();
        assert_eq!(
            &bytes[..],
            &[0x07, 0xF3, 0, 0, 0, 7, b'0', b'.', b'N', b'A', b'/', b'8', b'8', 0, 0, 0, 200]
        );
        assert_eq!(AdminRef::decode(&bytes).unwrap(), a);
        assert_eq!(a.permissions.to_bit_string(), "011111110011");
        assert_eq!(
            AdminPermissions::from_bit_string("011111110011"),
            Some(AdminPermissions(0x7F3))
        );
        assert_eq!(AdminPermissions::from_bit_string("01111111001x"), None);
        for n in 0..bytes.len() {
            assert!(AdminRef::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn site_round_trip_and_truncation() {
        let site = SiteInfo::single("192.0.2.7:2641".parse().unwrap(), "top node");
        let bytes = site.encode();
        assert_eq!(SiteInfo::decode(&bytes).unwrap(), site);
        assert!(site.serves_at("192.0.2.7:2641".parse().unwrap()));
        assert!(!site.serves_at("192.0.2.7:2642".parse().unwrap()));
        for n in 0..bytes.len() {
            assert!(SiteInfo::decode(&bytes[..n]).is_err());
        }
        // IPv4 is written as twelve zero bytes and the four octets.
        let addr_at = 2 + 1 + 1 + 2 + 1 + 1 + 4 + 4 + (4 + 4) + (4 + 8) + 4 + 4;
        assert_eq!(
            &bytes[addr_at..addr_at + 16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 7]
        );
    }

    #[test]
    fn vlist_round_trip() {
        let l = ValueList(vec![
            ValueReference {
                handle: "88/ADMIN".into(),
                index: 300,
            },
            ValueReference {
                handle: "88/OPS".into(),
                index: 301,
            },
        ]);
        let b = l.encode();
        assert_eq!(ValueList::decode(&b).unwrap(), l);
        for n in 0..b.len() {
            assert!(ValueList::decode(&b[..n]).is_err());
        }
    }
}
