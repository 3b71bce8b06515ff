//! The groups role: consumer-group coordination and committed offsets.
//!
//! Groups are sharded over the partitions of the internal, compacted topic
//! `__consumer_offsets`, exactly where Kafka would put them
//! (`abs(javaHash(group.id)) % partitions`). Each shard is owned by one
//! groups node at a time (a lease-bound key in the metastore, see
//! [`node`]); the owner keeps the shard's groups in memory ([`group`]: the
//! classic join/sync/heartbeat protocol with static membership) and stores
//! every committed offset and completed generation in the shard's partition
//! ([`journal`]) before it answers. A node that takes a shard over replays
//! that partition and carries on with the same generations and offsets.
//!
//! The Kafka edge translates the Kafka group APIs to this service's gRPC API
//! (`proto/runnel/groups/v1/groups.proto`); native clients call it directly.

pub mod config;
pub mod consumer_group;
pub mod consumer_protocol;
pub mod group;
pub mod grpc;
pub mod journal;
pub mod node;
pub mod server;
pub mod shard;

pub use config::GroupsConfig;
pub use server::serve;
