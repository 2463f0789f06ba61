//! The NATS permissions a device's credentials grant: the device's own
//! heartbeat key, offer key, command subject and inbox, and bundle
//! downloads. They name JetStream API subjects, so they live beside the
//! other names; the operator renders them into the server's auth config.

use crate::names::{
    command_subject, device_inbox_prefix, kv_put_subject, BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET,
};
use crate::workload::{MANIFEST_BUCKET, OBJECT_BUCKET, WORKLOAD_STATUS_BUCKET};
use crate::DeviceId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What a device may publish and subscribe to (nats-server 2.10+ JetStream API).
///
/// The offer watch must be created as a *named* consumer with a filter
/// (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), because only that
/// form carries the filter in the subject where a permission can pin it to
/// the device's own key. async-nats' `Store::watch` creates its first
/// consumer unnamed (`$JS.API.CONSUMER.CREATE.<stream>`, filter in the
/// payload), which would let a device watch any key, so it is not allowed;
/// the agent creates an `OrderedConfig { name: Some(..), filter_subject:
/// "$KV.harmony-offers.<id>", .. }` push consumer on the `KV_harmony-offers`
/// stream instead, opened without a stream-info request
/// (`get_stream_no_info`), which devices are not granted (see the
/// `device_permissions` test).
pub fn device_permissions(device: &DeviceId) -> Permissions {
    let id = device.as_str();
    let kv = |b: &str| format!("KV_{b}");
    let obj = format!("OBJ_{BUNDLE_OBJECT_BUCKET}");
    let offers = kv(OFFER_BUCKET);
    let manifests = kv(MANIFEST_BUCKET);
    let objects = format!("OBJ_{OBJECT_BUCKET}");
    let publish = vec![
        // heartbeat: put its own key (a plain JetStream publish). No
        // STREAM.INFO on the heartbeat stream: its `subjects_filter` would
        // list every device id.
        kv_put_subject(HEARTBEAT_BUCKET, id),
        // offer: read (direct get by subject) and watch its own key only. No
        // STREAM.INFO on the offers stream either: its `subjects_filter`
        // lists the key of every device that was ever offered an upgrade.
        format!("$JS.API.DIRECT.GET.{offers}.$KV.{OFFER_BUCKET}.{id}"),
        format!("$JS.API.CONSUMER.CREATE.{offers}.*.$KV.{OFFER_BUCKET}.{id}"),
        format!("$JS.FC.{offers}.>"),
        // workloads: read and watch its own manifest (as offers), write its
        // own status key.
        format!("$JS.API.DIRECT.GET.{manifests}.$KV.{MANIFEST_BUCKET}.{id}"),
        format!("$JS.API.CONSUMER.CREATE.{manifests}.*.$KV.{MANIFEST_BUCKET}.{id}"),
        format!("$JS.FC.{manifests}.>"),
        kv_put_subject(WORKLOAD_STATUS_BUCKET, id),
        // workload objects (file contents, image archives): addressed by
        // their hash, readable by every device like bundles.
        format!("$JS.API.STREAM.INFO.{objects}"),
        format!("$JS.API.DIRECT.GET.{objects}.>"),
        format!("$JS.API.CONSUMER.CREATE.{objects}"),
        format!("$JS.API.CONSUMER.CREATE.{objects}.>"),
        format!("$JS.FC.{objects}.>"),
        // bundles: every device may download every bundle
        format!("$JS.API.STREAM.INFO.{obj}"),
        format!("$JS.API.DIRECT.GET.{obj}.>"),
        format!("$JS.API.CONSUMER.CREATE.{obj}"),
        format!("$JS.API.CONSUMER.CREATE.{obj}.>"),
        format!("$JS.FC.{obj}.>"),
    ];
    let subscribe = vec![command_subject(device), format!("{}.>", device_inbox_prefix(device))];
    Permissions { publish, subscribe }
}
