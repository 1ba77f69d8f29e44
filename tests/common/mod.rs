pub mod fake_hub;
pub mod fixtures;
pub mod server;
