//! runnel's gRPC API: the generated messages and clients/servers for every
//! service, compiled once from `proto/`, plus the descriptor set that gRPC
//! reflection serves.

#![allow(clippy::all, missing_docs)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("runnel.common.v1");
    }
}
pub mod coordinator {
    pub mod v1 {
        tonic::include_proto!("runnel.coordinator.v1");
    }
}
pub mod storage {
    pub mod v1 {
        tonic::include_proto!("runnel.storage.v1");
    }
}
pub mod ingest {
    pub mod v1 {
        tonic::include_proto!("runnel.ingest.v1");
    }
}
pub mod groups {
    pub mod v1 {
        tonic::include_proto!("runnel.groups.v1");
    }
}

/// Encoded `FileDescriptorSet` of every runnel service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("runnel_descriptor");
