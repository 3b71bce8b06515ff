//! A structural check of request bodies before the `kafka-protocol` crate
//! decodes them.
//!
//! The crate's array decoders call `Vec::with_capacity(n)` with the element
//! count read off the wire (kafka-protocol-rs PRs #152/#161/#200, unmerged in
//! 0.18). A few bytes claiming two billion elements make it reserve tens of
//! gigabytes; when the allocator refuses, the process aborts — no panic to
//! catch. So before decoding, the edge walks the body with Apache Kafka's own
//! message schemas (the JSON files in `services/edge/schemas/`, the same
//! source the crate is generated from) and refuses any array whose count
//! could not fit in the bytes that remain (every element has a minimum wire
//! size). Decoding then allocates in proportion to bytes actually received.
//!
//! Tagged fields the crate knows it decodes straight from the stream,
//! ignoring their declared size, so a known tagged field must fill its size
//! exactly; otherwise the crate would read on from a place this walk did not
//! check. (Found by the `request` fuzz target in `services/edge/fuzz`.)
//!
//! This is not a second codec: it reads nothing but lengths and counts, and
//! only for the request types the edge serves.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

/// The request schemas the edge decodes, as shipped by Apache Kafka.
const SOURCES: &[&str] = &[
    include_str!("../schemas/ApiVersionsRequest.json"),
    include_str!("../schemas/MetadataRequest.json"),
    include_str!("../schemas/ProduceRequest.json"),
    include_str!("../schemas/FetchRequest.json"),
    include_str!("../schemas/ListOffsetsRequest.json"),
    include_str!("../schemas/CreateTopicsRequest.json"),
    include_str!("../schemas/DeleteTopicsRequest.json"),
    include_str!("../schemas/DescribeConfigsRequest.json"),
    include_str!("../schemas/DescribeClusterRequest.json"),
    include_str!("../schemas/InitProducerIdRequest.json"),
    include_str!("../schemas/CreatePartitionsRequest.json"),
    include_str!("../schemas/AlterConfigsRequest.json"),
    include_str!("../schemas/IncrementalAlterConfigsRequest.json"),
    include_str!("../schemas/DescribeLogDirsRequest.json"),
    include_str!("../schemas/FindCoordinatorRequest.json"),
    include_str!("../schemas/JoinGroupRequest.json"),
    include_str!("../schemas/SyncGroupRequest.json"),
    include_str!("../schemas/HeartbeatRequest.json"),
    include_str!("../schemas/LeaveGroupRequest.json"),
    include_str!("../schemas/OffsetCommitRequest.json"),
    include_str!("../schemas/OffsetFetchRequest.json"),
    include_str!("../schemas/ListGroupsRequest.json"),
    include_str!("../schemas/DescribeGroupsRequest.json"),
    include_str!("../schemas/DeleteGroupsRequest.json"),
    include_str!("../schemas/OffsetDeleteRequest.json"),
    include_str!("../schemas/ConsumerGroupHeartbeatRequest.json"),
    include_str!("../schemas/DeleteRecordsRequest.json"),
];

/// An inclusive version range; `None` means "no version".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Versions(Option<(i16, i16)>);

impl Versions {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Versions(None));
        }
        if let Some(min) = s.strip_suffix('+') {
            let min = min.parse().map_err(|_| format!("bad versions {s:?}"))?;
            return Ok(Versions(Some((min, i16::MAX))));
        }
        if let Some((a, b)) = s.split_once('-') {
            let a = a.parse().map_err(|_| format!("bad versions {s:?}"))?;
            let b = b.parse().map_err(|_| format!("bad versions {s:?}"))?;
            return Ok(Versions(Some((a, b))));
        }
        let v = s.parse().map_err(|_| format!("bad versions {s:?}"))?;
        Ok(Versions(Some((v, v))))
    }

    fn contains(&self, v: i16) -> bool {
        self.0.is_some_and(|(a, b)| a <= v && v <= b)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Fixed(usize),
    String,
    Bytes,
    Array(Box<Kind>),
    Struct(Vec<Field>),
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: Kind,
    versions: Versions,
    tagged: Versions,
    /// The tag of a tagged field.
    tag: Option<u32>,
}

#[derive(Debug, Clone)]
struct Schema {
    name: String,
    valid: Versions,
    flexible: Versions,
    fields: Vec<Field>,
}

