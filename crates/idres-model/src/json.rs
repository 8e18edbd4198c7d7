//! The JSON shape of records, as in the Handle.Net REST API.
//!
//! A record is `{"handle":"88.118.8/X","values":[…]}`; each value is
//! `{"index":1,"type":"URL","data":{"format":"string","value":"…"},
//! "ttl":86400,"timestamp":"2026-01-01T00:00:00Z"}` with `permissions`,
//! `ttlType` and `references` written only when they differ from the
//! defaults. Output always writes `data` as `{format, value}`; input also
//! takes a bare string as `data` and numbers written as strings.
//!
//! Formats: `string` (UTF-8), `base64`, `hex`, `admin` (HS_ADMIN as
//! `{"handle","index","permissions"}`), `vlist` (HS_VLIST as a list of
//! `{"handle","index"}`). Output picks `admin`/`vlist` for those types,
//! `string` for UTF-8 data without control characters, `base64` otherwise,
//! so that export and import round-trip exactly.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::typed::{AdminPermissions, AdminRef, ValueList};
use crate::value::{types, HandleValue, Permissions, TtlType, ValueReference, DEFAULT_TTL};

/// Why a JSON value could not be read as a handle value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JsonError {
    /// Where in the document, such as `values[2].data.value`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl JsonError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error placed under `outer`.
    pub fn within(self, outer: &str) -> Self {
        Self {
            path: format!("{outer}.{}", self.path),
            reason: self.reason,
        }
    }
}

/// Renders a value as REST JSON.
pub fn value_to_json(v: &HandleValue) -> Value {
    let mut m = Map::new();
    m.insert("index".into(), json!(v.index));
    m.insert("type".into(), json!(v.value_type));
    m.insert("data".into(), data_to_json(&v.value_type, &v.data));
    if v.ttl_type != TtlType::RELATIVE {
        m.insert("ttlType".into(), json!(v.ttl_type.0));
    }
    m.insert("ttl".into(), json!(v.ttl));
    m.insert("timestamp".into(), json!(format_timestamp(v.timestamp)));
    if v.permissions != Permissions::DEFAULT {
        m.insert(
            "permissions".into(),
            json!(format!("{:04b}", v.permissions.0 & 0x0F)),
        );
    }
    if !v.references.is_empty() {
        m.insert(
            "references".into(),
            Value::Array(
                v.references
                    .iter()
                    .map(|r| json!({"handle": r.handle, "index": r.index}))
                    .collect(),
            ),
        );
    }
    Value::Object(m)
}

/// Renders a list of values.
pub fn values_to_json(values: &[HandleValue]) -> Value {
    Value::Array(values.iter().map(value_to_json).collect())
}

/// `{format, value}` for the data of a value of type `value_type`.
pub fn data_to_json(value_type: &str, data: &[u8]) -> Value {
    if value_type.eq_ignore_ascii_case(types::HS_ADMIN) {
        if let Ok(a) = AdminRef::decode(data) {
            return json!({"format": "admin", "value": {
                "handle": a.handle, "index": a.index,
                "permissions": a.permissions.to_bit_string()}});
        }
    }
    if value_type.eq_ignore_ascii_case(types::HS_VLIST) {
        if let Ok(l) = ValueList::decode(data) {
            let refs: Vec<Value> =
                l.0.iter()
                    .map(|r| json!({"handle": r.handle, "index": r.index}))
                    .collect();
            return json!({"format": "vlist", "value": refs});
        }
    }
    match std::str::from_utf8(data) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            json!({"format": "string", "value": s})
        }
        _ => {
            json!({"format": "base64", "value": base64::engine::general_purpose::STANDARD.encode(data)})
        }
    }
}

/// Reads one value from REST JSON. `now` fills in a missing timestamp.
pub fn value_from_json(v: &Value, now: u32) -> Result<HandleValue, JsonError> {
    let obj = v
        .as_object()
        .ok_or_else(|| JsonError::new("", "a value must be an object"))?;
    let index = u32_field(obj, "index")?.ok_or_else(|| JsonError::new("index", "missing"))?;
    let value_type = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| JsonError::new("type", "missing or not a string"))?
        .to_owned();
    let data = match obj.get("data") {
        None | Some(Value::Null) => Bytes::new(),
        Some(d) => data_from_json(d).map_err(|e| e.within("data"))?,
    };
    let ttl_type = TtlType(
        u8::try_from(u32_field(obj, "ttlType")?.unwrap_or(0))
            .map_err(|_| JsonError::new("ttlType", "must be 0 or 1"))?,
    );
    let ttl = u32_field(obj, "ttl")?.unwrap_or(DEFAULT_TTL);
    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => parse_timestamp(s)
            .ok_or_else(|| JsonError::new("timestamp", format!("{s:?} is not an RFC 3339 time")))?,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| JsonError::new("timestamp", "out of range"))?,
        Some(_) => return Err(JsonError::new("timestamp", "must be a string")),
    };
    let permissions = match obj.get("permissions") {
        None | Some(Value::Null) => Permissions::DEFAULT,
        Some(Value::String(s)) if s.len() == 4 && s.bytes().all(|b| b == b'0' || b == b'1') => {
            Permissions(u8::from_str_radix(s, 2).unwrap_or(0x0E))
        }
        Some(_) => {
            return Err(JsonError::new(
                "permissions",
                "must be a 4-character bit string such as \"1110\"",
            ))
        }
    };
    let references = match obj.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(r) => refs_from_json(r).map_err(|e| e.within("references"))?,
    };
    Ok(HandleValue {
        index,
        value_type,
        data,
        ttl_type,
        ttl,
        permissions,
        timestamp,
        references,
    })
}

