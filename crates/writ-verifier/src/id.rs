//! Strict SPIFFE ID and trust domain parsing (SPIFFE-ID.md §2).
//!
//! The grammar is the `spiffe` crate's. That crate lower-cases an upper-case trust
//! domain or scheme while parsing; the spec says the trust domain MUST be lowercase, so a
//! security check must not quietly accept `spiffe://Example.org/x` as `example.org`. These
//! functions accept only input already in canonical form, and bound the length.

use spiffe::{SpiffeId, TrustDomain};

/// The longest SPIFFE ID accepted (SPIFFE-ID.md §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why an ID was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The `spiffe` crate's grammar refused it.
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    Syntax {
        /// The input, truncated to 128 bytes.
        input: String,
        /// Why.
        reason: String,
    },
    /// Valid only after lower-casing (scheme or trust domain not lowercase).
    #[error("invalid SPIFFE ID {0:?}: scheme and trust domain must be lowercase")]
    NotCanonical(String),
    /// Longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

fn shown(input: &str) -> String {
    let mut end = input.len().min(128);
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    input[..end].to_owned()
}

/// Parses a SPIFFE ID, refusing anything not already in canonical form.
pub fn parse_spiffe_id(input: &str) -> Result<SpiffeId, IdError> {
    if input.len() > MAX_SPIFFE_ID_LEN {
        return Err(IdError::TooLong);
    }
    let id = SpiffeId::new(input).map_err(|e| IdError::Syntax {
        input: shown(input),
        reason: e.to_string(),
    })?;
    if id.to_string() != input {
        return Err(IdError::NotCanonical(shown(input)));
    }
    Ok(id)
}

/// Parses a trust domain name (not an ID), refusing anything not in canonical form.
pub fn parse_trust_domain(input: &str) -> Result<TrustDomain, IdError> {
    let syntax = |reason: String| IdError::Syntax {
        input: shown(input),
        reason,
    };
    if input.contains(':') || input.contains('/') {
        return Err(syntax(
            "a trust domain name has no scheme, port or path".into(),
        ));
    }
    let td = TrustDomain::new(input).map_err(|e| syntax(e.to_string()))?;
    if td.as_str() != input {
        return Err(IdError::NotCanonical(shown(input)));
    }
    Ok(td)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_ids_pass_and_others_fail() {
        assert!(parse_spiffe_id("spiffe://example.org/a/b").is_ok());
        assert!(matches!(
            parse_spiffe_id("spiffe://Example.org/a"),
            Err(IdError::NotCanonical(_))
        ));
        assert!(matches!(
            parse_spiffe_id("SPIFFE://example.org/a"),
            Err(IdError::NotCanonical(_))
        ));
        assert!(parse_trust_domain("example.org").is_ok());
        assert!(parse_trust_domain("Example.org").is_err());
        assert!(parse_trust_domain("spiffe://example.org").is_err());
        assert!(parse_trust_domain("example.org:443").is_err());
    }
}
