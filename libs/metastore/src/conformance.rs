//! The behaviour every [`MetaStore`] backend must have, as executable checks.
//!
//! Each check takes a store and a prefix that no one else uses, works only on
//! keys under it, and panics (like a failed `assert!`) when the store
//! misbehaves. [`run_all`] runs them all; backends' tests call it with a
//! fresh unique prefix. Checks may run concurrently against one store (they
//! never assume that the store revision is theirs alone).
//!
//! Prefixes are raw string prefixes, as in etcd: `range("a/b")` includes
//! `a/bc`; pass `"a/b/"` to get only the children of `a/b`.
//!
//! The checks never assert how fast something happens; waits (for watch
//! events, for lease expiry) have generous upper bounds only so that a broken
//! store fails instead of hanging.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::{CasOutcome, KeyValue, MetaError, MetaStore, Revision, WatchEvent, WatchStream};

/// Upper bound for any single wait (a watch event, a lease expiring).
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs every check, each under its own sub-prefix of `prefix`.
pub async fn run_all(store: Arc<dyn MetaStore>, prefix: &str) {
    let s = store.as_ref();
    put_get_round_trip(s, &format!("{prefix}/put-get/")).await;
    compare_and_swap(s, &format!("{prefix}/cas/")).await;
    delete(s, &format!("{prefix}/delete/")).await;
    compare_and_delete(s, &format!("{prefix}/cad/")).await;
    delete_prefix(s, &format!("{prefix}/delete-prefix/")).await;
    range(s, &format!("{prefix}/range/")).await;
    watch_after_range(s, &format!("{prefix}/watch/")).await;
    watch_replays_history(s, &format!("{prefix}/watch-replay/")).await;
    watch_delete_prefix(s, &format!("{prefix}/watch-delete-prefix/")).await;
    // The lease checks wait for real time to pass; run them side by side.
    let (expire, keep, revoke, reattach) = (
        format!("{prefix}/lease-expire/"),
        format!("{prefix}/lease-keep-alive/"),
        format!("{prefix}/lease-revoke/"),
        format!("{prefix}/lease-reattach/"),
    );
    tokio::join!(
        lease_keys_expire(s, &expire),
        keep_alive_keeps_keys(s, &keep),
        revoke_deletes_keys(s, &revoke),
        lease_follows_last_put(s, &reattach),
    );
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn get(store: &dyn MetaStore, key: &str) -> Option<KeyValue> {
    store.get(key).await.expect("get")
}

async fn put(store: &dyn MetaStore, key: &str, value: &str) -> Revision {
    store.put(key, b(value), None).await.expect("put")
}

/// The next item of a watch, which must be an event.
async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(PATIENCE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

fn expect_put(event: WatchEvent) -> KeyValue {
    match event {
        WatchEvent::Put(kv) => kv,
        other => panic!("expected a put event, got {other:?}"),
    }
}

fn expect_delete(event: &WatchEvent, key: &str) -> Revision {
    match event {
        WatchEvent::Delete {
            key: k,
            mod_revision,
        } if k == key => *mod_revision,
        other => panic!("expected a delete of {key:?}, got {other:?}"),
    }
}

/// Waits until `key` is gone.
async fn wait_gone(store: &dyn MetaStore, key: &str) {
    let start = Instant::now();
    while get(store, key).await.is_some() {
        assert!(
            start.elapsed() < PATIENCE,
            "{key:?} still exists after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A value written is read back with its revisions; every write has a
/// higher revision than the one before; values are arbitrary bytes.
pub async fn put_get_round_trip(store: &dyn MetaStore, prefix: &str) {
    let key = format!("{prefix}key");
    assert_eq!(get(store, &key).await, None, "fresh key exists");

    let r1 = put(store, &key, "v1").await;
    assert!(r1 > 0, "revision {r1} of the first write is not positive");
    let kv = get(store, &key).await.expect("key just written");
    assert_eq!(
        kv,
        KeyValue {
            key: key.clone(),
            value: b("v1"),
            create_revision: r1,
            mod_revision: r1,
            lease: None,
        }
    );

    let r2 = put(store, &key, "v2").await;
    assert!(r2 > r1, "second write revision {r2} <= first {r1}");
    let kv = get(store, &key).await.expect("key rewritten");
    assert_eq!(kv.value, b("v2"));
    assert_eq!(kv.create_revision, r1, "a rewrite changed create_revision");
    assert_eq!(kv.mod_revision, r2);

    // Another key: the revision is store-wide.
    let other = format!("{prefix}other");
    let r3 = put(store, &other, "x").await;
    assert!(r3 > r2);

    // Binary and empty values.
    let binary = Bytes::from_static(&[0, 255, 1, 128, 0xc3, 0x28]);
    let bin_key = format!("{prefix}binary");
    store
        .put(&bin_key, binary.clone(), None)
        .await
        .expect("put binary");
    assert_eq!(
        get(store, &bin_key).await.expect("binary key").value,
        binary
    );
    let empty_key = format!("{prefix}empty");
    put(store, &empty_key, "").await;
    assert_eq!(
        get(store, &empty_key).await.expect("empty value key").value,
        Bytes::new()
    );

    let (_, rev) = store.range(prefix).await.expect("range");
    assert!(
        rev >= r3,
        "range revision {rev} below a finished write {r3}"
    );
}

/// Compare-and-swap on `mod_revision`, with 0 meaning "absent".
pub async fn compare_and_swap(store: &dyn MetaStore, prefix: &str) {
    let key = format!("{prefix}key");
    let cas = |expected: Revision, value: &'static str| {
        let key = key.clone();
        async move {
            store
                .compare_and_swap(&key, expected, b(value), None)
                .await
                .expect("compare_and_swap")
        }
    };

    // Create-if-absent.
    let r1 = match cas(0, "a").await {
        CasOutcome::Swapped(r) => r,
        other => panic!("CAS-create of an absent key: {other:?}"),
    };
    let kv_a = get(store, &key).await.expect("key created by CAS");
    assert_eq!(
        (kv_a.value.clone(), kv_a.create_revision, kv_a.mod_revision),
        (b("a"), r1, r1)
    );

    // Create-if-absent again conflicts and shows what is there.
    assert_eq!(cas(0, "b").await, CasOutcome::Conflict(Some(kv_a.clone())));
    // A revision the key does not have conflicts.
    assert_eq!(
        cas(r1 + 1_000_000, "b").await,
        CasOutcome::Conflict(Some(kv_a.clone()))
    );
    assert_eq!(get(store, &key).await, Some(kv_a.clone()), "conflict wrote");

    // The current revision swaps.
    let r2 = match cas(r1, "b").await {
        CasOutcome::Swapped(r) => r,
        other => panic!("CAS with the current revision: {other:?}"),
    };
    assert!(r2 > r1);
    let kv_b = get(store, &key).await.expect("key after CAS");
    assert_eq!(
        (kv_b.value.clone(), kv_b.create_revision, kv_b.mod_revision),
        (b("b"), r1, r2)
    );

    // The old revision is now stale.
    assert_eq!(cas(r1, "c").await, CasOutcome::Conflict(Some(kv_b.clone())));

    // An absent key with a non-zero expectation conflicts with None.
    let absent = format!("{prefix}absent");
    assert_eq!(
        store
            .compare_and_swap(&absent, r2, b("x"), None)
            .await
            .expect("CAS on absent key"),
        CasOutcome::Conflict(None)
    );
    assert_eq!(get(store, &absent).await, None, "conflicting CAS created");

    // After a delete, create-if-absent works again and starts a new life.
    assert!(store.delete(&key).await.expect("delete"));
    let r3 = match cas(0, "d").await {
        CasOutcome::Swapped(r) => r,
        other => panic!("CAS-create after delete: {other:?}"),
    };
    let kv_d = get(store, &key).await.expect("recreated key");
    assert!(r3 > r2);
    assert_eq!((kv_d.create_revision, kv_d.mod_revision), (r3, r3));
}

/// Plain delete.
pub async fn delete(store: &dyn MetaStore, prefix: &str) {
    let key = format!("{prefix}key");
    assert!(
        !store.delete(&key).await.expect("delete"),
        "deleting an absent key reported true"
    );
    let r1 = put(store, &key, "v").await;
    let neighbour = format!("{prefix}key2");
    put(store, &neighbour, "v").await;
    assert!(store.delete(&key).await.expect("delete"));
    assert_eq!(get(store, &key).await, None);
    assert!(
        get(store, &neighbour).await.is_some(),
        "delete hit a neighbour"
    );
    assert!(!store.delete(&key).await.expect("delete again"));

    let r2 = put(store, &key, "again").await;
    let kv = get(store, &key).await.expect("recreated key");
    assert!(r2 > r1);
    assert_eq!(
        kv.create_revision, r2,
        "a recreated key kept its old create_revision"
    );
}

/// Delete guarded by `mod_revision`.
pub async fn compare_and_delete(store: &dyn MetaStore, prefix: &str) {
    let key = format!("{prefix}key");
    let r1 = put(store, &key, "1").await;
    let r2 = put(store, &key, "2").await;
    let cad = |expected: Revision| {
        let key = key.clone();
        async move {
            store
                .compare_and_delete(&key, expected)
                .await
                .expect("compare_and_delete")
        }
    };
    assert!(!cad(r1).await, "deleted with a stale revision");
    assert!(!cad(0).await, "deleted an existing key with expected = 0");
    assert!(get(store, &key).await.is_some(), "failed CAD deleted");
    assert!(cad(r2).await, "CAD with the current revision failed");
    assert_eq!(get(store, &key).await, None);
    assert!(!cad(r2).await, "CAD of a deleted key reported true");
    let absent = format!("{prefix}absent");
    assert!(
        !store
            .compare_and_delete(&absent, 0)
            .await
            .expect("compare_and_delete"),
        "CAD of an absent key reported true"
    );
}

/// `delete_prefix` counts what it deleted and respects raw string prefixes.
pub async fn delete_prefix(store: &dyn MetaStore, prefix: &str) {
    for k in ["a/b/1", "a/b/2", "a/b/3/deep", "a/bc", "a/c", "b"] {
        put(store, &format!("{prefix}{k}"), k).await;
    }
    assert_eq!(
        store
            .delete_prefix(&format!("{prefix}a/b/"))
            .await
            .expect("delete_prefix"),
        3
    );
    let keys = |kvs: Vec<KeyValue>| -> Vec<String> {
        kvs.into_iter()
            .map(|kv| kv.key[prefix.len()..].to_owned())
            .collect()
    };
    let (kvs, _) = store.range(prefix).await.expect("range");
    assert_eq!(keys(kvs), ["a/bc", "a/c", "b"]);

    // A raw prefix: "a/b" includes "a/bc".
    assert_eq!(
        store
            .delete_prefix(&format!("{prefix}a/b"))
            .await
            .expect("delete_prefix"),
        1
    );
    assert_eq!(
        store
            .delete_prefix(&format!("{prefix}nothing/"))
            .await
            .expect("delete_prefix"),
        0
    );
    let (kvs, _) = store.range(prefix).await.expect("range");
    assert_eq!(keys(kvs), ["a/c", "b"]);
}

/// `range` returns the keys under a prefix in key order with a revision at
/// least as new as every write that finished before it.
pub async fn range(store: &dyn MetaStore, prefix: &str) {
    let mut last = 0;
    for k in ["r/c", "r/a", "r/b", "r/a/x", "rx", "q", "r"] {
        last = put(store, &format!("{prefix}{k}"), &format!("value of {k}")).await;
    }
    let (kvs, rev) = store.range(&format!("{prefix}r/")).await.expect("range");
    let got: Vec<&str> = kvs.iter().map(|kv| &kv.key[prefix.len()..]).collect();
    assert_eq!(got, ["r/a", "r/a/x", "r/b", "r/c"]);
    for kv in &kvs {
        assert_eq!(
            kv.value,
            b(&format!("value of {}", &kv.key[prefix.len()..]))
        );
        assert!(
            kv.mod_revision <= rev,
            "{kv:?} newer than the range ({rev})"
        );
        assert_eq!(kv.lease, None);
    }
    assert!(
        rev >= last,
        "range revision {rev} below a finished write {last}"
    );

    let (kvs, _) = store.range(&format!("{prefix}r")).await.expect("range");
    assert_eq!(kvs.len(), 6, "raw prefix \"r\" must include r, r/… and rx");

    let (kvs, rev2) = store
        .range(&format!("{prefix}empty/"))
        .await
        .expect("range");
    assert!(kvs.is_empty());
    assert!(rev2 >= rev, "range revision went back from {rev} to {rev2}");
}

/// "Range, then watch from the range's revision" sees exactly the later
/// changes under the prefix, in order.
pub async fn watch_after_range(store: &dyn MetaStore, prefix: &str) {
    let dir = format!("{prefix}w/");
    let (a, bk, c, end) = (
        format!("{dir}a"),
        format!("{dir}b"),
        format!("{dir}c"),
        format!("{dir}end"),
    );
    let a_created = put(store, &a, "1").await;
    put(store, &bk, "1").await;
    let (kvs, rev) = store.range(&dir).await.expect("range");
    assert_eq!(kvs.len(), 2);

    let mut watch = store.watch(&dir, rev).await.expect("watch");
    let r_c = put(store, &c, "1").await;
    // Outside the watched prefix (a raw-prefix neighbour of "w").
    put(store, &format!("{prefix}wx"), "neighbour").await;
    let r_a = put(store, &a, "2").await;
    assert!(store.delete(&bk).await.expect("delete"));
    let r_end = put(store, &end, "sentinel").await;

    let e1 = expect_put(next_event(&mut watch).await);
    assert_eq!(
        e1,
        KeyValue {
            key: c.clone(),
            value: b("1"),
            create_revision: r_c,
            mod_revision: r_c,
            lease: None
        }
    );
    assert!(r_c > rev);
    let e2 = expect_put(next_event(&mut watch).await);
    assert_eq!(
        (
            e2.key.as_str(),
            e2.value.clone(),
            e2.create_revision,
            e2.mod_revision
        ),
        (a.as_str(), b("2"), a_created, r_a)
    );
    let r_del = expect_delete(&next_event(&mut watch).await, &bk);
    assert!(
        r_a < r_del && r_del < r_end,
        "delete at {r_del} out of order"
    );
    let e4 = expect_put(next_event(&mut watch).await);
    assert_eq!((e4.key.as_str(), e4.mod_revision), (end.as_str(), r_end));
}

/// A watch starting at an older revision replays what happened since.
pub async fn watch_replays_history(store: &dyn MetaStore, prefix: &str) {
    let (_, r0) = store.range(prefix).await.expect("range");
    let (k1, k2, k3, k4) = (
        format!("{prefix}1"),
        format!("{prefix}2"),
        format!("{prefix}3"),
        format!("{prefix}4"),
    );
    let r1 = put(store, &k1, "a").await;
    let r2 = put(store, &k2, "b").await;
    assert!(store.delete(&k1).await.expect("delete"));
    let r4 = put(store, &k3, "c").await;

    let mut from_start = store.watch(prefix, r0).await.expect("watch");
    let mut from_r2 = store.watch(prefix, r2).await.expect("watch");

    let e = expect_put(next_event(&mut from_start).await);
    assert_eq!((e.key.as_str(), e.mod_revision), (k1.as_str(), r1));
    let e = expect_put(next_event(&mut from_start).await);
    assert_eq!((e.key.as_str(), e.mod_revision), (k2.as_str(), r2));
    let r3 = expect_delete(&next_event(&mut from_start).await, &k1);
    assert!(r2 < r3 && r3 < r4);
    let e = expect_put(next_event(&mut from_start).await);
    assert_eq!((e.key.as_str(), e.mod_revision), (k3.as_str(), r4));

    assert_eq!(expect_delete(&next_event(&mut from_r2).await, &k1), r3);
    let e = expect_put(next_event(&mut from_r2).await);
    assert_eq!((e.key.as_str(), e.mod_revision), (k3.as_str(), r4));

    // Both go on with live changes.
    let r5 = put(store, &k4, "d").await;
    for watch in [&mut from_start, &mut from_r2] {
        let e = expect_put(next_event(watch).await);
        assert_eq!((e.key.as_str(), e.mod_revision), (k4.as_str(), r5));
    }
}

/// A prefix delete is one write: one delete event per key, in key order,
/// all at the same revision.
pub async fn watch_delete_prefix(store: &dyn MetaStore, prefix: &str) {
    let keys: Vec<String> = ["x/1", "x/2", "x/3"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    for k in &keys {
        put(store, k, "v").await;
    }
    let (_, rev) = store.range(prefix).await.expect("range");
    let mut watch = store.watch(prefix, rev).await.expect("watch");
    assert_eq!(
        store
            .delete_prefix(&format!("{prefix}x/"))
            .await
            .expect("delete_prefix"),
        3
    );
    let end = format!("{prefix}end");
    let r_end = put(store, &end, "sentinel").await;
    let mut revs = Vec::new();
    for k in &keys {
        revs.push(expect_delete(&next_event(&mut watch).await, k));
    }
    assert!(
        revs.iter().all(|r| *r == revs[0] && *r > rev && *r < r_end),
        "delete_prefix revisions {revs:?} (watch from {rev}, next write {r_end})"
    );
    let e = expect_put(next_event(&mut watch).await);
    assert_eq!(e.key, end);
}

/// Keys on a lease that is not kept alive vanish (with delete events); the
/// dead lease can then neither be kept alive nor used.
pub async fn lease_keys_expire(store: &dyn MetaStore, prefix: &str) {
    let lease = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant_lease");
    let (k1, k2, plain) = (
        format!("{prefix}k1"),
        format!("{prefix}k2"),
        format!("{prefix}plain"),
    );
    put(store, &plain, "stays").await;
    store
        .put(&k1, b("1"), Some(lease))
        .await
        .expect("put with lease");
    let r2 = match store
        .compare_and_swap(&k2, 0, b("2"), Some(lease))
        .await
        .expect("CAS with lease")
    {
        CasOutcome::Swapped(r) => r,
        other => panic!("CAS-create with lease: {other:?}"),
    };
    let kv = get(store, &k1).await.expect("leased key");
    assert_eq!(kv.lease, Some(lease));
    let (kvs, rev) = store.range(prefix).await.expect("range");
    assert_eq!(kvs.len(), 3);
    assert!(rev >= r2);
    let mut watch = store.watch(prefix, rev).await.expect("watch");

    wait_gone(store, &k1).await;
    assert_eq!(get(store, &k2).await, None);
    assert!(
        get(store, &plain).await.is_some(),
        "an unleased key expired"
    );

    let d1 = expect_delete(&next_event(&mut watch).await, &k1);
    let d2 = expect_delete(&next_event(&mut watch).await, &k2);
    assert_eq!(d1, d2, "a lease's keys expire in one write");
    assert!(d1 > rev);

    assert_lease_dead(store, lease, &format!("{prefix}k3")).await;
}

async fn assert_lease_dead(store: &dyn MetaStore, lease: i64, key: &str) {
    match store.keep_alive(lease).await {
        Err(MetaError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("keep_alive of a dead lease: {other:?}"),
    }
    match store.put(key, b("x"), Some(lease)).await {
        Err(MetaError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("put with a dead lease: {other:?}"),
    }
    match store.compare_and_swap(key, 0, b("x"), Some(lease)).await {
        Err(MetaError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("CAS with a dead lease: {other:?}"),
    }
    assert_eq!(
        get(store, key).await,
        None,
        "a write with a dead lease happened"
    );
    match store.revoke_lease(lease).await {
        Err(MetaError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("revoke of a dead lease: {other:?}"),
    }
}

/// Keep-alives keep a lease's keys well past its TTL.
pub async fn keep_alive_keeps_keys(store: &dyn MetaStore, prefix: &str) {
    let ttl = Duration::from_secs(3);
    let lease = store.grant_lease(ttl).await.expect("grant_lease");
    let key = format!("{prefix}k");
    store
        .put(&key, b("v"), Some(lease))
        .await
        .expect("put with lease");
    let start = Instant::now();
    while start.elapsed() < ttl * 2 + Duration::from_secs(1) {
        store.keep_alive(lease).await.expect("keep_alive");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    store.keep_alive(lease).await.expect("keep_alive");
    let kv = get(store, &key)
        .await
        .expect("a kept-alive lease's key vanished");
    assert_eq!(kv.lease, Some(lease));
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(get(store, &key).await, None);
}

/// Revoking a lease deletes its keys at once, in one write, with delete
/// events, and leaves other keys alone.
pub async fn revoke_deletes_keys(store: &dyn MetaStore, prefix: &str) {
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant_lease");
    let (k1, k2, plain) = (
        format!("{prefix}k1"),
        format!("{prefix}k2"),
        format!("{prefix}plain"),
    );
    for k in [&k1, &k2] {
        store
            .put(k, b("v"), Some(lease))
            .await
            .expect("put with lease");
    }
    put(store, &plain, "v").await;
    let (_, rev) = store.range(prefix).await.expect("range");
    let mut watch = store.watch(prefix, rev).await.expect("watch");

    store.revoke_lease(lease).await.expect("revoke_lease");
    assert_eq!(get(store, &k1).await, None, "revoke left a key");
    assert_eq!(get(store, &k2).await, None, "revoke left a key");
    assert!(
        get(store, &plain).await.is_some(),
        "revoke deleted an unleased key"
    );
    let d1 = expect_delete(&next_event(&mut watch).await, &k1);
    let d2 = expect_delete(&next_event(&mut watch).await, &k2);
    assert_eq!(d1, d2, "a lease's keys are revoked in one write");
    assert!(d1 > rev);

    assert_lease_dead(store, lease, &format!("{prefix}k3")).await;
}

/// A key belongs to the lease of its last write: rewriting it without a
/// lease (or with another) detaches it from the first.
pub async fn lease_follows_last_put(store: &dyn MetaStore, prefix: &str) {
    let la = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant_lease");
    let lb = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant_lease");
    assert_ne!(la, lb);
    let (detached, moved, deleted) = (
        format!("{prefix}detached"),
        format!("{prefix}moved"),
        format!("{prefix}deleted"),
    );
    for k in [&detached, &moved, &deleted] {
        store
            .put(k, b("1"), Some(la))
            .await
            .expect("put with lease");
    }
    put(store, &detached, "2").await;
    assert_eq!(get(store, &detached).await.expect("key").lease, None);
    store
        .put(&moved, b("2"), Some(lb))
        .await
        .expect("put with lease");
    assert_eq!(get(store, &moved).await.expect("key").lease, Some(lb));
    assert!(store.delete(&deleted).await.expect("delete"));
    // Deleted then recreated without a lease: not the lease's any more.
    put(store, &deleted, "3").await;

    store.revoke_lease(la).await.expect("revoke");
    assert!(
        get(store, &detached).await.is_some(),
        "revoke deleted a detached key"
    );
    assert!(
        get(store, &moved).await.is_some(),
        "revoke deleted a moved key"
    );
    assert!(
        get(store, &deleted).await.is_some(),
        "revoke deleted a recreated key"
    );
    store.revoke_lease(lb).await.expect("revoke");
    assert_eq!(get(store, &moved).await, None);
}
