//! The pieces behind the `runnel` binary, as a library so tests and the
//! benchmark start exactly what users start:
//! - [`settings`]: layered configuration (defaults → TOML file → `RUNNEL_*`
//!   environment → CLI flags);
//! - [`dev`]: every role in one process on an embedded metastore, talking
//!   gRPC over loopback like a real deployment;
//! - [`perf`]: the produce/consume benchmark with its same-run disk baseline.

pub mod dev;
pub mod perf;
pub mod settings;
