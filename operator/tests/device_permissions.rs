//! Device credentials from `init --device` on a real nats-server with the
//! generated auth config: a device can do its own things and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream;
use futures::StreamExt;
use harmony_operator::bus::{create_buckets, BucketLimits};
use harmony_operator::provision::{self, device_inbox_prefix, AgentSettings, DeviceUser};
use harmony_protocol::command::{Command, CommandReply, ReplyBody};
use harmony_protocol::names::{command_subject, BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET};
use harmony_protocol::workload::{MANIFEST_BUCKET, OBJECT_BUCKET, WORKLOAD_STATUS_BUCKET};
use harmony_protocol::DeviceId;
use harmony_testkit::wait::request_when_served;
use harmony_testkit::NatsServer;
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn device_client(url: &str, seed_file: &std::path::Path, id: &DeviceId) -> async_nats::Client {
    let seed = std::fs::read_to_string(seed_file).unwrap();
    async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix(device_inbox_prefix(id))
        .connect(url)
        .await
        .unwrap()
}

/// How an agent watches its offer (or its manifest) under these permissions.
async fn watch_own_key(
    js: &jetstream::Context,
    client: &async_nats::Client,
    bucket: &str,
    id: &DeviceId,
) -> Result<jetstream::consumer::push::Ordered, String> {
    let stream = js.get_stream_no_info(format!("KV_{bucket}")).await.map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 6];
    getrandom::getrandom(&mut nonce).map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            name: Some(format!("watch-{id}-{}", hex::encode(nonce))),
            deliver_subject: client.new_inbox(),
            filter_subject: format!("$KV.{bucket}.{id}"),
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// `STREAM.INFO` with `subjects_filter` on a KV stream names every key:
/// a device must get no answer (denied), or one without `other` in it.
async fn assert_lists_no_keys(dev: &async_nats::Client, bucket: &str, other: &str) {
    let listing = tokio::time::timeout(
        Duration::from_millis(1500),
        dev.request(format!("$JS.API.STREAM.INFO.KV_{bucket}"), r#"{"subjects_filter":">"}"#.into()),
    )
    .await;
    if let Ok(Ok(reply)) = &listing {
        let text = String::from_utf8_lossy(&reply.payload);
        assert!(!text.contains(other), "a device listed the keys of {bucket}: {text}");
    }
}

/// A bucket the operator writes one key per device in (offers, workload
/// manifests): the device reads and watches its own key, and nothing else;
/// it writes none. `js` answers denials quickly, `js_ok` waits long for
/// what must work on a slow host.
async fn assert_reads_only_its_own_key(
    store: &jetstream::kv::Store,
    dev: &async_nats::Client,
    [js, js_ok]: [&jetstream::Context; 2],
    [own, other]: [&DeviceId; 2],
) {
    let bucket = store.name.as_str();
    store.put(own.as_str(), format!("{bucket}-1").into()).await.unwrap();
    store.put(other.as_str(), format!("{bucket}-2").into()).await.unwrap();
    assert_lists_no_keys(dev, bucket, other.as_str()).await;
    assert!(js.get_key_value(bucket).await.is_err(), "opened {bucket} (stream info)");
    let stream = js_ok.get_stream_no_info(format!("KV_{bucket}")).await.unwrap();
    let stream_denied = js.get_stream_no_info(format!("KV_{bucket}")).await.unwrap();
    let got = stream.direct_get_last_for_subject(format!("$KV.{bucket}.{own}")).await.unwrap();
    assert_eq!(got.payload, format!("{bucket}-1"));
    assert!(
        stream_denied.direct_get_last_for_subject(format!("$KV.{bucket}.{other}")).await.is_err(),
        "read another device's key in {bucket}"
    );
    // The agent's watch: a named ordered consumer filtered on its key.
    let mut watch = watch_own_key(js_ok, dev, bucket, own).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.payload, format!("{bucket}-1"));
    store.put(own.as_str(), format!("{bucket}-1b").into()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.payload, format!("{bucket}-1b"));
    assert!(watch_own_key(js, dev, bucket, other).await.is_err(), "watched another device's key in {bucket}");
    // The unnamed form (filter only in the payload, as `kv::Store::watch`
    // creates it) is refused: it could name any key.
    for key in [own, other] {
        let unnamed = stream_denied
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: dev.new_inbox(),
                filter_subject: format!("$KV.{bucket}.{key}"),
                ..Default::default()
            })
            .await;
        assert!(unnamed.is_err(), "an unnamed consumer on {key} in {bucket} was allowed");
    }
    let forged = async { js.publish(format!("$KV.{bucket}.{own}"), "forged".into()).await?.await.map(drop) };
    assert!(forged.await.is_err(), "a device wrote {bucket}");
}

