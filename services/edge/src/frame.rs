//! Kafka request framing: a 4-byte big-endian length, then the request
//! header and body. Reading grows the buffer with the bytes that actually
//! arrive (a claimed length never sizes an allocation), parsing checks the
//! header and the body's structure before the `kafka-protocol` crate decodes
//! it, and encoding writes the response header version the API dictates.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ProtocolError;

/// api key (2) + api version (2) + correlation id (4): every header has them.
pub const MIN_FRAME: usize = 8;

/// Largest chunk the read buffer grows by before more bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

/// The APIs the edge serves and the versions it accepts; ApiVersions
/// advertises exactly this table. Append new APIs at the end: the `request`
/// fuzz target (and its regression inputs) pick an API by index here.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    // Consumer groups, forwarded to the groups node owning the group
    // (api/groups.rs). OffsetCommit v0-1 and OffsetFetch v0 are gone from
    // the kafka-protocol crate (Kafka 4.0 removed them, KIP-896).
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // KIP-848 consumer groups (api/consumer_group.rs).
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    // Log start offsets moved up on the partition leaders.
    (ApiKey::DeleteRecords, 0, 2),
];

/// The version range the edge accepts for an API, if it serves it.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

/// A short, stable name of an API for metrics and spans.
pub fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::DeleteRecords => "DeleteRecords",
        _ => "other",
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, ProtocolError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut len_buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let claimed = i32::from_be_bytes(len_buf);
    if claimed < MIN_FRAME as i32 {
        return Err(ProtocolError::BadLength(claimed));
    }
    let len = claimed as usize;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    let mut frame = BytesMut::with_capacity(len.min(READ_CHUNK));
    while frame.len() < len {
        if frame.capacity() == frame.len() {
            frame.reserve((len - frame.len()).min(frame.len().max(READ_CHUNK)));
        }
        let room = (frame.capacity() - frame.len()).min(len - frame.len());
        let n = (&mut *reader)
            .take(room as u64)
            .read_buf(&mut frame)
            .await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some(frame.freeze()))
}

/// A decoded request body of an API the edge serves.
#[derive(Debug)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    ApiVersions(ApiVersionsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    CreatePartitions(CreatePartitionsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeLogDirs(DescribeLogDirsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest),
    DeleteRecords(DeleteRecordsRequest),
}

/// What a frame turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A request the edge serves.
    Request {
        api: ApiKey,
        version: i16,
        header: RequestHeader,
        request: Box<Request>,
    },
    /// An ApiVersions request of a version the edge does not know: answer
    /// UNSUPPORTED_VERSION with a v0 body (the client then retries with a
    /// version from the list).
    UnsupportedApiVersions { correlation_id: i32, version: i16 },
}

fn malformed(api: ApiKey, version: i16, reason: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Malformed {
        api,
        version,
        reason: reason.to_string(),
    }
}

