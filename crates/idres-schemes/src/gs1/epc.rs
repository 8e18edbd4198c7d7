//! EPC pure-identity URNs (GS1 EPC Tag Data Standard §6): `sgtin`,
//! `sscc` and `sgln`, turned into the element string they stand for.

use super::element::{Element, ElementString};
use super::lint::mod10;
use super::Gs1Error;

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn with_check(body: &str) -> Result<String, Gs1Error> {
    let c =
        mod10(body.as_bytes()).ok_or_else(|| Gs1Error::Epc("a key part is not digits".into()))?;
    Ok(format!("{body}{}", c as char))
}

/// Decodes the EPC URN escapes (`%xx`) of a serial.
fn unescape(s: &str) -> Result<String, Gs1Error> {
    super::dl::unescape(s, false).map_err(|_| Gs1Error::Epc("a %-escape is invalid".into()))
}

/// Parses `urn:epc:id:{sgtin|sscc|sgln}:…`.
pub fn parse(urn: &str) -> Result<ElementString, Gs1Error> {
    let rest = &urn[11..];
    let (kind, body) = rest
        .split_once(':')
        .ok_or_else(|| Gs1Error::Epc("no scheme after urn:epc:id:".into()))?;
    let parts: Vec<&str> = body.split('.').collect();
    let el = |ai: &str, value: String| Element {
        ai: ai.to_owned(),
        value,
    };
    match kind.to_ascii_lowercase().as_str() {
        "sgtin" => {
            let [cp, item, serial] = parts[..] else {
                return Err(Gs1Error::Epc(
                    "sgtin takes CompanyPrefix.IndicatorItemRef.Serial".into(),
                ));
            };
            if !digits(cp)
                || !digits(item)
                || cp.len() + item.len() != 13
                || !(6..=12).contains(&cp.len())
            {
                return Err(Gs1Error::Epc(
                    "sgtin's company prefix (6 to 12 digits) and indicator with item reference must have 13 digits together".into(),
                ));
            }
            if serial.is_empty() {
                return Err(Gs1Error::Epc("sgtin's serial is empty".into()));
            }
            let gtin = with_check(&format!("{}{cp}{}", &item[..1], &item[1..]))?;
            Ok(ElementString(vec![
                el("01", gtin),
                el("21", unescape(serial)?),
            ]))
        }
        "sscc" => {
            let [cp, serial] = parts[..] else {
                return Err(Gs1Error::Epc(
                    "sscc takes CompanyPrefix.ExtensionSerialRef".into(),
                ));
            };
            if !digits(cp)
                || !digits(serial)
                || cp.len() + serial.len() != 17
                || !(6..=12).contains(&cp.len())
            {
                return Err(Gs1Error::Epc(
                    "sscc's company prefix (6 to 12 digits) and extension with serial reference must have 17 digits together".into(),
                ));
            }
            let sscc = with_check(&format!("{}{cp}{}", &serial[..1], &serial[1..]))?;
            Ok(ElementString(vec![el("00", sscc)]))
        }
        "sgln" => {
            let [cp, loc, ext] = parts[..] else {
                return Err(Gs1Error::Epc(
                    "sgln takes CompanyPrefix.LocationRef.Extension".into(),
                ));
            };
            if !digits(cp)
                || !(loc.is_empty() || digits(loc))
                || cp.len() + loc.len() != 12
                || !(6..=12).contains(&cp.len())
            {
                return Err(Gs1Error::Epc(
                    "sgln's company prefix (6 to 12 digits) and location reference must have 12 digits together".into(),
                ));
            }
            let gln = with_check(&format!("{cp}{loc}"))?;
            let mut out = vec![el("414", gln)];
            if ext != "0" && !ext.is_empty() {
                out.push(el("254", unescape(ext)?));
            }
            Ok(ElementString(out))
        }
        other => Err(Gs1Error::Epc(format!(
            "EPC scheme {other:?} is not taken (sgtin, sscc, sgln are)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgtin_to_gtin() {
        let es = parse("urn:epc:id:sgtin:0614141.812345.6789").unwrap();
        assert_eq!(es.0[0].value, "80614141123458");
        assert_eq!(es.0[1].value, "6789");
        let es = parse("urn:epc:id:sscc:0614141.1234567890").unwrap();
        assert_eq!(es.0[0].value, "106141412345678908");
        let es = parse("urn:epc:id:sgln:0614141.12345.400").unwrap();
        assert_eq!(es.0[0].value, "0614141123452");
        assert_eq!(es.0[1].value, "400");
        assert!(parse("urn:epc:id:sgtin:0614141.81234.6789").is_err());
    }
}
