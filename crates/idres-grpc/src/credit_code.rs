//! The unified social credit code (统一社会信用代码) of GB 32100-2015.
//!
//! 18 characters from a 31-character alphabet (`0-9`, `A-H`, `J-N`, `P-R`,
//! `T-U`, `W-Y`: no I, O, S, V, Z). The 18th is a check character: with
//! each of the first 17 characters worth its position in the alphabet and
//! weighted by 3^(i-1) mod 31, the check value is 31 minus the weighted sum
//! mod 31, 31 being written as 0.

/// The alphabet, in value order.
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Weights of positions 1 to 17.
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Why a string is not a valid credit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreditCodeError {
    /// Not 18 characters.
    #[error("must be 18 characters, not {0}")]
    Length(usize),
    /// A character outside the alphabet.
    #[error("character {character:?} at position {position} is not in 0-9 A-H J-N P-R T-U W-Y")]
    Character {
        /// 1-based position.
        position: usize,
        /// The character.
        character: char,
    },
    /// The check character does not match.
    #[error("check character is {found:?}, GB 32100 gives {expected:?}")]
    Check {
        /// The 18th character as written.
        found: char,
        /// What it should be.
        expected: char,
    },
}

fn value_of(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|a| *a == c).map(|p| p as u32)
}

/// The check character for the first 17 characters of a code, if they are
/// all in the alphabet.
pub fn check_character(first17: &str) -> Option<char> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (c, w) in first17.bytes().zip(WEIGHTS) {
        sum += value_of(c)? * w;
    }
    let check = (31 - sum % 31) % 31;
    ALPHABET.get(check as usize).map(|b| char::from(*b))
}

/// Validates a code (upper case, as issued).
pub fn validate(code: &str) -> Result<(), CreditCodeError> {
    let n = code.chars().count();
    if n != 18 {
        return Err(CreditCodeError::Length(n));
    }
    for (i, c) in code.chars().enumerate() {
        if !c.is_ascii() || value_of(c as u8).is_none() {
            return Err(CreditCodeError::Character {
                position: i + 1,
                character: c,
            });
        }
    }
    let expected = check_character(&code[..17]).unwrap_or('?');
    let found = code[17..].chars().next().unwrap_or('?');
    if found != expected {
        return Err(CreditCodeError::Check { found, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_codes_verify() {
        // Codes printed on public business licences and registries.
        for code in [
            "91350100M000100Y43",
            "91110000802100433B",
            "911100001000128855",
            "91440300708461136T",
            "91330100716105852F",
        ] {
            assert_eq!(validate(code), Ok(()), "{code}");
        }
    }

    #[test]
    fn errors_say_what() {
        assert_eq!(
            validate("91350100M000100Y4"),
            Err(CreditCodeError::Length(17))
        );
        assert_eq!(
            validate("91350100M000100Y44"),
            Err(CreditCodeError::Check {
                found: '4',
                expected: '3'
            })
        );
        assert_eq!(
            validate("91350100I000100Y43"),
            Err(CreditCodeError::Character {
                position: 9,
                character: 'I'
            })
        );
        assert!(validate("91350100m000100Y43").is_err());
        assert!(validate("９1350100M000100Y43").is_err());
    }

    #[test]
    fn every_check_value_round_trips() {
        for c in ALPHABET.iter().take(31) {
            let body = format!("9111000010001288{}", char::from(*c));
            let check = check_character(&body).unwrap();
            assert_eq!(validate(&format!("{body}{check}")), Ok(()));
        }
    }
}
