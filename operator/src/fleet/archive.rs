//! The job archive: a device's finished job of a rollout, kept when a newer
//! rollout replaces its `job.<device>` record, so a device's timeline spans
//! rollouts. Key `<device>.<rollout>` (neither contains a dot); the bucket
//! keeps a bounded number of records, dropping the oldest.

use crate::bus::JOB_ARCHIVE_BUCKET;
use crate::error::{Error, Result};
use crate::model::Job;
use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use harmony_protocol::DeviceId;

pub fn key(device: &DeviceId, rollout_id: &str) -> String {
    format!("{device}.{rollout_id}")
}

pub async fn open(js: &jetstream::Context) -> Result<kv::Store> {
    js.get_key_value(JOB_ARCHIVE_BUCKET)
        .await
        .map_err(|e| Error::Nats(format!("bucket {JOB_ARCHIVE_BUCKET}: {e} (run `harmony-operator init`)")))
}

/// Archives finished jobs (a put per job, several in flight).
pub async fn save(store: &kv::Store, jobs: Vec<Job>) -> Result<()> {
    futures::stream::iter(jobs)
        .map(|job| async move {
            let k = key(&job.device, &job.rollout_id);
            crate::store::put_json(store, &k, &job).await
        })
        .buffer_unordered(64)
        .try_collect::<Vec<u64>>()
        .await
        .map(drop)
}

/// One archived job (a record that does not decode, or is about another
/// device or rollout than its key, is skipped with a warning).
pub async fn get(store: &kv::Store, device: &DeviceId, rollout_id: &str) -> Result<Option<Job>> {
    let k = key(device, rollout_id);
    match crate::store::get_json::<Job>(store, &k).await {
        Ok(Some(job)) if job.device == *device && job.rollout_id == rollout_id => Ok(Some(job)),
        Ok(Some(_)) => {
            log::warn!("archived job {k} names another device or rollout; skipped");
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(e @ Error::Corrupt { .. }) => {
            log::warn!("{e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every archived job of a device, oldest first: the stream tells which
/// keys the device has (no scan of other devices' records).
pub async fn of_device(store: &kv::Store, device: &DeviceId) -> Result<Vec<Job>> {
    let prefix = format!("$KV.{}.{device}.", store.name);
    let mut subjects = store.stream.info_with_subjects(format!("{prefix}*")).await.map_err(Error::nats)?;
    let mut rollouts = Vec::new();
    while let Some((subject, _)) = subjects.try_next().await.map_err(Error::nats)? {
        if let Some(r) = subject.strip_prefix(&prefix) {
            rollouts.push(r.to_string());
        }
    }
    let mut jobs = Vec::new();
    for r in rollouts {
        if let Some(job) = get(store, device, &r).await? {
            jobs.push(job);
        }
    }
    jobs.sort_by_key(|j| j.history.first().map(|t| t.at));
    Ok(jobs)
}
