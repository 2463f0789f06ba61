#!/usr/bin/env python3
"""A container image for tests that need no registry (issue 15).

    qemu-tests/container_image.py [--out FILE] [--deb FILE]

Writes a `docker-archive` tarball (what `podman save` writes and `podman
load` reads) of a one-layer arm64 image made of Debian's busybox-static:
/bin/busybox, a few applet links next to it (sh, httpd, sleep, ...) and an
empty /tmp. Prints the image id: the sha256 of the config blob, which is
what `podman image inspect --format {{.Id}}` shows after the load and what
a Container resource's `digest` names ("sha256:<id>").

Deterministic: the same busybox-static .deb gives the same bytes (every
tar member owned by 0:0 with mtime 0, in sorted order; JSON with sorted
keys), so the id is stable across runs and machines. The .deb is taken from
the image builder's download cache ($HARMONY_CACHE/debs, default
~/.cache/harmony/debs) or fetched there with `apt-get download
busybox-static:arm64` (the host's apt knows arm64: scripts/setup).

The archive's tag is IMAGE_NAME; the image's Cmd is /bin/sh.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_NAME = "localhost/harmony-test/busybox:1"
APPLETS = ["sh", "httpd", "sleep", "cat", "ls", "echo", "wget", "ps", "id", "hostname", "true", "false"]
# Every timestamp in the archive (tar members, config): the Unix epoch.
EPOCH = "1970-01-01T00:00:00Z"


def cache_dir() -> Path:
    d = Path(os.environ.get("HARMONY_CACHE", Path.home() / ".cache" / "harmony")) / "debs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def busybox_deb() -> Path:
    """Debian's arm64 busybox-static .deb: from the cache, else downloaded into it."""
    found = sorted(cache_dir().glob("busybox-static_*_arm64.deb"))
    if not found:
        r = subprocess.run(["apt-get", "download", "-q", "busybox-static:arm64"], cwd=cache_dir(),
                           capture_output=True, text=True)
        found = sorted(cache_dir().glob("busybox-static_*_arm64.deb"))
        if r.returncode != 0 or not found:
            raise SystemExit(f"container_image: apt-get download busybox-static:arm64 failed: {r.stderr.strip()}")
    return found[-1]


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], check=True, capture_output=True,
                          text=True).stdout.strip()


def busybox_binary(deb: Path) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for name in ("./bin/busybox", "./usr/bin/busybox"):
            try:
                return t.extractfile(name).read()
            except KeyError:
                continue
    raise SystemExit(f"container_image: {deb} has no bin/busybox")


def _member(name, kind=tarfile.REGTYPE, mode=0o644, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def deterministic_tar(entries) -> bytes:
    """A USTAR archive of (TarInfo, bytes or None), in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(out: Path, deb: Path = None):
    """Writes the archive to `out`; returns (image id, archive sha256, size)."""
    deb = deb or busybox_deb()
    version = deb_field(deb, "Version")
    arch = deb_field(deb, "Architecture")
    if arch != "arm64":
        raise SystemExit(f"container_image: {deb} is for {arch}, not arm64")
    busybox = busybox_binary(deb)
    entries = [(_member("bin/", tarfile.DIRTYPE, 0o755), None),
               (_member("bin/busybox", mode=0o755, size=len(busybox)), busybox)]
    for applet in sorted(APPLETS):
        entries.append((_member(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), None))
    entries.append((_member("tmp/", tarfile.DIRTYPE, 0o1777), None))
    layer = deterministic_tar(entries)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = dumps({
        "architecture": "arm64",
        "os": "linux",
        "created": EPOCH,
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
            "Labels": {"org.harmony-fleet.test-image": f"busybox-static {version} arm64"},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": EPOCH, "created_by": f"qemu-tests/container_image.py: busybox-static {version}"}],
    })
    image_id = hashlib.sha256(config).hexdigest()
    manifest = dumps([{"Config": f"{image_id}.json", "RepoTags": [IMAGE_NAME],
                       "Layers": [f"{diff_id}/layer.tar"]}])
    archive = deterministic_tar([
        (_member(f"{diff_id}/", tarfile.DIRTYPE, 0o755), None),
        (_member(f"{diff_id}/layer.tar", size=len(layer)), layer),
        (_member(f"{image_id}.json", size=len(config)), config),
        (_member("manifest.json", size=len(manifest)), manifest),
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(archive)
    tmp.replace(out)
    return image_id, hashlib.sha256(archive).hexdigest(), len(archive)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "container-images" / "busybox.tar")
    ap.add_argument("--deb", type=Path, help="a busybox-static arm64 .deb (default: the builder's cache)")
    args = ap.parse_args()
    image_id, archive_sha, size = build(args.out, args.deb)
    print(f"archive {args.out} ({size} bytes, sha256 {archive_sha})", file=sys.stderr)
    print(image_id)


if __name__ == "__main__":
    main()
