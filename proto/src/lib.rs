//! ringkv's wire protocol: the protobuf messages and tonic services every
//! process speaks. The .proto files under `proto/` are the source of truth.

pub mod meta {
    tonic::include_proto!("ringkv.meta");
}
pub mod error {
    tonic::include_proto!("ringkv.error");
}
pub mod kv {
    tonic::include_proto!("ringkv.kv");
}
pub mod engine {
    tonic::include_proto!("ringkv.engine");
}
pub mod raft {
    tonic::include_proto!("ringkv.raft");
}
pub mod storage {
    tonic::include_proto!("ringkv.storage");
}
pub mod placement {
    tonic::include_proto!("ringkv.placement");
}
pub mod api {
    tonic::include_proto!("ringkv.api");
}
