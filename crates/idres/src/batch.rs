//! Handle.Net batch files (the format of its GenericBatch tool), parsed
//! into operations for `idres handle batch`.
//!
//! ```text
//! AUTHENTICATE SECKEY:300:88.118.8/ADMIN
//! <secret key on the next line>
//!
//! AUTHENTICATE PUBKEY:300:88.118.8/ADMIN
//! <private key file>[|<passphrase>]
//!
//! CREATE 88.118.8/item-1
//! 100 HS_ADMIN 86400 1110 ADMIN 300:111111111111:0.NA/88.118.8
//! 1 URL 86400 1110 UTF8 https://example.cn/item-1
//! <blank line ends the block>
//!
//! ADD 88.118.8/item-1        (a value block as for CREATE)
//! MODIFY 88.118.8/item-1     (a value block as for CREATE)
//! REMOVE 2,3:88.118.8/item-1
//! DELETE 88.118.8/item-1
//! ```
//!
//! A value line is `index type ttl perms datatype data`: `perms` is four
//! characters `adminRead adminWrite publicRead publicWrite`; the datatypes
//! are `UTF8 text…`, `ADMIN index:bits:handle` (twelve permission
//! characters, add-handle first), `FILE path` and `LIST i:handle;i:handle`.
//! Other commands (HOME, UNHOME, SESSIONSETUP) are reported as not
//! supported by this client.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use idres_model::{
    AdminPermissions, AdminRef, HandleValue, Permissions, TtlType, ValueList, ValueReference,
};

/// One operation of a batch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Authenticate further operations with a secret key.
    AuthSecret {
        /// Index of the key value.
        index: u32,
        /// The identity handle.
        handle: String,
        /// The secret.
        secret: Vec<u8>,
    },
    /// Authenticate further operations with a private key file.
    AuthKey {
        /// Index of the key value.
        index: u32,
        /// The identity handle.
        handle: String,
        /// The PEM private key file.
        path: PathBuf,
    },
    /// Create a handle.
    Create(String, Vec<HandleValue>),
    /// Add values.
    Add(String, Vec<HandleValue>),
    /// Modify values.
    Modify(String, Vec<HandleValue>),
    /// Remove values by index.
    Remove(String, Vec<u32>),
    /// Delete a handle.
    Delete(String),
    /// A command this client does not run, with its line.
    Unsupported(String),
}

/// One parsed operation and the line it starts on.
#[derive(Debug, Clone)]
pub struct Located {
    /// 1-based line number.
    pub line: usize,
    /// The operation.
    pub op: BatchOp,
}

/// A batch file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BatchError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> BatchError {
    BatchError {
        line,
        message: message.into(),
    }
}

