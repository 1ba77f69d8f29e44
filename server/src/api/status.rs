//! The one place where errors become gRPC statuses, with field-level details
//! (google.rpc.BadRequest) for bad input.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::GitcapError;

impl GitcapError {
    /// The gRPC status code this error is answered with (also the `code` label of the request
    /// metrics, and what the OpenAI-compatible API's HTTP statuses follow).
    pub fn code(&self) -> Code {
        match self {
            GitcapError::InvalidArgument { .. } | GitcapError::Media { .. } => Code::InvalidArgument,
            GitcapError::ModelNotFound(_) => Code::NotFound,
            GitcapError::ResourceExhausted(_) => Code::ResourceExhausted,
            GitcapError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            GitcapError::Cancelled => Code::Cancelled,
            GitcapError::Unavailable(_) => Code::Unavailable,
            GitcapError::PermissionDenied(_) => Code::PermissionDenied,
            GitcapError::Unauthenticated => Code::Unauthenticated,
            GitcapError::DataLoss(_) => Code::DataLoss,
            GitcapError::AlreadyExists(_) => Code::AlreadyExists,
            GitcapError::FailedPrecondition(_)
            | GitcapError::ModelFiles(_)
            | GitcapError::MissingTensor { .. }
            | GitcapError::TensorShape { .. }
            | GitcapError::Tokenizer(_) => Code::FailedPrecondition,
            GitcapError::Torch(_) | GitcapError::Internal(_) => Code::Internal,
            GitcapError::Stream(status) => status.code(),
        }
    }
}

impl From<GitcapError> for Status {
    fn from(error: GitcapError) -> Self {
        let message = error.to_string();
        let code = error.code();
        match error {
            GitcapError::Stream(status) => status,
            GitcapError::InvalidArgument { field, message: why } | GitcapError::Media { field, message: why } => {
                let details = ErrorDetails::with_bad_request_violation(field, why);
                Status::with_error_details(code, message, details)
            }
            _ => {
                if code == Code::Internal {
                    tracing::error!(%message, "internal error");
                }
                Status::new(code, message)
            }
        }
    }
}

/// tonic answers a request message over `server.max_message_bytes` with OUT_OF_RANGE ("decoded
/// message length too large"); gRPC's convention (and every other gRPC server) says
/// RESOURCE_EXHAUSTED. This layer rewrites that one status in the response headers, where tonic
/// puts the status of a call that failed before answering (unary and client-streaming calls).
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizedMessageLayer;

impl<S> tower_layer::Layer<S> for OversizedMessageLayer {
    type Service = OversizedMessage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizedMessage { inner }
    }
}

#[derive(Clone, Debug)]
pub struct OversizedMessage<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tonic::codegen::Service<http::Request<ReqBody>> for OversizedMessage<S>
where
    S: tonic::codegen::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
            let too_large = headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
                m.contains("message%20length%20too%20large") || m.contains("message length too large")
            });
            if out_of_range && too_large {
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
