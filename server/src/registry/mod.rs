//! Loaded models and where they come from.

pub mod models;
pub mod source;

pub use models::Models;
pub use source::{resolve, HubOptions, ResolvedCheckpoint};
