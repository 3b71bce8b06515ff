//! The etcd backend (etcd v3 API through `etcd-client`).
//!
//! Keys and revisions map one to one onto etcd's. Notes:
//! - lease TTLs are whole seconds on etcd (rounded up here) and etcd raises a
//!   TTL below its minimum (about 2 s with default settings);
//! - a watch whose start revision etcd has compacted yields
//!   [`MetaError::Compacted`] as its first item (etcd reports compaction on
//!   the stream, not when the watch is created);
//! - unary requests time out after [`REQUEST_TIMEOUT`] with
//!   [`MetaError::Unavailable`]; watches have no timeout but HTTP/2
//!   keep-alives end them with an error when the server goes away.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    CasOutcome, KeyValue, LeaseId, MetaError, MetaStore, Result, Revision, WatchEvent, WatchStream,
};

/// Upper bound on one unary request (not watches).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A [`MetaStore`] on an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn unavailable(e: impl fmt::Display) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

/// True if etcd said the lease does not exist (`etcdserver: requested lease
/// not found`).
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Maps an error of an operation that used `lease`.
fn lease_error(lease: Option<LeaseId>) -> impl Fn(etcd_client::Error) -> MetaError {
    move |e| match lease {
        Some(id) if is_lease_not_found(&e) => MetaError::LeaseNotFound(id),
        _ => unavailable(e),
    }
}

async fn timed<T>(
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<std::result::Result<T, etcd_client::Error>> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| {
            MetaError::Unavailable(format!("etcd request timed out after {REQUEST_TIMEOUT:?}"))
        })
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv
        .key_str()
        .map_err(|e| MetaError::Corrupt(format!("non-UTF-8 key in etcd: {e}")))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| MetaError::Unavailable("etcd response without a header".into()))
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

/// The comparison "the key's mod_revision is `expected`", where 0 means the
/// key does not exist.
fn revision_is(key: &str, expected: Revision) -> Compare {
    if expected == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, expected)
    }
}