fn primitive(t: &str) -> Option<Kind> {
    Some(match t {
        "bool" | "int8" => Kind::Fixed(1),
        "int16" | "uint16" => Kind::Fixed(2),
        "int32" | "uint32" => Kind::Fixed(4),
        "int64" | "float64" => Kind::Fixed(8),
        "uuid" => Kind::Fixed(16),
        "string" => Kind::String,
        "bytes" | "records" => Kind::Bytes,
        _ => return None,
    })
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_fields(v: &Value) -> Result<Vec<Field>, String> {
    let Some(list) = v.get("fields").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter().map(parse_field).collect()
}

fn parse_field(v: &Value) -> Result<Field, String> {
    let name = str_of(v, "name").ok_or("field without a name")?.to_string();
    let t = str_of(v, "type").ok_or_else(|| format!("field {name} without a type"))?;
    let kind = if let Some(elem) = t.strip_prefix("[]") {
        match primitive(elem) {
            Some(k) => Kind::Array(Box::new(k)),
            None => Kind::Array(Box::new(Kind::Struct(parse_fields(v)?))),
        }
    } else {
        match primitive(t) {
            Some(k) => k,
            None => Kind::Struct(parse_fields(v)?),
        }
    };
    let versions = Versions::parse(str_of(v, "versions").unwrap_or("none"))?;
    let tagged = Versions::parse(str_of(v, "taggedVersions").unwrap_or("none"))?;
    let tag = match v.get("tag") {
        None => None,
        Some(t) => Some(
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| format!("field {name}: bad tag {t}"))?,
        ),
    };
    Ok(Field {
        name,
        kind,
        versions,
        tagged,
        tag,
    })
}

/// Drops the `//` comment lines Kafka's schema files carry.
fn strip_comments(src: &str) -> String {
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_schema(src: &str) -> Result<(i16, Schema), String> {
    let v: Value = serde_json::from_str(&strip_comments(src)).map_err(|e| e.to_string())?;
    let name = str_of(&v, "name")
        .ok_or("schema without a name")?
        .to_string();
    let api_key = v
        .get("apiKey")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("{name}: no apiKey"))? as i16;
    Ok((
        api_key,
        Schema {
            valid: Versions::parse(str_of(&v, "validVersions").unwrap_or("none"))?,
            flexible: Versions::parse(str_of(&v, "flexibleVersions").unwrap_or("none"))?,
            fields: parse_fields(&v)?,
            name,
        },
    ))
}

static SCHEMAS: LazyLock<Result<HashMap<i16, Schema>, String>> =
    LazyLock::new(|| SOURCES.iter().map(|s| parse_schema(s)).collect());

/// Checks the body of a request of `api_key` at `version`: every length and
/// count must fit in what remains. Request types without a schema here are
/// refused (the edge does not decode them).
pub fn check(api_key: i16, version: i16, body: &[u8]) -> Result<(), String> {
    let schemas = SCHEMAS
        .as_ref()
        .map_err(|e| format!("request schemas unavailable: {e}"))?;
    let schema = schemas
        .get(&api_key)
        .ok_or_else(|| format!("no schema for API key {api_key}"))?;
    if !schema.valid.contains(version) {
        return Err(format!("{} has no version {version}", schema.name));
    }
    let mut walker = Walker {
        buf: body,
        version,
        flexible: schema.flexible.contains(version),
    };
    walker
        .fields(&schema.fields)
        .map_err(|e| format!("{}: {e}", schema.name))
}