/// Parses a whole frame (without its length prefix). Never panics; an error
/// means the connection should be closed.
pub fn parse_request(frame: Bytes) -> Result<Parsed, ProtocolError> {
    if frame.len() < MIN_FRAME {
        return Err(ProtocolError::BadLength(frame.len() as i32));
    }
    let mut fixed = &frame[..MIN_FRAME];
    let key = fixed.get_i16();
    let version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api = ApiKey::try_from(key).map_err(|_| ProtocolError::UnknownApiKey(key))?;
    let Some((min, max)) = supported(api) else {
        return Err(ProtocolError::UnsupportedVersion { api, version });
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::UnsupportedApiVersions {
                correlation_id,
                version,
            });
        }
        return Err(ProtocolError::UnsupportedVersion { api, version });
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| malformed(api, version, format!("header: {e}")))?;
    crate::schema::check(key, version, &buf).map_err(|e| malformed(api, version, e))?;
    fn body<T: Decodable>(buf: &mut Bytes, api: ApiKey, version: i16) -> Result<T, ProtocolError> {
        let value = T::decode(buf, version).map_err(|e| malformed(api, version, e))?;
        if buf.has_remaining() {
            // Kafka brokers ignore bytes after a complete body, and some
            // clients send them (librdkafka 2.x, Metadata v12 for all
            // topics), so the edge ignores them too.
            tracing::debug!(
                ?api,
                version,
                extra = buf.remaining(),
                "bytes after the request body ignored"
            );
        }
        Ok(value)
    }
    let request = match api {
        ApiKey::Produce => Request::Produce(body(&mut buf, api, version)?),
        ApiKey::Fetch => Request::Fetch(body(&mut buf, api, version)?),
        ApiKey::ListOffsets => Request::ListOffsets(body(&mut buf, api, version)?),
        ApiKey::Metadata => Request::Metadata(body(&mut buf, api, version)?),
        ApiKey::ApiVersions => Request::ApiVersions(body(&mut buf, api, version)?),
        ApiKey::CreateTopics => Request::CreateTopics(body(&mut buf, api, version)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(body(&mut buf, api, version)?),
        ApiKey::InitProducerId => Request::InitProducerId(body(&mut buf, api, version)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(body(&mut buf, api, version)?),
        ApiKey::DescribeCluster => Request::DescribeCluster(body(&mut buf, api, version)?),
        ApiKey::CreatePartitions => Request::CreatePartitions(body(&mut buf, api, version)?),
        ApiKey::AlterConfigs => Request::AlterConfigs(body(&mut buf, api, version)?),
        ApiKey::IncrementalAlterConfigs => {
            Request::IncrementalAlterConfigs(body(&mut buf, api, version)?)
        }
        ApiKey::DescribeLogDirs => Request::DescribeLogDirs(body(&mut buf, api, version)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(body(&mut buf, api, version)?),
        ApiKey::JoinGroup => Request::JoinGroup(body(&mut buf, api, version)?),
        ApiKey::SyncGroup => Request::SyncGroup(body(&mut buf, api, version)?),
        ApiKey::Heartbeat => Request::Heartbeat(body(&mut buf, api, version)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(body(&mut buf, api, version)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(body(&mut buf, api, version)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(body(&mut buf, api, version)?),
        ApiKey::ListGroups => Request::ListGroups(body(&mut buf, api, version)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(body(&mut buf, api, version)?),
        ApiKey::DeleteGroups => Request::DeleteGroups(body(&mut buf, api, version)?),
        ApiKey::OffsetDelete => Request::OffsetDelete(body(&mut buf, api, version)?),
        ApiKey::ConsumerGroupHeartbeat => {
            Request::ConsumerGroupHeartbeat(body(&mut buf, api, version)?)
        }
        ApiKey::DeleteRecords => Request::DeleteRecords(body(&mut buf, api, version)?),
        _ => return Err(ProtocolError::UnsupportedVersion { api, version }),
    };
    Ok(Parsed::Request {
        api,
        version,
        header,
        request: Box::new(request),
    })
}

/// Encodes a response with its length prefix and header.
pub fn encode_response<T: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, ProtocolError> {
    // ApiVersions answers with header v0 whatever the version (so a client
    // can always read it); the crate's table says so too.
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        T::header_version(version)
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let fail = |reason: String| ProtocolError::Encode {
        api,
        version,
        reason,
    };
    let size = header
        .compute_size(header_version)
        .map_err(|e| fail(e.to_string()))?
        + body
            .compute_size(version)
            .map_err(|e| fail(e.to_string()))?;
    let len = i32::try_from(size).map_err(|_| fail(format!("response of {size} bytes")))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(len);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| fail(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| fail(e.to_string()))?;
    Ok(buf)
}

/// The v0 ApiVersions answer to a version the edge does not know.
pub fn unsupported_api_versions(correlation_id: i32) -> Result<BytesMut, ProtocolError> {
    let body = ApiVersionsResponse::default()
        .with_error_code(crate::error::code::UNSUPPORTED_VERSION)
        .with_api_keys(api_version_list());
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

/// The advertised API table.
pub fn api_version_list() -> Vec<api_versions_response::ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            api_versions_response::ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

/// A string as the crate's message types hold it.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn frame(api: i16, version: i16, cid: i32, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(api);
        b.put_i16(version);
        b.put_i32(cid);
        b.extend_from_slice(rest);
        b.freeze()
    }

    #[test]
    fn unknown_api_key_is_an_error() {
        assert!(matches!(
            parse_request(frame(999, 0, 1, &[0xff, 0xff])),
            Err(ProtocolError::UnknownApiKey(999))
        ));
    }

    #[test]
    fn unsupported_api_versions_version_is_answered() {
        match parse_request(frame(18, 99, 7, &[])).unwrap() {
            Parsed::UnsupportedApiVersions { correlation_id, .. } => assert_eq!(correlation_id, 7),
            other => panic!("{other:?}"),
        }
        let out = unsupported_api_versions(7).unwrap();
        let mut b = out.freeze();
        let len = b.get_i32() as usize;
        assert_eq!(len, b.len());
        assert_eq!(b.get_i32(), 7); // header v0: correlation id only
        let resp = ApiVersionsResponse::decode(&mut b, 0).unwrap();
        assert_eq!(resp.error_code, 35);
        assert!(resp.api_keys.iter().any(|k| k.api_key == 18));
    }

    #[test]
    fn garbage_instead_of_a_body_is_refused() {
        // ApiVersions v0: header v1 (client id null), empty body.
        let ok = frame(18, 0, 1, &[0xff, 0xff]);
        assert!(matches!(parse_request(ok), Ok(Parsed::Request { .. })));
        // Bytes after a complete body are ignored, as Kafka does.
        let trailing = frame(18, 0, 1, &[0xff, 0xff, 1, 2, 3]);
        assert!(matches!(
            parse_request(trailing),
            Ok(Parsed::Request { .. })
        ));
        // Metadata v1 whose body is junk: a string length running past the end.
        let junk = frame(3, 1, 1, &[0xff, 0xff, 0, 0, 0, 1, 0x7f, 0xff, 1]);
        assert!(matches!(
            parse_request(junk),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    /// Every served API and version parses what the crate encodes (default
    /// bodies, a client id, the header version the API dictates).
    #[test]
    fn every_served_version_parses_a_well_formed_request() {
        fn encoded<T: Encodable + Default + HeaderVersion>(api: ApiKey, version: i16) -> Bytes {
            let header = RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(9)
                .with_client_id(Some(StrBytes::from_static_str("test")));
            let mut b = BytesMut::new();
            header
                .encode(&mut b, api.request_header_version(version))
                .unwrap();
            T::default().encode(&mut b, version).unwrap();
            b.freeze()
        }
        for &(api, min, max) in SUPPORTED {
            for v in min..=max {
                let frame = match api {
                    ApiKey::Produce => encoded::<ProduceRequest>(api, v),
                    ApiKey::Fetch => encoded::<FetchRequest>(api, v),
                    ApiKey::ListOffsets => encoded::<ListOffsetsRequest>(api, v),
                    ApiKey::Metadata => encoded::<MetadataRequest>(api, v),
                    ApiKey::ApiVersions => encoded::<ApiVersionsRequest>(api, v),
                    ApiKey::CreateTopics => encoded::<CreateTopicsRequest>(api, v),
                    ApiKey::DeleteTopics => encoded::<DeleteTopicsRequest>(api, v),
                    ApiKey::InitProducerId => encoded::<InitProducerIdRequest>(api, v),
                    ApiKey::DescribeConfigs => encoded::<DescribeConfigsRequest>(api, v),
                    ApiKey::DescribeCluster => encoded::<DescribeClusterRequest>(api, v),
                    ApiKey::CreatePartitions => encoded::<CreatePartitionsRequest>(api, v),
                    ApiKey::AlterConfigs => encoded::<AlterConfigsRequest>(api, v),
                    ApiKey::IncrementalAlterConfigs => {
                        encoded::<IncrementalAlterConfigsRequest>(api, v)
                    }
                    ApiKey::DescribeLogDirs => encoded::<DescribeLogDirsRequest>(api, v),
                    ApiKey::FindCoordinator => encoded::<FindCoordinatorRequest>(api, v),
                    ApiKey::JoinGroup => encoded::<JoinGroupRequest>(api, v),
                    ApiKey::SyncGroup => encoded::<SyncGroupRequest>(api, v),
                    ApiKey::Heartbeat => encoded::<HeartbeatRequest>(api, v),
                    ApiKey::LeaveGroup => encoded::<LeaveGroupRequest>(api, v),
                    ApiKey::OffsetCommit => encoded::<OffsetCommitRequest>(api, v),
                    ApiKey::OffsetFetch => encoded::<OffsetFetchRequest>(api, v),
                    ApiKey::ListGroups => encoded::<ListGroupsRequest>(api, v),
                    ApiKey::DescribeGroups => encoded::<DescribeGroupsRequest>(api, v),
                    ApiKey::DeleteGroups => encoded::<DeleteGroupsRequest>(api, v),
                    ApiKey::OffsetDelete => encoded::<OffsetDeleteRequest>(api, v),
                    ApiKey::ConsumerGroupHeartbeat => {
                        encoded::<ConsumerGroupHeartbeatRequest>(api, v)
                    }
                    ApiKey::DeleteRecords => encoded::<DeleteRecordsRequest>(api, v),
                    other => panic!("{other:?} served but not tested"),
                };
                match parse_request(frame) {
                    Ok(Parsed::Request {
                        api: got,
                        version,
                        header,
                        ..
                    }) => {
                        assert_eq!((got, version), (api, v));
                        assert_eq!(header.correlation_id, 9);
                    }
                    other => panic!("{api:?} v{v}: {other:?}"),
                }
                assert_ne!(api_name(api), "other", "{api:?}");
            }
        }
    }

    /// Inputs the `request` fuzz target found (services/edge/fuzz), built
    /// into a frame the way that target does, must parse or be refused
    /// without a runaway allocation.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions/request");
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let [pick, v, mode, rest @ ..] = &data[..] else {
                continue;
            };
            let (api, min, max) = SUPPORTED[*pick as usize % SUPPORTED.len()];
            let version = min + (v % (max - min + 1) as u8) as i16;
            let mut b = BytesMut::new();
            if mode & 1 == 0 {
                b.put_i16(api as i16);
                b.put_i16(version);
                b.put_i32(1);
            } else {
                RequestHeader::default()
                    .with_request_api_key(api as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(1)
                    .with_client_id(Some(StrBytes::from_static_str("fuzz")))
                    .encode(&mut b, api.request_header_version(version))
                    .unwrap();
            }
            b.extend_from_slice(rest);
            let _ = parse_request(b.freeze());
            replayed += 1;
        }
        assert!(replayed > 0, "no inputs in {dir}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz over every served API and version.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for &(api, min, max) in SUPPORTED {
            for version in min..=max {
                for _ in 0..300 {
                    let len = (next() % 64) as usize;
                    let rest: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    let _ = parse_request(frame(api as i16, version, 1, &rest));
                }
            }
        }
    }
}