/// Reads a list of values.
pub fn values_from_json(v: &Value, now: u32) -> Result<Vec<HandleValue>, JsonError> {
    let arr = v
        .as_array()
        .ok_or_else(|| JsonError::new("values", "must be a list"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| value_from_json(v, now).map_err(|e| e.within(&format!("values[{i}]"))))
        .collect()
}

/// Reads `data`: a bare string, or `{format, value}`.
pub fn data_from_json(d: &Value) -> Result<Bytes, JsonError> {
    let (format, value) = match d {
        Value::String(s) => return Ok(Bytes::copy_from_slice(s.as_bytes())),
        Value::Object(o) => (
            o.get("format").and_then(Value::as_str).unwrap_or("string"),
            o.get("value")
                .ok_or_else(|| JsonError::new("value", "missing"))?,
        ),
        _ => return Err(JsonError::new("", "must be a string or {format, value}")),
    };
    let as_str = || {
        value
            .as_str()
            .ok_or_else(|| JsonError::new("value", format!("must be a string for format {format}")))
    };
    match format {
        "string" => Ok(Bytes::copy_from_slice(as_str()?.as_bytes())),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(as_str()?)
            .map(Bytes::from)
            .map_err(|e| JsonError::new("value", format!("bad base64: {e}"))),
        "hex" => hex::decode(as_str()?)
            .map(Bytes::from)
            .map_err(|e| JsonError::new("value", format!("bad hex: {e}"))),
        "admin" => {
            let o = value
                .as_object()
                .ok_or_else(|| JsonError::new("value", "admin data must be an object"))?;
            let handle = o
                .get("handle")
                .and_then(Value::as_str)
                .ok_or_else(|| JsonError::new("value.handle", "missing"))?
                .to_owned();
            let index = u32_field(o, "index")
                .map_err(|e| e.within("value"))?
                .ok_or_else(|| JsonError::new("value.index", "missing"))?;
            let permissions = match o.get("permissions") {
                None => AdminPermissions::ALL,
                Some(Value::String(s)) => {
                    AdminPermissions::from_bit_string(s).ok_or_else(|| {
                        JsonError::new("value.permissions", "must be a 12-character bit string")
                    })?
                }
                Some(_) => {
                    return Err(JsonError::new(
                        "value.permissions",
                        "must be a 12-character bit string",
                    ))
                }
            };
            Ok(AdminRef {
                permissions,
                handle,
                index,
            }
            .encode())
        }
        "vlist" => Ok(ValueList(refs_from_json(value).map_err(|e| e.within("value"))?).encode()),
        other => Err(JsonError::new(
            "format",
            format!("unknown format {other:?} (string, base64, hex, admin, vlist)"),
        )),
    }
}

fn refs_from_json(v: &Value) -> Result<Vec<ValueReference>, JsonError> {
    let arr = v
        .as_array()
        .ok_or_else(|| JsonError::new("", "must be a list"))?;
    arr.iter()
        .enumerate()
        .map(|(i, r)| {
            let o = r
                .as_object()
                .ok_or_else(|| JsonError::new(format!("[{i}]"), "must be an object"))?;
            let handle = o
                .get("handle")
                .and_then(Value::as_str)
                .ok_or_else(|| JsonError::new(format!("[{i}].handle"), "missing"))?
                .to_owned();
            let index = u32_field(o, "index")
                .map_err(|e| JsonError::new(format!("[{i}].{}", e.path), e.reason))?
                .unwrap_or(0);
            Ok(ValueReference { handle, index })
        })
        .collect()
}

/// A non-negative integer field, written as a number or a string of digits.
fn u32_field(o: &Map<String, Value>, name: &str) -> Result<Option<u32>, JsonError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                JsonError::new(name, format!("{n} is not an integer in 0..=4294967295"))
            }),
        Some(Value::String(s)) => s
            .parse::<u32>()
            .map(Some)
            .map_err(|_| JsonError::new(name, format!("{s:?} is not an integer"))),
        Some(_) => Err(JsonError::new(name, "must be an integer")),
    }
}

/// RFC 3339 in UTC with seconds, as the REST API writes timestamps.
pub fn format_timestamp(t: u32) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(u64::from(t))).to_string()
}