struct Walker<'a> {
    buf: &'a [u8],
    version: i16,
    flexible: bool,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<(), String> {
        if n > self.buf.len() {
            return Err(format!(
                "needs {n} bytes, {} remain in the frame",
                self.buf.len()
            ));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or_else(|| "truncated".to_string())?;
        self.buf = rest;
        Ok(*head)
    }

    fn uvarint(&mut self) -> Result<u32, String> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let [b] = self.fixed::<1>()?;
            value |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 5 bytes".into())
    }

    /// A length or count: `None` for null.
    fn length(&mut self, wide: bool) -> Result<Option<usize>, String> {
        let n: i64 = if self.flexible {
            self.uvarint()? as i64 - 1
        } else if wide {
            i32::from_be_bytes(self.fixed::<4>()?) as i64
        } else {
            i16::from_be_bytes(self.fixed::<2>()?) as i64
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(format!("negative length {n}")),
            n => Ok(Some(n as usize)),
        }
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), String> {
        for f in fields {
            if !f.versions.contains(self.version)
                || (self.flexible && f.tagged.contains(self.version))
            {
                continue;
            }
            self.kind(&f.kind).map_err(|e| format!("{}: {e}", f.name))?;
        }
        if self.flexible {
            let count = self.uvarint()? as usize;
            if count.saturating_mul(2) > self.buf.len() {
                return Err(format!(
                    "{count} tagged fields cannot fit in {} bytes",
                    self.buf.len()
                ));
            }
            for _ in 0..count {
                let tag = self.uvarint()?;
                let size = self.uvarint()? as usize;
                if size > self.buf.len() {
                    return Err(format!(
                        "tagged field {tag} of {size} bytes; {} remain in the frame",
                        self.buf.len()
                    ));
                }
                let (value, rest) = self.buf.split_at(size);
                // The crate decodes a tagged field it knows straight from the
                // stream and ignores the size declared for it; unknown tags
                // it skips by their size. A known field's value must
                // therefore fill its declared size exactly, or the crate and
                // this walk would go on at different places (and the crate
                // would decode counts this walk never saw).
                if let Some(f) = fields.iter().find(|f| {
                    f.tag == Some(tag)
                        && f.versions.contains(self.version)
                        && f.tagged.contains(self.version)
                }) {
                    let mut inner = Walker {
                        buf: value,
                        version: self.version,
                        flexible: self.flexible,
                    };
                    inner
                        .kind(&f.kind)
                        .map_err(|e| format!("{}: {e}", f.name))?;
                    if !inner.buf.is_empty() {
                        return Err(format!(
                            "tagged field {} declares {size} bytes but holds {}",
                            f.name,
                            size - inner.buf.len()
                        ));
                    }
                }
                self.buf = rest;
            }
        }
        Ok(())
    }

    fn kind(&mut self, kind: &Kind) -> Result<(), String> {
        match kind {
            Kind::Fixed(n) => self.take(*n),
            Kind::String => match self.length(false)? {
                Some(n) => self.take(n),
                None => Ok(()),
            },
            Kind::Bytes => match self.length(true)? {
                Some(n) => self.take(n),
                None => Ok(()),
            },
            Kind::Array(elem) => {
                let Some(n) = self.length(true)? else {
                    return Ok(());
                };
                let min = min_size(elem, self.version, self.flexible).max(1);
                if n.saturating_mul(min) > self.buf.len() {
                    return Err(format!(
                        "array of {n} elements cannot fit in the {} bytes left",
                        self.buf.len()
                    ));
                }
                for _ in 0..n {
                    self.kind(elem)?;
                }
                Ok(())
            }
            Kind::Struct(fields) => self.fields(fields),
        }
    }
}

