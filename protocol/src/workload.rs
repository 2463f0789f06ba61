//! Workloads: the typed desired state the operator gives one device
//! ([`AgentManifest`], signed, in [`MANIFEST_BUCKET`]) and what the device
//! reports back ([`AgentStatus`], in [`WORKLOAD_STATUS_BUCKET`]).
//!
//! A fixed set of resource kinds, each reconciled by one reconciler on the
//! device. A manifest naming a kind this build does not know is refused as a
//! whole ([`ManifestRefusal::UnknownResource`]), so version skew between
//! operator and agent shows up instead of being half-applied.
//!
//! Everything that can be checked without the device's own configuration
//! (names, path syntax, sizes, digests, duplicate ids) is checked here by
//! [`AgentManifest::parse`], on both sides: the operator refuses to sign
//! what a device would refuse. The device then checks what depends on its
//! config (file roots, the mount allow-list).

use crate::time::UnixMillis;
use crate::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// KV bucket: one key per device, value a [`crate::SignedEnvelope`] of an
/// [`AgentManifest`]. Written by the operator, read and watched by the device.
pub const MANIFEST_BUCKET: &str = "harmony-workloads";

/// KV bucket: one key per device, value a JSON [`AgentStatus`]. Written by
/// the device (its own key only), read by the operator.
pub const WORKLOAD_STATUS_BUCKET: &str = "harmony-workload-status";

/// Object store of workload content addressed by SHA-256 (file contents and
/// container image archives): the object name is the lower-case hex digest.
/// Lets air-gapped fleets deploy without a registry.
pub const OBJECT_BUCKET: &str = "harmony-objects";

/// Inline file content above this is refused; larger files go through
/// [`OBJECT_BUCKET`].
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// A signed manifest above this is refused before it is parsed.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;
/// Resources per manifest.
pub const MAX_RESOURCES: usize = 256;
/// Objects (files, image archives) above this are refused.
pub const MAX_OBJECT_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The kinds this build knows, by their wire name.
pub const KNOWN_KINDS: [&str; 3] = ["file", "systemd_unit", "container"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentManifest {
    pub schema: u32,
    /// The device this manifest is for: a manifest signed for one device is
    /// refused by every other.
    pub device_id: DeviceId,
    /// Strictly increasing per device; the device refuses a lower one
    /// (a replayed older manifest) and ignores the one it already has.
    pub generation: u64,
    pub issued_at: UnixMillis,
    /// After an OS upgrade the device reports healthy only once this
    /// manifest has converged on the new OS, so an OS that breaks a
    /// workload is not committed. `false` opts out.
    #[serde(default = "yes")]
    pub gate_upgrades: bool,
    pub resources: Vec<Resource>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Unique within the manifest: `[a-z0-9][a-z0-9._-]{0,62}`.
    pub id: String,
    #[serde(flatten)]
    pub spec: ResourceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResourceSpec {
    File(FileSpec),
    SystemdUnit(UnitSpec),
    Container(ContainerSpec),
}

impl ResourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::SystemdUnit(_) => "systemd_unit",
            Self::Container(_) => "container",
        }
    }
}

/// A regular file with exact content, mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute, normalised (no `.`/`..`/empty components); must lie under
    /// one of the device's configured roots.
    pub path: String,
    /// Permission bits (at most 0o7777).
    #[serde(default = "default_file_mode")]
    pub mode: u32,
    /// User and group by name or number; absent = root.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub content: FileContent,
}

fn default_file_mode() -> u32 {
    0o644
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileContent {
    /// UTF-8 text, at most [`MAX_INLINE_BYTES`].
    Inline(String),
    /// An object in [`OBJECT_BUCKET`]; the device checks the hash of what
    /// it fetched before anything is written.
    Object { sha256: String, size: u64 },
}

/// A systemd unit: its file content and whether it is enabled and running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// `name.service`, `.timer`, `.socket`, `.path` or `.target`; no `/`, no
    /// template instances.
    pub name: String,
    pub content: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub active: bool,
}

/// An OCI container run by podman.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Image reference (`registry/name:tag`), used to pull and to name it.
    pub image: String,
    /// `sha256:<64 hex>`: the image id the device must end up running.
    pub digest: String,
    /// Load the image from this archive (`podman save` output) in
    /// [`OBJECT_BUCKET`] instead of pulling it from a registry.
    #[serde(default)]
    pub archive: Option<ObjectRef>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Host path; must lie under one of the device's allowed mount sources.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    #[default]
    Always,
}

