//! Any bytes as a line of the JSON Lines import format: a typed error or a
//! record that the store's rules accept, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((_, values)) = idres_model::json::record_from_line(line, 1_700_000_000) {
        assert!(!values.is_empty());
        assert!(
            idres_model::validate_record(&values, idres_model::value::RECORD_BYTES_CEILING).is_ok()
        );
        // What was read writes back and reads again to the same values.
        let again = idres_model::json::values_from_json(
            &idres_model::json::values_to_json(&values),
            1_700_000_000,
        )
        .expect("written values read back");
        assert_eq!(again, values);
    }
});
