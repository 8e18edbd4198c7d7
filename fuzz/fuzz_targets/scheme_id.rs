//! Any bytes as an identifier of any scheme: a typed refusal or a reading
//! whose canonical form reads again to itself, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static SCHEMES: OnceLock<idres_schemes::Schemes> = OnceLock::new();

/// The default schemes plus an Ecode version, NIoT rules of both kinds and
/// a second configured scheme, so that every parser is reached.
fn schemes() -> idres_schemes::Schemes {
    let config: idres_schemes::SchemesConfig = serde_json::from_value(serde_json::json!({
        "ecode": [{"version": 5, "nsi_digits": 3, "md_max": 10, "chars": "alnum"}],
        "niot": [
            {"name": "gs1", "code": "NIOT.GS1.", "coding": "gs1", "resolution": "through"},
            {"name": "own", "code": "NIOT.X.", "pattern": "[0-9A-F]{4,32}"}
        ],
        "custom": [
            {"name": "cid", "pattern": "(?i)CID[:.]?([0-9A-Z]{4,64})", "template": "CID$1", "canonical": "upper"},
            {"name": "vin", "pattern": "[A-HJ-NPR-Z0-9]{17}"}
        ]
    }))
    .expect("the fuzz configuration reads");
    idres_schemes::Schemes::new(&config).expect("the fuzz configuration is valid")
}

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    let schemes = SCHEMES.get_or_init(schemes);
    let Ok(r) = schemes.recognise(id) else {
        return;
    };
    assert!(!r.canonical.is_empty());
    // A linked identifier's canonical form is itself a valid identifier
    // that reads to the same link levels.
    if r.scheme != "handle" && r.scheme != "oid" {
        let again = schemes
            .recognise(&r.canonical)
            .expect("a canonical form reads again");
        assert_eq!(again.levels, r.levels);
    }
    // A GS1 reading writes a Digital Link that parses to the same key.
    if let Some(g) = &r.gs1 {
        let uri = format!("https://id.example{}", g.dl_path());
        let back = schemes.gs1().parse_dl(&uri).expect("a written Digital Link parses");
        assert_eq!(back.key, g.key);
    }
});
