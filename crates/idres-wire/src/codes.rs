//! Open codepoints of the Handle protocol (RFC 3652 §2.2.2).
//!
//! Operation codes, response codes and option flags are newtypes over the
//! wire integer with named constants, so a value this crate does not know
//! still decodes, re-encodes unchanged, and can be answered with a proper
//! "not supported" error.

use std::fmt;

/// An operation code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpCode(pub u32);

impl OpCode {
    /// Resolve a handle (RFC 3652 §3.1).
    pub const RESOLUTION: OpCode = OpCode(1);
    /// Ask a server for its site information (§3.2).
    pub const GET_SITE_INFO: OpCode = OpCode(2);
    /// Create a handle (§3.3).
    pub const CREATE_HANDLE: OpCode = OpCode(100);
    /// Delete a handle.
    pub const DELETE_HANDLE: OpCode = OpCode(101);
    /// Add values to a handle.
    pub const ADD_VALUE: OpCode = OpCode(102);
    /// Remove values from a handle.
    pub const REMOVE_VALUE: OpCode = OpCode(103);
    /// Replace values of a handle.
    pub const MODIFY_VALUE: OpCode = OpCode(104);
    /// List the handles under a prefix.
    pub const LIST_HANDLES: OpCode = OpCode(105);
    /// Client's answer to an authentication challenge (§3.5).
    pub const CHALLENGE_RESPONSE: OpCode = OpCode(200);
    /// Ask an identity's home server to verify a secret-key response.
    pub const VERIFY_RESPONSE: OpCode = OpCode(201);
    /// Home a prefix at a server.
    pub const HOME_NA: OpCode = OpCode(300);
    /// Unhome a prefix.
    pub const UNHOME_NA: OpCode = OpCode(301);
    /// List the prefixes homed at a server.
    pub const LIST_HOMED_NAS: OpCode = OpCode(302);
    /// Set up a session.
    pub const SESSION_SETUP: OpCode = OpCode(400);
    /// End a session.
    pub const SESSION_TERMINATE: OpCode = OpCode(401);
    /// Exchange a session key.
    pub const SESSION_EXCHANGEKEY: OpCode = OpCode(402);

    /// The constant's name, if this is a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "RESOLUTION",
            2 => "GET_SITE_INFO",
            100 => "CREATE_HANDLE",
            101 => "DELETE_HANDLE",
            102 => "ADD_VALUE",
            103 => "REMOVE_VALUE",
            104 => "MODIFY_VALUE",
            105 => "LIST_HANDLES",
            200 => "CHALLENGE_RESPONSE",
            201 => "VERIFY_RESPONSE",
            300 => "HOME_NA",
            301 => "UNHOME_NA",
            302 => "LIST_HOMED_NAS",
            400 => "SESSION_SETUP",
            401 => "SESSION_TERMINATE",
            402 => "SESSION_EXCHANGEKEY",
            1000 => "GET_NEXT_TXN_ID",
            1001 => "RETRIEVE_TXN_LOG",
            1002 => "DUMP_HANDLES",
            1003 => "BACKUP_SERVER",
            _ => return None,
        })
    }
}

impl fmt::Debug for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "OpCode({})", self.0),
        }
    }
}

/// A response code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseCode(pub u32);

