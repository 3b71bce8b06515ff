//! The conformance suite against every backend: the embedded store in memory
//! and on a file (with restarts), and a real etcd server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_metastore::{EmbeddedStore, EtcdStore, MetaError, MetaStore, conformance};
use runnel_test_support::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_in_memory() {
    conformance::run_all(Arc::new(EmbeddedStore::in_memory()), "/conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metastore.json");
    let store = EmbeddedStore::open(&path).await.unwrap();
    conformance::run_all(Arc::new(store), "/conformance").await;
    // The suite's state reloads.
    let reopened = EmbeddedStore::open(&path).await.unwrap();
    let (kvs, _) = reopened.range("/conformance/").await.unwrap();
    assert!(!kvs.is_empty());
    assert!(kvs.iter().all(|kv| kv.lease.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_file_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metastore.json");
    let (plain, leased, lease, last) = {
        let store = EmbeddedStore::open(&path).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store.put("/r/a", Bytes::from("a1"), None).await.unwrap();
        store.put("/r/a", Bytes::from("a2"), None).await.unwrap();
        store.put("/r/b", Bytes::from("b"), None).await.unwrap();
        store
            .put("/r/leased", Bytes::from("gone"), Some(lease))
            .await
            .unwrap();
        // A once-plain key rewritten with a lease is ephemeral too.
        store.put("/r/c", Bytes::from("c1"), None).await.unwrap();
        let last = store
            .put("/r/c", Bytes::from("c2"), Some(lease))
            .await
            .unwrap();
        let (kvs, _) = store.range("/r/").await.unwrap();
        let plain: Vec<_> = kvs
            .iter()
            .filter(|kv| kv.lease.is_none())
            .cloned()
            .collect();
        let leased: Vec<_> = kvs
            .iter()
            .filter(|kv| kv.lease.is_some())
            .cloned()
            .collect();
        (plain, leased, lease, last)
        // Dropped without revoking: the process "went away".
    };
    assert_eq!(plain.len(), 2);
    assert_eq!(leased.len(), 2);

    let store = EmbeddedStore::open(&path).await.unwrap();
    let (kvs, rev) = store.range("/r/").await.unwrap();
    assert_eq!(
        kvs, plain,
        "non-leased keys come back exactly, leased ones do not"
    );
    assert_eq!(rev, last, "the revision survives a restart");
    let next = store.put("/r/d", Bytes::from("d"), None).await.unwrap();
    assert!(
        next > last,
        "revision {next} after restart not above {last}"
    );

    // The old lease is gone and its id is not reused.
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(MetaError::LeaseNotFound(_))
    ));
    let new_lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert_ne!(new_lease, lease);

    // A watch from the restart revision works; an older one is compacted.
    let mut watch = store.watch("/r/", next - 1).await.unwrap();
    use futures::StreamExt;
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.key(), e.revision()), ("/r/d", next));
    assert!(matches!(
        store.watch("/r/", 1).await,
        Err(MetaError::Compacted(_))
    ));

    // And once more, through the URL opener.
    drop(store);
    let url = format!("file://{}", path.display());
    let store = runnel_metastore::open(&url).await.unwrap();
    assert_eq!(store.get("/r/d").await.unwrap().unwrap().mod_revision, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let store = EtcdStore::connect(&[server.http_url()]).await.unwrap();
    conformance::run_all(Arc::new(store), "/conformance").await;

    // A second run through the URL opener, on a fresh prefix of the same
    // (now non-empty) store.
    let store = runnel_metastore::open(&server.url()).await.unwrap();
    conformance::run_all(store, "/conformance-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compacted_watch() {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let store = EtcdStore::connect(&[server.http_url()]).await.unwrap();
    for i in 0..5 {
        store
            .put("/c/k", Bytes::from(i.to_string()), None)
            .await
            .unwrap();
    }
    let (_, rev) = store.range("/c/").await.unwrap();
    store.client().kv_client().compact(rev, None).await.unwrap();
    use futures::StreamExt;
    match store.watch("/c/", 1).await {
        Err(MetaError::Compacted(_)) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(mut w) => match w.next().await {
            Some(Err(MetaError::Compacted(_))) => {}
            other => panic!("expected Compacted, got {other:?}"),
        },
    }
    // From the compaction point on, watching works.
    let mut w = store.watch("/c/", rev).await.unwrap();
    let r = store.put("/c/k", Bytes::from("new"), None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_unavailable() {
    let port = runnel_test_support::free_port();
    let store = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")])
        .await
        .unwrap();
    match store.get("/x").await {
        Err(MetaError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
