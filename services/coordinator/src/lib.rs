//! The coordinator role: cluster metadata and the controller.
//!
//! Every coordinator instance serves metadata reads from a watched copy of the
//! metastore. One instance at a time is the **active controller**, elected by
//! creating the `controller` key under its lease; the others stand by watching
//! that key and take over when it vanishes. The controller alone writes topic
//! and partition state: it creates and deletes topics with a balanced replica
//! assignment, and reconciles leadership whenever storage nodes come and go (a
//! partition whose leader's lease lapsed gets a new leader from its ISR, or is
//! marked offline). Writes sent to a standby are forwarded to the controller.

pub mod config;
pub mod controller;
pub mod error;
pub mod grpc;
pub mod server;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use server::serve;
