//! Watching this device's own key in a KV bucket (upgrade offers, workload
//! manifests): the current value first, then every update, forwarded as
//! raw bytes. Retries while the bucket is missing or NATS is away.
//!
//! Not `kv::Store::watch`: that creates an unnamed consumer with the filter
//! in the payload, which device credentials cannot be limited by. A named
//! consumer puts the filter in the API subject, where the device's
//! permissions pin it to its own key (protocol/src/permissions.rs).

use futures::StreamExt;
use harmony_protocol::names::device_key;
use harmony_protocol::DeviceId;
use std::time::Duration;
use tokio::sync::mpsc;

pub async fn watch_own_key(
    client: async_nats::Client,
    bucket: &'static str,
    device: DeviceId,
    tx: mpsc::Sender<bytes::Bytes>,
) {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let filter = format!("$KV.{bucket}.{}", device_key(&device));
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        // Unique per attempt: a consumer of an earlier connection may linger.
        let name = format!("{}_{}_{started}_{attempt}", bucket.replace('-', "_"), device_key(&device));
        let consumer = async {
            // No stream info: devices may not read it (it would list every
            // device's key); creating the consumer needs only the name.
            let stream = js.get_stream_no_info(format!("KV_{bucket}")).await.map_err(|e| e.to_string())?;
            stream
                .create_consumer(OrderedConfig {
                    name: Some(name),
                    deliver_subject: client.new_inbox(),
                    filter_subject: filter.clone(),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        match consumer.await {
            Err(e) => log::warn!("cannot watch {bucket}: {e}"),
            Ok(mut messages) => {
                while let Some(msg) = messages.next().await {
                    match msg {
                        Ok(msg) => {
                            // Deletes and purges carry a KV-Operation header and no value.
                            if msg.headers.as_ref().is_some_and(|h| h.get("KV-Operation").is_some()) {
                                continue;
                            }
                            if tx.send(msg.payload.clone()).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            log::warn!("watch of {bucket}: {e}");
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
