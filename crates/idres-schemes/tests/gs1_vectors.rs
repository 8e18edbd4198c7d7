//! Every GS1 vector in `tests/data/gs1` (transcribed from the GS1 Barcode
//! Syntax Engine's unit tests, see its NOTICE) against idres's parsers.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use idres_schemes::gs1::dict::Dictionary;
use idres_schemes::gs1::dl::{self, DlOptions};
use idres_schemes::gs1::element;
use idres_schemes::gs1::lint;
use serde_json::Value;

fn data(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/gs1")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn options(v: &Value) -> DlOptions {
    let mut o = DlOptions::strict();
    if let Some(opts) = v.get("options").and_then(Value::as_object) {
        for (k, val) in opts {
            let on = val.as_bool().unwrap();
            match k.as_str() {
                "permitConvenienceAlphas" => o.convenience_alphas = on,
                "permitZeroSuppressedGTINinDLuris" => o.zero_suppressed_gtin = on,
                "permitUnknownAIs" => o.unknown_ais = on,
                "validate_UNKNOWN_AI_NOT_DL_ATTR" => o.unknown_ai_not_attribute = on,
                other => panic!("option {other} is not known to this test"),
            }
        }
    }
    o
}

fn caret(dict: &Dictionary, link: &dl::DigitalLink) -> String {
    // Unknown AIs (taken only with the option) are variable length.
    let es = link.element_string();
    let mut out = String::from("^");
    for (i, e) in es.0.iter().enumerate() {
        out.push_str(&e.ai);
        out.push_str(&e.value);
        if i + 1 < es.0.len() && !dict.predefined_length(&e.ai) {
            out.push('^');
        }
    }
    out
}

#[test]
fn digital_link_parse_vectors() {
    let dict = Dictionary::builtin();
    let v = data("dl-vectors.json");
    let mut failures = Vec::new();
    let mut count = 0;
    for set in ["parse", "parse_boundary"] {
        for case in v[set].as_array().unwrap() {
            count += 1;
            let uri = case["uri"].as_str().unwrap();
            let got = dl::parse(&dict, uri, options(case));
            match (case["ok"].as_bool().unwrap(), &got) {
                (true, Ok(link)) => {
                    if let Some(want) = case["element_string"].as_str() {
                        let have = caret(&dict, link);
                        if have != want {
                            failures.push(format!("{uri}: {have} != {want}"));
                        }
                    }
                }
                (true, Err(e)) => failures.push(format!("{uri}: refused ({e}), should parse")),
                (false, Ok(link)) => failures.push(format!(
                    "{uri}: parsed to {}, should be refused",
                    caret(&dict, link)
                )),
                (false, Err(e)) => {
                    assert!(
                        !e.to_string().is_empty(),
                        "{uri}: a refusal names its reason"
                    );
                    if let Some(note) = case.get("note").and_then(Value::as_str) {
                        if note.contains("Too many AIs") {
                            assert!(e.to_string().contains("Too many AIs"), "{uri}: {e}");
                        }
                    }
                }
            }
        }
    }
    assert_eq!(count, 121);
    assert!(
        failures.is_empty(),
        "{} of {count} vectors fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn digital_link_generate_vectors() {
    let dict = Dictionary::builtin();
    let v = data("dl-vectors.json");
    let mut failures = Vec::new();
    for case in v["generate"].as_array().unwrap() {
        let stem = case["stem"].as_str().unwrap_or("https://id.gs1.org");
        let ai_data = case["ai_data"].as_str().unwrap();
        let opts = options(case);
        let got = element::parse_bracketed_with(&dict, ai_data, opts.unknown_ais)
            .and_then(|es| dl::generate_with(&dict, stem, &es, opts));
        match (case["ok"].as_bool().unwrap(), got) {
            (true, Ok(uri)) if uri == case["uri"].as_str().unwrap() => {}
            (false, Err(_)) => {}
            (ok, got) => failures.push(format!(
                "{ai_data}: {got:?}, expected ok={ok} {}",
                case["uri"]
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn uri_unescape_vectors() {
    let v = data("dl-vectors.json");
    for case in v["uri_unescape"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        for (field, query) in [("path", false), ("query", true)] {
            let want = case[field].as_str().unwrap();
            match dl::unescape(input, query) {
                Ok(got) => assert_eq!(got, want, "{input:?} as {field}"),
                // A NUL is refused rather than cut at.
                Err(_) => assert!(input.contains("%00"), "{input:?} as {field}"),
            }
        }
    }
}

#[test]
fn valid_path_sequences() {
    let dict = Dictionary::builtin();
    let v = data("dl-vectors.json");
    for seq in v["valid_path_ai_sequences"].as_array().unwrap() {
        let seq: Vec<&str> = seq
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(dl::valid_sequence(&dict, &seq), "{seq:?} is a valid path");
    }
}

/// Every primary key's qualifiers in the dictionary's order are taken,
/// and any two of them swapped, or mixed across alternatives, are refused.
#[test]
fn qualifier_order_from_dictionary() {
    let dict = Dictionary::builtin();
    let mut checked = 0;
    for e in dict.entries().filter(|e| e.is_primary_key()) {
        let alts = e.dl_pkey.as_ref().unwrap();
        for alt in alts {
            let seq: Vec<&str> = std::iter::once(e.ai.as_str())
                .chain(alt.iter().map(String::as_str))
                .collect();
            assert!(dl::valid_sequence(&dict, &seq), "{seq:?}");
            for i in 1..seq.len() {
                for j in i + 1..seq.len() {
                    let mut bad = seq.clone();
                    bad.swap(i, j);
                    assert!(!dl::valid_sequence(&dict, &bad), "{bad:?} is out of order");
                    checked += 1;
                }
            }
        }
        if alts.len() > 1 {
            let (a, b) = (&alts[0], &alts[1]);
            if let (Some(x), Some(y)) = (a.last(), b.first()) {
                if !b.contains(x) && !a.contains(y) {
                    let mixed = [e.ai.as_str(), x.as_str(), y.as_str()];
                    assert!(
                        !dl::valid_sequence(&dict, &mixed),
                        "{mixed:?} mixes alternatives"
                    );
                }
            }
        }
        let not_a_qualifier = if e.qualifiers().any(|q| q == "99") {
            "98"
        } else {
            "99"
        };
        assert!(!dl::valid_sequence(
            &dict,
            &[e.ai.as_str(), not_a_qualifier]
        ));
    }
    assert!(checked >= 6);
    // And through the parser.
    let ok = "https://a/01/09521234543213/22/C/10/L/21/S";
    assert!(dl::parse(&dict, ok, DlOptions::strict()).is_ok());
    let swapped = "https://a/01/09521234543213/21/S/10/L";
    let err = dl::parse(&dict, swapped, DlOptions::strict())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid key and qualifier path"), "{err}");
}

#[test]
fn check_digit_vectors() {
    let v = data("check-digit-vectors.json");
    let mut checked = 0;
    for (name, lint_name) in [("mod10", "csum"), ("alpha_pair_8013", "csumalpha")] {
        for case in vectors(&v[name]) {
            let (value, ok) = case;
            let got = lint::lint(lint_name, &value);
            assert_eq!(got.is_ok(), ok, "{name} {value:?}: {got:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 14 + 44);
}

/// The vector records of one check, as (value, should pass).
fn vectors(v: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for case in v.as_array().unwrap_or_else(|| panic!("vector list: {v}")) {
        let value = case["value"].as_str().unwrap();
        let ok = case.get("ok").and_then(Value::as_bool).unwrap();
        out.push((value.to_owned(), ok));
    }
    out
}
