pub mod bad_input;
pub mod fake_hub;
pub mod fixtures;
pub mod load;
pub mod raw_grpc;
pub mod server;
pub mod videos;
