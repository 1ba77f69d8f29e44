//! Loaded models, their versions and aliases, and where checkpoints come from.

pub mod loader;
pub mod models;
pub mod source;
pub mod state_file;

pub use loader::LoadSpec;
pub use models::{ModelState, ModelStatus, Registry, RegistryEvent, RegistryOptions, DEFAULT_ALIAS};
pub use source::{resolve, HubOptions, ResolvedCheckpoint};