impl EtcdStore {
    /// A client for the given endpoints (`http://host:port`). Connections
    /// are made lazily: an unreachable cluster shows up as
    /// [`MetaError::Unavailable`] on the first operation.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
        })
    }

    /// The underlying etcd client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = timed(kv.get(key, None)).await?.map_err(unavailable)?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        let resp = timed(kv.put(key, value.to_vec(), put_options(lease)))
            .await?
            .map_err(lease_error(lease))?;
        header_revision(resp.header())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        let txn = Txn::new()
            .when([revision_is(key, expected)])
            .and_then([TxnOp::put(key, value.to_vec(), put_options(lease))])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.client.kv_client();
        let resp = timed(kv.txn(txn)).await?.map_err(lease_error(lease))?;
        if resp.succeeded() {
            return Ok(CasOutcome::Swapped(header_revision(resp.header())?));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return Ok(CasOutcome::Conflict(
                    get.kvs().first().map(convert_kv).transpose()?,
                ));
            }
        }
        Err(MetaError::Unavailable(
            "etcd transaction failed without the get response".into(),
        ))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut kv = self.client.kv_client();
        let resp = timed(kv.delete(key, None)).await?.map_err(unavailable)?;
        Ok(resp.deleted() > 0)
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        let txn = Txn::new()
            .when([revision_is(key, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let mut kv = self.client.kv_client();
        let resp = timed(kv.txn(txn)).await?.map_err(unavailable)?;
        if !resp.succeeded() {
            return Ok(false);
        }
        Ok(resp
            .op_responses()
            .iter()
            .any(|op| matches!(op, TxnOpResponse::Delete(d) if d.deleted() > 0)))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let mut kv = self.client.kv_client();
        let resp = timed(kv.delete(prefix, Some(DeleteOptions::new().with_prefix())))
            .await?
            .map_err(unavailable)?;
        Ok(u64::try_from(resp.deleted()).unwrap_or(0))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let mut kv = self.client.kv_client();
        let resp = timed(kv.get(prefix, Some(GetOptions::new().with_prefix())))
            .await?
            .map_err(unavailable)?;
        let kvs = resp.kvs().iter().map(convert_kv).collect::<Result<_>>()?;
        Ok((kvs, header_revision(resp.header())?))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let start = after + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut watch = self.client.watch_client();
        let mut stream = timed(watch.watch(prefix, Some(options)))
            .await?
            .map_err(unavailable)?;
        // Wait for etcd to confirm the watch, so errors surface here.
        let first = timed(stream.message())
            .await?
            .map_err(unavailable)?
            .ok_or_else(|| MetaError::Unavailable("etcd closed the watch stream".into()))?;
        let mut pending: Vec<Result<WatchEvent>> = Vec::new();
        if let Some(err) = response_to_events(&first, start, &mut pending) {
            if pending.is_empty() {
                return Err(err);
            }
            pending.push(Err(err));
        }
        struct St {
            stream: Option<etcd_client::WatchStream>,
            pending: std::collections::VecDeque<Result<WatchEvent>>,
            start: Revision,
        }
        let state = St {
            stream: Some(stream),
            pending: pending.into(),
            start,
        };
        let out = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    if item.is_err() {
                        st.stream = None; // an error ends the watch
                        st.pending.clear();
                    }
                    return Some((item, st));
                }
                let stream = st.stream.as_mut()?;
                match stream.message().await {
                    Ok(Some(resp)) => {
                        let mut events = Vec::new();
                        if let Some(err) = response_to_events(&resp, st.start, &mut events) {
                            events.push(Err(err));
                        }
                        st.pending.extend(events);
                    }
                    Ok(None) => {
                        st.stream = None;
                        return Some((
                            Err(MetaError::Unavailable(
                                "etcd closed the watch stream".into(),
                            )),
                            st,
                        ));
                    }
                    Err(e) => {
                        st.stream = None;
                        return Some((Err(unavailable(e)), st));
                    }
                }
            }
        });
        Ok(out.boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut lease = self.client.lease_client();
        let resp = timed(lease.grant(secs, None)).await?.map_err(unavailable)?;
        if !resp.error().is_empty() {
            return Err(MetaError::Unavailable(format!(
                "etcd lease grant: {}",
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut client = self.client.lease_client();
        // `keep_alive` sends one request on a new keep-alive stream and reads
        // the answer; a TTL of 0 in it (the lease is gone) comes back as
        // "lease not found". Dropping the keeper and stream closes the stream.
        match timed(client.keep_alive(lease)).await? {
            Ok((_keeper, _stream)) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(MetaError::LeaseNotFound(lease)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut client = self.client.lease_client();
        timed(client.revoke(lease))
            .await?
            .map_err(lease_error(Some(lease)))?;
        Ok(())
    }
}

/// Appends a watch response's events (or returns the error it carries).
fn response_to_events(
    resp: &etcd_client::WatchResponse,
    start: Revision,
    out: &mut Vec<Result<WatchEvent>>,
) -> Option<MetaError> {
    if resp.compact_revision() > 0 {
        return Some(MetaError::Compacted(start));
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let converted = match event.event_type() {
            EventType::Put => convert_kv(kv).map(WatchEvent::Put),
            EventType::Delete => match kv.key_str() {
                Ok(key) => Ok(WatchEvent::Delete {
                    key: key.to_owned(),
                    mod_revision: kv.mod_revision(),
                }),
                Err(e) => Err(MetaError::Corrupt(format!("non-UTF-8 key in etcd: {e}"))),
            },
        };
        match converted {
            Ok(e) => out.push(Ok(e)),
            Err(e) => return Some(e),
        }
    }
    if resp.canceled() {
        let reason = resp.cancel_reason();
        return Some(MetaError::Unavailable(if reason.is_empty() {
            "etcd canceled the watch".to_owned()
        } else {
            format!("etcd canceled the watch: {reason}")
        }));
    }
    None
}
