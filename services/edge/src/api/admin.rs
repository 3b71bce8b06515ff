//! Administration: CreateTopics and DeleteTopics through the coordinator,
//! DescribeConfigs from the watched metadata (topic configs with their
//! defaults), DescribeCluster with the live edges as brokers.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use runnel_cluster::topic_config::{self, validate_entry, validate_topic_name};
use runnel_proto::coordinator::v1 as coord;
use uuid::Uuid;

use super::Ctx;
use super::metadata::{CLUSTER_OPERATIONS, topic_uuid};
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::{Edge, KafkaError};

/// Kafka's ConfigResource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
pub const RESOURCE_BROKER_LOGGER: i8 = 8;

/// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's ConfigType values (DescribeConfigs v3+).
fn config_type(key: &str) -> i8 {
    const BOOLEAN: i8 = 1;
    const STRING: i8 = 2;
    const INT: i8 = 3;
    const LONG: i8 = 5;
    const DOUBLE: i8 = 6;
    const LIST: i8 = 7;
    match key {
        "message.downconversion.enable"
        | "preallocate"
        | "remote.storage.enable"
        | "unclean.leader.election.enable" => BOOLEAN,
        "compression.type" | "message.timestamp.type" => STRING,
        "max.message.bytes"
        | "min.insync.replicas"
        | "segment.bytes"
        | "segment.index.bytes"
        | "index.interval.bytes" => INT,
        "min.cleanable.dirty.ratio" => DOUBLE,
        "cleanup.policy"
        | "follower.replication.throttled.replicas"
        | "leader.replication.throttled.replicas" => LIST,
        _ => LONG,
    }
}

fn opt_str(s: &str) -> Option<StrBytes> {
    Some(str_bytes(s))
}

/// Every known topic config: the value set on the topic, else the default.
fn topic_configs(set: &BTreeMap<String, String>) -> Vec<(&'static str, String, bool)> {
    topic_config::defaults()
        .map(|(key, default)| match set.get(key) {
            Some(v) => (key, v.clone(), false),
            None => (key, default.to_string(), true),
        })
        .collect()
}

pub async fn create_topics(
    ctx: &mut Ctx<'_>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let edge = ctx.edge;
    let mut seen: HashSet<String> = HashSet::new();
    let duplicates: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let outcome = if duplicates.contains(&name) {
            Err(KafkaError::new(
                code::INVALID_REQUEST,
                format!("topic {name:?} appears more than once in the request"),
            ))
        } else {
            create_one(edge, &name, t, req.validate_only).await
        };
        let result = match outcome {
            Ok(info) => {
                if !req.validate_only && req.timeout_ms > 0 {
                    let wait = Duration::from_millis(req.timeout_ms as u64);
                    if !edge.wait_for_topic(&name, wait).await {
                        tracing::debug!(topic = %name, "created topic not ready within the timeout");
                    }
                }
                let configs: BTreeMap<String, String> = info.configs.into_iter().collect();
                let mut r = CreatableTopicResult::default()
                    .with_name(TopicName(str_bytes(name.clone())))
                    .with_error_code(code::NONE)
                    .with_error_message(None)
                    .with_num_partitions(info.partition_count)
                    .with_replication_factor(info.replication_factor as i16);
                if version >= 7 {
                    r.topic_id = Uuid::parse_str(&info.topic_id).unwrap_or(Uuid::nil());
                }
                r.configs = Some(
                    topic_configs(&configs)
                        .into_iter()
                        .map(|(key, value, is_default)| {
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(key))
                                .with_value(opt_str(&value))
                                .with_config_source(if is_default {
                                    SOURCE_DEFAULT
                                } else {
                                    SOURCE_TOPIC
                                })
                        })
                        .collect(),
                );
                r
            }
            Err(e) => {
                ctx.note(e.code);
                CreatableTopicResult::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message)))
                    .with_configs(None)
            }
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_one(
    edge: &Edge,
    name: &str,
    t: create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<coord::TopicInfo, KafkaError> {
    validate_topic_name(name)
        .map_err(|e| KafkaError::new(code::INVALID_TOPIC_EXCEPTION, e.to_string()))?;
    if !t.assignments.is_empty() {
        return Err(KafkaError::new(
            code::INVALID_REPLICA_ASSIGNMENT,
            "manual replica assignments are not supported; give a partition count and replication factor",
        ));
    }
    let partitions = match t.num_partitions {
        -1 => edge.config.default_partitions.max(1),
        n if n > 0 => n,
        n => {
            return Err(KafkaError::new(
                code::INVALID_PARTITIONS,
                format!("invalid partition count {n}: must be at least 1"),
            ));
        }
    };
    let replication_factor = match t.replication_factor {
        -1 => 0,
        n if n > 0 => n as i32,
        n => {
            return Err(KafkaError::new(
                code::INVALID_REPLICATION_FACTOR,
                format!("invalid replication factor {n}: must be at least 1"),
            ));
        }
    };
    let mut configs = std::collections::HashMap::new();
    for c in t.configs {
        let key = c.name.to_string();
        let Some(value) = c.value else {
            return Err(KafkaError::new(
                code::INVALID_CONFIG,
                format!("topic config {key:?} has a null value"),
            ));
        };
        validate_entry(&key, &value)
            .map_err(|e| KafkaError::new(code::INVALID_CONFIG, e.to_string()))?;
        configs.insert(key, value.to_string());
    }
    edge.create_topic(coord::CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor,
        configs,
        validate_only,
    })
    .await
}

