//! Bearer tokens: the admin service always needs one, inference only when configured. Tokens
//! are compared in constant time, and a refusal never says which part was wrong.

use tonic::{Request, Status};

use crate::error::GitcapError;

/// A tonic interceptor that lets through requests carrying `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<std::sync::Arc<str>>,
}

impl BearerAuth {
    /// `None` lets every request through.
    pub fn new(token: Option<String>) -> Self {
        Self { token: token.filter(|t| !t.is_empty()).map(Into::into) }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if self.allows(header) {
            Ok(request)
        } else {
            Err(GitcapError::Unauthenticated.into())
        }
    }

    /// Whether an `authorization` header value (gRPC metadata or HTTP) lets a call through.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(expected) = &self.token else { return true };
        let given = header.and_then(bearer_credentials).unwrap_or("");
        constant_time_eq(given.as_bytes(), expected.as_bytes())
    }
}

/// The credentials of a `Bearer` authorization: the scheme is case-insensitive and followed by
/// one or more spaces (RFC 7235 section 2.1, RFC 6750 section 2.1).
fn bearer_credentials(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start_matches(' '))
}

/// Equal without an early exit on the first differing byte (length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_configured_token() {
        let auth = BearerAuth::new(Some("s3cret".into()));
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(v) = value {
                request.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            auth.check(request).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some("Bearer s3cret")), Ok(()));
        assert_eq!(with(Some("bearer s3cret")), Ok(()), "the scheme is case-insensitive");
        assert_eq!(with(Some("BEARER  s3cret")), Ok(()));
        assert_eq!(with(Some("Basic s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(Some("Bearers3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(Some("Bearer s3cre")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));
        assert!(BearerAuth::new(None).check(Request::new(())).is_ok());
    }
}
