//! The request core: a request's life whatever door it came through (gRPC and gRPC-Web in
//! `api`, the OpenAI-compatible API in `openai`). A door reads its wire format into a [`Call`]
//! (deadline, route key) and an [`Ask`], and the [`Core`] resolves the model, validates the
//! request, prepares its media and queues it within its deadline, observes its events for metrics and traces, and counts
//! its outcome. Nothing here knows a door's wire types.

pub mod ask;
pub mod auth;
pub mod body;
pub mod call;
pub mod dense;
pub mod image_cache;
pub mod live;
pub mod media;
pub mod request;
pub mod upload;
pub mod validation;

pub use ask::{Admitted, Ask, Core, Prepared};
pub use call::{Call, ROUTE_KEY_HEADER};
