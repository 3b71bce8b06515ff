//! The storage role: a node holding partition logs on local disk.
//!
//! - [`log`]: the partition log engine (segments, indexes, group-committed
//!   fsync, crash recovery, long-poll wake-ups);
//! - [`node`]: the node's place in the cluster — registration under a lease,
//!   opening/removing logs as the controller assigns partitions, and the
//!   periodic retention pass;
//! - [`grpc`]: `Append`, `Fetch` (long poll) and `ListOffsets` for partitions
//!   this node leads;
//! - [`replication`]: the leader's side of replication (follower progress,
//!   high watermark, ISR changes);
//! - [`replica_fetcher`]: the follower's side (truncation after a leader
//!   change, then one fetch stream per leader);
//! - [`server`]: start-up and shutdown.

pub mod config;
pub mod error;
pub mod grpc;
pub mod log;
pub mod node;
pub mod replica_fetcher;
pub mod replication;
pub mod server;

pub use config::StorageConfig;
pub use server::serve;
