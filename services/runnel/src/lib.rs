//! The pieces behind the `runnel` binary, as a library so tests and the
//! benchmark start exactly what users start:
//! - [`settings`]: layered configuration (defaults → TOML file → `RUNNEL_*`
//!   environment → CLI flags);
//! - [`dev`]: every role in one process on an embedded metastore, talking
//!   gRPC over loopback like a real deployment;
//! - [`perf`]: the produce/consume benchmark with its same-run disk baseline;
//! - [`group_cli`]: `runnel group …`, consumer-group administration;
//! - [`partitions_cli`]: `runnel partitions …`, reassignment and preferred
//!   leaders.

use anyhow::Context;

pub mod dev;
pub mod group_cli;
pub mod partitions_cli;
pub mod perf;
pub mod settings;

/// A time given as RFC 3339 or as epoch milliseconds, in milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("invalid time {s:?}: use RFC 3339 or milliseconds"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64)
}