impl RestartPolicy {
    pub fn as_podman(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

/// Why a whole manifest was refused. Nothing on the device changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ManifestRefusal {
    #[error("malformed manifest: {detail}")]
    Malformed { detail: String },
    #[error("manifest is signed by unknown key {key_id}")]
    UnknownKey { key_id: String },
    #[error("manifest signature does not verify")]
    BadSignature,
    #[error("manifest schema {schema} is newer than this agent understands")]
    NewerSchema { schema: u32 },
    #[error("manifest is for device {device}")]
    WrongDevice { device: String },
    #[error("manifest generation {got} is older than the applied generation {applied}")]
    StaleGeneration { applied: u64, got: u64 },
    #[error("resource {id}: kind {kind:?} is unknown to this agent")]
    UnknownResource { id: String, kind: String },
    #[error("resource id {id:?} appears more than once")]
    DuplicateId { id: String },
    #[error("{count} resources is more than the limit of {max}")]
    TooManyResources { count: usize, max: usize },
    #[error("resource {id}: {problem}")]
    Invalid { id: String, problem: SpecProblem },
    #[error("resources {first} and {second} manage the same {what}")]
    Conflict { first: String, second: String, what: String },
}

/// What is wrong with one resource's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum SpecProblem {
    #[error("id must match [a-z0-9][a-z0-9._-]{{0,62}}")]
    BadId,
    #[error("path {path:?} is not absolute and normalised (no '.', '..' or empty components)")]
    BadPath { path: String },
    #[error("path {path:?} is outside the device's managed roots")]
    OutsideRoots { path: String },
    #[error("mode {mode:o} has bits beyond 07777")]
    BadMode { mode: u32 },
    #[error("inline content is {size} bytes; the limit is {max} (use an object)")]
    ContentTooLarge { size: usize, max: usize },
    #[error("object size {size} exceeds the limit of {max}")]
    ObjectTooLarge { size: u64, max: u64 },
    #[error("{field} {value:?} is not a lower-case hex SHA-256")]
    BadDigest { field: String, value: String },
    #[error("unit name {name:?} is not a plain unit name (name.service|.timer|.socket|.path|.target, no '/' or '@')")]
    BadUnitName { name: String },
    #[error("owner or group {name:?} is not a user/group name or number")]
    BadOwner { name: String },
    #[error("mount source {source_path:?} is outside the device's allowed mount sources")]
    MountNotAllowed { source_path: String },
    #[error("container field {field} is invalid: {detail}")]
    BadContainer { field: String, detail: String },
}

impl AgentManifest {
    /// Parse a signed payload: kinds are checked before the typed parse, so
    /// an unknown kind is named as such instead of a serde error.
    pub fn parse(payload: &str) -> Result<Self, ManifestRefusal> {
        if payload.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestRefusal::Malformed {
                detail: format!("{} bytes is more than the limit of {MAX_MANIFEST_BYTES}", payload.len()),
            });
        }
        let raw: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| ManifestRefusal::Malformed { detail: e.to_string() })?;
        if let Some(schema) = raw.get("schema").and_then(|s| s.as_u64()) {
            if schema > u64::from(crate::SCHEMA_VERSION) {
                return Err(ManifestRefusal::NewerSchema { schema: u32::try_from(schema).unwrap_or(u32::MAX) });
            }
        }
        if let Some(resources) = raw.get("resources").and_then(|r| r.as_array()) {
            for r in resources {
                let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("?").to_string();
                let kind = r.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_string();
                if !KNOWN_KINDS.contains(&kind.as_str()) {
                    return Err(ManifestRefusal::UnknownResource { id, kind });
                }
            }
        }
        let manifest: Self =
            serde_json::from_value(raw).map_err(|e| ManifestRefusal::Malformed { detail: e.to_string() })?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Every check that needs no device configuration.
    pub fn check(&self) -> Result<(), ManifestRefusal> {
        if self.resources.len() > MAX_RESOURCES {
            return Err(ManifestRefusal::TooManyResources { count: self.resources.len(), max: MAX_RESOURCES });
        }
        let mut ids = BTreeSet::new();
        let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
        for r in &self.resources {
            if !ids.insert(r.id.as_str()) {
                return Err(ManifestRefusal::DuplicateId { id: r.id.clone() });
            }
            let invalid = |problem| ManifestRefusal::Invalid { id: r.id.clone(), problem };
            if !valid_id(&r.id) {
                return Err(invalid(SpecProblem::BadId));
            }
            r.spec.check().map_err(invalid)?;
            // Two resources managing one path or unit would fight forever.
            let what = match &r.spec {
                ResourceSpec::File(f) => format!("file {}", f.path),
                ResourceSpec::SystemdUnit(u) => format!("unit {}", u.name),
                ResourceSpec::Container(_) => format!("container {}", r.id),
            };
            if let Some(first) = claimed.insert(what.clone(), &r.id) {
                return Err(ManifestRefusal::Conflict { first: first.to_string(), second: r.id.clone(), what });
            }
        }
        Ok(())
    }
}

