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
