//! `Container` resources, run by podman through its CLI.
//!
//! Why the CLI and not podman's REST API: podman is daemonless, and its API
//! needs `podman.socket`/`podman system service` running as one more root
//! service on every device, plus an HTTP-over-unix-socket client in the
//! agent. The CLI is the same code path without either, and a reconcile
//! every minute costs a few short processes. Arguments are passed as argv
//! (never through a shell).
//!
//! The container is named `harmony-<id>` and labelled with a hash of its
//! spec: a changed spec is a new container. It runs the image by its id
//! (the manifest's digest), so a tag moved on a registry changes nothing.

use super::objects::ObjectCache;
use super::reconciler::{Observed, Reconciler};
use futures::future::BoxFuture;
use harmony_protocol::workload::ContainerSpec;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::process::Command;

#[derive(Debug)]
pub struct ContainerReconciler {
    pub podman: PathBuf,
    pub objects: Arc<ObjectCache>,
}

const SPEC_LABEL: &str = "harmony.spec";

fn name(id: &str) -> String {
    format!("harmony-{id}")
}

fn spec_hash(spec: &ContainerSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

fn image_id(spec: &ContainerSpec) -> &str {
    spec.digest.strip_prefix("sha256:").unwrap_or(&spec.digest)
}

impl ContainerReconciler {
    /// Runs podman; stdout on success, else the tail of stderr.
    async fn podman(&self, args: &[String]) -> Result<String, String> {
        let out = Command::new(&self.podman)
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.podman.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("podman {} failed ({}): {tail}", args.first().map(String::as_str).unwrap_or(""), out.status))
        }
    }

    async fn local_image(&self, reference: &str) -> Option<String> {
        let args = ["image", "inspect", "--format", "{{.Id}}", reference].map(String::from);
        self.podman(&args).await.ok().map(|id| id.trim_start_matches("sha256:").to_string())
    }

    /// The image with the manifest's id, loaded from the archive or pulled.
    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<(), String> {
        let want = image_id(spec);
        if self.local_image(want).await.as_deref() == Some(want) {
            return Ok(());
        }
        match &spec.archive {
            Some(archive) => {
                let path = self.objects.get(&archive.sha256, archive.size).await?;
                let args = ["load", "--quiet", "--input"].map(String::from);
                let mut args = args.to_vec();
                args.push(path.to_string_lossy().into_owned());
                self.podman(&args).await?;
            }
            None => {
                self.podman(&["pull".to_string(), "--quiet".to_string(), spec.image.clone()]).await?;
            }
        }
        match self.local_image(&spec.image).await {
            Some(got) if got == want => Ok(()),
            Some(got) => {
                Err(format!("digest mismatch: {} is image {got}, the manifest says {}", spec.image, spec.digest))
            }
            None => match self.local_image(want).await {
                Some(_) => Ok(()),
                None => Err(format!("image {} ({}) is not present after loading it", spec.image, spec.digest)),
            },
        }
    }

    /// (running, image id, spec label) of the container, or None.
    async fn inspect(&self, id: &str) -> Option<(bool, String, String)> {
        let format = format!("{{{{.State.Running}}}} {{{{.Image}}}} {{{{index .Config.Labels \"{SPEC_LABEL}\"}}}}");
        let args = ["container".to_string(), "inspect".into(), "--format".into(), format, name(id)];
        let out = self.podman(&args).await.ok()?;
        let mut parts = out.split_whitespace();
        let running = parts.next()? == "true";
        let image = parts.next().unwrap_or("").trim_start_matches("sha256:").to_string();
        let label = parts.next().unwrap_or("").to_string();
        Some((running, image, label))
    }

    async fn observe_now(&self, id: &str, spec: &ContainerSpec) -> Result<Observed, String> {
        let drift = match self.inspect(id).await {
            None => "container missing".to_string(),
            Some((_, image, _)) if image != image_id(spec) => format!("runs image {image}"),
            Some((_, _, label)) if label != spec_hash(spec) => "spec changed".to_string(),
            Some((false, _, _)) => "not running".to_string(),
            Some((true, _, _)) => {
                return Ok(Observed::InSync { details: format!("running {}", &image_id(spec)[..12]) });
            }
        };
        Ok(Observed::Drifted { what: format!("{}: {drift}", name(id)) })
    }

    async fn reconcile_now(&self, id: &str, spec: &ContainerSpec) -> Result<(), String> {
        self.ensure_image(spec).await?;
        match self.inspect(id).await {
            Some((running, image, label)) if image == image_id(spec) && label == spec_hash(spec) => {
                if !running {
                    self.podman(&["start".to_string(), name(id)]).await?;
                }
                return Ok(());
            }
            Some(_) => self.remove(id).await?,
            None => {}
        }
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            name(id),
            "--label".into(),
            format!("{SPEC_LABEL}={}", spec_hash(spec)),
            "--label".into(),
            "harmony.managed=true".into(),
            "--restart".into(),
            spec.restart.as_podman().into(),
        ];
        for (k, v) in &spec.env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        for m in &spec.mounts {
            std::fs::create_dir_all(&m.source).map_err(|e| format!("{}: {e}", m.source))?;
            args.push("--volume".into());
            args.push(format!("{}:{}{}", m.source, m.target, if m.read_only { ":ro" } else { "" }));
        }
        args.push(image_id(spec).to_string());
        args.extend(spec.command.iter().cloned());
        self.podman(&args).await.map(|_| ())
    }

    async fn remove(&self, id: &str) -> Result<(), String> {
        let args = ["rm", "--force", "--ignore", "--time", "10"].map(String::from);
        let mut args = args.to_vec();
        args.push(name(id));
        self.podman(&args).await.map(|_| ())
    }
}

impl Reconciler for ContainerReconciler {
    type Spec = ContainerSpec;

    fn observe<'a>(&'a self, id: &'a str, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<Observed, String>> {
        Box::pin(self.observe_now(id, spec))
    }

    fn reconcile<'a>(&'a self, id: &'a str, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.reconcile_now(id, spec))
    }

    fn delete<'a>(&'a self, id: &'a str, _spec: &'a ContainerSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.remove(id))
    }
}
