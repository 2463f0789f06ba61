//! The ordered KV writer against a real nats-server with a real write
//! failure: a bucket whose byte limit is exhausted (issue #17, item 6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::{self, kv};
use harmony_operator::writer::Writer;
use harmony_testkit::NatsServer;
use std::time::Duration;

/// Two buckets like the operator's: `state` full (1 KiB, and a 2 KiB job
/// does not fit), `offers` healthy.
async fn buckets(js: &jetstream::Context) -> (kv::Store, kv::Store) {
    let state = js
        .create_key_value(kv::Config { bucket: "state".into(), max_bytes: 1024, ..Default::default() })
        .await
        .unwrap();
    let offers = js.create_key_value(kv::Config { bucket: "offers".into(), ..Default::default() }).await.unwrap();
    (state, offers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_offer_is_written_after_its_job_failed_to_become_durable() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let (state, offers) = buckets(&js).await;
    let writer = Writer::start(js.clone(), Default::default());
    writer.put("state", "job.pi-1", vec![b'x'; 2048].into(), false);
    writer.put("offers", "pi-1", "offer 1".into(), true);
    writer.flush().await;
    assert_eq!(state.get("job.pi-1").await.unwrap(), None, "the job write really failed");
    assert_eq!(offers.get("pi-1").await.unwrap(), None, "an offer was written although its job is not durable");
    // Later offers are held back too: the serve loop reloads first.
    writer.put("offers", "pi-2", "offer 2".into(), true);
    writer.flush().await;
    assert_eq!(offers.get("pi-2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_reported_to_the_serve_loop() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let (_state, offers) = buckets(&js).await;
    let writer = Writer::start_with_retries(js.clone(), Default::default(), 2);
    // Healthy writes first: nothing to report.
    writer.put("offers", "pi-0", "ok".into(), true);
    writer.flush().await;
    assert!(tokio::time::timeout(Duration::from_millis(200), writer.failed()).await.is_err());
    assert!(offers.get("pi-0").await.unwrap().is_some());
    writer.put("state", "job.pi-1", vec![b'x'; 2048].into(), false);
    let why = tokio::time::timeout(Duration::from_secs(10), writer.failed()).await.expect("failure not reported");
    assert!(why.to_string().contains("job.pi-1"), "{why}");
}