impl ResponseCode {
    /// Carried by every request.
    pub const RESERVED: ResponseCode = ResponseCode(0);
    /// The request succeeded.
    pub const SUCCESS: ResponseCode = ResponseCode(1);
    /// An unspecified error.
    pub const ERROR: ResponseCode = ResponseCode(2);
    /// The server is overloaded.
    pub const SERVER_TOO_BUSY: ResponseCode = ResponseCode(3);
    /// The request could not be understood.
    pub const PROTOCOL_ERROR: ResponseCode = ResponseCode(4);
    /// The operation is not supported here.
    pub const OPERATION_NOT_SUPPORTED: ResponseCode = ResponseCode(5);
    /// Too many recursions.
    pub const RECURSION_COUNT_TOO_HIGH: ResponseCode = ResponseCode(6);
    /// The handle does not exist.
    pub const HANDLE_NOT_FOUND: ResponseCode = ResponseCode(100);
    /// The handle exists already.
    pub const HANDLE_ALREADY_EXISTS: ResponseCode = ResponseCode(101);
    /// The handle is malformed.
    pub const INVALID_HANDLE: ResponseCode = ResponseCode(102);
    /// No value matched.
    pub const VALUES_NOT_FOUND: ResponseCode = ResponseCode(200);
    /// A value with that index exists already.
    pub const VALUE_ALREADY_EXISTS: ResponseCode = ResponseCode(201);
    /// A value is malformed.
    pub const INVALID_VALUE: ResponseCode = ResponseCode(202);
    /// The client's site information is out of date.
    pub const OUT_OF_DATE_SITE_INFO: ResponseCode = ResponseCode(300);
    /// The server did not respond.
    pub const SERVER_NOT_RESP: ResponseCode = ResponseCode(301);
    /// Ask the service named in the reply.
    pub const SERVICE_REFERRAL: ResponseCode = ResponseCode(302);
    /// Ask the service of the prefix named in the reply.
    pub const PREFIX_REFERRAL: ResponseCode = ResponseCode(303);
    /// The admin is invalid.
    pub const INVALID_ADMIN: ResponseCode = ResponseCode(400);
    /// The client lacks a permission.
    pub const INSUFFICIENT_PERMISSIONS: ResponseCode = ResponseCode(401);
    /// The client must authenticate.
    pub const AUTHENTICATION_NEEDED: ResponseCode = ResponseCode(402);
    /// Authentication failed.
    pub const AUTHENTICATION_FAILED: ResponseCode = ResponseCode(403);
    /// The credential is invalid.
    pub const INVALID_CREDENTIAL: ResponseCode = ResponseCode(404);
    /// Authentication took too long.
    pub const AUTHEN_TIMEOUT: ResponseCode = ResponseCode(405);
    /// Authentication could not be carried out.
    pub const AUTHEN_ERROR: ResponseCode = ResponseCode(406);

    /// The constant's name, if this is a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "RESERVED",
            1 => "SUCCESS",
            2 => "ERROR",
            3 => "SERVER_TOO_BUSY",
            4 => "PROTOCOL_ERROR",
            5 => "OPERATION_NOT_SUPPORTED",
            6 => "RECURSION_COUNT_TOO_HIGH",
            100 => "HANDLE_NOT_FOUND",
            101 => "HANDLE_ALREADY_EXISTS",
            102 => "INVALID_HANDLE",
            200 => "VALUES_NOT_FOUND",
            201 => "VALUE_ALREADY_EXISTS",
            202 => "INVALID_VALUE",
            300 => "OUT_OF_DATE_SITE_INFO",
            301 => "SERVER_NOT_RESP",
            302 => "SERVICE_REFERRAL",
            303 => "PREFIX_REFERRAL",
            400 => "INVALID_ADMIN",
            401 => "INSUFFICIENT_PERMISSIONS",
            402 => "AUTHENTICATION_NEEDED",
            403 => "AUTHENTICATION_FAILED",
            404 => "INVALID_CREDENTIAL",
            405 => "AUTHEN_TIMEOUT",
            406 => "AUTHEN_ERROR",
            _ => return None,
        })
    }
}

impl fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "ResponseCode({})", self.0),
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Option flags of a message header (RFC 3652 §2.2.2.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpFlags(pub u32);

impl OpFlags {
    /// AT: the reply must come from a primary, authoritative source.
    pub const AUTHORITATIVE: u32 = 0x8000_0000;
    /// CT: the reply must be signed.
    pub const CERTIFY: u32 = 0x4000_0000;
    /// ENC: the reply must be encrypted.
    pub const ENCRYPT: u32 = 0x2000_0000;
    /// REC: the server may resolve recursively.
    pub const RECURSIVE: u32 = 0x1000_0000;
    /// CA: cache-certify.
    pub const CACHE_CERTIFY: u32 = 0x0800_0000;
    /// CN: more messages follow.
    pub const CONTINUOUS: u32 = 0x0400_0000;
    /// KA: keep the connection open.
    pub const KEEP_ALIVE: u32 = 0x0200_0000;
    /// PO: return only publicly readable values.
    pub const PUBLIC_ONLY: u32 = 0x0100_0000;
    /// RD: put the digest of the request at the start of the reply body.
    pub const RETURN_DIGEST: u32 = 0x0080_0000;
    /// OVRW: a create may replace an existing handle.
    pub const OVERWRITE: u32 = 0x0040_0000;
    /// MINT: the server chooses the suffix.
    pub const MINT_NEW_SUFFIX: u32 = 0x0020_0000;
    /// DNRF: do not answer with a referral.
    pub const DO_NOT_REFER: u32 = 0x0010_0000;

    /// Whether every bit of `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

impl fmt::Debug for OpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpFlags({:#010x})", self.0)
    }
}
