//! A request body as the HTTP doors read it (the OpenAI API, the Open Inference Protocol's
//! REST side): whole, up to a size limit, with room reserved in the media budget for it and for
//! its parse, and parsed off the async threads. A large body costs memory and CPU seconds: it
//! must neither exceed the budget nor hold up other requests while it is parsed.

use futures::StreamExt;

use crate::error::GitcapError;
use crate::media::MediaBudget;

/// What parsing a JSON body holds at its peak, per byte of the body: the body, the text of its
/// strings, serde's buffered copy (flattened extra fields make serde read a whole object into a
/// buffer first) and decoded media (3/4 of their base64). Measured on a chat request: a 49 MiB
/// body with an image raised the server's RSS by 3.7 times its size.
pub const PARSE_BYTES_PER_BODY_BYTE: u64 = 4;

/// Why a body was not read; each door answers these in its own shape.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the door's limit of `limit` bytes (declared or as it arrived).
    TooLarge { limit: usize },
    /// It did not arrive within `server.http1_body_timeout_secs` (crate::deadline::TimedBody).
    TimedOut(String),
    /// The connection failed while it arrived.
    Unreadable(String),
    /// No room in the media budget, or the parse task failed.
    Refused(GitcapError),
}

/// Reads `body` (at most `limit` bytes; a larger declared `Content-Length` is refused before any
/// of it is read) and hands it to `parse` on a blocking thread, all within room reserved from
/// `budget`.
pub async fn read_and_parse<T, E>(
    body: axum::body::Body,
    headers: &http::HeaderMap,
    limit: usize,
    budget: &MediaBudget,
    parse: impl FnOnce(Vec<u8>) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<BodyError> + Send + 'static,
{
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit }.into());
    }
    let cost = declared.unwrap_or(limit as u64).saturating_mul(PARSE_BYTES_PER_BODY_BYTE);
    let _room = budget.reserve(cost, "the request body").await.map_err(BodyError::Refused)?;
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(unreadable)?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    let parsed = tokio::task::spawn_blocking(move || parse(bytes)).await;
    parsed.map_err(|e| BodyError::Refused(GitcapError::Internal(format!("parsing a request: {e}"))))?
}

fn unreadable(error: axum::Error) -> BodyError {
    let inner = error.into_inner();
    match inner.downcast_ref::<tonic::Status>() {
        Some(status) if crate::deadline::is_body_timeout(status) => BodyError::TimedOut(status.message().to_string()),
        _ => BodyError::Unreadable(format!("the request body could not be read: {inner}")),
    }
}
