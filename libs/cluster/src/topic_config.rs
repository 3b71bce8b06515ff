//! Topic names and per-topic configs: the keys runnel knows, their types,
//! defaults and validation. Names and defaults follow Kafka's so that admin
//! tools and clients that set them keep working; every value is checked when a
//! topic is created or altered, and a bad one is refused with a message that
//! says which key and why.

use std::collections::BTreeMap;

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("unknown topic config {0:?}")]
    UnknownConfig(String),
    #[error("invalid value {value:?} for topic config {key:?}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// Checks a topic name by Kafka's rules: 1–249 characters of ASCII letters,
/// digits, '.', '_' and '-', and not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| {
        Err(ConfigError::InvalidTopicName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad(&format!("longer than {MAX_TOPIC_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use ASCII letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Internal topics (consumer offsets, schemas) start with "__" or are "_schemas".
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name == "_schemas"
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A signed integer with a minimum.
    Long(i64),
    /// A double with a range.
    Ratio,
    Bool,
    CleanupPolicy,
    TimestampType,
    Compression,
    /// Free-form (replica throttle lists).
    Text,
}

/// The topic configs runnel accepts, with Kafka's defaults.
const KNOWN: &[(&str, Kind, &str)] = &[
    ("cleanup.policy", Kind::CleanupPolicy, "delete"),
    ("compression.type", Kind::Compression, "producer"),
    ("delete.retention.ms", Kind::Long(0), "86400000"),
    ("file.delete.delay.ms", Kind::Long(0), "60000"),
    ("flush.messages", Kind::Long(1), "9223372036854775807"),
    ("flush.ms", Kind::Long(0), "9223372036854775807"),
    ("follower.replication.throttled.replicas", Kind::Text, ""),
    ("index.interval.bytes", Kind::Long(0), "4096"),
    ("leader.replication.throttled.replicas", Kind::Text, ""),
    ("local.retention.bytes", Kind::Long(-2), "-2"),
    ("local.retention.ms", Kind::Long(-2), "-2"),
    (
        "max.compaction.lag.ms",
        Kind::Long(1),
        "9223372036854775807",
    ),
    ("max.message.bytes", Kind::Long(0), "1048588"),
    ("message.downconversion.enable", Kind::Bool, "true"),
    (
        "message.timestamp.after.max.ms",
        Kind::Long(0),
        "9223372036854775807",
    ),
    (
        "message.timestamp.before.max.ms",
        Kind::Long(0),
        "9223372036854775807",
    ),
    (
        "message.timestamp.difference.max.ms",
        Kind::Long(0),
        "9223372036854775807",
    ),
    ("message.timestamp.type", Kind::TimestampType, "CreateTime"),
    ("min.cleanable.dirty.ratio", Kind::Ratio, "0.5"),
    ("min.compaction.lag.ms", Kind::Long(0), "0"),
    ("min.insync.replicas", Kind::Long(1), "1"),
    ("preallocate", Kind::Bool, "false"),
    ("remote.storage.enable", Kind::Bool, "false"),
    ("retention.bytes", Kind::Long(-1), "-1"),
    ("retention.ms", Kind::Long(-1), "604800000"),
    ("segment.bytes", Kind::Long(14), "1073741824"),
    ("segment.index.bytes", Kind::Long(4), "10485760"),
    ("segment.jitter.ms", Kind::Long(0), "0"),
    ("segment.ms", Kind::Long(1), "604800000"),
    ("unclean.leader.election.enable", Kind::Bool, "false"),
];

fn lookup(key: &str) -> Option<(Kind, &'static str)> {
    KNOWN
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, kind, default)| (*kind, *default))
}

/// Every known config key with its default value, in key order.
pub fn defaults() -> impl Iterator<Item = (&'static str, &'static str)> {
    KNOWN.iter().map(|(k, _, d)| (*k, *d))
}

/// The default value of a known key.
pub fn default_of(key: &str) -> Option<&'static str> {
    lookup(key).map(|(_, d)| d)
}

