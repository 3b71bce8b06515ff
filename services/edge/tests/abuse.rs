//! Bad input on the Kafka listener: lying and huge lengths, garbage,
//! unknown API keys, unsupported versions, counts that would size huge
//! allocations, idle and surplus connections. The edge answers with an error
//! or closes that connection cleanly, and keeps serving everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::{BufMut, BytesMut};
use common::{Cluster, KafkaConn, Options};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};
use kafka_protocol::protocol::Decodable;

/// A raw frame: length, api key, version, correlation id, then `rest`.
fn frame(api: i16, version: i16, correlation: i32, rest: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32((8 + rest.len()) as i32);
    b.put_i16(api);
    b.put_i16(version);
    b.put_i32(correlation);
    b.extend_from_slice(rest);
    b.to_vec()
}

/// The edge still answers a well-behaved client.
async fn still_serving(address: &str) {
    let mut c = KafkaConn::connect(address).await.unwrap();
    let versions = c.call(&ApiVersionsRequest::default(), 3).await.unwrap();
    assert_eq!(versions.error_code, 0);
    let md = c.call(&MetadataRequest::default(), 12).await.unwrap();
    assert_eq!(md.brokers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let addr = cluster.kafka().to_string();

    // A connection that stays healthy through everything below.
    let mut bystander = KafkaConn::connect(&addr).await.unwrap();
    bystander
        .call(&ApiVersionsRequest::default(), 3)
        .await
        .unwrap();

    // A lying length: 1000 bytes announced, 10 sent, then the client hangs
    // up half-way. The edge must not wait for the rest forever.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    let mut lie = frame(18, 3, 1, &[0; 2]);
    lie[..4].copy_from_slice(&1000i32.to_be_bytes());
    c.send_raw(&lie).await.unwrap();
    c.stream.shutdown().await.unwrap();
    assert!(c.is_closed().await);

    // A lying length whose client stays connected does not block others.
    let mut stalled = KafkaConn::connect(&addr).await.unwrap();
    stalled.send_raw(&lie).await.unwrap();
    still_serving(&addr).await;

    // A huge length (2 GiB): refused before anything is allocated.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&i32::MAX.to_be_bytes()).await.unwrap();
    assert!(c.is_closed().await);

    // Just over the frame limit (100 MiB by default).
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&(100 * 1024 * 1024 + 1i32).to_be_bytes())
        .await
        .unwrap();
    assert!(c.is_closed().await);

    // Negative and too-short lengths.
    for len in [-1i32, 0, 3] {
        let mut c = KafkaConn::connect(&addr).await.unwrap();
        c.send_raw(&len.to_be_bytes()).await.unwrap();
        assert!(c.is_closed().await, "length {len}");
    }

    // Garbage: a plausible length followed by random bytes.
    let mut seed: u32 = 12345;
    for _ in 0..20 {
        let mut junk = vec![0u8; 64];
        for b in &mut junk {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (seed >> 16) as u8;
        }
        let mut c = KafkaConn::connect(&addr).await.unwrap();
        let mut f = (junk.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(&junk);
        c.send_raw(&f).await.unwrap();
        // Either an answer (if the junk happens to parse) or a close.
        let _ = c.read_frame().await;
    }

    // An HTTP request on the Kafka port.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(c.is_closed().await);

    // An unknown API key.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&frame(999, 0, 1, &[0xff, 0xff])).await.unwrap();
    assert!(c.is_closed().await);

    // An API the edge does not serve (EndTxn: no transactions yet) and an
    // unsupported version of one it does (Metadata v99): closed, with a log
    // line.
    for (api, version) in [(26, 0), (3, 99)] {
        let mut c = KafkaConn::connect(&addr).await.unwrap();
        c.send_raw(&frame(api, version, 1, &[0xff, 0xff]))
            .await
            .unwrap();
        assert!(c.is_closed().await, "api {api} v{version}");
    }

    // A Metadata v1 request whose topic count claims i32::MAX entries. The
    // kafka-protocol crate would reserve ~150 GB for it and abort the
    // process; the edge refuses it before decoding.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&frame(3, 1, 1, &[0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0, 1]))
        .await
        .unwrap();
    assert!(c.is_closed().await);
    // The same through a flexible version (compact array, varint count).
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&frame(
        3,
        12,
        1,
        &[0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0],
    ))
    .await
    .unwrap();
    assert!(c.is_closed().await);

    // Garbage after a valid header: a Metadata v1 body whose topic name
    // claims more bytes than the frame has.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&frame(3, 1, 1, &[0xff, 0xff, 0, 0, 0, 1, 0x7f, 0xff, 1, 2]))
        .await
        .unwrap();
    assert!(c.is_closed().await);
    // Bytes after a complete body are ignored (Kafka does the same, and
    // librdkafka sends some): the request is answered.
    let mut c = KafkaConn::connect(&addr).await.unwrap();
    c.send_raw(&frame(18, 0, 1, &[0xff, 0xff, 1, 2, 3, 4]))
        .await
        .unwrap();
    assert!(!c.is_closed().await);

    // Everyone else is fine, the bystander included.
    still_serving(&addr).await;
    let md = bystander
        .call(&MetadataRequest::default(), 1)
        .await
        .unwrap();
    assert_eq!(md.brokers.len(), 1);
    drop(stalled);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_api_versions_gets_error_35_with_a_v0_body() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    // ApiVersions v127 with a body the edge cannot know.
    c.send_raw(&frame(18, 127, 42, &[1, 2, 3, 4, 5]))
        .await
        .unwrap();
    let mut response = c.read_frame().await.unwrap().expect("an answer");
    // Header v0: the correlation id only.
    assert_eq!(&response[..4], &42i32.to_be_bytes());
    let _ = bytes::Buf::get_i32(&mut response);
    let body = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(body.error_code, 35);
    let keys: Vec<i16> = body.api_keys.iter().map(|k| k.api_key).collect();
    for key in [0, 1, 2, 3, 18, 19, 20] {
        assert!(keys.contains(&key), "API key {key} advertised: {keys:?}");
    }
    let max = body
        .api_keys
        .iter()
        .find(|k| k.api_key == 18)
        .unwrap()
        .max_version;
    // The connection stays usable: retry with the version offered.
    let ok = c.call(&ApiVersionsRequest::default(), max).await.unwrap();
    assert_eq!(ok.error_code, 0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_idle_connections() {
    let options = Options {
        edge: runnel_edge::EdgeConfig {
            max_connections: 20,
            connections_max_idle_ms: 3_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let cluster = Cluster::start(options).await.unwrap();
    let addr = cluster.kafka().to_string();
    // Connections that send nothing are closed after the idle time.
    let mut silent = KafkaConn::connect(&addr).await.unwrap();
    assert!(silent.is_closed().await);

    // Fill the connection limit with silent clients; the surplus is closed at
    // once, and once the silent ones are dropped, service resumes.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut surplus = KafkaConn::connect(&addr).await.unwrap();
    assert!(surplus.is_closed().await);
    drop(held);
    // The edge notices the closed sockets; retry until a slot is free.
    let mut served = false;
    for _ in 0..50 {
        let mut c = KafkaConn::connect(&addr).await.unwrap();
        if c.call(&ApiVersionsRequest::default(), 3).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the edge serves again after the silent clients left"
    );
    cluster.shutdown().await.unwrap();
}

use tokio::io::AsyncWriteExt;
