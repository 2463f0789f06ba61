//! `harmony-operator init --replicas N` through the real binary: on a real
//! 3-node JetStream cluster every bucket and the object store get N copies;
//! a count the servers cannot hold is refused with a clear error and creates
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_operator::Config;
use harmony_protocol::names::{BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET, OPERATOR_STATE_BUCKET};
use harmony_protocol::workload::{MANIFEST_BUCKET, OBJECT_BUCKET, WORKLOAD_STATUS_BUCKET};
use harmony_testkit::{NatsCluster, NatsServer};
use std::path::Path;
use std::process::Output;

fn init(dir: &Path, url: &str, replicas: &str) -> Output {
    let key = dir.join("fleet.key");
    if !key.exists() {
        harmony_operator::keys::generate(&key).unwrap();
    }
    let cfg = Config::for_url(url, &key);
    let cfg_path = dir.join("operator.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["init", "--replicas", replicas])
        .env("HARMONY_LOG", "warn")
        .output()
        .unwrap()
}

fn streams() -> [String; 7] {
    [
        format!("KV_{HEARTBEAT_BUCKET}"),
        format!("KV_{OFFER_BUCKET}"),
        format!("KV_{OPERATOR_STATE_BUCKET}"),
        format!("OBJ_{BUNDLE_OBJECT_BUCKET}"),
        format!("KV_{MANIFEST_BUCKET}"),
        format!("KV_{WORKLOAD_STATUS_BUCKET}"),
        format!("OBJ_{OBJECT_BUCKET}"),
    ]
}

async fn replicas_of(url: &str) -> Vec<(String, Option<usize>)> {
    let addrs = harmony_operator::bus::server_addrs(url).unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(addrs).await.unwrap());
    let mut out = Vec::new();
    for name in streams() {
        let n = match js.get_stream(&name).await {
            Ok(mut s) => Some(s.info().await.unwrap().config.num_replicas),
            Err(_) => None,
        };
        out.push((name, n));
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_three_node_cluster_creates_r3_buckets_and_refuses_more_than_the_servers() {
    let cluster = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url_list();

    for bad in ["0", "6"] {
        let out = init(dir.path(), &url, bad);
        assert!(!out.status.success(), "--replicas {bad} accepted");
        assert!(stderr(&out).contains("1 to 5"), "--replicas {bad}: {}", stderr(&out));
    }
    let out = init(dir.path(), &url, "4");
    assert!(!out.status.success(), "--replicas 4 accepted on 3 servers");
    assert!(stderr(&out).contains("only 3 servers"), "{}", stderr(&out));
    for (name, n) in replicas_of(&url).await {
        assert_eq!(n, None, "{name} was created by a refused init");
    }

    let out = init(dir.path(), &url, "3");
    assert!(out.status.success(), "init --replicas 3 failed: {}", stderr(&out));
    for (name, n) in replicas_of(&url).await {
        assert_eq!(n, Some(3), "{name}");
    }
    // Running it again is safe, and can scale the copies down.
    let out = init(dir.path(), &url, "1");
    assert!(out.status.success(), "init --replicas 1 failed: {}", stderr(&out));
    for (name, n) in replicas_of(&url).await {
        assert_eq!(n, Some(1), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_replicas_on_a_single_server_says_it_is_not_a_cluster_and_creates_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &nats.url(), "3");
    assert!(!out.status.success(), "--replicas 3 accepted on a single server");
    assert!(stderr(&out).contains("not part of a cluster"), "{}", stderr(&out));
    for (name, n) in replicas_of(&nats.url()).await {
        assert_eq!(n, None, "{name} was created by a refused init");
    }
    let out = init(dir.path(), &nats.url(), "1");
    assert!(out.status.success(), "{}", stderr(&out));
}
