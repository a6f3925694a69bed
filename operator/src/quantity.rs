//! Kubernetes quantities (`2Gi`, `500M`, `1.5Ti`) as byte counts, and byte
//! counts as the short human form shown in status columns.

/// Bytes in `raw`, a Kubernetes quantity; `None` when it is not one or is
/// not a whole, non-negative number of bytes.
pub fn bytes(raw: &str) -> Option<u64> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            10f64.powi(exp.parse().ok()?)
        }
    };
    let n: f64 = num.parse().ok()?;
    let total = (n * mult).round();
    (total.is_finite() && total >= 0.0 && total < u64::MAX as f64).then_some(total as u64)
}

/// `1.50GiB`-style text for a byte count.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.2}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(bytes("2Gi"), Some(2 << 30));
        assert_eq!(bytes("1.5Ki"), Some(1536));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("4096"), Some(4096));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("Gi"), None);
        assert_eq!(bytes("2GB"), None);
        assert_eq!(bytes("-1Gi"), None);
    }

    #[test]
    fn bytes_print_short() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(3 << 29), "1.50GiB");
    }
}
