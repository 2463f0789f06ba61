//! The file reconciler against a real filesystem (a temp dir as the root).

use super::*;
use crate::workload::objects::ObjectSource;

struct Serve(Vec<u8>);
impl ObjectSource for Serve {
    fn fetch<'a>(&'a self, _: &'a str, _: u64, dest: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { std::fs::write(dest, &self.0).map_err(|e| e.to_string()) })
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    r: FileReconciler,
    me: String,
}

fn fixture(served: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workloads");
    let me = std::fs::metadata(dir.path()).unwrap().uid().to_string();
    std::fs::write(dir.path().join("passwd"), format!("svc:x:{me}:{me}::/:/bin/false\n")).unwrap();
    std::fs::write(dir.path().join("group"), format!("svc:x:{me}:\n")).unwrap();
    let r = FileReconciler {
        roots: vec![root],
        objects: Arc::new(ObjectCache::new(dir.path().join("objects"), Box::new(Serve(served.to_vec())))),
        passwd_file: dir.path().join("passwd"),
        group_file: dir.path().join("group"),
    };
    Fixture { dir, r, me }
}

impl Fixture {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("workloads").join(rel)
    }
    fn spec(&self, rel: &str, text: &str) -> FileSpec {
        FileSpec {
            path: self.path(rel).to_string_lossy().into_owned(),
            mode: 0o640,
            owner: Some("svc".into()),
            group: Some(self.me.clone()),
            content: FileContent::Inline(text.into()),
        }
    }
}

#[tokio::test]
async fn creates_then_corrects_content_and_mode_drift() {
    let f = fixture(b"");
    let spec = f.spec("app/conf.d/a.conf", "hello\n");
    assert!(matches!(f.r.observe("a", &spec).await.unwrap(), Observed::Drifted { .. }));
    f.r.reconcile("a", &spec).await.unwrap();
    assert!(matches!(f.r.observe("a", &spec).await.unwrap(), Observed::InSync { .. }));
    let path = f.path("app/conf.d/a.conf");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
    // A person edits the file and loosens its mode.
    std::fs::write(&path, "edited\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Observed::Drifted { what } = f.r.observe("a", &spec).await.unwrap() else { panic!("drift not seen") };
    assert!(what.contains("content differs") && what.contains("mode is 666"), "{what}");
    f.r.reconcile("a", &spec).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    assert!(matches!(f.r.observe("a", &spec).await.unwrap(), Observed::InSync { .. }));
    assert!(!crate::durable::temp_path(&path).exists());
}

#[tokio::test]
async fn symlinks_and_special_files_are_refused_not_followed() {
    let f = fixture(b"");
    let outside = f.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "keep").unwrap();
    std::fs::create_dir_all(f.path("")).unwrap();
    // A directory link leading out of the root.
    std::os::unix::fs::symlink(&outside, f.path("escape")).unwrap();
    let spec = f.spec("escape/secret", "pwned");
    let err = f.r.reconcile("a", &spec).await.unwrap_err();
    assert!(err.contains("symlink"), "{err}");
    assert!(f.r.observe("a", &spec).await.unwrap_err().contains("symlink"));
    // A file link in place of the target.
    std::os::unix::fs::symlink(outside.join("secret"), f.path("link")).unwrap();
    let spec = f.spec("link", "pwned");
    let err = f.r.reconcile("a", &spec).await.unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    f.r.delete("a", &spec).await.unwrap();
    assert!(f.path("link").symlink_metadata().is_ok(), "a link is never removed as if it were ours");
    // A FIFO.
    let status = std::process::Command::new("mkfifo").arg(f.path("fifo")).status().unwrap();
    assert!(status.success());
    let err = f.r.reconcile("a", &f.spec("fifo", "x")).await.unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "keep");
}

#[tokio::test]
async fn delete_removes_only_the_file_and_is_idempotent() {
    let f = fixture(b"");
    let spec = f.spec("x/a.conf", "x");
    f.r.reconcile("a", &spec).await.unwrap();
    f.r.delete("a", &spec).await.unwrap();
    assert!(!f.path("x/a.conf").exists());
    assert!(f.path("x").is_dir());
    f.r.delete("a", &spec).await.unwrap();
}

#[tokio::test]
async fn object_content_is_verified_before_anything_is_written() {
    let body = b"#!/bin/sh\necho big\n".to_vec();
    let f = fixture(&body);
    let sha = hex::encode(Sha256::digest(&body));
    let mut spec = f.spec("bin/tool", "");
    spec.mode = 0o755;
    spec.content = FileContent::Object { sha256: sha, size: body.len() as u64 };
    f.r.reconcile("t", &spec).await.unwrap();
    assert_eq!(std::fs::read(f.path("bin/tool")).unwrap(), body);
    assert!(matches!(f.r.observe("t", &spec).await.unwrap(), Observed::InSync { .. }));
    // The store serves other bytes than the manifest's hash names.
    spec.path = f.path("bin/other").to_string_lossy().into_owned();
    spec.content = FileContent::Object { sha256: "0".repeat(64), size: body.len() as u64 };
    let err = f.r.reconcile("t", &spec).await.unwrap_err();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!f.path("bin/other").exists());
}

#[tokio::test]
async fn unknown_owner_is_an_error() {
    let f = fixture(b"");
    let mut spec = f.spec("a", "x");
    spec.owner = Some("nobody-here".into());
    let err = f.r.reconcile("a", &spec).await.unwrap_err();
    assert!(err.contains("nobody-here"), "{err}");
    assert!(!f.path("a").exists());
}
