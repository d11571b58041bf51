//! The storenode's gRPC services (the Raft transport's inbound side lives
//! with the transport in [`crate::raft::transport`]).

pub mod admin;
pub mod batch;
pub mod kv;
