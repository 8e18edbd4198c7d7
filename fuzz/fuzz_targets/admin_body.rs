//! Any bytes as the JSON body of an administrative HTTP request (the
//! Handle.Net REST shape `{"values": [...]}` or a bare list): decoding and
//! the record rules return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let values = body.get("values").unwrap_or(&body);
    if let Ok(values) = idres_model::json::values_from_json(values, 1_700_000_000) {
        let _ = idres_model::validate_record(&values, idres_model::value::MAX_RECORD_BYTES);
    }
    if let Some(v) = body.get("value") {
        let _ = idres_model::json::value_from_json(v, 1_700_000_000);
    }
});