/// A bucket each device writes its own key in (heartbeats, workload
/// statuses): it writes its own key and no other, and cannot list or open
/// the bucket.
async fn assert_writes_only_its_own_key(
    store: &jetstream::kv::Store,
    dev: &async_nats::Client,
    [js, js_ok]: [&jetstream::Context; 2],
    [own, other]: [&DeviceId; 2],
) {
    let bucket = store.name.as_str();
    store.put(other.as_str(), "{}".into()).await.unwrap();
    // A JetStream publish to its key, as the agent writes it.
    let put = |key: &DeviceId, js: &jetstream::Context, value: &'static str| {
        let (js, subject) = (js.clone(), format!("$KV.{bucket}.{key}"));
        async move { js.publish(subject, value.into()).await?.await.map(drop) }
    };
    put(own, js_ok, "{}").await.unwrap();
    assert_eq!(store.get(own.as_str()).await.unwrap().as_deref(), Some(&b"{}"[..]));
    assert!(put(other, js, "forged").await.is_err(), "wrote another device's key in {bucket}");
    assert_eq!(store.get(other.as_str()).await.unwrap().as_deref(), Some(&b"{}"[..]));
    assert_lists_no_keys(dev, bucket, other.as_str()).await;
    assert!(js.get_key_value(bucket).await.is_err(), "opened {bucket} (stream info)");
}

