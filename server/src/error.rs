//! The one error type of the server. Each variant says what went wrong in words a caller can
//! act on; `api::status` maps it to a gRPC status in one place.

use thiserror::Error;

pub type Result<T, E = GitcapError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum GitcapError {
    /// A checkpoint directory or hub repository is missing a file or has an unreadable one.
    #[error("model files: {0}")]
    ModelFiles(String),
    #[error("weights: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("weights: tensor `{name}` has shape {actual:?}, the config implies {expected:?}")]
    TensorShape { name: String, expected: Vec<i64>, actual: Vec<i64> },
    /// A request field is out of range or malformed; `field` is its path in the request.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// Media that cannot be decoded or is too large.
    #[error("{field}: {message}")]
    Media { field: String, message: String },
    #[error("model `{0}` is not loaded")]
    ModelNotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("deadline exceeded {0}")]
    DeadlineExceeded(String),
    #[error("request cancelled")]
    Cancelled,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// No bearer token, or a wrong one (which of the two is not said).
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// A stream lost events (a watcher too slow to keep up): the caller must start again.
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller's own stream failed (a gRPC stream's error: the client went away, or sent a
    /// message that does not decode), passed on as it came.
    #[error("{}", .0.message())]
    Stream(tonic::Status),
}

impl From<tonic::Status> for GitcapError {
    fn from(status: tonic::Status) -> Self {
        Self::Stream(status)
    }
}

impl GitcapError {
    pub fn model_files(message: impl Into<String>) -> Self {
        Self::ModelFiles(message.into())
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }

    pub fn media(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Media { field: field.into(), message: message.into() }
    }
}

/// The HTTP status of a gRPC code: how every HTTP door (OpenAI, Open Inference Protocol)
/// answers an error, from its one gRPC code (`GitcapError::code`).
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode;
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status"),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
