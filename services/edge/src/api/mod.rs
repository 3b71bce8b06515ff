//! The request router: one handler per API key. Handlers take the decoded
//! request and its version and build the typed response; the router encodes
//! it with the header version the API dictates.

mod admin;
mod configs;
mod consumer_group;
mod delete_records;
mod fetch;
mod groups;
mod log_dirs;
mod metadata;
mod offsets;
mod offsets_commit;
mod partitions;
pub mod produce;
mod producer_id;
mod versions;

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Encodable, HeaderVersion};

use crate::conn::ConnState;
use crate::error::ProtocolError;
use crate::frame::{Request, encode_response};
use crate::state::Edge;

/// One request in flight: the shared edge, the connection it came on, and
/// the first error code its response carries (for metrics).
pub struct Ctx<'a> {
    pub edge: &'a Edge,
    pub conn: &'a mut ConnState,
    pub error: i16,
}

impl Ctx<'_> {
    /// Notes an error code set in the response (the first one counts).
    pub fn note(&mut self, code: i16) {
        if self.error == 0 && code != 0 {
            self.error = code;
        }
    }
}

fn encode<T: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Option<BytesMut>, ProtocolError> {
    encode_response(api, version, correlation_id, body).map(Some)
}

/// Handles one request; `None` when the request gets no response (Produce
/// with acks=0).
pub async fn dispatch(
    ctx: &mut Ctx<'_>,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: Request,
) -> Result<Option<BytesMut>, ProtocolError> {
    let cid = correlation_id;
    match request {
        Request::ApiVersions(r) => encode(api, version, cid, &versions::handle(ctx, r, version)),
        Request::Metadata(r) => encode(api, version, cid, &metadata::handle(ctx, r, version).await),
        Request::Produce(r) => match produce::handle(ctx, r, version).await {
            Some(resp) => encode(api, version, cid, &resp),
            None => Ok(None),
        },
        Request::Fetch(r) => encode(api, version, cid, &fetch::handle(ctx, r, version).await),
        Request::ListOffsets(r) => {
            encode(api, version, cid, &offsets::handle(ctx, r, version).await)
        }
        Request::CreateTopics(r) => encode(
            api,
            version,
            cid,
            &admin::create_topics(ctx, r, version).await,
        ),
        Request::DeleteTopics(r) => encode(
            api,
            version,
            cid,
            &admin::delete_topics(ctx, r, version).await,
        ),
        Request::DescribeConfigs(r) => {
            encode(api, version, cid, &admin::describe_configs(ctx, r, version))
        }
        Request::DescribeCluster(r) => {
            encode(api, version, cid, &admin::describe_cluster(ctx, r, version))
        }
        Request::InitProducerId(r) => {
            encode(api, version, cid, &producer_id::handle(ctx, r, version))
        }
        Request::CreatePartitions(r) => encode(
            api,
            version,
            cid,
            &partitions::create_partitions(ctx, r, version).await,
        ),
        Request::AlterConfigs(r) => encode(
            api,
            version,
            cid,
            &configs::alter_configs(ctx, r, version).await,
        ),
        Request::IncrementalAlterConfigs(r) => encode(
            api,
            version,
            cid,
            &configs::incremental_alter_configs(ctx, r, version).await,
        ),
        Request::DescribeLogDirs(r) => encode(
            api,
            version,
            cid,
            &log_dirs::describe_log_dirs(ctx, r, version).await,
        ),
        Request::FindCoordinator(r) => encode(
            api,
            version,
            cid,
            &groups::find_coordinator(ctx, r, version),
        ),
        Request::JoinGroup(r) => encode(api, version, cid, &groups::join(ctx, r, version).await),
        Request::SyncGroup(r) => encode(api, version, cid, &groups::sync(ctx, r, version).await),
        Request::Heartbeat(r) => {
            encode(api, version, cid, &groups::heartbeat(ctx, r, version).await)
        }
        Request::LeaveGroup(r) => encode(api, version, cid, &groups::leave(ctx, r, version).await),
        Request::OffsetCommit(r) => encode(
            api,
            version,
            cid,
            &offsets_commit::commit(ctx, r, version).await,
        ),
        Request::OffsetFetch(r) => encode(
            api,
            version,
            cid,
            &offsets_commit::fetch(ctx, r, version).await,
        ),
        Request::ListGroups(r) => encode(api, version, cid, &groups::list(ctx, r, version).await),
        Request::DescribeGroups(r) => {
            encode(api, version, cid, &groups::describe(ctx, r, version).await)
        }
        Request::DeleteGroups(r) => {
            encode(api, version, cid, &groups::delete(ctx, r, version).await)
        }
        Request::OffsetDelete(r) => encode(
            api,
            version,
            cid,
            &offsets_commit::delete(ctx, r, version).await,
        ),
        Request::ConsumerGroupHeartbeat(r) => encode(
            api,
            version,
            cid,
            &consumer_group::heartbeat(ctx, r, version).await,
        ),
        Request::DeleteRecords(r) => encode(
            api,
            version,
            cid,
            &delete_records::handle(ctx, r, version).await,
        ),
    }
}
