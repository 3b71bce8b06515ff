//! The durable side of a shard: records in partition `k` of
//! `__consumer_offsets`, written through the partition's storage leader with
//! `acks=all` and read back in full when a node takes the shard over.
//!
//! A record's key is an encoded [`pb::GroupRecordKey`] (an offset of a group
//! for one partition, or a group's membership); its value the matching
//! [`pb::OffsetValue`] or [`pb::GroupValue`], or null to delete the key. Only
//! the newest record per key counts, so compaction may drop older ones.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use runnel_cluster::{MetadataWatcher, OFFSETS_TOPIC};
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::groups::v1 as pb;
use runnel_proto::storage::v1 as storage;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use runnel_records::{Compression, PlainRecord};

use crate::group::code;

/// One change to a shard's stored state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        /// `None` deletes the offset.
        value: Option<pb::OffsetValue>,
    },
    Group {
        group: String,
        /// `None` deletes the group's membership record.
        value: Option<pb::GroupValue>,
    },
    /// A KIP-848 consumer group's state.
    ConsumerGroup {
        group: String,
        value: Option<pb::ConsumerGroupValue>,
    },
}

impl Change {
    /// The record that stores this change.
    pub fn to_record(&self) -> (Bytes, Option<Bytes>) {
        let (key, value) = match self {
            Change::Offset {
                group,
                topic,
                partition,
                value,
            } => (
                pb::group_record_key::Key::Offset(pb::OffsetKey {
                    group_id: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                }),
                value.as_ref().map(|v| Bytes::from(v.encode_to_vec())),
            ),
            Change::Group { group, value } => (
                pb::group_record_key::Key::Group(pb::GroupKey {
                    group_id: group.clone(),
                }),
                value.as_ref().map(|v| Bytes::from(v.encode_to_vec())),
            ),
            Change::ConsumerGroup { group, value } => (
                pb::group_record_key::Key::ConsumerGroup(pb::GroupKey {
                    group_id: group.clone(),
                }),
                value.as_ref().map(|v| Bytes::from(v.encode_to_vec())),
            ),
        };
        let key = pb::GroupRecordKey { key: Some(key) }.encode_to_vec();
        (Bytes::from(key), value)
    }

    /// Reads a record back; `None` for a record this version does not know.
    pub fn from_record(key: &[u8], value: Option<&[u8]>) -> Option<Change> {
        let key = pb::GroupRecordKey::decode(key).ok()?.key?;
        Some(match key {
            pb::group_record_key::Key::Offset(k) => Change::Offset {
                group: k.group_id,
                topic: k.topic,
                partition: k.partition,
                value: match value {
                    Some(v) => Some(pb::OffsetValue::decode(v).ok()?),
                    None => None,
                },
            },
            pb::group_record_key::Key::Group(k) => Change::Group {
                group: k.group_id,
                value: match value {
                    Some(v) => Some(pb::GroupValue::decode(v).ok()?),
                    None => None,
                },
            },
            pb::group_record_key::Key::ConsumerGroup(k) => Change::ConsumerGroup {
                group: k.group_id,
                value: match value {
                    Some(v) => Some(pb::ConsumerGroupValue::decode(v).ok()?),
                    None => None,
                },
            },
        })
    }
}

/// What a shard's records say, newest record per key.
#[derive(Debug, Default)]
pub struct Stored {
    pub offsets: GroupOffsets,
    pub groups: HashMap<String, pb::GroupValue>,
    pub consumer_groups: HashMap<String, pb::ConsumerGroupValue>,
}

impl Stored {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Offset {
                group,
                topic,
                partition,
                value,
            } => apply_offset(&mut self.offsets, group, topic, partition, value),
            Change::Group {
                group,
                value: Some(v),
            } => {
                self.groups.insert(group, v);
            }
            Change::Group { group, value: None } => {
                self.groups.remove(&group);
            }
            Change::ConsumerGroup {
                group,
                value: Some(v),
            } => {
                self.consumer_groups.insert(group, v);
            }
            Change::ConsumerGroup { group, value: None } => {
                self.consumer_groups.remove(&group);
            }
        }
    }
}

