//! Durations as users type them (`90s`, `5m`, `4h`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A positive duration in whole seconds, parsed from humantime syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(Duration);

/// Why a TTL was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TtlError {
    /// Not a duration (e.g. `5 parsecs`).
    #[error("invalid duration {0:?} (use e.g. 90s, 5m, 4h)")]
    Syntax(String),
    /// Zero.
    #[error("duration must be positive")]
    Zero,
    /// Has a fractional second.
    #[error("duration must be whole seconds")]
    Fraction,
}

impl Ttl {
    /// A TTL of `secs` seconds; zero is refused.
    pub fn from_secs(secs: u64) -> Result<Self, TtlError> {
        if secs == 0 {
            return Err(TtlError::Zero);
        }
        Ok(Ttl(Duration::from_secs(secs)))
    }

    /// A TTL of `secs` seconds known at compile time; zero does not compile.
    pub const fn constant(secs: u64) -> Self {
        assert!(secs > 0, "a TTL is positive");
        Ttl(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Whole seconds.
    pub fn secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Ttl {
    type Err = TtlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s.trim()).map_err(|_| TtlError::Syntax(s.into()))?;
        if d.subsec_nanos() != 0 {
            return Err(TtlError::Fraction);
        }
        Ttl::from_secs(d.as_secs())
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl serde::Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        for (text, secs) in [("90s", 90), ("5m", 300), ("4h", 14400), ("1h 30m", 5400)] {
            let ttl: Ttl = text.parse().unwrap();
            assert_eq!(ttl.secs(), secs);
            assert_eq!(ttl.to_string().parse::<Ttl>().unwrap(), ttl);
        }
    }

    #[test]
    fn refuses_zero_fractions_and_junk() {
        assert!(matches!("0s".parse::<Ttl>(), Err(TtlError::Zero)));
        assert!(matches!("1500ms".parse::<Ttl>(), Err(TtlError::Fraction)));
        assert!(matches!("soon".parse::<Ttl>(), Err(TtlError::Syntax(_))));
        assert!("-5m".parse::<Ttl>().is_err());
    }
}