/// An object store every device may download from (bundles, workload
/// objects) and none may upload to.
async fn assert_downloads_only(ojs: &jetstream::Context, bucket: &str, [js, js_ok]: [&jetstream::Context; 2]) {
    let content = format!("{bucket} bytes");
    ojs.get_object_store(bucket).await.unwrap().put("obj", &mut content.as_bytes()).await.unwrap();
    let mut obj = js_ok.get_object_store(bucket).await.unwrap().get("obj").await.unwrap();
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes, content.as_bytes());
    let denied = js.get_object_store(bucket).await.unwrap();
    assert!(denied.put("evil", &mut &b"x"[..]).await.is_err(), "a device uploaded to {bucket}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_can_do_its_own_things_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    harmony_operator::keys::generate(&key).unwrap();
    let settings = AgentSettings {
        nats_urls: vec!["nats://10.0.2.2:4222".into()],
        labels: [("site".to_string(), "kitchen".to_string())].into(),
        heartbeat_interval_secs: 10,
        commit_deadline_secs: 300,
    };
    let (pi1, pi2) = (DeviceId::new("pi-1").unwrap(), DeviceId::new("pi-2").unwrap());
    let mut users = Vec::new();
    for d in [&pi1, &pi2] {
        let (p, _) = provision::provision_device(d, &settings, &key, &dir.path().join(d.as_str())).unwrap();
        users.push(DeviceUser::provisioned(d.clone(), p.nkey, Default::default()));
    }
    // agent.toml as the agent expects it
    let agent_toml = std::fs::read_to_string(dir.path().join("pi-1/data/harmony/agent.d/10-provisioned.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&agent_toml).unwrap();
    assert_eq!(parsed["device_id"].as_str(), Some("pi-1"));
    assert_eq!(parsed["nats"]["nkey_seed_file"].as_str(), Some("/data/harmony/device.nk"));
    assert_eq!(parsed["labels"]["site"].as_str(), Some("kitchen"));
    assert!(dir.path().join("pi-1/etc/harmony/fleet-keys/fleet.key.pub").exists());

    let op_seed = dir.path().join("operator.nk");
    let op_nkey = provision::operator_nkey(&op_seed).unwrap();
    let conf = dir.path().join("auth.conf");
    std::fs::write(&conf, provision::render_auth_conf(&op_nkey, &users)).unwrap();
    let nats = NatsServer::start_with_config(Some(&conf));

    // Operator: everything.
    let op_seed_text = std::fs::read_to_string(&op_seed).unwrap();
    let op = async_nats::ConnectOptions::with_nkey(op_seed_text.trim().to_string()).connect(nats.url()).await.unwrap();
    let ojs = jetstream::new(op.clone());
    create_buckets(&ojs, &BucketLimits::default()).await.unwrap();

    // An unknown user is not let in at all.
    assert!(async_nats::ConnectOptions::with_nkey(nkeys::KeyPair::new_user().seed().unwrap())
        .connect(nats.url())
        .await
        .is_err());

    let dev = device_client(&nats.url(), &dir.path().join("pi-1/data/harmony/device.nk"), &pi1).await;
    // Denied requests get no answer: a short timeout keeps the test quick.
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_millis(1500)).build(dev.clone());
    // What is allowed must not fail for a slow host: a long timeout there.
    let js_ok = jetstream::ContextBuilder::new().timeout(Duration::from_secs(15)).build(dev.clone());

    // Its own heartbeat: yes (a JetStream publish to its key, as the agent
    // writes it). Another device's: no. Reading heartbeats is the
    // operator's business: no bucket handle, no stream info, so no
    // `subjects_filter` listing every device id (issue #17).
    let op_hbs = ojs.get_key_value(HEARTBEAT_BUCKET).await.unwrap();
    assert_writes_only_its_own_key(&op_hbs, &dev, [&js, &js_ok], [&pi1, &pi2]).await;

    // Its own offer: read and watch. Another device's: neither. No stream
    // info and so no bucket handle: `subjects_filter` on the offers stream
    // would list every device ever offered an upgrade (issue #17).
    let offers = ojs.get_key_value(OFFER_BUCKET).await.unwrap();
    assert_reads_only_its_own_key(&offers, &dev, [&js, &js_ok], [&pi1, &pi2]).await;

    // Bundles: download yes, upload no.
    assert_downloads_only(&ojs, BUNDLE_OBJECT_BUCKET, [&js, &js_ok]).await;

    // Workloads (issue #15): its own manifest read and watched like its
    // offer, its own status written like its heartbeat; workload objects
    // downloaded like bundles. Nothing of another device's.
    let manifests = ojs.get_key_value(MANIFEST_BUCKET).await.unwrap();
    assert_reads_only_its_own_key(&manifests, &dev, [&js, &js_ok], [&pi1, &pi2]).await;
    let statuses = ojs.get_key_value(WORKLOAD_STATUS_BUCKET).await.unwrap();
    assert_writes_only_its_own_key(&statuses, &dev, [&js, &js_ok], [&pi1, &pi2]).await;
    assert_downloads_only(&ojs, OBJECT_BUCKET, [&js, &js_ok]).await;

    // Commands: it serves its own subject and the operator gets the reply.
    let mut sub = dev.subscribe(command_subject(&pi1)).await.unwrap();
    dev.flush().await.unwrap();
    tokio::spawn({
        let dev = dev.clone();
        async move {
            if let Some(msg) = sub.next().await {
                let reply = CommandReply::from_result(Ok(ReplyBody::RebootScheduled));
                dev.publish(msg.reply.unwrap(), reply.encode().into()).await.unwrap();
            }
        }
    });
    let answer =
        request_when_served(&op, command_subject(&pi1), Command::Ping.encode().into(), Duration::from_secs(15))
            .await
            .unwrap();
    assert!(CommandReply::decode(&answer.payload).is_ok());
    // It cannot listen on another device's subject: nobody answers there.
    let mut other = dev.subscribe(command_subject(&pi2)).await.unwrap();
    // A publish acknowledged after the SUB: the server has handled (and
    // refused) it before the operator asks.
    js_ok.publish(format!("$KV.{HEARTBEAT_BUCKET}.{pi1}"), "after-sub".into()).await.unwrap().await.unwrap();
    let r =
        tokio::time::timeout(Duration::from_secs(2), op.request(command_subject(&pi2), Command::Ping.encode().into()))
            .await;
    assert!(!matches!(r, Ok(Ok(_))), "pi-1 answered for pi-2");
    assert!(tokio::time::timeout(Duration::from_millis(300), other.next()).await.ok().flatten().is_none());
}