/// Committed offsets by group, then topic and partition.
pub type GroupOffsets = HashMap<String, BTreeMap<(String, i32), pb::OffsetValue>>;

/// Sets (or with `None` deletes) one committed offset; a group with no
/// offsets left is dropped from the map.
pub fn apply_offset(
    offsets: &mut GroupOffsets,
    group: String,
    topic: String,
    partition: i32,
    value: Option<pb::OffsetValue>,
) {
    match value {
        Some(v) => {
            offsets
                .entry(group)
                .or_default()
                .insert((topic, partition), v);
        }
        None => {
            if let Some(o) = offsets.get_mut(&group) {
                o.remove(&(topic, partition));
                if o.is_empty() {
                    offsets.remove(&group);
                }
            }
        }
    }
}

/// Reads and writes the shards' partitions through their storage leaders.
#[derive(Debug, Clone)]
pub struct Journal {
    pub watcher: std::sync::Arc<MetadataWatcher>,
    pub pool: runnel_rpc::ChannelPool,
    pub timeout: Duration,
    /// This groups node: appends are refused once the metadata says another
    /// node (or none) owns the shard.
    pub node_id: i32,
}

/// A failed journal operation, as the Kafka code to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

fn unavailable(message: impl Into<String>) -> JournalError {
    JournalError {
        code: code::COORDINATOR_NOT_AVAILABLE,
        message: message.into(),
    }
}

impl Journal {
    fn leader(
        &self,
        shard: i32,
    ) -> Result<StorageServiceClient<tonic::transport::Channel>, JournalError> {
        let md = self.watcher.current();
        let node = md
            .leader_node(OFFSETS_TOPIC, shard)
            .ok_or_else(|| unavailable(format!("{OFFSETS_TOPIC}-{shard} has no live leader")))?;
        let channel = self
            .pool
            .get(&node.address)
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(StorageServiceClient::new(channel)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES))
    }

    /// Appends the changes as one batch with `acks=all`; Ok once durable.
    pub async fn append(&self, shard: i32, changes: &[Change]) -> Result<(), JournalError> {
        // A node that lost the shard (its lease lapsed, or it handed the
        // shard over) must not write behind the new owner's back. This
        // narrows the window to the metadata watch's delay; it is not a
        // fence at the storage node.
        let owner = self
            .watcher
            .current()
            .group_shards
            .get(&shard)
            .map(|o| o.node_id);
        if owner != Some(self.node_id) {
            return Err(JournalError {
                code: code::NOT_COORDINATOR,
                message: format!("shard {shard} is no longer owned by node {}", self.node_id),
            });
        }
        let now = runnel_cluster::now_ms();
        let records: Vec<PlainRecord> = changes
            .iter()
            .map(|c| {
                let (key, value) = c.to_record();
                PlainRecord {
                    key: Some(key),
                    value,
                    headers: Vec::new(),
                    timestamp_ms: now,
                }
            })
            .collect();
        let batch =
            runnel_records::build_batch(&records, Compression::None).map_err(|e| JournalError {
                code: code::UNKNOWN_SERVER_ERROR,
                message: e.to_string(),
            })?;
        let mut client = self.leader(shard)?;
        let mut call = tonic::Request::new(storage::AppendRequest {
            partitions: vec![storage::PartitionBatches {
                topic: OFFSETS_TOPIC.into(),
                partition: shard,
                batches: batch,
            }],
            acks: -1,
            timeout_ms: self.timeout.as_millis() as u32,
        });
        call.set_timeout(self.timeout);
        let resp = client
            .append(call)
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        let result = resp
            .results
            .into_iter()
            .next()
            .ok_or_else(|| unavailable("empty append answer"))?;
        match result.error() {
            ErrorCode::None => Ok(()),
            e => Err(JournalError {
                code: storage_code(e),
                message: format!("{OFFSETS_TOPIC}-{shard}: {:?} {}", e, result.error_message),
            }),
        }
    }

    /// Reads the whole partition of a shard: what a new owner starts from.
    pub async fn load(&self, shard: i32) -> Result<(Stored, u64), JournalError> {
        let mut stored = Stored::default();
        let mut records = 0u64;
        let mut offset = 0i64;
        loop {
            let mut client = self.leader(shard)?;
            let mut call = tonic::Request::new(storage::FetchRequest {
                partitions: vec![storage::PartitionFetch {
                    topic: OFFSETS_TOPIC.into(),
                    partition: shard,
                    offset,
                    max_bytes: 8 * 1024 * 1024,
                }],
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 8 * 1024 * 1024,
            });
            call.set_timeout(self.timeout);
            let resp = client
                .fetch(call)
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            let r = resp
                .results
                .into_iter()
                .next()
                .ok_or_else(|| unavailable("empty fetch answer"))?;
            match r.error() {
                ErrorCode::None => {}
                // Compaction or retention moved the start: read from there.
                ErrorCode::OffsetOutOfRange if offset < r.log_start_offset => {
                    offset = r.log_start_offset;
                    continue;
                }
                e => {
                    return Err(JournalError {
                        code: storage_code(e),
                        message: format!(
                            "loading {OFFSETS_TOPIC}-{shard}: {e:?} {}",
                            r.error_message
                        ),
                    });
                }
            }
            if offset >= r.high_watermark || r.records.is_empty() {
                return Ok((stored, records));
            }
            let decoded = runnel_records::decode_records(r.records).map_err(|e| JournalError {
                code: code::UNKNOWN_SERVER_ERROR,
                message: format!("{OFFSETS_TOPIC}-{shard} at {offset}: {e}"),
            })?;
            let Some(last) = decoded.last().map(|r| r.offset) else {
                return Ok((stored, records));
            };
            for rec in decoded {
                if rec.offset < offset {
                    continue;
                }
                let Some(key) = rec.key else { continue };
                match Change::from_record(&key, rec.value.as_deref()) {
                    Some(change) => stored.apply(change),
                    None => {
                        tracing::warn!(shard, offset = rec.offset, "skipping an unreadable record")
                    }
                }
                records += 1;
            }
            offset = last + 1;
        }
    }
}

