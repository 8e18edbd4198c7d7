//! The syntax dictionary's content checks ("linters") that idres applies
//! to a component of an AI value, and the GS1 check digits.
//!
//! Linters that depend on external code lists that idres does not carry
//! (package types, coupon layouts, ISO 3166 and ISO 4217 code lists) check
//! only their format: see [`UNCHECKED`]. `gcppos1`/`gcppos2` check that a
//! GS1 Company Prefix can begin there (four digits), as the reference
//! linters do without a prefix table.

/// Linters accepted without a check.
pub const UNCHECKED: &[&str] = &[
    "packagetype",
    "couponcode",
    "couponposoffer",
    "iso3166",
    "iso3166999",
    "iso3166alpha2",
    "iso4217",
];

/// The GS1 mod-10 check digit of `data` (every character but the check
/// digit itself), or `None` when a character is not a digit.
pub fn mod10(data: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (i, b) in data.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        let d = u32::from(b - b'0');
        sum += if i % 2 == 0 { 3 * d } else { d };
    }
    Some(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// Whether a whole numeric value ends with its correct mod-10 check digit.
pub fn mod10_ok(value: &str) -> bool {
    let b = value.as_bytes();
    match b.split_last() {
        Some((&last, data)) => mod10(data) == Some(last),
        None => false,
    }
}

const CSET82: &[u8] =
    b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
const CSET32: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// The check character pair of an AI (8013) value without its last two
/// characters (GS1 General Specifications 7.9.5), or `None` when a
/// character is outside character set 82 or the value is too long.
pub fn alpha_pair(data: &[u8]) -> Option<[u8; 2]> {
    if data.len() > 97 {
        return None;
    }
    let primes = primes(data.len());
    let mut sum = 0u32;
    for (i, b) in data.iter().rev().enumerate() {
        let v = CSET82.iter().position(|c| c == b)? as u32;
        sum += v * primes[i];
    }
    let sum = sum % 1021;
    Some([CSET32[(sum >> 5) as usize], CSET32[(sum & 31) as usize]])
}

fn primes(n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut c = 2u32;
    while out.len() < n {
        if (2..c).take_while(|d| d * d <= c).all(|d| c % d != 0) {
            out.push(c);
        }
        c += 1;
    }
    out
}

fn days_in_month(yy: u32, mm: u32) -> u32 {
    match mm {
        2 if yy % 4 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn date(s: &str, year_digits: usize, day_zero: bool) -> Result<(), String> {
    if s.len() != year_digits + 4 {
        return Err("a date must have the form YYMMDD".into());
    }
    let (y, m, d) = (
        num(&s[..year_digits]),
        num(&s[year_digits..year_digits + 2]),
        num(&s[year_digits + 2..]),
    );
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err("a date must be digits".into());
    };
    if !(1..=12).contains(&m) {
        return Err(format!("month {m:02} does not exist"));
    }
    // Two-digit years: 72-99 are 19YY, the rest 20YY.
    let year = match year_digits {
        2 if y >= 72 => 1900 + y,
        2 => 2000 + y,
        _ => y,
    };
    let leap_year = if year % 400 == 0 {
        0
    } else if year % 100 == 0 {
        1
    } else {
        year % 4
    };
    if d == 0 && day_zero {
        return Ok(());
    }
    if d == 0 || d > days_in_month(leap_year, m) {
        return Err(format!("day {d:02} does not exist in month {m:02}"));
    }
    Ok(())
}

fn range(s: &str, max: u32, what: &str) -> Result<(), String> {
    match num(s) {
        Some(v) if v <= max => Ok(()),
        _ => Err(format!("{what} {s:?} is out of range")),
    }
}

fn gcp_at(s: &str) -> Result<(), String> {
    match s.get(..4) {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        Some(_) => Err("a GS1 Company Prefix must start with four digits".into()),
        None => Err("too short to hold a GS1 Company Prefix".into()),
    }
}

/// ISO 13616 IBAN: country letters, length, and the mod-97 check.
fn iban(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.len() <= 10 || b.len() > 34 {
        return Err("an IBAN has 11 to 34 characters".into());
    }
    if !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return Err("an IBAN is a country code then digits and capital letters".into());
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    match rem {
        1 => Ok(()),
        _ => Err("the IBAN's check digits are wrong".into()),
    }
}

/// Applies one linter to a component's content. `Err` says what is wrong.
pub fn lint(name: &str, s: &str) -> Result<(), String> {
    match name {
        "csum" => {
            if mod10_ok(s) {
                Ok(())
            } else {
                let want = s
                    .as_bytes()
                    .split_last()
                    .and_then(|(_, d)| mod10(d))
                    .map(|c| format!(" (expected {})", c as char))
                    .unwrap_or_default();
                Err(format!("the check digit is wrong{want}"))
            }
        }
        "csumalpha" => {
            let b = s.as_bytes();
            if b.len() < 2 {
                return Err("too short for its check character pair".into());
            }
            if b.len() >= 100 {
                return Err("too long for its check character pair".into());
            }
            let (data, pair) = b.split_at(b.len() - 2);
            match alpha_pair(data) {
                Some(p) if p == pair => Ok(()),
                Some(p) => Err(format!(
                    "the check character pair is wrong (expected {}{})",
                    p[0] as char, p[1] as char
                )),
                None => Err("a character is outside character set 82".into()),
            }
        }
        "yymmdd" => date(s, 2, false),
        "yymmd0" => date(s, 2, true),
        "yyyymmdd" => date(s, 4, false),
        "hhmi" => {
            if s.len() != 4 {
                return Err("a time must have the form HHMM".into());
            }
            range(&s[..2], 23, "hour")?;
            range(&s[2..], 59, "minute")
        }
        "hh" => range(s, 23, "hour"),
        "mi" => range(s, 59, "minute"),
        "ss" => range(s, 59, "second"),
        "nonzero" => match s.bytes().all(|b| b == b'0') {
            true => Err("must not be zero".into()),
            false => Ok(()),
        },
        "zero" => match s == "0" {
            true => Ok(()),
            false => Err("must be 0".into()),
        },
        "yesno" => match s {
            "0" | "1" => Ok(()),
            _ => Err("must be 0 or 1".into()),
        },
        "winding" => match s {
            "0" | "1" | "9" => Ok(()),
            _ => Err("winding direction must be 0, 1 or 9".into()),
        },
        "iso5218" => match s {
            "0" | "1" | "2" | "9" => Ok(()),
            _ => Err("sex code must be 0, 1, 2 or 9 (ISO/IEC 5218)".into()),
        },
        "nozeroprefix" => match s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
            true => Err("must be digits not starting with 0".into()),
            false => Ok(()),
        },
        "hasnondigit" => match s.bytes().all(|b| b.is_ascii_digit()) {
            true => Err("must contain a character that is not a digit".into()),
            false => Ok(()),
        },
        "hyphen" => match s.bytes().all(|b| b == b'-') {
            true => Ok(()),
            false => Err("must be hyphens".into()),
        },
        "importeridx" => match s.len() == 1
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            true => Ok(()),
            false => Err("importer index must be one of 0-9, A-Z, a-z, - or _".into()),
        },
        "pieceoftotal" => {
            if s.len() % 2 != 0 {
                return Err("piece and total must have the same length".into());
            }
            let (p, t) = s.split_at(s.len() / 2);
            match (num(p), num(t)) {
                (Some(p), Some(t)) if p >= 1 && t >= 1 && p <= t => Ok(()),
                _ => Err("piece number must be between 1 and the total".into()),
            }
        }
        "posinseqslash" => {
            let Some((p, t)) = s.split_once('/') else {
                return Err("must have the form position/total".into());
            };
            if p.starts_with('0') || t.starts_with('0') {
                return Err("position and total must not start with 0".into());
            }
            match (num(p), num(t)) {
                (Some(p), Some(t)) if p >= 1 && p <= t => Ok(()),
                _ => Err("position must be between 1 and the total".into()),
            }
        }
        "pcenc" => {
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    if i + 2 >= b.len()
                        || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
                    {
                        return Err("a % must be followed by two hexadecimal digits".into());
                    }
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Ok(())
        }
        "latitude" => range(s, 1_800_000_000, "latitude"),
        "longitude" => range(s, 3_600_000_000, "longitude"),
        "mediatype" => match num(s) {
            Some(v) if (1..=10).contains(&v) || (80..=99).contains(&v) => Ok(()),
            _ => Err(format!("media type {s:?} is not defined")),
        },
        // A GS1 Company Prefix begins at this component: it cannot be
        // checked without the prefix length table.
        "gcppos1" => gcp_at(s),
        "gcppos2" => match s.get(1..) {
            Some(rest) if !rest.is_empty() => gcp_at(rest),
            _ => Err("too short to hold a GS1 Company Prefix".into()),
        },
        "iban" => iban(s),
        "key" | "keyoff1" => Ok(()),
        n if UNCHECKED.contains(&n) => Ok(()),
        other => Err(format!("unknown content check {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits() {
        assert!(mod10_ok("09521234543213"));
        assert!(!mod10_ok("09521234543214"));
        assert_eq!(
            lint("csum", "09521234543214").unwrap_err(),
            "the check digit is wrong (expected 3)"
        );
        assert!(lint("yymmd0", "201200").is_ok());
        assert!(lint("yymmdd", "200229").is_ok());
        assert!(lint("yymmdd", "210229").is_err());
        assert!(lint("pcenc", "a%2").is_err());
        assert!(lint("pcenc", "a%2F").is_ok());
    }
}
