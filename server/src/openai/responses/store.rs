//! Stored responses (`store: true`, OpenAI's default), in memory: what `GET
//! /v1/responses/{id}` returns and what a follow-up naming `previous_response_id` asks about
//! (its media). Bounded by count and bytes (a response holds its media: the oldest go first to
//! make room) and by age (`responses.*` settings).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::object::ResponseObject;
use crate::service::media::MediaInput;

/// The bounds on stored responses (`[responses]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Responses kept at most.
    pub max_stored: usize,
    /// Their bytes (media and text) at most.
    pub max_bytes: usize,
    /// How long one is kept.
    pub ttl: Duration,
}

/// A stored response, and the media it answered about.
pub struct Stored {
    pub response: ResponseObject,
    pub media: Arc<MediaInput>,
}

struct Entry {
    stored: Arc<Stored>,
    bytes: usize,
    expires: Instant,
    /// Its place in the order of storing.
    seq: u64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// Ids in the order stored (all live as long, so also the order they expire).
    order: BTreeMap<u64, String>,
    bytes: usize,
    next_seq: u64,
}

pub struct ResponseStore {
    limits: StoreLimits,
    inner: Mutex<Inner>,
}

impl ResponseStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self { limits, inner: Mutex::new(Inner::default()) }
    }

    /// Keeps `response` and its media, making room by letting the oldest go. One larger than
    /// `max_bytes` by itself (or with `max_stored` 0) is not kept; returns whether it was.
    pub fn put(&self, response: ResponseObject, media: Arc<MediaInput>) -> bool {
        let bytes = media_bytes(&media) + serde_json::to_vec(&response).map_or(0, |json| json.len());
        if bytes > self.limits.max_bytes || self.limits.max_stored == 0 {
            tracing::warn!(id = response.id, bytes, "a response too large to store (responses.max_stored_mb)");
            return false;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        inner.expire(now);
        while inner.by_id.len() >= self.limits.max_stored || inner.bytes + bytes > self.limits.max_bytes {
            if !inner.remove_oldest() {
                break;
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.insert(seq, response.id.clone());
        inner.bytes += bytes;
        let id = response.id.clone();
        let entry = Entry { stored: Arc::new(Stored { response, media }), bytes, expires: now + self.limits.ttl, seq };
        inner.by_id.insert(id, entry);
        true
    }

    /// The response stored as `id`, unless it has expired or was let go.
    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.expire(Instant::now());
        inner.by_id.get(id).map(|entry| entry.stored.clone())
    }

    /// Forgets the response stored as `id`; whether there was one.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.expire(Instant::now());
        inner.remove(id)
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.first_entry() {
            if self.by_id.get(oldest.get()).is_some_and(|entry| entry.expires > now) {
                break;
            }
            let id = oldest.remove();
            self.forget(&id);
        }
    }

    /// Lets the oldest go; false when there is none.
    fn remove_oldest(&mut self) -> bool {
        let Some((_, id)) = self.order.pop_first() else { return false };
        self.forget(&id);
        true
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(seq) = self.by_id.get(id).map(|entry| entry.seq) else { return false };
        self.order.remove(&seq);
        self.forget(id)
    }

    fn forget(&mut self, id: &str) -> bool {
        let Some(entry) = self.by_id.remove(id) else { return false };
        self.bytes -= entry.bytes;
        true
    }
}

/// The bytes a request's media hold.
fn media_bytes(media: &MediaInput) -> usize {
    match media {
        MediaInput::Image(bytes) | MediaInput::Video { bytes, .. } => bytes.len(),
        MediaInput::Frames(frames) => frames.iter().map(Vec::len).sum(),
        MediaInput::Raw { rgb, .. } => rgb.len(),
        MediaInput::Url { url, .. } => url.len(),
    }
}

/// OpenAI's answer for a response id it does not have (never stored, deleted, expired or let go
/// to make room); `param` is the request field that named it, if one did.
pub fn not_found(id: &str, param: Option<&str>) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("Response with id '{id}' not found."),
        "type": "invalid_request_error",
        "param": param,
        "code": param.map(|_| "previous_response_not_found"),
    }});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str) -> ResponseObject {
        let echo = super::super::request::Echo::default();
        ResponseObject::begun(id.into(), "tiny".into(), &echo, "default", true, None)
    }

    fn image(bytes: usize) -> Arc<MediaInput> {
        Arc::new(MediaInput::Image(vec![0; bytes]))
    }

    fn store(max_stored: usize, max_bytes: usize, ttl: Duration) -> ResponseStore {
        ResponseStore::new(StoreLimits { max_stored, max_bytes, ttl })
    }

    #[test]
    fn the_oldest_go_first_when_the_count_is_reached() {
        let store = store(2, 1 << 20, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            assert!(store.put(response(id), image(10)));
        }
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some() && store.get("c").is_some());
    }

    #[test]
    fn the_oldest_go_first_to_keep_the_bytes_within_the_bound() {
        let store = store(100, 10_000, Duration::from_secs(60));
        assert!(store.put(response("a"), image(4000)));
        assert!(store.put(response("b"), image(4000)));
        assert!(store.put(response("c"), image(4000)));
        assert!(store.get("a").is_none(), "a made room for c");
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert!(!store.put(response("huge"), image(20_000)), "larger than the bound by itself");
        assert!(store.get("huge").is_none() && store.get("b").is_some(), "and it evicted nothing");
        assert!(store.inner.lock().unwrap().bytes <= 10_000);
    }

    #[test]
    fn an_expired_or_deleted_response_is_gone() {
        let store = store(10, 1 << 20, Duration::ZERO);
        store.put(response("a"), image(1));
        assert!(store.get("a").is_none(), "expired at once");
        let store = self::store(10, 1 << 20, Duration::from_secs(60));
        store.put(response("a"), image(1));
        assert!(store.delete("a"));
        assert!(!store.delete("a") && store.get("a").is_none());
        let inner = store.inner.lock().unwrap();
        assert_eq!((inner.bytes, inner.order.len()), (0, 0));
    }
}