impl ResourceSpec {
    fn check(&self) -> Result<(), SpecProblem> {
        match self {
            Self::File(f) => {
                if !normalised_absolute(&f.path) {
                    return Err(SpecProblem::BadPath { path: f.path.clone() });
                }
                if f.mode > 0o7777 {
                    return Err(SpecProblem::BadMode { mode: f.mode });
                }
                for name in [&f.owner, &f.group].into_iter().flatten() {
                    if !valid_account(name) {
                        return Err(SpecProblem::BadOwner { name: name.clone() });
                    }
                }
                match &f.content {
                    FileContent::Inline(text) if text.len() > MAX_INLINE_BYTES => {
                        Err(SpecProblem::ContentTooLarge { size: text.len(), max: MAX_INLINE_BYTES })
                    }
                    FileContent::Inline(_) => Ok(()),
                    FileContent::Object { sha256, size } => check_object("content.sha256", sha256, *size),
                }
            }
            Self::SystemdUnit(u) => {
                if !valid_unit_name(&u.name) {
                    return Err(SpecProblem::BadUnitName { name: u.name.clone() });
                }
                if u.content.len() > MAX_INLINE_BYTES {
                    return Err(SpecProblem::ContentTooLarge { size: u.content.len(), max: MAX_INLINE_BYTES });
                }
                Ok(())
            }
            Self::Container(c) => {
                let bad = |field: &str, detail: &str| SpecProblem::BadContainer {
                    field: field.to_string(),
                    detail: detail.to_string(),
                };
                let image_ok = !c.image.is_empty()
                    && c.image.len() <= 255
                    && c.image.chars().all(|ch| ch.is_ascii_alphanumeric() || "./:_-@".contains(ch))
                    && !c.image.starts_with('-');
                if !image_ok {
                    return Err(bad("image", "not an image reference"));
                }
                match c.digest.strip_prefix("sha256:") {
                    Some(hex) if is_sha256_hex(hex) => {}
                    _ => return Err(SpecProblem::BadDigest { field: "digest".into(), value: c.digest.clone() }),
                }
                if let Some(a) = &c.archive {
                    check_object("archive.sha256", &a.sha256, a.size)?;
                }
                for key in c.env.keys() {
                    let ok = !key.is_empty()
                        && !key.starts_with(|ch: char| ch.is_ascii_digit())
                        && key.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    if !ok {
                        return Err(bad("env", &format!("{key:?} is not a variable name")));
                    }
                }
                for m in &c.mounts {
                    if !normalised_absolute(&m.source) || m.source.contains(',') {
                        return Err(SpecProblem::BadPath { path: m.source.clone() });
                    }
                    if !normalised_absolute(&m.target) || m.target.contains(',') {
                        return Err(SpecProblem::BadPath { path: m.target.clone() });
                    }
                }
                if c.command.iter().chain(c.env.values()).any(|s| s.contains('\0')) {
                    return Err(bad("command", "contains a NUL byte"));
                }
                Ok(())
            }
        }
    }
}

