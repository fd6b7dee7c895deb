//! Kazakh identifiers with real check digits: the IIN (individual identification
//! number) and the KZ IBAN (ISO 13616), so that the sandbox data passes the
//! validations a real bank's counterpart would run.

/// First weight row of the IIN/BIN control-digit algorithm.
const IIN_W1: [u32; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
/// Second weight row, used when the first gives 10.
const IIN_W2: [u32; 11] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];

/// The control digit of an IIN (or BIN) from its first 11 digits (values `0..=9`),
/// by the official algorithm: the weighted sum with weights 1..11 modulo 11; if that
/// is 10, the sum with weights 3..11,1,2 modulo 11; if that is 10 again the number
/// is not issued (`None`).
pub fn iin_check_digit(first11: &[u8; 11]) -> Option<u8> {
    let sum = |w: &[u32; 11]| -> u32 {
        first11
            .iter()
            .zip(w)
            .map(|(&d, &w)| u32::from(d) * w)
            .sum::<u32>()
            % 11
    };
    let mut c = sum(&IIN_W1);
    if c == 10 {
        c = sum(&IIN_W2);
    }
    if c == 10 {
        None
    } else {
        Some(c as u8)
    }
}

/// `true` for 12 ASCII digits whose 12th is the control digit of the first 11 and
/// whose first six are a plausible `YYMMDD` with a century/sex digit `1..=6`.
pub fn is_valid_iin(iin: &str) -> bool {
    let b = iin.as_bytes();
    if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let d = |i: usize| b[i] - b'0';
    let month = d(2) * 10 + d(3);
    let day = d(4) * 10 + d(5);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(1..=6).contains(&d(6)) {
        return false;
    }
    let mut first = [0u8; 11];
    for (i, slot) in first.iter_mut().enumerate() {
        *slot = d(i);
    }
    iin_check_digit(&first) == Some(d(11))
}

/// The ISO 7064 MOD 97-10 remainder of an IBAN-shaped string after moving the first
/// four characters to the end and mapping letters to `10..=35`. `None` on a
/// character that is not an ASCII letter or digit.
fn iban_mod97(rearranged_from: &str) -> Option<u32> {
    let b = rearranged_from.as_bytes();
    if b.len() < 4 {
        return None;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return None,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    Some(rem)
}

/// Builds a KZ IBAN (20 characters: `KZ`, two check digits, the 3-digit bank code,
/// 13 alphanumerics). `bban_tail` must be 13 ASCII upper-case letters or digits.
pub fn kz_iban(bank_code: u16, bban_tail: &str) -> Option<String> {
    if bank_code > 999
        || bban_tail.len() != 13
        || !bban_tail
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return None;
    }
    let provisional = format!("KZ00{bank_code:03}{bban_tail}");
    let rem = iban_mod97(&provisional)?;
    Some(format!("KZ{:02}{bank_code:03}{bban_tail}", 98 - rem))
}

/// `true` for a Kazakh IBAN: 20 characters, `KZ`, digits for the check and the bank
/// code, upper-case alphanumerics after, and a MOD 97-10 remainder of 1 (ISO 13616).
pub fn is_valid_kz_iban(iban: &str) -> bool {
    let b = iban.as_bytes();
    b.len() == 20
        && b.starts_with(b"KZ")
        && b[2..7].iter().all(u8::is_ascii_digit)
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && iban_mod97(iban) == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_registry_example_is_valid() {
        // The KZ example of the SWIFT IBAN registry.
        assert!(is_valid_kz_iban("KZ86125KZT5004100100"));
        assert!(!is_valid_kz_iban("KZ87125KZT5004100100"));
        assert!(!is_valid_kz_iban("KZ86125KZT5004100101"));
        assert!(!is_valid_kz_iban("KZ86125KZT500410010"));
        assert_eq!(
            kz_iban(125, "KZT5004100100").as_deref(),
            Some("KZ86125KZT5004100100")
        );
    }

    #[test]
    fn iin_control_digit_by_hand() {
        // 900101 3 0001 ?: 9*1+0*2+0*3+1*4+0*5+1*6+3*7+0*8+0*9+0*10+1*11 = 51, 51 % 11 = 7.
        assert_eq!(iin_check_digit(&[9, 0, 0, 1, 0, 1, 3, 0, 0, 0, 1]), Some(7));
        assert!(is_valid_iin("900101300017"));
        assert!(!is_valid_iin("900101300018"));
        // Month 13 is not a date.
        assert!(!is_valid_iin("901301300017"));
    }

    #[test]
    fn iin_second_weight_row() {
        // Find an 11-digit prefix whose first sum is 10 and check that the second
        // row decides.
        let p = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]; // 1*10 = 10 -> second row: 1*1 = 1
        assert_eq!(iin_check_digit(&p), Some(1));
    }
}
