//! AlterConfigs and IncrementalAlterConfigs: topic configs changed through
//! the coordinator's `AlterTopicConfigs`.
//!
//! - AlterConfigs (legacy) replaces a topic's configs with the request's:
//!   keys left out go back to their defaults (a null value is refused, as
//!   Kafka's controller does).
//! - IncrementalAlterConfigs changes only the keys named: SET, DELETE (back to
//!   the default), and APPEND/SUBTRACT for list configs (`cleanup.policy` and
//!   the replica throttle lists), computed from the value the edge sees.
//!
//! Both check every key and value before calling the coordinator (which
//! checks them again), honour `validate_only`, and answer per resource.
//! Only topics have configs to change: broker resources are refused with
//! INVALID_REQUEST, since each runnel role reads its settings from its own
//! config file, environment and flags.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use runnel_cluster::topic_config::{self, validate_entry, validate_topic_name};
use runnel_proto::coordinator::v1 as coord;

use super::Ctx;
use super::admin::{RESOURCE_BROKER, RESOURCE_BROKER_LOGGER, RESOURCE_TOPIC};
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::{Edge, KafkaError};

/// Kafka's AlterConfigOp types.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Topic configs of Kafka's LIST type: the ones APPEND and SUBTRACT act on.
const LIST_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
];

/// The longest the edge waits to see its own change in the metadata it
/// serves, so a DescribeConfigs right after the change reflects it.
const SEE_CHANGE_WAIT: Duration = Duration::from_secs(5);

/// A change to one topic's configs, as the coordinator takes it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Change {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    replace_all: bool,
}

fn invalid_request(message: impl Into<String>) -> KafkaError {
    KafkaError::new(code::INVALID_REQUEST, message)
}

fn invalid_config(message: impl Into<String>) -> KafkaError {
    KafkaError::new(code::INVALID_CONFIG, message)
}

/// Refuses resources other than topics.
fn check_resource(resource_type: i8, name: &str) -> Result<(), KafkaError> {
    match resource_type {
        RESOURCE_TOPIC => validate_topic_name(name)
            .map_err(|e| KafkaError::new(code::INVALID_TOPIC_EXCEPTION, e.to_string())),
        RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => Err(invalid_request(
            "broker configs cannot be changed through the Kafka API: each runnel role \
             reads its settings from its config file, environment and flags",
        )),
        other => Err(invalid_request(format!(
            "resource type {other} is not supported; only topic configs can be changed"
        ))),
    }
}

/// Names of `(type, name)` resources that appear more than once.
fn duplicates<'a>(resources: impl Iterator<Item = (i8, &'a StrBytes)>) -> HashSet<(i8, String)> {
    let mut seen = HashSet::new();
    resources
        .filter(|(t, n)| !seen.insert((*t, n.to_string())))
        .map(|(t, n)| (t, n.to_string()))
        .collect()
}

fn duplicate_key<'a>(keys: impl Iterator<Item = &'a StrBytes>) -> Option<String> {
    let mut seen = HashSet::new();
    keys.map(|k| k.as_str())
        .find(|k| !seen.insert(*k))
        .map(str::to_string)
}

/// The legacy AlterConfigs change: the request's set replaces the topic's.
fn legacy_change(configs: &[alter_configs_request::AlterableConfig]) -> Result<Change, KafkaError> {
    if let Some(key) = duplicate_key(configs.iter().map(|c| &c.name)) {
        return Err(invalid_request(format!(
            "config {key:?} appears more than once"
        )));
    }
    let mut change = Change {
        replace_all: true,
        ..Change::default()
    };
    for c in configs {
        let key = c.name.to_string();
        // Kafka's controller refuses null values for topic configs too;
        // leaving a key out is how it goes back to its default.
        let Some(value) = &c.value else {
            return Err(invalid_config(format!(
                "null value not supported for topic config {key:?}"
            )));
        };
        validate_entry(&key, value).map_err(|e| invalid_config(e.to_string()))?;
        change.set.insert(key, value.to_string());
    }
    Ok(change)
}

fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The IncrementalAlterConfigs change; `current` holds the configs set on the
/// topic now (APPEND and SUBTRACT start from them, else from the default).
fn incremental_change(
    configs: &[incremental_alter_configs_request::AlterableConfig],
    current: &BTreeMap<String, String>,
) -> Result<Change, KafkaError> {
    if let Some(key) = duplicate_key(configs.iter().map(|c| &c.name)) {
        return Err(invalid_request(format!(
            "config {key:?} appears more than once"
        )));
    }
    let mut change = Change::default();
    for c in configs {
        let key = c.name.to_string();
        let Some(default) = topic_config::default_of(&key) else {
            return Err(invalid_config(
                topic_config::ConfigError::UnknownConfig(key).to_string(),
            ));
        };
        let value = c.value.as_ref().map(|v| v.as_str());
        let op_name = match c.config_operation {
            OP_SET => "SET",
            OP_DELETE => "DELETE",
            OP_APPEND => "APPEND",
            OP_SUBTRACT => "SUBTRACT",
            other => {
                return Err(invalid_request(format!(
                    "unknown config operation {other} for {key:?}"
                )));
            }
        };
        match (c.config_operation, value) {
            (OP_DELETE, _) => change.remove.push(key),
            (_, None) => {
                return Err(invalid_request(format!(
                    "{op_name} of {key:?} has a null value; only DELETE takes none"
                )));
            }
            (OP_SET, Some(value)) => {
                validate_entry(&key, value).map_err(|e| invalid_config(e.to_string()))?;
                change.set.insert(key, value.to_string());
            }
            (op, Some(value)) => {
                if !LIST_CONFIGS.contains(&key.as_str()) {
                    return Err(invalid_config(format!(
                        "cannot {op_name} to {key:?}: its type is not LIST"
                    )));
                }
                let mut items = list_items(current.get(&key).map_or(default, String::as_str));
                let given = list_items(value);
                if op == OP_APPEND {
                    for item in given {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                } else {
                    items.retain(|i| !given.contains(i));
                }
                let joined = items.join(",");
                validate_entry(&key, &joined).map_err(|e| {
                    invalid_config(format!("{op_name} of {value:?} to {key:?}: {e}"))
                })?;
                change.set.insert(key, joined);
            }
        }
    }
    Ok(change)
}

/// The Kafka code of a failed AlterTopicConfigs call.
fn alter_error(s: &tonic::Status) -> KafkaError {
    let message = s.message().to_string();
    let code = match s.code() {
        tonic::Code::NotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
        tonic::Code::InvalidArgument => code::INVALID_CONFIG,
        tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied => code::POLICY_VIOLATION,
        tonic::Code::Unavailable => code::NOT_CONTROLLER,
        tonic::Code::DeadlineExceeded => code::REQUEST_TIMED_OUT,
        _ => code::UNKNOWN_SERVER_ERROR,
    };
    KafkaError { code, message }
}

/// Applies (or with `validate_only` only checks) a change to a topic, and
/// waits until this edge's metadata shows it.
async fn alter_topic(
    edge: &Edge,
    name: &str,
    change: Change,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let no_op = !change.replace_all && change.set.is_empty() && change.remove.is_empty();
    let mut client = edge.coordinator()?;
    let mut call = tonic::Request::new(coord::AlterTopicConfigsRequest {
        name: name.to_string(),
        set: change.set.into_iter().collect(),
        remove: change.remove,
        replace_all: change.replace_all,
        // Nothing to change: only check that the topic exists.
        validate_only: validate_only || no_op,
    });
    call.set_timeout(edge.rpc_timeout());
    let topic = client
        .alter_topic_configs(call)
        .await
        .map_err(|s| alter_error(&s))?
        .into_inner()
        .topic;
    if !validate_only
        && !no_op
        && let Some(topic) = topic
    {
        let wanted: BTreeMap<String, String> = topic.configs.into_iter().collect();
        let seen = edge
            .watcher
            .wait_until(SEE_CHANGE_WAIT.min(edge.rpc_timeout()), |md| {
                md.topic(name).is_none_or(|t| t.record.configs == wanted)
            })
            .await;
        if seen.is_none() {
            tracing::debug!(topic = name, "config change not seen within the wait");
        }
    }
    Ok(())
}

/// Answers every resource: duplicates and unsupported types are refused,
/// topics get `change(configs, current topic configs)` applied.
async fn alter_resources<C>(
    ctx: &mut Ctx<'_>,
    resources: Vec<(i8, StrBytes, C)>,
    validate_only: bool,
    change: impl Fn(&C, &BTreeMap<String, String>) -> Result<Change, KafkaError>,
) -> Vec<(i8, StrBytes, Result<(), KafkaError>)> {
    let edge = ctx.edge;
    let dups = duplicates(resources.iter().map(|(t, n, _)| (*t, n)));
    let mut out = Vec::with_capacity(resources.len());
    for (resource_type, name, configs) in resources {
        let outcome = async {
            if dups.contains(&(resource_type, name.to_string())) {
                return Err(invalid_request(format!(
                    "resource {name:?} (type {resource_type}) appears more than once"
                )));
            }
            check_resource(resource_type, &name)?;
            let md = edge.metadata();
            let empty = BTreeMap::new();
            let current = md.topic(&name).map_or(&empty, |t| &t.record.configs);
            let change = change(&configs, current)?;
            alter_topic(edge, &name, change, validate_only).await
        }
        .await;
        if let Err(e) = &outcome {
            ctx.note(e.code);
            tracing::debug!(resource = %name, code = e.code, error = %e.message, "config change refused");
        }
        out.push((resource_type, name, outcome));
    }
    out
}

pub async fn alter_configs(
    ctx: &mut Ctx<'_>,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| (r.resource_type, r.resource_name, r.configs))
        .collect();
    let results = alter_resources(ctx, resources, req.validate_only, |configs, _| {
        legacy_change(configs)
    })
    .await;
    let responses = results
        .into_iter()
        .map(|(resource_type, name, outcome)| {
            let (error_code, error_message) = match outcome {
                Ok(()) => (code::NONE, None),
                Err(e) => (e.code, Some(str_bytes(e.message))),
            };
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name)
                .with_error_code(error_code)
                .with_error_message(error_message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    ctx: &mut Ctx<'_>,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| (r.resource_type, r.resource_name, r.configs))
        .collect();
    let results = alter_resources(ctx, resources, req.validate_only, |configs, current| {
        incremental_change(configs, current)
    })
    .await;
    let responses = results
        .into_iter()
        .map(|(resource_type, name, outcome)| {
            let (error_code, error_message) = match outcome {
                Ok(()) => (code::NONE, None),
                Err(e) => (e.code, Some(str_bytes(e.message))),
            };
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name)
                .with_error_code(error_code)
                .with_error_message(error_message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use incremental_alter_configs_request::AlterableConfig as Inc;

    fn inc(key: &'static str, op: i8, value: Option<&'static str>) -> Inc {
        Inc::default()
            .with_name(StrBytes::from_static_str(key))
            .with_config_operation(op)
            .with_value(value.map(StrBytes::from_static_str))
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn incremental_operations() {
        let none = BTreeMap::new();
        let c = incremental_change(
            &[
                inc("retention.ms", OP_SET, Some("1000")),
                inc("segment.ms", OP_DELETE, None),
            ],
            &none,
        )
        .unwrap();
        assert_eq!(c.set, set(&[("retention.ms", "1000")]));
        assert_eq!(c.remove, vec!["segment.ms".to_string()]);
        assert!(!c.replace_all);

        // APPEND starts from the default ("delete"), SUBTRACT from the value set.
        let c = incremental_change(&[inc("cleanup.policy", OP_APPEND, Some("compact"))], &none)
            .unwrap();
        assert_eq!(c.set, set(&[("cleanup.policy", "delete,compact")]));
        let current = set(&[("cleanup.policy", "delete,compact")]);
        let c = incremental_change(
            &[inc("cleanup.policy", OP_SUBTRACT, Some("delete"))],
            &current,
        )
        .unwrap();
        assert_eq!(c.set, set(&[("cleanup.policy", "compact")]));
        // Appending what is there changes nothing.
        let c = incremental_change(
            &[inc("cleanup.policy", OP_APPEND, Some("compact"))],
            &current,
        )
        .unwrap();
        assert_eq!(c.set, set(&[("cleanup.policy", "delete,compact")]));
    }

    #[test]
    fn incremental_refusals() {
        let none = BTreeMap::new();
        let code = |configs: &[Inc]| incremental_change(configs, &none).unwrap_err().code;
        assert_eq!(code(&[inc("retention.ms", OP_SET, Some("soon"))]), 40);
        assert_eq!(code(&[inc("no.such.key", OP_SET, Some("1"))]), 40);
        assert_eq!(code(&[inc("retention.ms", OP_APPEND, Some("1"))]), 40);
        assert_eq!(
            code(&[inc("cleanup.policy", OP_APPEND, Some("archive"))]),
            40
        );
        // Subtracting the only policy leaves an empty list, which is invalid.
        assert_eq!(
            code(&[inc("cleanup.policy", OP_SUBTRACT, Some("delete"))]),
            40
        );
        assert_eq!(code(&[inc("retention.ms", OP_SET, None)]), 42);
        assert_eq!(code(&[inc("retention.ms", 9, Some("1"))]), 42);
        assert_eq!(
            code(&[
                inc("retention.ms", OP_SET, Some("1")),
                inc("retention.ms", OP_DELETE, None)
            ]),
            42
        );
    }

    #[test]
    fn legacy_replaces_everything() {
        use alter_configs_request::AlterableConfig as Legacy;
        let c = legacy_change(&[Legacy::default()
            .with_name(StrBytes::from_static_str("retention.ms"))
            .with_value(Some(StrBytes::from_static_str("5")))])
        .unwrap();
        assert!(c.replace_all);
        assert_eq!(c.set, set(&[("retention.ms", "5")]));
        let null = legacy_change(&[Legacy::default()
            .with_name(StrBytes::from_static_str("segment.ms"))
            .with_value(None)])
        .unwrap_err();
        assert_eq!(null.code, 40);
        let bad = legacy_change(&[Legacy::default()
            .with_name(StrBytes::from_static_str("max.message.bytes"))
            .with_value(Some(StrBytes::from_static_str("-3")))])
        .unwrap_err();
        assert_eq!(bad.code, 40);
    }

    #[test]
    fn resources() {
        assert!(check_resource(RESOURCE_TOPIC, "t").is_ok());
        assert_eq!(check_resource(RESOURCE_TOPIC, "a b").unwrap_err().code, 17);
        assert_eq!(check_resource(RESOURCE_BROKER, "1").unwrap_err().code, 42);
        assert_eq!(
            check_resource(RESOURCE_BROKER_LOGGER, "1")
                .unwrap_err()
                .code,
            42
        );
        assert_eq!(check_resource(16, "x").unwrap_err().code, 42);
        assert_eq!(
            alter_error(&tonic::Status::not_found("topic \"x\" does not exist")).code,
            3
        );
        assert_eq!(
            alter_error(&tonic::Status::invalid_argument(
                "unknown topic config \"a\""
            ))
            .code,
            40
        );
    }
}
