//! What every door knows of a call before it reads the request: when it began, when it must be
//! answered by, and the caller's route key. Read from the call's headers (gRPC metadata is HTTP
//! headers too), the same way whatever the protocol.

use std::time::{Duration, Instant};

use crate::deadline::{parse_grpc_timeout, parse_timeout_ms, Deadline, TIMEOUT_HEADER};
use crate::error::Result;

/// The header (gRPC metadata or HTTP) naming a caller's route key for canary splits
/// (crate::registry::route): the same key always reaches the same version of a split alias.
pub const ROUTE_KEY_HEADER: &str = "x-gitcap-route-key";

/// A call as the core sees it, whatever door it came through.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the call began: deadlines and total times count from here.
    pub started: Instant,
    /// When it must be answered by.
    pub deadline: Deadline,
    /// The caller's route key, if it gave one.
    pub route_key: Option<String>,
}

impl Call {
    /// Reads a call's headers: its timeout (gRPC `grpc-timeout`, or `x-gitcap-timeout-ms` on any
    /// door; the shorter if both), clamped to `max_timeout`, and its route key. A malformed
    /// timeout is refused by name rather than ignored.
    pub fn read(headers: &http::HeaderMap, max_timeout: Duration) -> Result<Self> {
        let started = Instant::now();
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let grpc = text("grpc-timeout").map(parse_grpc_timeout).transpose()?;
        let http = text(TIMEOUT_HEADER).map(parse_timeout_ms).transpose()?;
        let timeout = match (grpc, http) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let route_key = text(ROUTE_KEY_HEADER).map(str::to_string).filter(|key| !key.is_empty());
        Ok(Self { started, deadline: Deadline::after(started, timeout, max_timeout), route_key })
    }

    /// A call made from inside the server (the command line, tests): no deadline, no route key.
    pub fn internal() -> Self {
        Self { started: Instant::now(), deadline: Deadline::NONE, route_key: None }
    }

    /// The caller's route key, or `fallback` (a door's own notion of the caller, such as the
    /// OpenAI `user` field) when it gave none.
    pub fn with_route_key_fallback(mut self, fallback: Option<&str>) -> Self {
        if self.route_key.is_none() {
            self.route_key = fallback.filter(|key| !key.is_empty()).map(str::to_string);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn either_timeout_header_sets_the_deadline_and_the_shorter_wins() {
        let call = Call::read(&headers(&[("grpc-timeout", "2S")]), HOUR).unwrap();
        let left = call.deadline.remaining().unwrap();
        assert!(left <= Duration::from_secs(2) && left > Duration::from_secs(1), "{left:?}");
        let call = Call::read(&headers(&[("x-gitcap-timeout-ms", "300")]), HOUR).unwrap();
        assert!(call.deadline.remaining().unwrap() <= Duration::from_millis(300));
        let both = headers(&[("grpc-timeout", "10S"), ("x-gitcap-timeout-ms", "300")]);
        assert!(Call::read(&both, HOUR).unwrap().deadline.remaining().unwrap() <= Duration::from_millis(300));
        assert_eq!(Call::read(&headers(&[]), HOUR).unwrap().deadline, Deadline::NONE);
    }

    #[test]
    fn a_huge_timeout_is_clamped_to_the_maximum() {
        let call = Call::read(&headers(&[("grpc-timeout", "99999999H")]), HOUR).unwrap();
        assert!(call.deadline.remaining().unwrap() <= HOUR);
        let call = Call::read(&headers(&[("x-gitcap-timeout-ms", "18446744073709551615")]), HOUR).unwrap();
        assert!(call.deadline.remaining().unwrap() <= HOUR);
    }

    #[test]
    fn malformed_timeouts_are_refused_by_header_name() {
        let error = Call::read(&headers(&[("grpc-timeout", "184467440737095516S")]), HOUR).unwrap_err();
        assert!(error.to_string().starts_with("grpc-timeout:"), "{error}");
        let error = Call::read(&headers(&[("x-gitcap-timeout-ms", "soon")]), HOUR).unwrap_err();
        assert!(error.to_string().starts_with("x-gitcap-timeout-ms:"), "{error}");
    }

    #[test]
    fn the_route_key_header_wins_over_a_door_fallback() {
        let call = Call::read(&headers(&[("x-gitcap-route-key", "tenant-7")]), HOUR).unwrap();
        assert_eq!(call.with_route_key_fallback(Some("user-1")).route_key.as_deref(), Some("tenant-7"));
        let call = Call::read(&headers(&[]), HOUR).unwrap();
        assert_eq!(call.with_route_key_fallback(Some("user-1")).route_key.as_deref(), Some("user-1"));
        let call = Call::read(&headers(&[("x-gitcap-route-key", "")]), HOUR).unwrap();
        assert_eq!(call.with_route_key_fallback(Some("")).route_key, None);
    }
}