/// Parses a batch file's text; `base` resolves relative FILE paths.
pub fn parse(text: &str, base: &Path) -> Result<Vec<Located>, BatchError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i].trim_end_matches('\r');
        i += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (cmd, arg) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        let arg = arg.trim();
        let op = match cmd.to_ascii_uppercase().as_str() {
            "AUTHENTICATE" => {
                let (kind, rest) = arg.split_once(':').ok_or_else(|| {
                    err(
                        line_no,
                        "AUTHENTICATE needs SECKEY:index:handle or PUBKEY:index:handle",
                    )
                })?;
                let (index, handle) = rest
                    .split_once(':')
                    .ok_or_else(|| err(line_no, "AUTHENTICATE needs index:handle"))?;
                let index: u32 = index
                    .trim()
                    .parse()
                    .map_err(|_| err(line_no, format!("{index:?} is not an index")))?;
                let next = lines
                    .get(i)
                    .map(|l| l.trim_end_matches('\r'))
                    .ok_or_else(|| err(line_no, "AUTHENTICATE is followed by its key line"))?;
                i += 1;
                match kind.trim().to_ascii_uppercase().as_str() {
                    "SECKEY" => BatchOp::AuthSecret {
                        index,
                        handle: handle.trim().to_owned(),
                        secret: next.as_bytes().to_vec(),
                    },
                    "PUBKEY" => {
                        let path = next.split('|').next().unwrap_or("").trim();
                        BatchOp::AuthKey {
                            index,
                            handle: handle.trim().to_owned(),
                            path: base.join(path),
                        }
                    }
                    other => return Err(err(line_no, format!("unknown key kind {other:?}"))),
                }
            }
            "CREATE" | "ADD" | "MODIFY" => {
                let mut values = Vec::new();
                while i < lines.len() {
                    let v = lines[i].trim_end_matches('\r');
                    if v.trim().is_empty() {
                        break;
                    }
                    values.push(value_line(v, i + 1, base)?);
                    i += 1;
                }
                let handle = arg.to_owned();
                if handle.is_empty() {
                    return Err(err(line_no, format!("{cmd} needs a handle")));
                }
                match cmd.to_ascii_uppercase().as_str() {
                    "CREATE" => BatchOp::Create(handle, values),
                    "ADD" => BatchOp::Add(handle, values),
                    _ => BatchOp::Modify(handle, values),
                }
            }
            "REMOVE" => {
                let (indexes, handle) = arg
                    .split_once(':')
                    .ok_or_else(|| err(line_no, "REMOVE needs i1,i2:handle"))?;
                let indexes = indexes
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u32>()
                            .map_err(|_| err(line_no, format!("{s:?} is not an index")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                BatchOp::Remove(handle.trim().to_owned(), indexes)
            }
            "DELETE" => {
                if arg.is_empty() {
                    return Err(err(line_no, "DELETE needs a handle"));
                }
                BatchOp::Delete(arg.to_owned())
            }
            "HOME" | "UNHOME" | "SESSIONSETUP" => {
                // Skip the block.
                while i < lines.len() && !lines[i].trim().is_empty() {
                    i += 1;
                }
                BatchOp::Unsupported(trimmed.to_owned())
            }
            other => return Err(err(line_no, format!("unknown command {other:?}"))),
        };
        out.push(Located { line: line_no, op });
    }
    Ok(out)
}

