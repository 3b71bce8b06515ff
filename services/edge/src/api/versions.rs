//! ApiVersions: the table of APIs and versions the edge serves.

use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::Ctx;
use crate::frame::api_version_list;

pub fn handle(ctx: &mut Ctx<'_>, req: ApiVersionsRequest, version: i16) -> ApiVersionsResponse {
    if version >= 3 && !req.client_software_name.is_empty() {
        tracing::debug!(
            peer = %ctx.conn.peer,
            client = %req.client_software_name.as_str(),
            client_version = %req.client_software_version.as_str(),
            "client identified"
        );
        ctx.conn.software = Some(format!(
            "{}/{}",
            req.client_software_name.as_str(),
            req.client_software_version.as_str()
        ));
    }
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_version_list())
}
