//! When a request must be answered by, whatever door it came through: the caller's timeout
//! (gRPC `grpc-timeout`, HTTP `x-gitcap-timeout-ms`) counted from when its call began, never
//! later than the server's `limits.max_timeout_secs` allows. The arithmetic cannot overflow: a
//! timeout larger than the maximum is clamped to it before any instant is computed. And the
//! server's own deadline on an HTTP/1.1 request body's arrival ([`TimedBody`]).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{GitcapError, Result};

/// The HTTP header that carries a caller's timeout in milliseconds, on every HTTP door.
pub const TIMEOUT_HEADER: &str = "x-gitcap-timeout-ms";

/// The instant a request must be answered by, if its caller set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline {
    at: Option<Instant>,
}

impl Deadline {
    /// No deadline: the request runs until it ends or its caller goes away.
    pub const NONE: Self = Self { at: None };

    /// `timeout` after `started` (`None`: no deadline), the timeout clamped to `max`.
    pub fn after(started: Instant, timeout: Option<Duration>, max: Duration) -> Self {
        let at = timeout.map(|timeout| {
            let timeout = timeout.min(max);
            // An instant that far away cannot be represented only on a clock near its end;
            // then the request simply has no deadline.
            started.checked_add(timeout)
        });
        Self { at: at.flatten() }
    }

    /// The instant, if any.
    pub fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// What is left of it (zero once passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Runs `work` until the deadline; past it, fails with DEADLINE_EXCEEDED "`while` …".
    pub async fn run<T>(&self, work: impl Future<Output = Result<T>>, during: &str) -> Result<T> {
        let Some(at) = self.at else { return work.await };
        match tokio::time::timeout_at(at.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(GitcapError::DeadlineExceeded(format!("while {during}"))),
        }
    }
}

/// Parses a gRPC `grpc-timeout` value: one to eight digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 specification defines it. `field` names the header in the error.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration> {
    let invalid = || {
        GitcapError::invalid(
            "grpc-timeout",
            format!("`{value}` is not 1 to 8 digits followed by a unit (H, M, S, m, u or n)"),
        )
    };
    let split = value.len().checked_sub(1).ok_or_else(invalid)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    Ok(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(invalid()),
    })
}

/// Parses an `x-gitcap-timeout-ms` value: a whole number of milliseconds.
pub fn parse_timeout_ms(value: &str) -> Result<Duration> {
    let ms: u64 = value.trim().parse().map_err(|_| {
        GitcapError::invalid(TIMEOUT_HEADER, format!("`{value}` is not a whole number of milliseconds"))
    })?;
    Ok(Duration::from_millis(ms))
}

/// A request body that fails with DEADLINE_EXCEEDED once `timeout` has passed since the
/// request's headers, if it has not ended by then.
pub struct TimedBody {
    inner: tonic::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    pub fn new(inner: tonic::body::Body, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

/// Whether `error` (from reading a request body) is [`TimedBody`]'s.
pub fn is_body_timeout(error: &tonic::Status) -> bool {
    error.code() == tonic::Code::DeadlineExceeded && error.message().contains("server.http1_body_timeout_secs")
}

impl http_body::Body for TimedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let message = format!(
                "the request body did not arrive within {:?} of its headers (server.http1_body_timeout_secs)",
                self.timeout
            );
            return std::task::Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(message))));
        }
        std::task::Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn grpc_timeouts_parse_with_every_unit() {
        assert_eq!(parse_grpc_timeout("2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_grpc_timeout("3M").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_grpc_timeout("10S").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_grpc_timeout("250m").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_grpc_timeout("7u").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_grpc_timeout("99999999n").unwrap(), Duration::from_nanos(99_999_999));
    }

    #[test]
    fn malformed_or_oversized_grpc_timeouts_are_refused_by_name() {
        for bad in ["", "S", "10", "10s", "-1S", "1.5S", "123456789H", "18446744073709551615S", "9x"] {
            let error = parse_grpc_timeout(bad).unwrap_err();
            assert!(error.to_string().starts_with("grpc-timeout:"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_largest_legal_timeout_is_clamped_and_cannot_overflow() {
        let started = Instant::now();
        let huge = parse_grpc_timeout("99999999H").unwrap();
        let deadline = Deadline::after(started, Some(huge), HOUR);
        assert_eq!(deadline.instant(), Some(started + HOUR));
        // Even a duration no clock can add is clamped first.
        let deadline = Deadline::after(started, Some(Duration::MAX), HOUR);
        assert_eq!(deadline.instant(), Some(started + HOUR));
        assert!(!deadline.passed());
        assert!(deadline.remaining().unwrap() <= HOUR);
    }

    #[test]
    fn no_timeout_is_no_deadline() {
        let deadline = Deadline::after(Instant::now(), None, HOUR);
        assert_eq!(deadline, Deadline::NONE);
        assert!(!deadline.passed());
        assert_eq!(deadline.remaining(), None);
    }

    #[tokio::test]
    async fn work_past_the_deadline_fails_with_deadline_exceeded() {
        let deadline = Deadline::after(Instant::now(), Some(Duration::from_millis(20)), HOUR);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        };
        let error = deadline.run(slow, "decoding the media").await.unwrap_err();
        assert!(matches!(error, GitcapError::DeadlineExceeded(ref m) if m == "while decoding the media"), "{error}");
        assert!(deadline.passed());
    }

    #[test]
    fn http_timeouts_are_whole_milliseconds() {
        assert_eq!(parse_timeout_ms("1500").unwrap(), Duration::from_millis(1500));
        assert!(parse_timeout_ms("1.5").unwrap_err().to_string().starts_with("x-gitcap-timeout-ms:"));
        assert!(parse_timeout_ms("-1").is_err());
    }
}
