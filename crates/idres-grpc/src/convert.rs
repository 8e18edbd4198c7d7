//! Conversions between the proto messages and the model.

use bytes::Bytes;
use idres_model::{validate_values, HandleValue, Permissions, TtlType, ValueReference};

use crate::error::{ServiceError, ServiceResult};
use crate::pb;

/// A value from a request; `field` is the request field holding the list
/// (`values`), used in errors as `values[2].type`.
pub fn value_from_pb(
    v: &pb::HandleValue,
    field: &str,
    i: usize,
    now: u32,
) -> ServiceResult<HandleValue> {
    let f = |name: &str| format!("{field}[{i}].{name}");
    if v.index == 0 {
        return Err(ServiceError::invalid(f("index"), "must be greater than 0"));
    }
    if v.r#type.is_empty() {
        return Err(ServiceError::invalid(f("type"), "required"));
    }
    if v.r#type.len() > idres_model::value::MAX_TYPE_LEN {
        return Err(ServiceError::invalid(f("type"), "longer than 256 bytes"));
    }
    if v.data.len() > idres_model::value::MAX_VALUE_DATA {
        return Err(ServiceError::invalid(f("data"), "longer than 256 KiB"));
    }
    if v.permissions > 0x0F {
        return Err(ServiceError::invalid(
            f("permissions"),
            "only bits 0x0F are defined",
        ));
    }
    let ttl_type = match pb::TtlType::try_from(v.ttl_type) {
        Ok(pb::TtlType::Relative) => TtlType::RELATIVE,
        Ok(pb::TtlType::Absolute) => TtlType::ABSOLUTE,
        Err(_) => return Err(ServiceError::invalid(f("ttl_type"), "unknown TTL type")),
    };
    if v.references.len() > idres_model::value::MAX_REFERENCES {
        return Err(ServiceError::invalid(f("references"), "more than 1024"));
    }
    Ok(HandleValue {
        index: v.index,
        value_type: v.r#type.clone(),
        data: Bytes::copy_from_slice(&v.data),
        ttl_type,
        ttl: if v.ttl == 0 && ttl_type == TtlType::RELATIVE {
            idres_model::value::DEFAULT_TTL
        } else {
            v.ttl
        },
        permissions: if v.permissions == 0 {
            Permissions::DEFAULT
        } else {
            Permissions(v.permissions as u8)
        },
        timestamp: if v.timestamp == 0 { now } else { v.timestamp },
        references: v
            .references
            .iter()
            .map(|r| ValueReference {
                handle: r.handle.clone(),
                index: r.index,
            })
            .collect(),
    })
}

/// Every value of a request, validated together (unique indexes, typed
/// data of reserved types).
pub fn values_from_pb(
    values: &[pb::HandleValue],
    field: &str,
    now: u32,
) -> ServiceResult<Vec<HandleValue>> {
    if values.is_empty() {
        return Err(ServiceError::invalid(
            field,
            "at least one value is required",
        ));
    }
    if values.len() > idres_model::value::MAX_VALUES {
        return Err(ServiceError::invalid(field, "more than 4096 values"));
    }
    let out = values
        .iter()
        .enumerate()
        .map(|(i, v)| value_from_pb(v, field, i, now))
        .collect::<ServiceResult<Vec<_>>>()?;
    validate_values(&out).map_err(|e| ServiceError::invalid(field, e))?;
    Ok(out)
}

/// A value for a reply.
pub fn value_to_pb(v: &HandleValue) -> pb::HandleValue {
    pb::HandleValue {
        index: v.index,
        r#type: v.value_type.clone(),
        data: v.data.to_vec(),
        ttl_type: if v.ttl_type == TtlType::ABSOLUTE {
            pb::TtlType::Absolute as i32
        } else {
            pb::TtlType::Relative as i32
        },
        ttl: v.ttl,
        permissions: u32::from(v.permissions.0),
        timestamp: v.timestamp,
        references: v
            .references
            .iter()
            .map(|r| pb::ValueReference {
                handle: r.handle.clone(),
                index: r.index,
            })
            .collect(),
    }
}
