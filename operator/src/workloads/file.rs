//! The manifest file people write: TOML, one `[[resource]]` table per
//! resource, contents inline or from local files named relative to the
//! manifest. It becomes a [`WorkloadSpec`], checked as a device would check
//! it before anything is uploaded, signed or written.
//!
//! ```toml
//! gate_upgrades = true                # optional, default true
//! [[resource]]
//! id = "motd"
//! kind = "file"
//! path = "/data/workloads/motd"
//! mode = "0644"                       # octal, as a string
//! content = "hello\n"                 # or content_file = "motd.txt"
//! ```
//!
//! A `content_file` larger than [`MAX_INLINE_BYTES`] or not UTF-8 goes to
//! the object store under its SHA-256; a container's `archive_file` always
//! does. Unknown keys and kinds are errors naming the line and the field:
//! a typo must not silently drop a setting.

use super::{LocalObject, WorkloadSpec};
use crate::bundle::sha256_file;
use crate::error::{Error, Result};
use harmony_protocol::workload::{
    ContainerSpec, FileContent, FileSpec, ManifestRefusal, Mount, ObjectRef, Resource, ResourceSpec, RestartPolicy,
    UnitSpec, MAX_INLINE_BYTES,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The document, with each resource kept as a table and its position:
/// errors inside a resource are reported at that resource's line (toml's
/// own positions for them point at the first `[[resource]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default = "yes")]
    gate_upgrades: bool,
    #[serde(default)]
    resource: Vec<Spanned<toml::Table>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawResource {
    File(RawFile),
    SystemdUnit(RawUnit),
    Container(RawContainer),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    id: String,
    path: String,
    /// A string, so `mode = 644` (decimal) cannot slip through as 0o1204.
    #[serde(default)]
    mode: Option<toml::Value>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    id: String,
    name: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_file: Option<PathBuf>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    active: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    id: String,
    image: String,
    digest: String,
    #[serde(default)]
    archive_file: Option<PathBuf>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<Mount>,
    #[serde(default)]
    restart: RestartPolicy,
}

/// Reads and checks the manifest at `path`. Local files it names are read
/// (and hashed) now; nothing is uploaded.
pub fn load(path: &Path) -> Result<WorkloadSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|detail| Error::Manifest { path: path.to_path_buf(), detail })
}

/// Parses manifest `text`, with relative file names under `base`.
pub fn parse(text: &str, base: &Path) -> std::result::Result<WorkloadSpec, String> {
    let raw: RawManifest = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let mut spec = WorkloadSpec { gate_upgrades: raw.gate_upgrades, resources: Vec::new(), objects: Vec::new() };
    let mut lines = Vec::new();
    for r in raw.resource {
        let line = text[..r.span().start.min(text.len())].matches('\n').count() + 1;
        let table = r.into_inner();
        let named = table.get("id").and_then(toml::Value::as_str).unwrap_or("?").to_string();
        let typed: RawResource = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("line {line}, resource {named:?}: {}", e.message().trim_end()))?;
        let resource = convert(typed, base, &mut spec.objects)
            .map_err(|(id, why)| format!("line {line}, resource {id:?}: {why}"))?;
        lines.push((resource.id.clone(), line));
        spec.resources.push(resource);
    }
    spec.check().map_err(|refusal| {
        let id = match &refusal {
            ManifestRefusal::Invalid { id, .. } | ManifestRefusal::DuplicateId { id } => Some(id),
            ManifestRefusal::Conflict { second, .. } => Some(second),
            _ => None,
        };
        // The last resource of that id: a duplicate is the second one.
        match id.and_then(|id| lines.iter().rev().find(|(i, _)| i == id)) {
            Some((_, line)) => format!("line {line}, {refusal}"),
            None => refusal.to_string(),
        }
    })?;
    // One upload per content, however many resources use it.
    spec.objects.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    spec.objects.dedup_by(|a, b| a.sha256 == b.sha256);
    Ok(spec)
}

type Failed = (String, String);

fn convert(raw: RawResource, base: &Path, objects: &mut Vec<LocalObject>) -> std::result::Result<Resource, Failed> {
    let (id, spec) = match raw {
        RawResource::File(f) => {
            let fail = |why: String| (f.id.clone(), why);
            let mode = match &f.mode {
                None => 0o644,
                Some(v) => octal_mode(v).map_err(fail)?,
            };
            let content = match (f.content, &f.content_file) {
                (Some(text), None) => FileContent::Inline(text),
                (None, Some(file)) => {
                    let (content, object) = file_content(&base.join(file)).map_err(fail)?;
                    objects.extend(object);
                    content
                }
                (Some(_), Some(_)) => return Err(fail("set content or content_file, not both".into())),
                (None, None) => return Err(fail("needs content or content_file".into())),
            };
            let spec = FileSpec { path: f.path, mode, owner: f.owner, group: f.group, content };
            (f.id, ResourceSpec::File(spec))
        }
        RawResource::SystemdUnit(u) => {
            let fail = |why: String| (u.id.clone(), why);
            let content = match (u.content, &u.content_file) {
                (Some(text), None) => text,
                (None, Some(file)) => read_text(&base.join(file)).map_err(fail)?,
                (Some(_), Some(_)) => return Err(fail("set content or content_file, not both".into())),
                (None, None) => return Err(fail("needs content or content_file".into())),
            };
            (u.id, ResourceSpec::SystemdUnit(UnitSpec { name: u.name, content, enabled: u.enabled, active: u.active }))
        }
        RawResource::Container(c) => {
            let archive = match &c.archive_file {
                None => None,
                Some(file) => {
                    let object = local_object(&base.join(file), "archive_file").map_err(|why| (c.id.clone(), why))?;
                    let reference = ObjectRef { sha256: object.sha256.clone(), size: object.size };
                    objects.push(object);
                    Some(reference)
                }
            };
            let spec = ContainerSpec {
                image: c.image,
                digest: c.digest,
                archive,
                command: c.command,
                env: c.env,
                mounts: c.mounts,
                restart: c.restart,
            };
            (c.id, ResourceSpec::Container(spec))
        }
    };
    Ok(Resource { id, spec })
}

