//! Reading settings: a missing key and an empty value are both "unset", so that
//! `GITCAP__SERVER__TLS_CERT=` unsets a value a file set.

use serde::{Deserialize, Deserializer};

/// `None` for a missing key and for an empty value (`GITCAP__SERVER__TLS_CERT=` unsets it).
pub fn optional<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    T::Err: std::fmt::Display,
{
    match Option::<String>::deserialize(d)? {
        Some(text) if !text.trim().is_empty() => text.parse().map(Some).map_err(serde::de::Error::custom),
        _ => Ok(None),
    }
}
