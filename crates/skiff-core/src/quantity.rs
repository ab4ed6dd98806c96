//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) as the integer
//! units the scheduler and agents add up: millicores for CPU, bytes (or plain counts,
//! rounded up) for everything else.

/// Why a quantity string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {input:?} is not a number with an optional suffix such as m, k, Mi, G or e3")]
pub struct QuantityError {
    pub input: String,
}

/// The value of `input` times 1000 (milli-units), rounded up, as Kubernetes'
/// `Quantity.MilliValue` does. CPU is compared in these units.
pub fn parse_milli(input: &str) -> Result<i64, QuantityError> {
    scaled(input, 1000.0)
}

/// The value of `input` in whole units, rounded up (`Quantity.Value`): bytes of memory,
/// counts of pods or extended resources.
pub fn parse_units(input: &str) -> Result<i64, QuantityError> {
    scaled(input, 1.0)
}

fn scaled(input: &str, scale: f64) -> Result<i64, QuantityError> {
    let err = || QuantityError { input: input.to_string() };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let v = value * multiplier * scale;
    if !v.is_finite() || v.abs() > 9.2e18 {
        return Err(err());
    }
    // Round up as Kubernetes does, but forgive float noise just above an integer.
    let rounded = v.round();
    Ok(if (v - rounded).abs() < 1e-6 { rounded as i64 } else { v.ceil() as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory() {
        assert_eq!(parse_milli("100m").unwrap(), 100);
        assert_eq!(parse_milli("1.5").unwrap(), 1500);
        assert_eq!(parse_milli("2").unwrap(), 2000);
        assert_eq!(parse_milli("1u").unwrap(), 1);
        assert_eq!(parse_units("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_units("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_units("1e3").unwrap(), 1000);
        assert_eq!(parse_units("110").unwrap(), 110);
        assert_eq!(parse_units("0.5").unwrap(), 1);
        assert!(parse_units("abc").is_err());
        assert!(parse_units("1Zi").is_err());
        assert!(parse_units("").is_err());
    }
}