pub async fn delete_topics(
    ctx: &mut Ctx<'_>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    // (name if known, id as asked)
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| match &t.name {
                Some(n) => (Some(n.0.to_string()), t.topic_id),
                None => (
                    md.topics
                        .values()
                        .find(|s| topic_uuid(s) == t.topic_id)
                        .map(|s| s.record.name.clone()),
                    t.topic_id,
                ),
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let outcome = match &name {
            None => Err(KafkaError::new(
                code::UNKNOWN_TOPIC_ID,
                "no topic has this id",
            )),
            Some(name) => delete_one(edge, name, req.timeout_ms).await,
        };
        let topic_id = match (&name, version >= 6) {
            (Some(n), true) => md.topic(n).map(topic_uuid).unwrap_or(id),
            _ => Uuid::nil(),
        };
        let mut r = DeletableTopicResult::default()
            .with_name(name.map(|n| TopicName(str_bytes(n))))
            .with_topic_id(topic_id);
        if let Err(e) = outcome {
            ctx.note(e.code);
            r.error_code = e.code;
            r.error_message = Some(str_bytes(e.message));
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

async fn delete_one(edge: &Edge, name: &str, timeout_ms: i32) -> Result<(), KafkaError> {
    let mut client = edge.coordinator()?;
    let mut call = tonic::Request::new(coord::DeleteTopicRequest {
        name: name.to_string(),
    });
    call.set_timeout(edge.rpc_timeout());
    if let Err(s) = client.delete_topic(call).await {
        let code = match s.code() {
            tonic::Code::NotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
            tonic::Code::Unavailable => code::NOT_CONTROLLER,
            tonic::Code::DeadlineExceeded => code::REQUEST_TIMED_OUT,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                code::POLICY_VIOLATION
            }
            _ => code::UNKNOWN_SERVER_ERROR,
        };
        return Err(KafkaError::new(code, s.message()));
    }
    if timeout_ms > 0 {
        let wait = Duration::from_millis(timeout_ms as u64);
        edge.watcher
            .wait_until(wait, |md| md.topic(name).is_none())
            .await;
    }
    Ok(())
}

pub fn describe_configs(
    ctx: &mut Ctx<'_>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let name = r.resource_name.to_string();
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone())
            .with_error_message(None);
        match r.resource_type {
            RESOURCE_TOPIC => match md.topic(&name) {
                None => {
                    let error = if validate_topic_name(&name).is_err() {
                        code::INVALID_TOPIC_EXCEPTION
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    result.error_code = error;
                    result.error_message =
                        Some(str_bytes(format!("topic {name:?} does not exist")));
                }
                Some(t) => {
                    // Null or empty: every key (as Kafka's ConfigHelper).
                    let keys: Option<HashSet<String>> = r
                        .configuration_keys
                        .filter(|ks| !ks.is_empty())
                        .map(|ks| ks.iter().map(|k| k.to_string()).collect());
                    result.configs = topic_configs(&t.record.configs)
                        .into_iter()
                        .filter(|(key, _, _)| keys.as_ref().is_none_or(|ks| ks.contains(*key)))
                        .map(|(key, value, is_default)| {
                            let source = if is_default {
                                SOURCE_DEFAULT
                            } else {
                                SOURCE_TOPIC
                            };
                            let mut c = DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(key))
                                .with_value(opt_str(&value))
                                .with_config_source(source)
                                .with_documentation(None);
                            if version >= 1 && req.include_synonyms {
                                let mut synonyms = vec![
                                    DescribeConfigsSynonym::default()
                                        .with_name(str_bytes(key))
                                        .with_value(opt_str(&value))
                                        .with_source(source),
                                ];
                                if !is_default && let Some(d) = topic_config::default_of(key) {
                                    synonyms.push(
                                        DescribeConfigsSynonym::default()
                                            .with_name(str_bytes(key))
                                            .with_value(opt_str(d))
                                            .with_source(SOURCE_DEFAULT),
                                    );
                                }
                                c.synonyms = synonyms;
                            }
                            if version >= 3 {
                                c.config_type = config_type(key);
                            }
                            c
                        })
                        .collect();
                }
            },
            RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => {
                // Broker-level configs live in each role's own settings;
                // none are exposed through Kafka's API yet.
                if name
                    .parse::<i32>()
                    .ok()
                    .is_some_and(|id| !edge.brokers().contains_key(&id))
                    && !name.is_empty()
                {
                    result.error_code = code::INVALID_REQUEST;
                    result.error_message = Some(str_bytes(format!("no broker {name}")));
                }
            }
            other => {
                result.error_code = code::INVALID_REQUEST;
                result.error_message =
                    Some(str_bytes(format!("resource type {other} is not supported")));
            }
        }
        ctx.note(result.error_code);
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

pub fn describe_cluster(
    ctx: &mut Ctx<'_>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    if version >= 1 && req.endpoint_type != 1 {
        ctx.note(code::UNSUPPORTED_ENDPOINT_TYPE);
        return DescribeClusterResponse::default()
            .with_endpoint_type(req.endpoint_type)
            .with_error_code(code::UNSUPPORTED_ENDPOINT_TYPE)
            .with_error_message(Some(str_bytes("only broker endpoints are served")));
    }
    let brokers = edge
        .brokers()
        .into_values()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(str_bytes(b.host))
                .with_port(b.port)
                .with_rack(None)
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(md.cluster_id.clone().unwrap_or_default()))
        .with_controller_id(BrokerId(edge.node_id()))
        .with_brokers(brokers);
    if req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    response
}