fn check_object(field: &str, sha256: &str, size: u64) -> Result<(), SpecProblem> {
    if !is_sha256_hex(sha256) {
        return Err(SpecProblem::BadDigest { field: field.to_string(), value: sha256.to_string() });
    }
    if size > MAX_OBJECT_BYTES {
        return Err(SpecProblem::ObjectTooLarge { size, max: MAX_OBJECT_BYTES });
    }
    Ok(())
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `/a/b`: absolute, no empty, `.` or `..` components, no NUL, not `/`.
pub fn normalised_absolute(path: &str) -> bool {
    path.len() > 1
        && path.len() <= 4096
        && path.starts_with('/')
        && !path.contains('\0')
        && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A plain (non-template) unit name of a kind a workload may define.
pub fn valid_unit_name(name: &str) -> bool {
    const SUFFIXES: [&str; 5] = [".service", ".timer", ".socket", ".path", ".target"];
    let Some(stem) = SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) else { return false };
    !stem.is_empty()
        && name.len() <= 255
        && !stem.starts_with('.')
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
}

fn valid_account(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// What the device reports about its workloads. Written on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub schema: u32,
    pub device_id: DeviceId,
    /// Generation of the manifest being applied; `None` before any.
    pub observed_generation: Option<u64>,
    /// The boot this status is from: after an OS upgrade, a status of an
    /// earlier boot says nothing about the new OS.
    pub boot_id: String,
    pub resources: BTreeMap<String, ResourceState>,
    pub conditions: Conditions,
    pub updated_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Conditions {
    /// Every resource of the observed generation is ready on this boot.
    pub converged: bool,
    /// The latest manifest the device received and refused (it keeps
    /// applying the previous one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedManifest {
    pub generation: Option<u64>,
    #[serde(flatten)]
    pub reason: ManifestRefusal,
    pub at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ResourceState {
    Pending,
    Reconciling {
        since: UnixMillis,
    },
    Ready {
        since: UnixMillis,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        details: String,
    },
    Failed {
        since: UnixMillis,
        error: String,
        /// Consecutive failures of this resource.
        attempts: u32,
        retry_after: UnixMillis,
    },
}

impl ResourceState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reconciling { .. } => "reconciling",
            Self::Ready { .. } => "ready",
            Self::Failed { .. } => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(resources: serde_json::Value) -> String {
        json!({"schema": 1, "device_id": "pi-1", "generation": 3, "issued_at": 0, "resources": resources}).to_string()
    }

    fn file(id: &str, path: &str) -> serde_json::Value {
        json!({"id": id, "kind": "file", "path": path, "content": {"inline": "x"}})
    }

    #[test]
    fn parses_every_kind() {
        let m = AgentManifest::parse(&manifest(json!([
            file("motd", "/data/workloads/motd"),
            {"id": "web", "kind": "systemd_unit", "name": "web.service", "content": "[Service]\nExecStart=/bin/true\n"},
            {"id": "app", "kind": "container", "image": "localhost/app:1",
             "digest": format!("sha256:{}", "a".repeat(64)),
             "mounts": [{"source": "/data/app", "target": "/srv"}]},
        ])))
        .unwrap();
        assert_eq!(m.generation, 3);
        assert!(m.gate_upgrades);
        assert_eq!(m.resources.len(), 3);
        assert_eq!(m.resources[1].spec.kind(), "systemd_unit");
        match &m.resources[1].spec {
            ResourceSpec::SystemdUnit(u) => assert!(u.enabled && u.active),
            other => panic!("{other:?}"),
        }
        match &m.resources[0].spec {
            ResourceSpec::File(f) => assert_eq!(f.mode, 0o644),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_kind_refuses_the_whole_manifest() {
        let err = AgentManifest::parse(&manifest(json!([
            file("motd", "/data/workloads/motd"),
            {"id": "vm", "kind": "virtual_machine", "image": "x"},
        ])))
        .unwrap_err();
        assert_eq!(err, ManifestRefusal::UnknownResource { id: "vm".into(), kind: "virtual_machine".into() });
    }

    #[test]
    fn bad_specs_are_typed_refusals() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(serde_json::Value, ManifestRefusal)> = vec![
            (
                json!([file("a", "/data/workloads/../etc/shadow")]),
                ManifestRefusal::Invalid {
                    id: "a".into(),
                    problem: SpecProblem::BadPath { path: "/data/workloads/../etc/shadow".into() },
                },
            ),
            (
                json!([file("a", "relative/path")]),
                ManifestRefusal::Invalid {
                    id: "a".into(),
                    problem: SpecProblem::BadPath { path: "relative/path".into() },
                },
            ),
            (
                json!([{"id": "u", "kind": "systemd_unit", "name": "../evil.service", "content": ""}]),
                ManifestRefusal::Invalid {
                    id: "u".into(),
                    problem: SpecProblem::BadUnitName { name: "../evil.service".into() },
                },
            ),
            (
                json!([{"id": "u", "kind": "systemd_unit", "name": "a/b.service", "content": ""}]),
                ManifestRefusal::Invalid {
                    id: "u".into(),
                    problem: SpecProblem::BadUnitName { name: "a/b.service".into() },
                },
            ),
            (
                json!([{"id": "u", "kind": "systemd_unit", "name": "getty@.service", "content": ""}]),
                ManifestRefusal::Invalid {
                    id: "u".into(),
                    problem: SpecProblem::BadUnitName { name: "getty@.service".into() },
                },
            ),
            (
                json!([{"id": "f", "kind": "file", "path": "/data/workloads/big",
                        "content": {"inline": "x".repeat(MAX_INLINE_BYTES + 1)}}]),
                ManifestRefusal::Invalid {
                    id: "f".into(),
                    problem: SpecProblem::ContentTooLarge { size: MAX_INLINE_BYTES + 1, max: MAX_INLINE_BYTES },
                },
            ),
            (
                json!([{"id": "c", "kind": "container", "image": "app", "digest": "sha256:zz"}]),
                ManifestRefusal::Invalid {
                    id: "c".into(),
                    problem: SpecProblem::BadDigest { field: "digest".into(), value: "sha256:zz".into() },
                },
            ),
            (
                json!([{"id": "c", "kind": "container", "image": "app", "digest": digest,
                        "mounts": [{"source": "/data/../etc", "target": "/x"}]}]),
                ManifestRefusal::Invalid {
                    id: "c".into(),
                    problem: SpecProblem::BadPath { path: "/data/../etc".into() },
                },
            ),
            (
                json!([file("a", "/data/workloads/x"), file("a", "/data/workloads/y")]),
                ManifestRefusal::DuplicateId { id: "a".into() },
            ),
            (
                json!([file("a", "/data/workloads/x"), file("b", "/data/workloads/x")]),
                ManifestRefusal::Conflict {
                    first: "a".into(),
                    second: "b".into(),
                    what: "file /data/workloads/x".into(),
                },
            ),
            (
                json!([file("Bad Id", "/data/workloads/x")]),
                ManifestRefusal::Invalid { id: "Bad Id".into(), problem: SpecProblem::BadId },
            ),
        ];
        for (resources, want) in cases {
            assert_eq!(AgentManifest::parse(&manifest(resources.clone())).unwrap_err(), want, "{resources}");
        }
    }

    #[test]
    fn newer_schema_and_garbage_are_refused() {
        let newer = json!({"schema": 99, "device_id": "pi-1", "generation": 1, "issued_at": 0, "resources": []});
        assert_eq!(AgentManifest::parse(&newer.to_string()).unwrap_err(), ManifestRefusal::NewerSchema { schema: 99 });
        assert!(matches!(AgentManifest::parse("{nope").unwrap_err(), ManifestRefusal::Malformed { .. }));
        let extra =
            manifest(json!([{"id": "a", "kind": "file", "path": "/data/x", "content": {"inline": ""}, "rm": "-rf"}]));
        assert!(matches!(AgentManifest::parse(&extra).unwrap_err(), ManifestRefusal::Malformed { .. }));
    }

    #[test]
    fn unit_names() {
        for ok in ["web.service", "backup.timer", "a-b_c:d.socket", "x.path", "multi.target"] {
            assert!(valid_unit_name(ok), "{ok}");
        }
        for bad in ["web", ".service", "a/b.service", "t@.service", "t@x.service", "x.mount", "x y.service", ""] {
            assert!(!valid_unit_name(bad), "{bad}");
        }
    }

    #[test]
    fn status_round_trips() {
        let s = AgentStatus {
            schema: 1,
            device_id: DeviceId::new("pi-1").unwrap(),
            observed_generation: Some(2),
            boot_id: "b".into(),
            resources: BTreeMap::from([
                ("a".to_string(), ResourceState::Ready { since: UnixMillis(5), details: String::new() }),
                (
                    "b".to_string(),
                    ResourceState::Failed {
                        since: UnixMillis(6),
                        error: "boom".into(),
                        attempts: 2,
                        retry_after: UnixMillis(9),
                    },
                ),
            ]),
            conditions: Conditions {
                converged: false,
                refused: Some(RefusedManifest {
                    generation: Some(3),
                    reason: ManifestRefusal::UnknownResource { id: "vm".into(), kind: "vm".into() },
                    at: UnixMillis(7),
                }),
            },
            updated_at: UnixMillis(8),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AgentStatus>(&text).unwrap(), s);
    }
}
