//! Errors, with the gRPC status codes a caller is likely to act on as separate cases.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was rejected as malformed. `field` is the offending request field (e.g.
    /// `media.image`, `options.num_beams`) when the server sent `google.rpc.BadRequest` details.
    #[error("invalid argument{}: {message}", field.as_deref().map(|f| format!(" `{f}`")).unwrap_or_default())]
    InvalidArgument { field: Option<String>, message: String },
    /// The named model (or health service) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server is overloaded or a limit was hit; retrying later may succeed.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The call took longer than its deadline.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The bearer token was missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The server could not be reached or is shutting down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Connecting failed (bad address, connection refused, connect timeout).
    #[error("transport error: {}", source_chain(.0))]
    Transport(tonic::transport::Error),
    /// The client configuration is unusable (an invalid URL or token).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A local file (a video to upload) could not be read.
    #[error("{0}")]
    Io(String),
    /// A set of replicas ([`crate::replicas`]) could not be resolved: a malformed target or a DNS failure.
    #[error("resolving replicas: {0}")]
    Resolve(String),
    /// Any other status (internal errors, failed preconditions…), or a reply that breaks the protocol.
    #[error("{}: {message}", code_name(*code))]
    Other { code: Code, message: String },
}

impl Error {
    /// The gRPC status code this error stands for (`None` for transport, configuration and resolution errors).
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Other { code, .. } => *code,
            Error::Transport(_) | Error::Config(_) | Error::Resolve(_) | Error::Io(_) => return None,
        })
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::Other { code: Code::Internal, message: format!("unexpected reply from the server: {}", message.into()) }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => {
                let field = status
                    .get_details_bad_request()
                    .and_then(|details| details.field_violations.into_iter().next())
                    .map(|violation| violation.field);
                Error::InvalidArgument { field, message }
            }
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Cancelled => Error::Cancelled(message),
            code => Error::Other { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Transport(error)
    }
}

/// The messages of an error's sources, without the repetitions of hyper's and tonic's layers
/// ("transport error: tcp connect error: tcp connect error: …").
fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages: Vec<String> = vec![];
    let mut next = error.source();
    while let Some(source) = next {
        let message = source.to_string();
        if messages.last() != Some(&message) {
            messages.push(message);
        }
        next = source.source();
    }
    if messages.is_empty() {
        messages.push(error.to_string());
    }
    messages.join(": ")
}

fn code_name(code: Code) -> String {
    // `Code::description` is a sentence; the snake-case name reads better in a one-line message.
    let name = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn bad_request_details_name_the_field() {
        let details = ErrorDetails::with_bad_request_violation("options.num_beams", "must be at most 8");
        let status = Status::with_error_details(Code::InvalidArgument, "num_beams too large", details);
        let error = Error::from(status);
        match &error {
            Error::InvalidArgument { field, message } => {
                assert_eq!(field.as_deref(), Some("options.num_beams"));
                assert_eq!(message, "num_beams too large");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(error.to_string(), "invalid argument `options.num_beams`: num_beams too large");
        assert_eq!(error.code(), Some(Code::InvalidArgument));
    }

    #[test]
    fn invalid_argument_without_details_has_no_field() {
        let error = Error::from(Status::invalid_argument("bad"));
        assert!(matches!(&error, Error::InvalidArgument { field: None, message } if message == "bad"));
        assert_eq!(error.to_string(), "invalid argument: bad");
    }

    #[test]
    fn statuses_map_to_their_cases() {
        type Check = fn(&Error) -> bool;
        let cases: Vec<(Status, Check)> = vec![
            (Status::not_found("m"), |e| matches!(e, Error::NotFound(m) if m == "m")),
            (Status::resource_exhausted("m"), |e| matches!(e, Error::ResourceExhausted(_))),
            (Status::deadline_exceeded("m"), |e| matches!(e, Error::DeadlineExceeded(_))),
            (Status::unauthenticated("m"), |e| matches!(e, Error::Unauthenticated(_))),
            (Status::unavailable("m"), |e| matches!(e, Error::Unavailable(_))),
            (Status::cancelled("m"), |e| matches!(e, Error::Cancelled(_))),
            (Status::internal("m"), |e| matches!(e, Error::Other { code: Code::Internal, .. })),
            (Status::failed_precondition("m"), |e| matches!(e, Error::Other { code: Code::FailedPrecondition, .. })),
        ];
        for (status, check) in cases {
            let code = status.code();
            let error = Error::from(status);
            assert!(check(&error), "{code:?} became {error:?}");
            assert_eq!(error.code(), Some(code));
        }
        assert_eq!(
            Error::from(Status::failed_precondition("no weights")).to_string(),
            "failed precondition: no weights"
        );
    }
}
