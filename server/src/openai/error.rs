//! Errors as the OpenAI API writes them: `{"error": {"message", "type", "param", "code"}}` with
//! an HTTP status. The status follows the gRPC code each error has (`GitcapError::code`, the one
//! mapping), so both protocols answer the same mistake the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::GitcapError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request parameter at fault, when there is one (`temperature`, `messages[0].content`).
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()) }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self.status {
            StatusCode::NOT_FOUND => Some("model_not_found"),
            StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
            StatusCode::PAYLOAD_TOO_LARGE => Some("request_too_large"),
            _ => None,
        }
    }
}

pub use crate::error::http_status;

impl From<GitcapError> for ApiError {
    fn from(error: GitcapError) -> Self {
        let status = http_status(error.code());
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "internal error");
        }
        let param = match &error {
            GitcapError::InvalidArgument { field, .. } | GitcapError::Media { field, .. } => Some(field.clone()),
            _ => None,
        };
        Self { status, message: error.to_string(), param }
    }
}

impl ApiError {
    /// The error object OpenAI clients read (also sent as a stream's last event).
    pub fn json(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind(), "param": self.param, "code": self.code() } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.json())).into_response()
    }
}
