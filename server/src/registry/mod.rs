//! Loaded models, their versions and aliases (canary splits included), where checkpoints come
//! from, and the two ways the set is decided: the admin API (saved in the state file), or a
//! desired-state file every replica follows.

pub mod desired;
pub mod follow;
pub mod loader;
pub mod models;
pub mod reconcile;
pub mod route;
pub mod source;
pub mod state_file;

pub use desired::DesiredStatus;
pub use follow::FollowOptions;
pub use loader::LoadSpec;
pub use models::{ModelState, ModelStatus, Registry, RegistryEvent, RegistryOptions};
pub use route::DEFAULT_ALIAS;
pub use route::{AliasTarget, Route};
pub use source::{resolve, HubOptions, ResolvedCheckpoint};
