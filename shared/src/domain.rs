//! Small domain types that parse on construction: once you hold one, it is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An Omneo tenant id: a lowercase slug (`[a-z0-9]`, inner `-`, at most 63 characters).
///
/// It appears in URLs, Firestore document ids and Cloud Tasks queue names, so the alphabet is
/// the intersection of what those accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Why a string is not a [`TenantId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tenant id must be a lowercase slug of 1-63 characters (a-z, 0-9, inner '-'), got {0:?}")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// Parses a tenant id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let raw = raw.into();
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let valid = !raw.is_empty()
            && raw.len() <= 63
            && valid_chars
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if valid {
            Ok(Self(raw))
        } else {
            Err(InvalidTenantId(raw))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_lowercase_slugs() {
        for good in ["acme", "a", "acme-au", "r2d2", &"a".repeat(63)] {
            assert!(TenantId::parse(good).is_ok(), "{good} should parse");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "ac me",
            "acme/x",
            "acme_au",
            &"a".repeat(64),
        ] {
            assert_eq!(TenantId::parse(bad), Err(InvalidTenantId(bad.to_owned())));
        }
    }

    #[test]
    fn tenant_id_deserialises_through_parse() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }
}
