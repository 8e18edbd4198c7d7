//! Any bytes as an identifier of any scheme: a typed refusal or a reading
//! whose canonical form reads again to itself, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static SCHEMES: OnceLock<idres_schemes::Schemes> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    let schemes = SCHEMES.get_or_init(idres_schemes::Schemes::default);
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
