//! The one place where errors become gRPC statuses, with field-level details
//! (google.rpc.BadRequest) for bad input.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::GitcapError;

impl From<GitcapError> for Status {
    fn from(error: GitcapError) -> Self {
        let message = error.to_string();
        match &error {
            GitcapError::InvalidArgument { field, message: why } | GitcapError::Media { field, message: why } => {
                let details = ErrorDetails::with_bad_request_violation(field.clone(), why.clone());
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            GitcapError::ModelNotFound(_) => Status::not_found(message),
            GitcapError::ResourceExhausted(_) => Status::resource_exhausted(message),
            GitcapError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            GitcapError::Cancelled => Status::cancelled(message),
            GitcapError::Unavailable(_) => Status::unavailable(message),
            GitcapError::PermissionDenied(_) => Status::permission_denied(message),
            GitcapError::Unauthenticated => Status::unauthenticated(message),
            GitcapError::DataLoss(_) => Status::data_loss(message),
            GitcapError::AlreadyExists(_) => Status::already_exists(message),
            GitcapError::FailedPrecondition(_) => Status::failed_precondition(message),
            GitcapError::ModelFiles(_)
            | GitcapError::MissingTensor { .. }
            | GitcapError::TensorShape { .. }
            | GitcapError::Tokenizer(_) => Status::failed_precondition(message),
            GitcapError::Torch(_) | GitcapError::Internal(_) => {
                tracing::error!(%message, "internal error");
                Status::internal(message)
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