fn octal_mode(v: &toml::Value) -> std::result::Result<u32, String> {
    let toml::Value::String(s) = v else {
        return Err(format!("mode {v} must be a quoted octal string such as \"0644\""));
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && !digits.starts_with('+') => Ok(mode),
        _ => Err(format!("mode {s:?} is not an octal number such as \"0644\"")),
    }
}

/// Small UTF-8 text is inlined; anything else is stored by its hash.
fn file_content(path: &Path) -> std::result::Result<(FileContent, Option<LocalObject>), String> {
    let size = regular_file_size(path, "content_file")?;
    if size <= MAX_INLINE_BYTES as u64 {
        let bytes = std::fs::read(path).map_err(|e| format!("content_file {}: {e}", path.display()))?;
        if let Ok(text) = String::from_utf8(bytes) {
            return Ok((FileContent::Inline(text), None));
        }
    }
    let object = local_object(path, "content_file")?;
    Ok((FileContent::Object { sha256: object.sha256.clone(), size: object.size }, Some(object)))
}

fn read_text(path: &Path) -> std::result::Result<String, String> {
    regular_file_size(path, "content_file")?;
    let bytes = std::fs::read(path).map_err(|e| format!("content_file {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("content_file {} is not UTF-8 text", path.display()))
}

fn local_object(path: &Path, field: &str) -> std::result::Result<LocalObject, String> {
    regular_file_size(path, field)?;
    let (sha256, size) = sha256_file(path).map_err(|e| format!("{field}: {e}"))?;
    Ok(LocalObject { sha256, size, path: path.to_path_buf() })
}

fn regular_file_size(path: &Path, field: &str) -> std::result::Result<u64, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{field} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{field} {} is not a regular file", path.display()));
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn parse_in(dir: &Path, text: &str) -> std::result::Result<WorkloadSpec, String> {
        parse(text, dir)
    }

    #[test]
    fn every_kind_from_the_example() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
        std::fs::write(dir.path().join("hello.tar"), b"\0tar bytes").unwrap();
        let text = format!(
            r#"
gate_upgrades = false
[[resource]]
id = "motd"
kind = "file"
path = "/data/workloads/motd"
mode = "0640"
owner = "root"
content = "hello\n"
[[resource]]
id = "web"
kind = "systemd_unit"
name = "harmony-demo-web.service"
content_file = "web.service"
active = false
[[resource]]
id = "app"
kind = "container"
image = "localhost/hello:1"
digest = "{DIGEST}"
archive_file = "hello.tar"
command = ["/bin/sh", "-c", "sleep 1"]
env = {{ A = "b" }}
mounts = [{{ source = "/data/workloads/app", target = "/srv", read_only = true }}]
restart = "on-failure"
"#
        );
        let spec = parse_in(dir.path(), &text).unwrap();
        assert!(!spec.gate_upgrades);
        let kinds: Vec<&str> = spec.resources.iter().map(|r| r.spec.kind()).collect();
        assert_eq!(kinds, ["file", "systemd_unit", "container"]);
        match &spec.resources[0].spec {
            ResourceSpec::File(f) => {
                assert_eq!((f.mode, f.owner.as_deref()), (0o640, Some("root")));
                assert_eq!(f.content, FileContent::Inline("hello\n".into()));
            }
            other => panic!("{other:?}"),
        }
        match &spec.resources[1].spec {
            ResourceSpec::SystemdUnit(u) => {
                assert_eq!(u.content, "[Service]\nExecStart=/bin/true\n");
                assert!(u.enabled && !u.active);
            }
            other => panic!("{other:?}"),
        }
        let tar_hash = hex::encode(Sha256::digest(b"\0tar bytes"));
        match &spec.resources[2].spec {
            ResourceSpec::Container(c) => {
                assert_eq!(c.archive, Some(ObjectRef { sha256: tar_hash.clone(), size: 10 }));
                assert_eq!(c.restart, RestartPolicy::OnFailure);
                assert!(c.mounts[0].read_only);
                assert_eq!(c.env["A"], "b");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(spec.objects, vec![LocalObject { sha256: tar_hash, size: 10, path: dir.path().join("hello.tar") }]);
    }

    #[test]
    fn content_files_are_inlined_only_when_small_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(MAX_INLINE_BYTES + 1);
        std::fs::write(dir.path().join("small.txt"), "small").unwrap();
        std::fs::write(dir.path().join("big.txt"), &big).unwrap();
        std::fs::write(dir.path().join("binary"), [0xff, 0xfe, 0]).unwrap();
        let file = |id: &str, name: &str| {
            format!(
                "[[resource]]\nid = \"{id}\"\nkind = \"file\"\npath = \"/data/w/{id}\"\ncontent_file = \"{name}\"\n"
            )
        };
        let text = [file("a", "small.txt"), file("b", "big.txt"), file("c", "binary"), file("d", "big.txt")].concat();
        let spec = parse_in(dir.path(), &text).unwrap();
        let content = |i: usize| match &spec.resources[i].spec {
            ResourceSpec::File(f) => f.content.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(content(0), FileContent::Inline("small".into()));
        let big_hash = hex::encode(Sha256::digest(big.as_bytes()));
        assert_eq!(content(1), FileContent::Object { sha256: big_hash.clone(), size: big.len() as u64 });
        assert_eq!(content(2), FileContent::Object { sha256: hex::encode(Sha256::digest([0xff, 0xfe, 0])), size: 3 });
        assert_eq!(content(3), content(1));
        // The big file once, however many resources use it.
        assert_eq!(spec.objects.len(), 2);
        assert!(spec.objects.iter().any(|o| o.sha256 == big_hash && o.path == dir.path().join("big.txt")));
    }

    #[test]
    fn bad_manifests_name_the_line_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad-utf8.service"), [0xff]).unwrap();
        let file = "[[resource]]\nid = \"a\"\nkind = \"file\"\npath = \"/data/w/a\"\n";
        let cases: Vec<(String, &[&str])> = vec![
            ("[[resource]]\nid = \"vm\"\nkind = \"virtual_machine\"\n".into(), &["line 1", "virtual_machine", "file"]),
            (format!("{file}content = \"x\"\nmdoe = \"0644\"\n"), &["line 1", "unknown field `mdoe`"]),
            (format!("{file}content = \"x\"\nmode = \"0999\"\n"), &["line 1", "\"a\"", "0999"]),
            (format!("{file}content = \"x\"\nmode = 644\n"), &["line 1", "quoted octal"]),
            (format!("{file}content = \"x\"\nmode = \"0o17777\"\n"), &["line 1", "bits beyond 07777"]),
            (format!("{file}content_file = \"missing.txt\"\n"), &["line 1", "content_file", "missing.txt"]),
            (format!("{file}content = \"x\"\ncontent_file = \"y\"\n"), &["not both"]),
            (file.to_string(), &["needs content or content_file"]),
            (format!("gate_upgrade = false\n{file}content = \"x\"\n"), &["line 1", "gate_upgrade"]),
            (
                "[[resource]]\nid = \"u\"\nkind = \"systemd_unit\"\nname = \"u.service\"\ncontent_file = \"bad-utf8.service\"\n"
                    .into(),
                &["not UTF-8"],
            ),
            (
                "[[resource]]\nid = \"u\"\nkind = \"systemd_unit\"\nname = \"a/b.service\"\ncontent = \"\"\n".into(),
                &["line 1", "resource u", "a/b.service"],
            ),
            (
                format!("{file}content = \"x\"\n[[resource]]\nid = \"a\"\nkind = \"file\"\npath = \"/data/w/b\"\ncontent = \"y\"\n"),
                &["line 6", "more than once"],
            ),
            ("[[resource]]\nid = \"c\"\nkind = \"container\"\nimage = \"x\"\ndigest = \"sha256:zz\"\n".into(), &["digest"]),
            (format!("{file}content = \"x\"\n[[resource]]\nkind = \"file\"\n"), &["line 6", "id"]),
            (
                format!("{file}content = \"x\"\n[[resource]]\nid = \"b\"\nkind = \"file\"\npath = \"/data/w/b\"\nimage = \"x\"\n"),
                &["line 6", "resource \"b\"", "unknown field `image`"],
            ),
            ("not toml = = =".into(), &["line 1"]),
        ];
        for (text, wanted) in cases {
            let err = parse_in(dir.path(), &text).unwrap_err();
            for w in wanted {
                assert!(err.contains(w), "{text:?}: {err:?} does not mention {w:?}");
            }
        }
    }

    #[test]
    fn load_names_the_manifest_and_resolves_files_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("site");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("motd.txt"), "hi").unwrap();
        let manifest = sub.join("m.toml");
        let text = "[[resource]]\nid = \"m\"\nkind = \"file\"\npath = \"/data/w/m\"\ncontent_file = \"motd.txt\"\n";
        std::fs::write(&manifest, text).unwrap();
        let spec = load(&manifest).unwrap();
        assert!(spec.gate_upgrades);
        std::fs::write(&manifest, "resource = 3").unwrap();
        let err = load(&manifest).unwrap_err().to_string();
        assert!(err.contains("m.toml"), "{err}");
    }
}
