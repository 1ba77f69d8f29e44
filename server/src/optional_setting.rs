//! Reading settings: a missing key and an empty value are both "unset", so that
//! `GITCAP__SERVER__TLS_CERT=` unsets a value a file set.

use serde::{Deserialize, Deserializer};

/// A duration written in seconds, whole or not (`timeout_secs = 30`, `= 2.5`): for
/// `#[serde(with = "crate::optional_setting::seconds")]`.
pub mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
        let seconds = f64::deserialize(d)?;
        Duration::try_from_secs_f64(seconds)
            .map_err(|_| serde::de::Error::custom(format!("{seconds} is not a number of seconds (0 or more)")))
    }

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_f64(duration.as_secs_f64())
    }
}

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
