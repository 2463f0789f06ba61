//! Zero-touch enrollment on a real nats-server in auth-callout mode, with
//! the real operator (`serve` with `[enroll]`) deciding every connection:
//! every token and approval path, revocation of a live device, and the bad
//! inputs of issue #14.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_operator::commands::Output;
use harmony_operator::config::{Config, EnrollConfig};
use harmony_operator::enroll::cli::{self, TokenArgs, Verdict};
use harmony_operator::enroll::{seed_file, SeedKind};
use harmony_operator::provision::DeviceStatus;
use harmony_protocol::clock::FakeClock;
use harmony_protocol::enroll::{
    enroll_inbox_prefix, enroll_subject, EnrollRefusal, EnrollReply, EnrollRequest, MAX_ENROLL_REQUEST_BYTES,
};
use harmony_protocol::names::{command_subject, device_inbox_prefix, kv_put_subject, HEARTBEAT_BUCKET};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, SCHEMA_VERSION};
use harmony_testkit::wait::request_when_served;
use harmony_testkit::NatsServer;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Fleet {
    _dir: tempfile::TempDir,
    server: NatsServer,
    cfg: Config,
    clock: Arc<FakeClock>,
    _serve: tokio::task::JoinHandle<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

impl Fleet {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let op = seed_file(&p("operator.nk"), SeedKind::User, true).unwrap();
        let enroll = EnrollConfig {
            issuer_seed_file: p("issuer.nk"),
            system_seed_file: p("system.nk"),
            ..EnrollConfig::default()
        };
        let signing_key = p("fleet.key");
        harmony_operator::keys::generate(&signing_key).unwrap();
        let mut cfg = Config::for_url("nats://127.0.0.1:1", &signing_key);
        cfg.nats.nkey_seed_file = Some(p("operator.nk"));
        cfg.enroll = Some(enroll);
        // The block `enroll server-config` prints, as the server's config.
        let block = cli::server_config(&cfg).unwrap().text;
        assert!(block.contains(&op.public_key()));
        std::fs::write(p("nats.conf"), &block).unwrap();
        let server = NatsServer::start_with_config(Some(&p("nats.conf")));
        cfg.nats.url = server.url();
        harmony_operator::commands::init(&cfg, &Default::default()).await.unwrap();
        let clock = Arc::new(FakeClock::new(UnixMillis(now_ms())));
        let (c, k) = (cfg.clone(), clock.clone());
        let serve = tokio::spawn(async move {
            harmony_operator::serve::run_with_clock(c, k, std::future::pending()).await.unwrap();
        });
        let fleet = Self { _dir: dir, server, cfg, clock, _serve: serve };
        fleet.wait_gate().await;
        fleet
    }

    /// Until the callout answers: an unknown key is refused (not timed out).
    async fn wait_gate(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let started = tokio::time::Instant::now();
            let err = self.connect(&nkeys::KeyPair::new_user(), None, None).await.err().unwrap_or_default();
            // A refusal from the callout comes fast; no callout means the server's auth timeout.
            if err.to_lowercase().contains("authorization") && started.elapsed() < Duration::from_secs(1) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the callout never answered: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn connect(
        &self,
        key: &nkeys::KeyPair,
        token: Option<&str>,
        inbox: Option<String>,
    ) -> Result<async_nats::Client, String> {
        let mut opts = async_nats::ConnectOptions::new()
            .nkey(key.seed().unwrap())
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(Some(1));
        if let Some(t) = token {
            opts = opts.token(t.to_string());
        }
        if let Some(prefix) = inbox {
            opts = opts.custom_inbox_prefix(prefix);
        }
        opts.connect(self.server.url()).await.map_err(|e| format!("{e}: {e:?}"))
    }

    async fn token(&self, max_uses: u32, approval: bool, labels: &[&str]) -> String {
        let a = TokenArgs {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            max_uses,
            expires: "1h".into(),
            require_approval: approval,
        };
        let out: Output = cli::token_create(&self.cfg, &a).await.unwrap();
        out.json["token"].as_str().unwrap().to_string()
    }
}

fn request(key: &nkeys::KeyPair, token: &str, device: &str) -> EnrollRequest {
    EnrollRequest {
        schema: SCHEMA_VERSION,
        token: token.into(),
        nkey: key.public_key(),
        device: DeviceId::new(device).unwrap(),
        labels: BTreeMap::from([("room".to_string(), "hall".to_string())]),
        agent_version: "0.1.0".into(),
        os_version: Some("1.0.0".into()),
    }
}

async fn ask(client: &async_nats::Client, key: &nkeys::KeyPair, body: Vec<u8>) -> EnrollReply {
    let reply =
        tokio::time::timeout(Duration::from_secs(10), client.request(enroll_subject(&key.public_key()), body.into()))
            .await
            .expect("an answer")
            .expect("request");
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Enrolls `device` with `token` as a real device would; returns the reply.
async fn enroll(fleet: &Fleet, key: &nkeys::KeyPair, token: &str, device: &str) -> Result<EnrollReply, String> {
    let c = fleet.connect(key, Some(token), Some(enroll_inbox_prefix(&key.public_key()))).await?;
    Ok(ask(&c, key, serde_json::to_vec(&request(key, token, device)).unwrap()).await)
}

async fn as_device(fleet: &Fleet, key: &nkeys::KeyPair, id: &str) -> Result<async_nats::Client, String> {
    fleet.connect(key, None, Some(device_inbox_prefix(&DeviceId::new(id).unwrap()))).await
}

/// A heartbeat put to its own key succeeds (a JetStream ack).
async fn can_heartbeat(c: &async_nats::Client, id: &str) -> bool {
    let js = async_nats::jetstream::new(c.clone());
    match js.publish(kv_put_subject(HEARTBEAT_BUCKET, id), "{}".into()).await {
        // A denied publish gets no ack; an allowed one is acked in milliseconds.
        Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack).await.is_ok_and(|a| a.is_ok()),
        Err(_) => false,
    }
}

fn refused(r: &EnrollReply) -> EnrollRefusal {
    match r {
        EnrollReply::Refused { reason, .. } => *reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrolls_a_device_which_then_connects_with_its_own_key_only() {
    let fleet = Fleet::start().await;
    let token = fleet.token(1, false, &["site=lab"]).await;
    let key = nkeys::KeyPair::new_user();

    // Token + key: only the enrollment subject.
    let c = fleet.connect(&key, Some(&token), Some(enroll_inbox_prefix(&key.public_key()))).await.unwrap();
    assert!(!can_heartbeat(&c, "pi-1").await, "an enrolling connection has no device rights");
    let other = nkeys::KeyPair::new_user();
    let sneaky = c.request(enroll_subject(&other.public_key()), "{}".into()).await;
    assert!(sneaky.is_err(), "may not ask in another key's name");
    let reply = ask(&c, &key, serde_json::to_vec(&request(&key, &token, "pi-1")).unwrap()).await;
    let EnrollReply::Enrolled { device, labels } = reply else { panic!("{reply:?}") };
    assert_eq!(device.as_str(), "pi-1");
    assert_eq!(labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(labels.get("room").map(String::as_str), Some("hall"));

    // Its own key, no token: device rights, exactly.
    let dev = as_device(&fleet, &key, "pi-1").await.unwrap();
    assert!(can_heartbeat(&dev, "pi-1").await);
    assert!(!can_heartbeat(&dev, "pi-2").await, "another device's key");
    // A device that missed its answer asks again over its device connection.
    let again = ask(&dev, &key, serde_json::to_vec(&request(&key, &token, "pi-1")).unwrap()).await;
    assert!(matches!(again, EnrollReply::Enrolled { .. }), "{again:?}");
    // It serves its command subject: the operator's request reaches it.
    let mut cmds = dev.subscribe(command_subject(&DeviceId::new("pi-1").unwrap())).await.unwrap();
    let op = async_nats::ConnectOptions::with_nkey(
        std::fs::read_to_string(fleet.cfg.nats.nkey_seed_file.as_ref().unwrap()).unwrap().trim().to_string(),
    )
    .connect(fleet.server.url())
    .await
    .unwrap();
    let op2 = op.clone();
    let subject = command_subject(&DeviceId::new("pi-1").unwrap());
    let asked =
        tokio::spawn(async move { request_when_served(&op2, subject, "ping".into(), Duration::from_secs(15)).await });
    let msg = futures::StreamExt::next(&mut cmds).await.unwrap();
    dev.publish(msg.reply.unwrap(), "pong".into()).await.unwrap();
    assert_eq!(&asked.await.unwrap().unwrap().payload[..], b"pong", "the device may answer");

    // Asking again with the same key spends nothing and gets the same answer
    // (the device may have missed the first reply), although the token is used up.
    let again = ask(&c, &key, serde_json::to_vec(&request(&key, &token, "pi-1")).unwrap()).await;
    assert!(matches!(again, EnrollReply::Enrolled { .. }), "{again:?}");
    // The used-up token lets no new key in.
    let late = enroll(&fleet, &nkeys::KeyPair::new_user(), &token, "pi-9").await;
    assert!(late.is_err(), "used-up token admitted: {late:?}");
    let listed = cli::token_list(&fleet.cfg).await.unwrap();
    assert_eq!(listed.json[0]["uses"], 1);
    assert!(!listed.text.contains(token.rsplit('_').next().unwrap()), "secret shown: {}", listed.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_bad_requests_are_refused_and_change_nothing() {
    let fleet = Fleet::start().await;
    let token = fleet.token(5, false, &[]).await;
    let key = nkeys::KeyPair::new_user();
    // No token, garbage, forged secret, another id: the connection itself is refused.
    assert!(fleet.connect(&key, None, None).await.is_err());
    assert!(fleet.connect(&key, Some("hfe1_garbage"), None).await.is_err());
    let forged = format!("{}{}", &token[..token.len() - 4], if token.ends_with("AAAA") { "BBBB" } else { "AAAA" });
    assert!(fleet.connect(&key, Some(&forged), None).await.is_err(), "forged secret");
    assert!(fleet.connect(&key, Some(&format!("{}x", &token)), None).await.is_err());

    let c = fleet.connect(&key, Some(&token), Some(enroll_inbox_prefix(&key.public_key()))).await.unwrap();
    let huge = vec![b'{'; MAX_ENROLL_REQUEST_BYTES + 1];
    assert_eq!(refused(&ask(&c, &key, huge).await), EnrollRefusal::TooLarge);
    assert_eq!(refused(&ask(&c, &key, b"not json".to_vec()).await), EnrollRefusal::Malformed);
    let mut lying = request(&key, &token, "pi-1");
    lying.nkey = nkeys::KeyPair::new_user().public_key();
    assert_eq!(refused(&ask(&c, &key, serde_json::to_vec(&lying).unwrap()).await), EnrollRefusal::Malformed);
    let mut newer = request(&key, &token, "pi-1");
    newer.schema = SCHEMA_VERSION + 1;
    assert_eq!(refused(&ask(&c, &key, serde_json::to_vec(&newer).unwrap()).await), EnrollRefusal::Unsupported);
    let mut wrong_secret = request(&key, &token, "pi-1");
    wrong_secret.token = forged.clone();
    assert_eq!(refused(&ask(&c, &key, serde_json::to_vec(&wrong_secret).unwrap()).await), EnrollRefusal::TokenInvalid);
    // Nothing was recorded or spent.
    assert!(as_device(&fleet, &key, "pi-1").await.is_err());
    assert_eq!(cli::token_list(&fleet.cfg).await.unwrap().json[0]["uses"], 0);

    // A second device claiming an enrolled id.
    assert!(matches!(enroll(&fleet, &key, &token, "pi-1").await.unwrap(), EnrollReply::Enrolled { .. }));
    let twin = nkeys::KeyPair::new_user();
    assert_eq!(refused(&enroll(&fleet, &twin, &token, "pi-1").await.unwrap()), EnrollRefusal::DeviceIdTaken);
    assert!(as_device(&fleet, &twin, "pi-1").await.is_err(), "the twin is not admitted");
    assert_eq!(cli::token_list(&fleet.cfg).await.unwrap().json[0]["uses"], 1, "the refusal spent nothing");

    // A revoked token, then an expired one.
    let revoked = fleet.token(5, false, &[]).await;
    let id = revoked.split('_').nth(1).unwrap().to_string();
    cli::token_revoke(&fleet.cfg, &id).await.unwrap();
    let k2 = nkeys::KeyPair::new_user();
    assert!(enroll(&fleet, &k2, &revoked, "pi-2").await.is_err(), "revoked token admitted");
    let expiring = fleet.token(5, false, &[]).await;
    fleet.clock.advance_ms(2 * 3600 * 1000);
    assert!(enroll(&fleet, &k2, &expiring, "pi-2").await.is_err(), "expired token admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_holds_a_device_until_accepted_and_a_rejected_one_stays_out() {
    let fleet = Fleet::start().await;
    let token = fleet.token(2, true, &[]).await;
    let (a, b) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    assert!(matches!(enroll(&fleet, &a, &token, "pi-a").await.unwrap(), EnrollReply::Pending { .. }));
    assert!(matches!(enroll(&fleet, &b, &token, "pi-b").await.unwrap(), EnrollReply::Pending { .. }));
    let pending = cli::pending(&fleet.cfg).await.unwrap();
    assert!(pending.text.contains("pi-a") && pending.text.contains("pi-b"), "{}", pending.text);

    // Pending: may ask again (without a token), may not act as a device.
    let c = fleet.connect(&a, None, Some(enroll_inbox_prefix(&a.public_key()))).await.unwrap();
    assert!(!can_heartbeat(&c, "pi-a").await);
    let again = ask(&c, &a, serde_json::to_vec(&request(&a, &token, "pi-a")).unwrap()).await;
    assert!(matches!(again, EnrollReply::Pending { .. }), "{again:?}");

    cli::judge(&fleet.cfg, "pi-a", Verdict::Accept).await.unwrap();
    let again = ask(&c, &a, serde_json::to_vec(&request(&a, &token, "pi-a")).unwrap()).await;
    assert!(matches!(again, EnrollReply::Enrolled { .. }), "{again:?}");
    let dev = as_device(&fleet, &a, "pi-a").await.unwrap();
    assert!(can_heartbeat(&dev, "pi-a").await);

    cli::judge(&fleet.cfg, "pi-b", Verdict::Reject).await.unwrap();
    assert!(fleet.connect(&b, Some(&token), None).await.is_err(), "a rejected key is never admitted");
    assert!(cli::judge(&fleet.cfg, "pi-b", Verdict::Accept).await.is_err(), "rejected is final");
    assert!(!cli::pending(&fleet.cfg).await.unwrap().text.contains("pi-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_disconnects_a_live_device_and_keeps_its_key_out() {
    let fleet = Fleet::start().await;
    let token = fleet.token(1, false, &[]).await;
    let key = nkeys::KeyPair::new_user();
    assert!(matches!(enroll(&fleet, &key, &token, "pi-r").await.unwrap(), EnrollReply::Enrolled { .. }));
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let dev = async_nats::ConnectOptions::new()
        .nkey(key.seed().unwrap())
        .custom_inbox_prefix(device_inbox_prefix(&DeviceId::new("pi-r").unwrap()))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(fleet.server.url())
        .await
        .unwrap();
    assert!(can_heartbeat(&dev, "pi-r").await);

    let out = cli::judge(&fleet.cfg, "pi-r", Verdict::Revoke).await.unwrap();
    assert_eq!(out.json["status"], serde_json::json!(DeviceStatus::Revoked));
    assert_eq!(out.json["disconnected"], 1, "{}", out.text);
    let disconnected = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = events.recv().await {
            if matches!(e, async_nats::Event::Disconnected) {
                return;
            }
        }
    })
    .await;
    assert!(disconnected.is_ok(), "the live device was not disconnected");
    assert!(!can_heartbeat(&dev, "pi-r").await, "a revoked device reports nothing further");
    assert!(as_device(&fleet, &key, "pi-r").await.is_err(), "its old key is refused");
    let fresh = fleet.token(1, false, &[]).await;
    assert!(enroll(&fleet, &key, &fresh, "pi-r").await.is_err(), "not even with a new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_answered_busy_and_the_service_survives() {
    let fleet = Fleet::start().await;
    let token = fleet.token(1, false, &[]).await;
    let key = nkeys::KeyPair::new_user();
    let c = fleet.connect(&key, Some(&token), Some(enroll_inbox_prefix(&key.public_key()))).await.unwrap();
    let mut asks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let k = key.public_key();
        asks.push(tokio::spawn(async move { c.request(enroll_subject(&k), "garbage".into()).await }));
    }
    let mut busy = 0;
    for a in asks {
        let reply: EnrollReply = serde_json::from_slice(&a.await.unwrap().unwrap().payload).unwrap();
        if refused(&reply) == EnrollRefusal::Busy {
            busy += 1;
        }
    }
    assert!(busy >= 150, "only {busy} of 200 were shed at 20/s");
    // The service still answers once the flood is over.
    let mut answered = None;
    for _ in 0..30 {
        let r = ask(&c, &key, serde_json::to_vec(&request(&key, &token, "pi-f")).unwrap()).await;
        if !matches!(&r, EnrollReply::Refused { reason: EnrollRefusal::Busy, .. }) {
            answered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(answered, Some(EnrollReply::Enrolled { .. })), "{answered:?}");
}

/// Identity survives a NATS node failure: the device reconnects to another
/// node of the cluster, whose auth request reaches an operator's callout
/// through the cluster, and is admitted with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_device_is_admitted_again_after_its_node_dies() {
    harmony_operator::logger::init();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let op = seed_file(&p("operator.nk"), SeedKind::User, true).unwrap();
    let signing_key = p("fleet.key");
    harmony_operator::keys::generate(&signing_key).unwrap();
    let mut cfg = Config::for_url("nats://127.0.0.1:1", &signing_key);
    cfg.nats.nkey_seed_file = Some(p("operator.nk"));
    cfg.enroll = Some(EnrollConfig {
        issuer_seed_file: p("issuer.nk"),
        system_seed_file: p("system.nk"),
        ..EnrollConfig::default()
    });
    let block = cli::server_config(&cfg).unwrap().text;
    let mut cluster = harmony_testkit::NatsCluster::start_with(3, &block);
    cluster.wait_jetstream_ready_as(Duration::from_secs(30), Some(op.seed().unwrap()));
    cfg.nats.url = cluster.url_list();
    let limits = harmony_operator::bus::BucketLimits { replicas: 3, ..Default::default() };
    harmony_operator::commands::init(&cfg, &limits).await.unwrap();
    let serve_cfg = cfg.clone();
    let _serve = tokio::spawn(async move {
        harmony_operator::serve::run(serve_cfg, std::future::pending()).await.unwrap();
    });

    let a = TokenArgs { labels: vec![], max_uses: 1, expires: "1h".into(), require_approval: false };
    let token = cli::token_create(&cfg, &a).await.unwrap().json["token"].as_str().unwrap().to_string();
    let key = nkeys::KeyPair::new_user();
    let first = cluster.urls()[0].clone();
    // Enroll through the first node (the callout may be slow to subscribe at first).
    let mut reply = None;
    for _ in 0..50 {
        let c = async_nats::ConnectOptions::new()
            .nkey(key.seed().unwrap())
            .token(token.clone())
            .custom_inbox_prefix(enroll_inbox_prefix(&key.public_key()))
            .connect(first.as_str())
            .await;
        if let Ok(c) = c {
            reply = Some(ask(&c, &key, serde_json::to_vec(&request(&key, &token, "pi-c")).unwrap()).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(reply, Some(EnrollReply::Enrolled { .. })), "{reply:?}");

    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let urls: Vec<async_nats::ServerAddr> = cluster.urls().iter().map(|u| u.parse().unwrap()).collect();
    let dev = async_nats::ConnectOptions::new()
        .nkey(key.seed().unwrap())
        .custom_inbox_prefix(device_inbox_prefix(&DeviceId::new("pi-c").unwrap()))
        .retain_servers_order()
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(urls)
        .await
        .unwrap();
    assert!(can_heartbeat(&dev, "pi-c").await);
    assert_eq!(dev.server_info().port, cluster.nodes()[0].port, "the device is on the first node");

    cluster.node(0).kill();
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        let mut lost = false;
        while let Some(e) = events.recv().await {
            match e {
                async_nats::Event::Disconnected => lost = true,
                async_nats::Event::Connected if lost => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(back, Ok(true), "the device did not get back in through another node");
    assert_ne!(dev.server_info().port, cluster.nodes()[0].port);
    // JetStream elects new stream leaders after the loss: until then a put
    // fails at once ("no responders"), so ask again until a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut beat = false;
    while !beat && tokio::time::Instant::now() < deadline {
        beat = can_heartbeat(&dev, "pi-c").await;
        if !beat {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(beat, "admitted again but cannot heartbeat");
}

/// Until `f` holds (checked every 100 ms for up to 10 s).
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_api_judges_devices_and_manages_tokens_audited_without_the_token_text() {
    use harmony_operator::fleet::{
        Actor, AuditAction, AuditQuery, AuditResult, DeviceQuery, FleetService, KvFleet, StartArgs, Target, TokenSpec,
        Via,
    };
    let fleet = Fleet::start().await;
    let opened = KvFleet::open(&fleet.cfg).await.unwrap();
    let kv = KvFleet::live(opened.buckets().clone(), fleet.cfg.fleet.clone()).await.unwrap().with_enroll(&fleet.cfg);
    let alice = Actor::new("alice", Via::Dashboard);
    let spec = TokenSpec { labels: vec!["site=lab".into()], max_uses: 3, expires: "1h".into(), require_approval: true };
    let created = kv.create_token(&alice, &spec).await.unwrap();
    let token = created.token.clone();
    let secret = token.rsplit('_').next().unwrap().to_string();
    assert!(!format!("{created:?}").contains(&secret), "Debug never shows the token");
    let id = created.record.id.clone();
    let (a, b) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    assert!(matches!(enroll(&fleet, &a, &token, "pi-a").await.unwrap(), EnrollReply::Pending { .. }));
    assert!(matches!(enroll(&fleet, &b, &token, "pi-b").await.unwrap(), EnrollReply::Pending { .. }));
    until("two pending devices", || async { kv.pending_devices().await.unwrap().len() == 2 }).await;
    let pending = kv.pending_devices().await.unwrap();
    assert_eq!(pending[0].labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(pending[0].enrollment.as_ref().unwrap().token, id);
    // The device list shows them, by status; no selector matches them.
    let q = DeviceQuery { status: Some(DeviceStatus::Pending), ..Default::default() };
    assert_eq!(kv.devices(&q).await.unwrap().total, 2);
    let listed = kv.devices(&DeviceQuery { selector: Some("site=lab".into()), ..Default::default() }).await.unwrap();
    assert_eq!(listed.total, 0, "a pending device has no labels a rollout could match");
    assert_eq!(kv.tokens().await.unwrap()[0].uses, 2);

    let accepted = kv.judge_device(&alice, &DeviceId::new("pi-a").unwrap(), Verdict::Accept).await.unwrap();
    assert_eq!(accepted.status, DeviceStatus::Active);
    let rejected = kv.judge_device(&alice, &DeviceId::new("pi-b").unwrap(), Verdict::Reject).await.unwrap();
    assert_eq!(rejected.status, DeviceStatus::Rejected);
    assert!(kv.judge_device(&alice, &DeviceId::new("pi-b").unwrap(), Verdict::Accept).await.is_err(), "final");
    let revoked = kv.judge_device(&alice, &DeviceId::new("pi-a").unwrap(), Verdict::Revoke).await.unwrap();
    assert_eq!(revoked.status, DeviceStatus::Revoked);
    kv.revoke_token(&alice, &id).await.unwrap();
    until("the index sees the verdicts", || async {
        let d = kv.device(&DeviceId::new("pi-a").unwrap()).await.unwrap();
        d.summary.status == Some(DeviceStatus::Revoked) && !d.summary.provisioned
    })
    .await;
    let pi_b = kv.device(&DeviceId::new("pi-b").unwrap()).await.unwrap();
    assert_eq!(pi_b.summary.status, Some(DeviceStatus::Rejected));
    assert_eq!(pi_b.enrollment.unwrap().token, id);
    assert!(kv.pending_devices().await.unwrap().is_empty());
    until("the token revoked", || async { kv.tokens().await.unwrap()[0].revoked_at.is_some() }).await;

    // A rollout never targets a device that is not active, even by name.
    let bundle = harmony_operator::model::BundleRecord {
        id: "2.0".into(),
        version: "2.0".into(),
        compatible: "x".into(),
        sha256: "ab".repeat(32),
        size: 1,
        pushed_at: UnixMillis(now_ms()),
        signature_sha256: None,
    };
    let state = &kv.buckets().state;
    harmony_operator::store::put_json(state, &harmony_operator::model::keys::bundle("2.0"), &bundle).await.unwrap();
    let args = StartArgs::from_defaults(&fleet.cfg, "2.0", Target::Devices(vec!["pi-a".into()]));
    let err = kv.start_rollout(&alice, &args).await.unwrap_err().to_string();
    assert!(err.contains("not active") && err.contains("pi-a (revoked)"), "{err}");

    // Each state change is in the audit log with its actor and result.
    let page = kv.audit(&AuditQuery::default()).await.unwrap();
    let mine: Vec<_> = page.entries.iter().filter(|e| e.actor == alice).collect();
    let actions: Vec<AuditAction> = mine.iter().rev().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::TokenCreate,
            AuditAction::DeviceAccept,
            AuditAction::DeviceReject,
            AuditAction::DeviceAccept,
            AuditAction::DeviceRevoke,
            AuditAction::TokenRevoke,
            AuditAction::RolloutStart,
        ]
    );
    let failed: Vec<_> = mine.iter().filter(|e| matches!(e.result, AuditResult::Failed { .. })).collect();
    assert_eq!(failed.len(), 2, "the refused accept and the refused rollout: {failed:?}");
    assert!(mine.iter().any(|e| e.action == AuditAction::TokenCreate
        && matches!(&e.result, AuditResult::Ok { detail } if detail.contains(&id))));
    assert!(mine.iter().any(|e| e.action == AuditAction::DeviceRevoke && e.target == "pi-a"));
    // The token's text (and its secret) is nowhere in the audit bucket, nor
    // in the operator bucket.
    let js = async_nats::jetstream::new(opened.buckets().client.clone());
    for bucket in [harmony_operator::bus::AUDIT_BUCKET, harmony_protocol::names::OPERATOR_STATE_BUCKET] {
        let store = js.get_key_value(bucket).await.unwrap();
        let mut keys = store.keys().await.unwrap();
        use futures::StreamExt;
        let mut n = 0;
        while let Some(k) = keys.next().await {
            let Some(v) = store.get(k.unwrap()).await.unwrap() else { continue };
            let text = String::from_utf8_lossy(&v);
            assert!(!text.contains(&secret), "{bucket} holds the token's secret: {text}");
            n += 1;
        }
        assert!(n > 0, "{bucket} read");
    }
}