fn status_error(s: &tonic::Status) -> JournalError {
    let code = match s.code() {
        tonic::Code::DeadlineExceeded => code::REQUEST_TIMED_OUT,
        _ => code::COORDINATOR_NOT_AVAILABLE,
    };
    JournalError {
        code,
        message: format!("storage: {}", s.message()),
    }
}

/// Kafka maps a failed write of group data to the codes that make clients
/// look for the coordinator again (or retry), not to storage errors.
fn storage_code(e: ErrorCode) -> i32 {
    match e {
        ErrorCode::NotLeaderOrFollower => code::NOT_COORDINATOR,
        ErrorCode::RequestTimedOut => code::REQUEST_TIMED_OUT,
        ErrorCode::MessageTooLarge | ErrorCode::InvalidRecord | ErrorCode::CorruptMessage => {
            code::UNKNOWN_SERVER_ERROR
        }
        _ => code::COORDINATOR_NOT_AVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_newest_wins() {
        let offset = |o: i64| pb::OffsetValue {
            offset: o,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 7,
        };
        let changes = vec![
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 1,
                value: Some(offset(5)),
            },
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 1,
                value: Some(offset(9)),
            },
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                value: Some(offset(1)),
            },
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                value: None,
            },
            Change::Group {
                group: "g".into(),
                value: Some(pb::GroupValue {
                    generation_id: 4,
                    ..Default::default()
                }),
            },
        ];
        let mut stored = Stored::default();
        for c in &changes {
            let (k, v) = c.to_record();
            let back = Change::from_record(&k, v.as_deref()).unwrap();
            assert_eq!(&back, c);
            stored.apply(back);
        }
        let g = &stored.offsets["g"];
        assert_eq!(g.len(), 1);
        assert_eq!(g[&("t".to_string(), 1)].offset, 9);
        assert_eq!(stored.groups["g"].generation_id, 4);
        // The same key encodes to the same bytes (compaction keys on them).
        assert_eq!(changes[0].to_record().0, changes[1].to_record().0);
        assert!(Change::from_record(b"\xff\xff", None).is_none());
    }
}