/// The fewest bytes an encoded value of `kind` takes.
fn min_size(kind: &Kind, version: i16, flexible: bool) -> usize {
    match kind {
        Kind::Fixed(n) => *n,
        Kind::String => {
            if flexible {
                1
            } else {
                2
            }
        }
        Kind::Bytes | Kind::Array(_) => {
            if flexible {
                1
            } else {
                4
            }
        }
        Kind::Struct(fields) => {
            let own: usize = fields
                .iter()
                .filter(|f| {
                    f.versions.contains(version) && !(flexible && f.tagged.contains(version))
                })
                .map(|f| min_size(&f.kind, version, flexible))
                .sum();
            own + usize::from(flexible)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn schemas() -> &'static HashMap<i16, Schema> {
        SCHEMAS.as_ref().expect("schemas parse")
    }

    #[test]
    fn every_schema_parses() {
        let s = schemas();
        for key in [
            0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 32, 33, 35, 37, 42, 44,
            47, 60, 68,
        ] {
            assert!(s.contains_key(&key), "API key {key}");
        }
    }

    /// A known tagged field whose declared size differs from its value's:
    /// the crate would decode the value and go on where this walk does not
    /// (found by the `request` fuzz target: a Fetch v17 whose
    /// ReplicaDirectoryId declared 0 bytes: the crate read 16 anyway, and then
    /// a forgotten-topics count this walk never saw made it reserve 270 GB).
    #[test]
    fn known_tagged_fields_must_fill_their_size() {
        let part = FetchPartition::default()
            .with_partition(0)
            .with_replica_directory_id(uuid::Uuid::from_u128(7));
        let fetch = FetchRequest::default().with_topics(vec![
            FetchTopic::default()
                .with_topic_id(uuid::Uuid::from_u128(1))
                .with_partitions(vec![part]),
        ]);
        let body = encoded(&fetch, 17).to_vec();
        check(1, 17, &body).unwrap();
        // The partition's tagged fields: count 1, tag 0, size 16, the uuid.
        let at = body
            .windows(3)
            .position(|w| w == [1, 0, 16])
            .expect("the tagged uuid");
        let mut short = body.clone();
        short[at + 2] = 15;
        assert!(check(1, 17, &short).is_err());
        let mut long = body.clone();
        long[at + 2] = 17;
        long.insert(at + 3 + 16, 0);
        assert!(check(1, 17, &long).is_err());
        // Unknown tags are skipped by their size.
        let mut unknown = body.clone();
        unknown[at + 1] = 5;
        check(1, 17, &unknown).unwrap();
    }

    fn encoded<T: Encodable>(msg: &T, version: i16) -> BytesMut {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf, version).unwrap();
        buf
    }

    #[test]
    fn accepts_what_the_crate_encodes() {
        let topic = MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))));
        let md = MetadataRequest::default().with_topics(Some(vec![topic]));
        for v in 0..=12 {
            check(3, v, &encoded(&md, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let part = FetchPartition::default()
            .with_partition(3)
            .with_fetch_offset(42)
            .with_partition_max_bytes(1 << 20);
        let fetch = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![part]),
            ]);
        for v in 4..=17 {
            check(1, v, &encoded(&fetch, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from_static(b"abc"))),
                    ]),
            ]);
        for v in 3..=11 {
            check(0, v, &encoded(&produce, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
    }

    #[test]
    fn accepts_the_admin_requests_the_crate_encodes() {
        use kafka_protocol::messages::create_partitions_request::{
            CreatePartitionsAssignment, CreatePartitionsTopic,
        };
        use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
        let s = |v: &'static str| StrBytes::from_static_str(v);
        let cp = CreatePartitionsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_count(4)
                    .with_assignments(Some(vec![
                        CreatePartitionsAssignment::default()
                            .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                    ])),
                CreatePartitionsTopic::default()
                    .with_name(TopicName(s("u")))
                    .with_count(2),
            ]);
        for v in 0..=3 {
            check(37, v, &encoded(&cp, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let ac = AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("t"))
                .with_configs(vec![
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("1"))),
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s("segment.ms"))
                        .with_value(None),
                ]),
        ]);
        for v in 0..=2 {
            check(33, v, &encoded(&ac, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let iac = IncrementalAlterConfigsRequest::default()
            .with_validate_only(true)
            .with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_config_operation(2)
                            .with_value(Some(s("compact"))),
                    ]),
            ]);
        for v in 0..=1 {
            check(44, v, &encoded(&iac, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let dld = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(s("t")))
                .with_partitions(vec![0, 1, 2]),
        ]));
        for v in 1..=4 {
            check(35, v, &encoded(&dld, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
            let all = DescribeLogDirsRequest::default().with_topics(None);
            check(35, v, &encoded(&all, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        // A partition list that claims more entries than the frame holds.
        let mut body = encoded(&dld, 1).to_vec();
        // v1: topics count (4), name (2 + 1), partitions count (4).
        body[7..11].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(check(35, 1, &body).is_err());
    }

    /// DeleteRecords as admin clients send it passes at every served
    /// version; a partition count larger than the body is refused.
    #[test]
    fn accepts_delete_records_as_the_crate_encodes_it() {
        use kafka_protocol::messages::delete_records_request::{
            DeleteRecordsPartition, DeleteRecordsTopic,
        };
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![
                DeleteRecordsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![
                        DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(42),
                        DeleteRecordsPartition::default()
                            .with_partition_index(1)
                            .with_offset(-1),
                    ]),
            ]);
        for v in 0..=2 {
            check(21, v, &encoded(&req, v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        }
        let mut body = encoded(&req, 0).to_vec();
        // v0: topics count (4), name (2 + 1), partitions count (4).
        body[7..11].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(check(21, 0, &body).is_err());
    }

    /// The consumer-group requests, filled in as clients send them, pass the
    /// walk at every version served, and the crate decodes exactly the bytes
    /// the walk accepted.
    #[test]
    fn accepts_the_group_requests_the_crate_encodes() {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        use kafka_protocol::messages::leave_group_request::MemberIdentity;
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        use kafka_protocol::messages::offset_fetch_request::{
            OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
        };
        use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
        use kafka_protocol::protocol::Decodable;
        let s = |v: &'static str| StrBytes::from_static_str(v);
        let g = || GroupId(s("group-1"));
        fn walk_and_decode<T: Encodable + Decodable>(key: i16, msg: &T, v: i16) {
            let body = encoded(msg, v).freeze();
            check(key, v, &body).unwrap_or_else(|e| panic!("api {key} v{v}: {e}"));
            let mut rest = body.clone();
            T::decode(&mut rest, v).unwrap_or_else(|e| panic!("api {key} v{v}: {e}"));
            assert!(rest.is_empty(), "api {key} v{v}: bytes left");
        }
        for v in 0..=4 {
            let mut fc = FindCoordinatorRequest::default();
            if v >= 4 {
                fc.coordinator_keys = vec![s("a"), s("b")];
            } else {
                fc.key = s("group-1");
            }
            walk_and_decode(10, &fc, v);
        }
        for v in 0..=9 {
            let mut jg = JoinGroupRequest::default()
                .with_group_id(g())
                .with_session_timeout_ms(10_000)
                .with_member_id(s("m"))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(bytes::Bytes::from_static(b"\0\x01abc")),
                    JoinGroupRequestProtocol::default().with_name(s("cooperative-sticky")),
                ]);
            if v >= 1 {
                jg.rebalance_timeout_ms = 30_000;
            }
            if v >= 5 {
                jg.group_instance_id = Some(s("i"));
            }
            if v >= 8 {
                jg.reason = Some(s("why"));
            }
            walk_and_decode(11, &jg, v);
        }
        for v in 0..=5 {
            let mut sg = SyncGroupRequest::default()
                .with_group_id(g())
                .with_generation_id(1)
                .with_member_id(s("m"))
                .with_assignments(vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s("m"))
                        .with_assignment(bytes::Bytes::from_static(b"xyz")),
                ]);
            if v >= 3 {
                sg.group_instance_id = Some(s("i"));
            }
            if v >= 5 {
                sg.protocol_type = Some(s("consumer"));
                sg.protocol_name = Some(s("range"));
            }
            walk_and_decode(14, &sg, v);
        }
        for v in 0..=4 {
            let mut hb = HeartbeatRequest::default()
                .with_group_id(g())
                .with_generation_id(1)
                .with_member_id(s("m"));
            if v >= 3 {
                hb.group_instance_id = Some(s("i"));
            }
            walk_and_decode(12, &hb, v);
        }
        for v in 0..=5 {
            let mut lg = LeaveGroupRequest::default().with_group_id(g());
            if v >= 3 {
                let mut m = MemberIdentity::default()
                    .with_member_id(s("m"))
                    .with_group_instance_id(Some(s("i")));
                if v >= 5 {
                    m.reason = Some(s("bye"));
                }
                lg.members = vec![m, MemberIdentity::default().with_member_id(s("n"))];
            } else {
                lg.member_id = s("m");
            }
            walk_and_decode(13, &lg, v);
        }
        for v in 2..=9 {
            let mut oc = OffsetCommitRequest::default()
                .with_group_id(g())
                .with_generation_id_or_member_epoch(3)
                .with_member_id(s("m"))
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(42)
                                .with_committed_metadata(Some(s("meta"))),
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(1)
                                .with_committed_offset(7)
                                .with_committed_metadata(None),
                        ]),
                ]);
            if v <= 4 {
                oc.retention_time_ms = 1000;
            }
            if v >= 7 {
                oc.group_instance_id = Some(s("i"));
            }
            walk_and_decode(8, &oc, v);
        }
        for v in 1..=9 {
            let topics = vec![
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0, 1, 2]),
            ];
            let mut of = OffsetFetchRequest::default();
            if v >= 8 {
                of.groups = vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(g())
                        .with_topics(Some(vec![
                            OffsetFetchRequestTopics::default()
                                .with_name(TopicName(s("t")))
                                .with_partition_indexes(vec![0]),
                        ])),
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s("all")))
                        .with_topics(None),
                ];
                if v >= 9 {
                    // KIP-848: the member asking.
                    of.groups[0].member_id = Some(s("m"));
                    of.groups[0].member_epoch = 4;
                }
                of.require_stable = true;
            } else {
                of.group_id = g();
                of.topics = Some(topics);
                if v >= 7 {
                    of.require_stable = true;
                }
            }
            walk_and_decode(9, &of, v);
            if (2..8).contains(&v) {
                let all = OffsetFetchRequest::default()
                    .with_group_id(g())
                    .with_topics(None);
                walk_and_decode(9, &all, v);
            }
        }
        for v in 0..=4 {
            let mut lg = ListGroupsRequest::default();
            if v >= 4 {
                lg.states_filter = vec![s("Stable"), s("Empty")];
            }
            walk_and_decode(16, &lg, v);
        }
        for v in 0..=5 {
            let mut dg = DescribeGroupsRequest::default().with_groups(vec![g(), GroupId(s(""))]);
            if v >= 3 {
                dg.include_authorized_operations = true;
            }
            walk_and_decode(15, &dg, v);
        }
        for v in 0..=2 {
            let dg = DeleteGroupsRequest::default().with_groups_names(vec![g(), GroupId(s("x"))]);
            walk_and_decode(42, &dg, v);
        }
        let od = OffsetDeleteRequest::default()
            .with_group_id(g())
            .with_topics(vec![
                OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(3),
                    ]),
            ]);
        walk_and_decode(47, &od, 0);
        for v in 0..=1 {
            use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
            let full = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(g())
                .with_member_id(s("m"))
                .with_member_epoch(0)
                .with_instance_id(Some(s("i")))
                .with_rack_id(Some(s("r")))
                .with_rebalance_timeout_ms(30_000)
                .with_subscribed_topic_names(Some(vec![TopicName(s("a")), TopicName(s("b"))]))
                .with_subscribed_topic_regex((v >= 1).then(|| s("a.*")))
                .with_server_assignor(Some(s("uniform")))
                .with_topic_partitions(Some(vec![
                    TopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_u128(1))
                        .with_partitions(vec![0, 2]),
                ]));
            walk_and_decode(68, &full, v);
            // A steady heartbeat: everything unchanged is null.
            let steady = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(g())
                .with_member_id(s("m"))
                .with_member_epoch(3);
            walk_and_decode(68, &steady, v);
        }
        // ConsumerGroupHeartbeat v0 whose owned-partitions count claims
        // 2^28 entries: group id (1 + 7), member id (1 + 1), epoch (4),
        // null instance and rack ids, rebalance timeout (4), null topic
        // names, null assignor, then the compact array's count.
        let hb = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(g())
            .with_member_id(s("m"))
            .with_topic_partitions(Some(vec![]));
        let mut body = encoded(&hb, 0).to_vec();
        let at = 8 + 2 + 4 + 1 + 1 + 4 + 1 + 1;
        assert_eq!(body[at], 1, "an empty compact array");
        body.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x01]);
        assert!(check(68, 0, &body).is_err());

        // JoinGroup v5 whose protocol list claims i32::MAX entries: group
        // id (2 + 7), session timeout, rebalance timeout, member id (2 + 1),
        // a null instance id, protocol type (2 + 8), then the count.
        let jg = JoinGroupRequest::default()
            .with_group_id(g())
            .with_member_id(s("m"))
            .with_protocol_type(s("consumer"));
        let mut body = encoded(&jg, 5).to_vec();
        let at = 9 + 4 + 4 + 3 + 2 + 10;
        assert_eq!(&body[at..at + 4], &[0, 0, 0, 0]);
        body[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(check(11, 5, &body).is_err());
        // OffsetCommit v8 (flexible) whose topic count claims 2^28 entries.
        let oc = OffsetCommitRequest::default().with_group_id(g());
        let mut body = encoded(&oc, 8).to_vec();
        // group id (1 + 7), generation (4), member id (1), instance id (1).
        let at = 8 + 4 + 1 + 1;
        assert_eq!(body[at], 1, "an empty compact array");
        body.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x01]);
        assert!(check(8, 8, &body).is_err());
    }

    /// Every API the edge serves has a schema covering every version served.
    #[test]
    fn every_served_version_has_a_schema() {
        for &(api, min, max) in crate::frame::SUPPORTED {
            let schema = schemas()
                .get(&(api as i16))
                .unwrap_or_else(|| panic!("no schema for {api:?}"));
            for v in min..=max {
                assert!(schema.valid.contains(v), "{api:?} v{v}");
            }
        }
    }

    #[test]
    fn refuses_impossible_counts() {
        // Metadata v1: topics array claiming i32::MAX entries.
        let body = [0x7f, 0xff, 0xff, 0xff, 0, 1];
        assert!(check(3, 1, &body).is_err());
        // Metadata v9 (flexible): compact array claiming 2^28 entries.
        let body = [0x80, 0x80, 0x80, 0x80, 0x01, 0, 0, 0];
        assert!(check(3, 9, &body).is_err());
        // Truncated.
        assert!(check(3, 1, &[0, 0]).is_err());
        // Unknown API key.
        assert!(check(11, 0, &[]).is_err());
    }
}
