//! Sizes and addresses written the way kernel and VMM engineers write them.
//!
//! `4096`, `4K`, `2M`, `1G`, `128G`, `1T`, `0x100000000000` (and `KiB`/`MiB`/`GiB`/`TiB`
//! spellings) parse to bytes; [`format_size`] prints the largest binary unit that divides the
//! value exactly, so printing then parsing gives the same number back. Nothing is rounded:
//! a value that does not fit in 64 bits is an error, never a wrapped or clamped number.

use thiserror::Error;

pub mod addr;
pub mod arch;
pub mod counts;
pub mod level;

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;

/// Why a size or address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseSizeError {
    /// The string was empty (or only white space).
    #[error("empty size")]
    Empty,
    /// The digits could not be read as a number.
    #[error("`{0}` is not a size: expected digits with an optional K/M/G/T suffix, or 0x hex")]
    Invalid(String),
    /// The number times its unit does not fit in 64 bits.
    #[error("`{0}` does not fit in 64 bits")]
    Overflow(String),
}

/// Parses a size or address: decimal digits with an optional binary suffix
/// (`K`, `M`, `G`, `T`, also `KiB`…, case-insensitive), or `0x` hexadecimal (no suffix).
/// `_` may separate digits.
pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ParseSizeError::Empty);
    }
    let cleaned: String = t.chars().filter(|&c| c != '_').collect();
    if let Some(hex) = cleaned
        .strip_prefix("0x")
        .or_else(|| cleaned.strip_prefix("0X"))
    {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ParseSizeError::Invalid(t.to_string()));
        }
        return u64::from_str_radix(hex, 16).map_err(|_| ParseSizeError::Overflow(t.to_string()));
    }
    let split = cleaned
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(cleaned.len());
    let (digits, suffix) = cleaned.split_at(split);
    if digits.is_empty() {
        return Err(ParseSizeError::Invalid(t.to_string()));
    }
    let unit = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => KIB,
        "m" | "mib" | "mb" => MIB,
        "g" | "gib" | "gb" => GIB,
        "t" | "tib" | "tb" => TIB,
        _ => return Err(ParseSizeError::Invalid(t.to_string())),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| ParseSizeError::Overflow(t.to_string()))?;
    n.checked_mul(unit)
        .ok_or_else(|| ParseSizeError::Overflow(t.to_string()))
}

/// Prints a byte count with the largest binary unit that divides it exactly:
/// `4K`, `2M`, `1050M`, `128G`; `0` and values that are not a multiple of 1 KiB stay in bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{}", bytes / unit, name);
        }
    }
    bytes.to_string()
}

/// Prints a byte count for people: `4 KiB`, `520 KiB`, `256.5 MiB`, `128 GiB` (one decimal at
/// most; use [`format_size`] where the value must parse back exactly).
pub fn format_bytes(bytes: u64) -> String {
    let units = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (unit, name) in units {
        if bytes >= unit {
            let v = bytes as f64 / unit as f64;
            return if (v - v.round()).abs() < 0.05 {
                format!("{:.0} {name}", v.round())
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// Prints an address as Linux prints one in `/proc/<pid>/maps`-style tools: `0x` and lower-case hex.
pub fn format_addr(addr: u64) -> String {
    format!("{addr:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_spellings() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("128G"), Ok(128 * GIB));
        assert_eq!(parse_size("128GiB"), Ok(128 * GIB));
        assert_eq!(parse_size("1049604K"), Ok(GIB + 1028 * KIB));
        assert_eq!(parse_size("0x100000000000"), Ok(0x1000_0000_0000));
        assert_eq!(parse_size(" 0x1000 "), Ok(0x1000));
        assert_eq!(parse_size("1_024"), Ok(1024));
    }

    #[test]
    fn refuses_garbage_and_overflow() {
        assert_eq!(parse_size(""), Err(ParseSizeError::Empty));
        assert!(matches!(parse_size("G"), Err(ParseSizeError::Invalid(_))));
        assert!(matches!(parse_size("4Q"), Err(ParseSizeError::Invalid(_))));
        assert!(matches!(parse_size("0x"), Err(ParseSizeError::Invalid(_))));
        assert!(matches!(
            parse_size("0x12g"),
            Err(ParseSizeError::Invalid(_))
        ));
        assert!(matches!(parse_size("-4K"), Err(ParseSizeError::Invalid(_))));
        assert!(matches!(
            parse_size("16777216T"),
            Err(ParseSizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("0x10000000000000000"),
            Err(ParseSizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(ParseSizeError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for v in [
            0,
            1,
            4095,
            4096,
            2 * MIB,
            1050 * MIB,
            128 * GIB,
            3 * TIB,
            GIB + 4 * KIB,
        ] {
            assert_eq!(parse_size(&format_size(v)), Ok(v), "{v}");
        }
        assert_eq!(format_size(128 * GIB), "128G");
        assert_eq!(format_size(GIB + 4 * KIB), "1048580K");
        assert_eq!(format_addr(0x1000_0000_0000), "0x100000000000");
        assert_eq!(format_bytes(262_664 * KIB), "256.5 MiB");
        assert_eq!(format_bytes(8 * KIB), "8 KiB");
        assert_eq!(format_bytes(128 * GIB), "128 GiB");
        assert_eq!(format_bytes(100), "100 B");
    }
}