/// Parses an RFC 3339 timestamp into Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<u32> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    u32::try_from(secs).ok()
}

/// Reads one line of the JSON Lines import format:
/// `{"handle": "...", "values": [...]}` or `{"oid": "1.2.156...", ...}`
/// (an OID's record is the handle `OID/<oid>`), with the rules every
/// write path applies ([`crate::validate_record`]) checked early so that
/// the error can name the line.
pub fn record_from_line(line: &str, now: u32) -> Result<(crate::Handle, Vec<HandleValue>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| "a record must be a JSON object".to_owned())?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "handle" | "oid" | "values" | "responseCode") {
            return Err(format!("unknown field {key:?}"));
        }
    }
    let handle = match (obj.get("handle"), obj.get("oid")) {
        (Some(_), Some(_)) => return Err("give \"handle\" or \"oid\", not both".into()),
        (Some(Value::String(s)), None) => {
            crate::Handle::parse(s).map_err(|e| format!("handle: {e}"))?
        }
        (None, Some(Value::String(s))) => crate::Oid::parse(s)
            .map_err(|e| format!("oid: {e}"))?
            .to_handle(),
        (Some(_), None) => return Err("handle: must be a string".into()),
        (None, Some(_)) => return Err("oid: must be a string".into()),
        (None, None) => return Err("missing \"handle\" or \"oid\"".into()),
    };
    let values = match obj.get("values") {
        Some(v) => values_from_json(v, now).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    crate::validate_record(&values, crate::value::RECORD_BYTES_CEILING)
        .map_err(|e| e.to_string())?;
    Ok((handle, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_and_defaults_round_trip() {
        let mut v = HandleValue::new(1, "URL", "https://example.cn/p");
        v.timestamp = 1_767_225_600;
        let j = value_to_json(&v);
        assert_eq!(
            j,
            json!({"index":1,"type":"URL","data":{"format":"string","value":"https://example.cn/p"},
                   "ttl":86400,"timestamp":"2026-01-01T00:00:00Z"})
        );
        assert_eq!(value_from_json(&j, 0).unwrap(), v);
    }

    #[test]
    fn binary_admin_vlist_and_odd_fields_round_trip() {
        let mut vals = vec![
            HandleValue::new(2, "BIN", vec![0u8, 1, 2, 255]),
            HandleValue::new(
                100,
                "HS_ADMIN",
                AdminRef {
                    permissions: AdminPermissions(0x7F3),
                    handle: "0.NA/88".into(),
                    index: 200,
                }
                .encode(),
            ),
            HandleValue::new(
                200,
                "HS_VLIST",
                ValueList(vec![ValueReference {
                    handle: "88/A".into(),
                    index: 300,
                }])
                .encode(),
            ),
        ];
        vals[0].permissions = Permissions(0x0C);
        vals[0].ttl_type = TtlType::ABSOLUTE;
        vals[0].references.push(ValueReference {
            handle: "88/B".into(),
            index: 1,
        });
        let j = values_to_json(&vals);
        assert_eq!(j[0]["data"]["format"], "base64");
        assert_eq!(j[0]["permissions"], "1100");
        assert_eq!(j[1]["data"]["format"], "admin");
        assert_eq!(j[1]["data"]["value"]["permissions"], "011111110011");
        assert_eq!(j[2]["data"]["format"], "vlist");
        let back = values_from_json(&j, 0).unwrap();
        let mut expected = vals.clone();
        for v in &mut expected {
            v.timestamp = 0;
        }
        assert_eq!(back, expected);
    }

    #[test]
    fn lenient_input() {
        let j = json!({"index":"100","type":"HS_ADMIN",
            "data":{"format":"admin","value":{"handle":"0.NA/88","index":"200","permissions":"011111111111"}}});
        let v = value_from_json(&j, 5).unwrap();
        assert_eq!(v.timestamp, 5);
        assert_eq!(AdminRef::decode(&v.data).unwrap().index, 200);
        let j = json!({"index":1,"type":"URL","data":"http://x"});
        assert_eq!(&value_from_json(&j, 0).unwrap().data[..], b"http://x");
        let j = json!({"index":1,"type":"X","data":{"format":"hex","value":"00ff"}});
        assert_eq!(&value_from_json(&j, 0).unwrap().data[..], &[0, 255]);
    }

    #[test]
    fn errors_name_the_field() {
        let j = json!([{"index":1,"type":"URL","data":{"format":"base64","value":"!!"}}]);
        let e = values_from_json(&j, 0).unwrap_err();
        assert_eq!(e.path, "values[0].data.value");
        let j = json!([{"type":"URL"}]);
        assert_eq!(values_from_json(&j, 0).unwrap_err().path, "values[0].index");
        let j = json!([{"index":1,"type":"URL","data":{"format":"rot13","value":"x"}}]);
        assert_eq!(
            values_from_json(&j, 0).unwrap_err().path,
            "values[0].data.format"
        );
    }
}