/// Checks one key and value.
pub fn validate_entry(key: &str, value: &str) -> Result<(), ConfigError> {
    let (kind, _) = lookup(key).ok_or_else(|| ConfigError::UnknownConfig(key.to_string()))?;
    let invalid = |reason: String| ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    match kind {
        Kind::Long(min) => {
            let n: i64 = v
                .parse()
                .map_err(|_| invalid("expected an integer".into()))?;
            if n < min {
                return Err(invalid(format!("must be at least {min}")));
            }
        }
        Kind::Ratio => {
            let n: f64 = v.parse().map_err(|_| invalid("expected a number".into()))?;
            if !(0.0..=1.0).contains(&n) {
                return Err(invalid("must be between 0 and 1".into()));
            }
        }
        Kind::Bool => {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                return Err(invalid("expected true or false".into()));
            }
        }
        Kind::CleanupPolicy => {
            let parts: Vec<&str> = v.split(',').map(str::trim).collect();
            if parts.is_empty() || parts.iter().any(|p| !matches!(*p, "delete" | "compact")) {
                return Err(invalid("expected delete, compact or compact,delete".into()));
            }
        }
        Kind::TimestampType => {
            if v != "CreateTime" && v != "LogAppendTime" {
                return Err(invalid("expected CreateTime or LogAppendTime".into()));
            }
        }
        Kind::Compression => {
            if !matches!(
                v,
                "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd"
            ) {
                return Err(invalid(
                    "expected producer, uncompressed, gzip, snappy, lz4 or zstd".into(),
                ));
            }
        }
        Kind::Text => {}
    }
    Ok(())
}

/// Checks every entry of a config map.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    configs.iter().try_for_each(|(k, v)| validate_entry(k, v))
}

/// The configs the storage and ingest paths act on, resolved against the
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub max_message_bytes: usize,
    pub min_insync_replicas: i32,
    pub log_append_time: bool,
    pub compact: bool,
    pub delete: bool,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    /// A replica outside the ISR may lead when no ISR member is live
    /// (losing what it lacks).
    pub unclean_leader_election: bool,
}

// The one float, `min_cleanable_dirty_ratio`, is validated to lie in
// [0, 1] (never NaN), so equality is reflexive.
impl Eq for TopicConfig {}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig::resolve(&BTreeMap::new())
    }
}

impl TopicConfig {
    /// Resolves a (validated) config map; malformed values fall back to the
    /// default, as they cannot pass validation in the first place.
    pub fn resolve(configs: &BTreeMap<String, String>) -> Self {
        let get = |key: &str| -> &str {
            configs
                .get(key)
                .map(String::as_str)
                .or_else(|| default_of(key))
                .unwrap_or_default()
        };
        let long = |key: &str| -> i64 {
            get(key)
                .trim()
                .parse()
                .or_else(|_| default_of(key).unwrap_or("0").parse())
                .unwrap_or(0)
        };
        let policy = get("cleanup.policy");
        TopicConfig {
            retention_ms: long("retention.ms"),
            retention_bytes: long("retention.bytes"),
            segment_bytes: long("segment.bytes").max(14) as u64,
            segment_ms: long("segment.ms"),
            max_message_bytes: long("max.message.bytes").max(0) as usize,
            min_insync_replicas: long("min.insync.replicas").clamp(1, i32::MAX as i64) as i32,
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            compact: policy.contains("compact"),
            delete: policy.contains("delete"),
            delete_retention_ms: long("delete.retention.ms"),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                .trim()
                .parse()
                .unwrap_or(0.5),
            min_compaction_lag_ms: long("min.compaction.lag.ms"),
            max_compaction_lag_ms: long("max.compaction.lag.ms"),
            unclean_leader_election: get("unclean.leader.election.enable") == "true",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "ü"] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn configs_are_checked() {
        let ok = |k: &str, v: &str| validate_entry(k, v).is_ok();
        assert!(ok("retention.ms", "-1"));
        assert!(!ok("retention.ms", "-2"));
        assert!(!ok("retention.ms", "soon"));
        assert!(ok("cleanup.policy", "compact,delete"));
        assert!(!ok("cleanup.policy", "archive"));
        assert!(ok("message.timestamp.type", "LogAppendTime"));
        assert!(!ok("message.timestamp.type", "Now"));
        assert!(!ok("min.insync.replicas", "0"));
        assert_eq!(
            validate_entry("retention.mss", "1"),
            Err(ConfigError::UnknownConfig("retention.mss".into()))
        );
    }

    #[test]
    fn resolves_with_defaults() {
        let mut m = BTreeMap::new();
        m.insert("segment.bytes".to_string(), "1048576".to_string());
        m.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let c = TopicConfig::resolve(&m);
        assert_eq!(c.segment_bytes, 1_048_576);
        assert!(c.log_append_time);
        assert_eq!(c.max_message_bytes, 1_048_588);
        assert!(c.delete && !c.compact);
    }
}
