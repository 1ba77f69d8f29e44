//! The request core: a request's life whatever door it came through (gRPC and gRPC-Web in
//! `api`, the OpenAI-compatible API in `openai`). A door reads its wire format into a [`Call`]
//! (deadline, route key) and the core's request types, and the core resolves the model, queues
//! the request on it within its deadline, observes its events for metrics and traces, and counts
//! its outcome. Nothing here knows a door's wire types.

pub mod auth;
pub mod call;
pub mod media;
pub mod request;
pub mod validation;

pub use call::{Call, ROUTE_KEY_HEADER};
