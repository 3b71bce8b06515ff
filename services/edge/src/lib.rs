//! The edge role: a Kafka wire-protocol proxy, so standard Kafka clients
//! (librdkafka, kafka-python, kcat, …) produce, consume and administer
//! through runnel.
//!
//! Each edge instance presents itself as one broker: Metadata lists every
//! live edge (they register in the metastore) and reports the answering edge
//! as the leader of every partition; the edge forwards to the real leaders
//! over gRPC. Records stay bytes: Produce hands the client's RecordBatch v2
//! bytes to ingest, Fetch returns the bytes the storage nodes read. The edge
//! keeps no durable state.
//!
//! - [`frame`]: framing, header parsing, the served API/version table, and
//!   response encoding (message types from the `kafka-protocol` crate);
//! - [`schema`]: a structural check of request bodies against Apache Kafka's
//!   message schemas before decoding, so a lying count cannot size an
//!   allocation;
//! - [`conn`]: a connection's loop and state;
//! - `api`: the request router, one handler per API key;
//! - [`registry`]: edges finding each other through the metastore;
//! - [`server`]: [`serve`], the accept loop with connection limits and
//!   graceful shutdown.

mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod frame;
pub mod registry;
pub mod schema;
pub mod server;
pub mod state;

pub use config::EdgeConfig;
pub use error::EdgeError;
pub use server::serve;