/// Parses `index type ttl perms datatype data`.
fn value_line(line: &str, line_no: usize, base: &Path) -> Result<HandleValue, BatchError> {
    let mut parts = line.trim_start().splitn(6, ' ');
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err(line_no, format!("a value line needs its {what}")))
    };
    let index: u32 = next("index")?
        .parse()
        .map_err(|_| err(line_no, "the index is not a number"))?;
    let value_type = next("type")?.to_owned();
    let ttl: i64 = next("ttl")?
        .parse()
        .map_err(|_| err(line_no, "the ttl is not a number"))?;
    let perms = next("permissions")?;
    let datatype = next("datatype")?.to_ascii_uppercase();
    let data = parts.next().unwrap_or("");
    let bits: Vec<bool> = perms.chars().map(|c| c == '1').collect();
    if bits.len() != 4 || !perms.chars().all(|c| c == '0' || c == '1') {
        return Err(err(
            line_no,
            format!("permissions {perms:?} are four 0/1 characters"),
        ));
    }
    let mut p = 0u8;
    for (bit, on) in [
        Permissions::ADMIN_READ,
        Permissions::ADMIN_WRITE,
        Permissions::PUBLIC_READ,
        Permissions::PUBLIC_WRITE,
    ]
    .into_iter()
    .zip(bits)
    {
        if on {
            p |= bit;
        }
    }
    let data: Bytes = match datatype.as_str() {
        "UTF8" => Bytes::copy_from_slice(data.as_bytes()),
        "ADMIN" => {
            let mut f = data.splitn(3, ':');
            let (Some(i), Some(bits), Some(h)) = (f.next(), f.next(), f.next()) else {
                return Err(err(line_no, "ADMIN data is index:bits:handle"));
            };
            let index: u32 = i
                .trim()
                .parse()
                .map_err(|_| err(line_no, "the admin index is not a number"))?;
            if bits.len() != 12 || !bits.chars().all(|c| c == '0' || c == '1') {
                return Err(err(line_no, "admin permissions are twelve 0/1 characters"));
            }
            // Least significant bit first: add handle, delete handle, …
            let mut perms = 0u16;
            for (n, c) in bits.chars().enumerate() {
                if c == '1' {
                    perms |= 1 << n;
                }
            }
            AdminRef {
                permissions: AdminPermissions(perms),
                handle: h.trim().to_owned(),
                index,
            }
            .encode()
        }
        "LIST" => {
            let mut refs = Vec::new();
            for item in data.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let (i, h) = item
                    .split_once(':')
                    .ok_or_else(|| err(line_no, "LIST items are index:handle"))?;
                refs.push(ValueReference {
                    handle: h.trim().to_owned(),
                    index: i
                        .trim()
                        .parse()
                        .map_err(|_| err(line_no, "a LIST index is not a number"))?,
                });
            }
            ValueList(refs).encode()
        }
        "FILE" => {
            let path = base.join(data.trim());
            Bytes::from(
                std::fs::read(&path)
                    .map_err(|e| err(line_no, format!("reading {}: {e}", path.display())))?,
            )
        }
        other => return Err(err(line_no, format!("unknown datatype {other:?}"))),
    };
    let mut v = HandleValue::new(index, value_type, data);
    v.permissions = Permissions(p);
    v.ttl_type = TtlType::RELATIVE;
    v.ttl = u32::try_from(ttl).unwrap_or(0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_file_parses() {
        let text = "AUTHENTICATE SECKEY:300:88.118.8/ADMIN\n\
                    s3cret\n\
                    \n\
                    CREATE 88.118.8/item-1\n\
                    100 HS_ADMIN 86400 1110 ADMIN 300:111111111111:0.NA/88.118.8\n\
                    1 URL 86400 1110 UTF8 https://example.cn/item 1\n\
                    2 HS_VLIST 86400 1110 LIST 300:88.118.8/A;301:88.118.8/B\n\
                    \n\
                    REMOVE 1,2:88.118.8/item-1\n\
                    DELETE 88.118.8/item-1\n";
        let ops = parse(text, Path::new(".")).unwrap();
        assert_eq!(ops.len(), 4);
        assert!(
            matches!(&ops[0].op, BatchOp::AuthSecret { index: 300, secret, .. } if secret == b"s3cret")
        );
        let BatchOp::Create(h, values) = &ops[1].op else {
            panic!("{:?}", ops[1])
        };
        assert_eq!(h, "88.118.8/item-1");
        assert_eq!(ops[1].line, 4);
        let admin = AdminRef::decode(&values[0].data).unwrap();
        assert_eq!(admin.permissions, AdminPermissions::ALL);
        assert_eq!(values[1].data, "https://example.cn/item 1");
        assert_eq!(values[1].permissions.0, 0x0E);
        assert_eq!(ValueList::decode(&values[2].data).unwrap().0.len(), 2);
        assert_eq!(
            ops[2].op,
            BatchOp::Remove("88.118.8/item-1".into(), vec![1, 2])
        );
        assert_eq!(ops[3].line, 10);
    }

    #[test]
    fn admin_bits_are_least_significant_first() {
        let v = value_line(
            "100 HS_ADMIN 86400 1110 ADMIN 300:110000000001:0.NA/88",
            1,
            Path::new("."),
        )
        .unwrap();
        let a = AdminRef::decode(&v.data).unwrap();
        assert_eq!(
            a.permissions.0,
            AdminPermissions::ADD_HANDLE
                | AdminPermissions::DELETE_HANDLE
                | AdminPermissions::LIST_HANDLES
        );
    }

    #[test]
    fn bad_lines_say_where() {
        for (text, line) in [
            ("CREATE 88/x\n1 URL x 1110 UTF8 a\n", 2),
            ("FROB 88/x\n", 1),
            ("REMOVE 88/x\n", 1),
            ("\nAUTHENTICATE SECKEY:x:88/A\npw\n", 2),
        ] {
            assert_eq!(
                parse(text, Path::new(".")).unwrap_err().line,
                line,
                "{text}"
            );
        }
    }
}
